"""A node's own copy of its client's state (node config ``state-dir``): FedBN's local layers
survive a restarted worker or SuperNode, and a resumed run, exactly; nothing crosses runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedwon.client_app import evaluate_step, train
from fedwon.clients.local_state import STATE_KEY
from fedwon.clients.node_state import NodeStateDir
from fedwon.clients.workspace import _workspace
from fedwon.config import make_config
from fedwon.server_app import initial_arrays

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
FEDBN = {
    "model": "cnn-tiny",
    "strategy": "fedbn",
    "train_per_domain": 24,
    "test_per_domain": 16,
    "batch_size": 8,
    "num_clients": 2,
    "domains": "mnist,svhn",
}


def new_context(state_dir: Path | None, out: str = "/srv/runs/a", run_id: int = 1) -> Context:
    node = {"partition-id": 1, "num-partitions": 2}
    if state_dir is not None:
        node["state-dir"] = str(state_dir)  # type: ignore[assignment]
    return Context(
        run_id=run_id, node_id=7, node_config=node, state=RecordDict(), run_config={"out": out}
    )


def message(kind: str, server_round: int) -> Message:
    cfg = make_config(FEDBN)
    record = cfg.client_config().to_record()
    record["server-round"] = server_round
    content = RecordDict({"arrays": initial_arrays(cfg), "config": record})
    return Message(content, dst_node_id=7, message_type=kind)


def restart_worker() -> None:
    """What a new worker process starts from: no cached model, optimizer or data."""
    _workspace.cache_clear()


def arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}


def local_layers(context: Context) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in context.state.array_records[STATE_KEY].items()}


def test_fedbn_local_layers_survive_a_worker_restart_exactly(tmp_path: Path) -> None:
    kept = new_context(None)  # the reference: one worker, one Context for the whole run
    train(message("train", 1), kept)
    reference = train(message("train", 2), kept)
    reference_eval = evaluate_step(message("evaluate", 2), kept)

    first = new_context(tmp_path)
    train(message("train", 1), first)
    restart_worker()
    second = new_context(tmp_path)  # a restarted SuperNode: an empty Context.state
    reply = train(message("train", 2), second)
    for key, value in arrays(reference).items():
        np.testing.assert_array_equal(arrays(reply)[key], value, err_msg=key)
    for key, value in local_layers(kept).items():
        np.testing.assert_array_equal(local_layers(second)[key], value, err_msg=key)
    restart_worker()
    third = new_context(tmp_path)  # restarted between train and evaluate: round 2's state
    assert (
        evaluate_step(message("evaluate", 2), third).content.metric_records["metrics"]
        == (reference_eval.content.metric_records["metrics"])
    )

    forgetful = new_context(None)  # without a state directory the local layers restart
    train(message("train", 1), new_context(None))
    lost = train(message("train", 2), forgetful)
    assert any(not np.array_equal(arrays(lost)[k], v) for k, v in arrays(reference).items()), (
        "the test cannot tell kept local layers from restarted ones"
    )


def test_a_resumed_run_continues_from_its_checkpoint_round_not_from_later_ones(
    tmp_path: Path,
) -> None:
    node = new_context(tmp_path)
    for server_round in (1, 2, 3):  # the nodes trained up to round 3 ...
        train(message("train", server_round), node)
    round_3 = local_layers(node)
    saved = NodeStateDir(
        tmp_path, "/srv/runs/a", 1, make_config(FEDBN).client_config().fingerprint()
    )
    assert saved.rounds() == [1, 2, 3]
    round_2 = saved.load(before=3)
    assert round_2 is not None and round_2[0] == 2
    # ... the server checkpointed round 2 and is resumed: a new flwr run, a new Context
    resumed = new_context(tmp_path, run_id=2)
    train(message("train", 3), resumed)
    for key, value in local_layers(resumed).items():  # round 3 again, from round 2's state
        np.testing.assert_array_equal(value, round_3[key], err_msg=key)
    assert saved.rounds() == [1, 2, 3]


def test_state_never_crosses_runs(tmp_path: Path) -> None:
    train(message("train", 1), new_context(tmp_path, out="/srv/runs/a"))
    other = new_context(tmp_path, out="/srv/runs/b")
    train(message("train", 2), other)
    assert other.state.config_records.get("fedwon.local.owner") is not None
    without_out = new_context(tmp_path, out="", run_id=5)  # keyed by Flower's run id
    evaluate_step(message("evaluate", 1), without_out)
    assert len(without_out.state) == 0
    assert len(list(tmp_path.iterdir())) == 2  # runs a and b; nothing saved for run 5


def test_saving_a_round_forgets_what_an_earlier_attempt_saved_from_it_on(tmp_path: Path) -> None:
    saved = NodeStateDir(tmp_path, "run", 0, "setup")
    for server_round in (1, 2, 3, 4):
        saved.save(RecordDict({"c": ConfigRecord({"round": server_round})}), server_round)
    saved.save(RecordDict({"c": ConfigRecord({"round": 20})}), 2)
    assert saved.rounds() == [1, 2]
    found = saved.load(before=5)
    assert found is not None and found[0] == 2
    assert found[1].config_records["c"]["round"] == 20
    assert saved.load(before=1) is None
    assert NodeStateDir(tmp_path, "run", 1, "setup").rounds() == []  # another partition
    record = RecordDict({"a": ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})})
    saved.save(record, 3)
    loaded = saved.load(before=4)
    assert loaded is not None
    np.testing.assert_array_equal(loaded[1].array_records["a"]["w"].numpy(), np.ones(3))


@pytest.fixture(autouse=True)
def _fresh_workspace() -> None:
    restart_worker()
