"""Tests of the fast engine: FastGrid delivery, contexts, faults, timeouts, run_fast, Ray.

Everything runs in-process except ``test_ray_executor_and_flower_engine_agree`` (the one test
that starts Ray), which checks the Ray executor and Flower's own ``run_simulation`` against
the in-process result, bit for bit, and the Ray executor's fault handling.
"""

from __future__ import annotations

import gc
import logging
import random
import sys
import time
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import engine_toy_app as toy
import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedwon.engine import (
    NODE_ID_BASE,
    ClientAppLoadError,
    ContextStore,
    FastGrid,
    InProcessExecutor,
    RayExecutor,
    load_client_app,
    make_executor,
    run_fast,
)
from fedwon.engine.executors import Executor, actors_that_fit
from fedwon.engine.fastarrays import fast_array_codec
from fedwon.engine.worker import task_identity

APP = "engine_toy_app:client_app"
RUN_ID = 4242


@pytest.fixture(autouse=True)
def _quiet_flower() -> None:
    """Flower logs every round at INFO; keep test output short."""
    logging.getLogger("flwr").setLevel(logging.WARNING)


@contextmanager
def server_identity() -> Iterator[None]:
    """What run_fast sets before a ServerApp runs (needed to build ``Message``s here)."""
    with task_identity(RUN_ID, SUPERLINK_NODE_ID):
        yield


def make_grid(
    num_nodes: int, run_config: dict[str, Any] | None = None, executor: Executor | None = None
) -> FastGrid:
    """A FastGrid over the toy app, in-process unless an executor is given."""
    return FastGrid(
        executor or InProcessExecutor(APP),
        num_nodes,
        run=Run.create_empty(RUN_ID),
        run_config=run_config or {},
    )


def train_msg(node_id: int, action: str = "") -> Message:
    """A train message carrying the toy model."""
    content = RecordDict({"arrays": toy.initial_arrays(), "config": ConfigRecord({"lr": 0.5})})
    return Message(content, node_id, "train" + (f".{action}" if action else ""))


def reference_fedavg(num_rounds: int, num_nodes: int) -> dict[str, Any]:
    """The toy federation computed by hand (exact dyadic arithmetic, any order)."""
    arrays = toy.initial_arrays().to_numpy_ndarrays()
    train: dict[int, dict[str, float]] = {}
    evaluate: dict[int, dict[str, float]] = {}
    for rnd in range(1, num_rounds + 1):
        targets = [(pid + 1) / 4 + rnd / 8 for pid in range(num_nodes)]
        updates = [[a + (t - a) / 2 for a in arrays] for t in targets]
        arrays = [sum(u[i] for u in updates) / num_nodes for i in range(len(arrays))]
        train[rnd] = {"target": sum(targets) / num_nodes, "count": float(rnd)}
        scores = [float(arrays[0].sum()) / 8 + pid / 4 for pid in range(num_nodes)]
        evaluate[rnd] = {"score": sum(scores) / num_nodes}
    return {"arrays": arrays, "train": train, "evaluate": evaluate}


# ---- results -----------------------------------------------------------------------------


def test_in_process_run_matches_hand_computed_fedavg() -> None:
    sink: dict[str, Any] = {}
    context = run_fast(toy.make_server_app(3, 4, sink), APP, 4, num_workers=0)
    ref = reference_fedavg(3, 4)
    got = sink["arrays"].to_numpy_ndarrays()
    assert all(np.array_equal(a, b) for a, b in zip(got, ref["arrays"], strict=True))
    assert sink["train"] == ref["train"]
    assert sink["evaluate"] == ref["evaluate"]
    assert isinstance(context, Context) and "final" in context.state


def test_client_app_object_and_string_give_identical_results() -> None:
    by_ref: dict[str, Any] = {}
    by_obj: dict[str, Any] = {}
    run_fast(toy.make_server_app(2, 4, by_ref), APP, 4, num_workers=0)
    run_fast(toy.make_server_app(2, 4, by_obj), toy.client_app, 4, num_workers=0)
    assert toy.summary(by_ref) == toy.summary(by_obj)


def test_replies_follow_send_order_and_carry_ids() -> None:
    grid = make_grid(6)
    nodes = list(grid.get_node_ids())
    random.Random(1).shuffle(nodes)
    with server_identity():
        msgs = [train_msg(n) for n in nodes]
        replies = list(grid.send_and_receive(msgs))
    assert [r.metadata.src_node_id for r in replies] == nodes
    assert [r.metadata.reply_to_message_id for r in replies] == [
        m.metadata.message_id for m in msgs
    ]
    ids = {r.metadata.message_id for r in replies}
    assert len(ids) == len(replies) and "" not in ids


def test_streamed_replies_run_each_client_on_request_and_are_not_kept() -> None:
    grid = make_grid(4)
    nodes = list(grid.get_node_ids())
    with server_identity(), grid.streaming_replies():
        stream = grid.send_and_receive([train_msg(n) for n in nodes])
        assert not isinstance(stream, list) and grid.stats["messages"] == 0  # nothing ran yet
        previous: weakref.ref[RecordDict] | None = None
        for node in nodes:
            reply = next(iter(stream))  # type: ignore[call-overload]
            assert reply.metadata.src_node_id == node and not reply.has_error()
            gc.collect()
            # the grid let go of the previous reply before running this client
            assert previous is None or previous() is None
            previous = weakref.ref(reply.content)
            del reply
        assert list(stream) == [] and grid.stats["messages"] == 4
    with server_identity():
        assert isinstance(grid.send_and_receive([train_msg(nodes[0])]), list)


# ---- nodes and contexts ----------------------------------------------------------------


def test_node_ids_partitions_and_sampling() -> None:
    grid = make_grid(10)
    ids = list(grid.get_node_ids())
    assert len(ids) == len(set(ids)) == 10
    assert [grid.partition_of(n) for n in ids] == list(range(10))
    with server_identity():
        strategy = FedAvg(fraction_train=0.5, min_available_nodes=10)
        msgs = list(strategy.configure_train(1, toy.initial_arrays(), ConfigRecord(), grid))
        assert len({m.metadata.dst_node_id for m in msgs}) == 5
        assert {m.metadata.dst_node_id for m in msgs} <= set(ids)
        replies = list(grid.send_and_receive([Message(RecordDict(), n, "query") for n in ids]))
    infos = [r.content["info"] for r in replies]
    assert [i["partition-id"] for i in infos] == list(range(10))
    assert [i["node-id"] for i in infos] == ids


def test_custom_node_configs_reach_clients() -> None:
    configs = [{"partition-id": 100 + i, "num-partitions": 3, "domain": "x"} for i in range(3)]
    grid = FastGrid(InProcessExecutor(APP), 3, run=Run.create_empty(RUN_ID), node_configs=configs)
    with server_identity():
        replies = grid.send_and_receive(
            [Message(RecordDict(), n, "query") for n in grid.get_node_ids()]
        )
    assert [r.content["info"]["partition-id"] for r in replies] == [100, 101, 102]


def test_context_state_persists_per_node_and_differs_between_nodes() -> None:
    grid = make_grid(3)
    n0, n1, n2 = grid.get_node_ids()
    with server_identity():
        for _ in range(3):
            grid.send_and_receive([train_msg(n0), train_msg(n1)])
        grid.send_and_receive([train_msg(n0)])
        replies = grid.send_and_receive([Message(RecordDict(), n, "query") for n in (n0, n1, n2)])
    info = [r.content["info"] for r in replies]
    assert [i["counter"] for i in info] == [4, 3, 0]
    assert [i["has-local"] for i in info] == [True, True, False]
    local0 = grid.contexts.get(n0).state["local"].to_numpy_ndarrays()[0]
    local1 = grid.contexts.get(n1).state["local"].to_numpy_ndarrays()[0]
    assert not np.array_equal(local0, local1)
    assert len(grid.contexts) == 2  # node 2 never stored anything: no context kept


def test_messages_to_one_node_in_one_batch_see_each_others_state() -> None:
    grid = make_grid(2)
    node = next(iter(grid.get_node_ids()))
    with server_identity():
        grid.send_and_receive([train_msg(node), train_msg(node)])
        (reply,) = grid.send_and_receive([Message(RecordDict(), node, "query")])
    assert reply.content["info"]["counter"] == 2


def test_context_store_is_lazy_drops_empty_states_and_spills(tmp_path: Path) -> None:
    store = ContextStore(
        1, {"k": 1}, lambda n: {"partition-id": n}, budget_bytes=400, spill_dir=tmp_path
    )
    ctx = store.get(7)
    assert ctx.node_config == {"partition-id": 7} and ctx.run_config == {"k": 1}
    store.put(7, ctx)
    assert len(store) == 0  # empty state: nothing kept
    for node in (1, 2, 3):
        c = store.get(node)
        c.state["w"] = ArrayRecord([np.full(8, float(node))])  # 192 bytes of .npy each
        store.put(node, c)
    assert store.num_spilled == 1 and len(store) == 2 and store.bytes_in_memory <= 400
    assert len(list(tmp_path.rglob("*.pkl"))) == 1
    back = store.get(1).state["w"].to_numpy_ndarrays()[0]
    assert np.array_equal(back, np.full(8, 1.0))
    store.close()
    assert store.num_spilled == 0


# ---- faults --------------------------------------------------------------------------------


def test_raising_client_yields_error_reply_and_others_succeed() -> None:
    grid = make_grid(3, run_config={"fail-partition": 1})
    n0, n1, n2 = grid.get_node_ids()
    with server_identity():
        replies = list(grid.send_and_receive([train_msg(n) for n in (n0, n1, n2)]))
    assert [r.has_error() for r in replies] == [False, True, False]
    err = replies[1].error
    assert err.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "partition 1 fails on purpose" in err.reason
    assert replies[1].metadata.reply_to_message_id != ""
    assert grid.contexts.get(n1).state.get("counter") is None  # failed run: state untouched


def test_run_continues_when_a_client_raises() -> None:
    sink: dict[str, Any] = {}
    run_fast(
        toy.make_server_app(2, 3, sink), APP, 3, num_workers=0, run_config={"fail-partition": 0}
    )
    assert sorted(sink["train"]) == [1, 2]  # both rounds aggregated from the 2 good nodes
    assert sink["train"][2]["count"] == 2.0


def test_run_config_modification_is_refused_like_flower() -> None:
    grid = make_grid(1)
    node = next(iter(grid.get_node_ids()))
    with server_identity():
        (reply,) = grid.send_and_receive([train_msg(node, "mutate_config")])
    assert reply.has_error() and reply.error.code == ErrorCode.UNKNOWN
    assert len(grid.contexts) == 0


def test_clients_cannot_see_each_others_message_tampering() -> None:
    grid = make_grid(3)
    with server_identity():
        shared = RecordDict({"arrays": toy.initial_arrays(), "config": ConfigRecord()})
        msgs = [Message(shared, n, "train.mutate") for n in grid.get_node_ids()]
        replies = list(grid.send_and_receive(msgs))
    assert [r.content["seen"]["poison-seen"] for r in replies] == [False] * 3
    assert "poison" not in shared["config"] and "arrays" in shared


@pytest.mark.parametrize("codec", [True, False], ids=["lazy-arrays", "flower-arrays"])
def test_client_tampering_with_received_arrays_reaches_nobody_else(codec: bool) -> None:
    grid = make_grid(3)
    original = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0.5, -2.0])]
    expected_bytes = {k: a.data for k, a in ArrayRecord(original).items()}  # Flower's encoding
    with server_identity(), fast_array_codec(codec):
        record = ArrayRecord([a.copy() for a in original])
        shared = RecordDict({"arrays": record, "config": ConfigRecord()})
        msgs = [Message(shared, n, "train.mutate_arrays") for n in grid.get_node_ids()]
        replies = list(grid.send_and_receive(msgs))
        assert [r.content["seen"]["sums"] for r in replies] == [[15.0, -1.5] * 2] * 3
        assert list(record.keys()) == ["0", "1"]
        assert {k: a.data for k, a in record.items()} == expected_bytes
        got = record.to_numpy_ndarrays()
    assert all(
        np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, original, strict=True)
    )


@pytest.mark.parametrize("codec", [True, False], ids=["lazy-arrays", "flower-arrays"])
def test_server_changes_after_sending_do_not_reach_what_clients_kept(codec: bool) -> None:
    grid = make_grid(1)
    node = next(iter(grid.get_node_ids()))
    source = np.arange(4, dtype=np.float64)
    with server_identity(), fast_array_codec(codec):
        record = ArrayRecord([source])
        (reply,) = grid.send_and_receive(
            [Message(RecordDict({"arrays": record}), node, "train.keep")]
        )
        source[:] = -1.0  # the array the record was made from
        record["0"] = Array(np.zeros(4))  # the record itself
        kept = grid.contexts.get(node).state["kept"]
        assert reply.content["seen"]["sums"] == [6.0, 6.0]
        assert np.array_equal(kept["0"].numpy(), np.arange(4, dtype=np.float64))


def test_server_app_exception_propagates_and_identity_is_restored() -> None:
    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        raise ValueError("server failed")

    with pytest.raises(ValueError, match="server failed"):
        run_fast(app, APP, 2, num_workers=0)
    assert (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) == before


def test_client_code_can_build_messages_and_sees_run_config() -> None:
    seen: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        node = next(iter(grid.get_node_ids()))
        (reply,) = grid.send_and_receive([Message(RecordDict(), node, "query.new_message")])
        seen.update(reply.content["info"])
        seen["server-run-config"] = dict(context.run_config)
        seen["grid-run-id"] = grid.run.run_id

    run_fast(app, APP, 1, num_workers=0, run_config={"alpha": 0.5})
    assert seen["server-run-config"] == {"alpha": 0.5}
    assert seen["src"] == NODE_ID_BASE and seen["run-id"] == seen["grid-run-id"]


# ---- timeouts, push/pull, bad input --------------------------------------------------------


def test_send_and_receive_honours_timeout() -> None:
    grid = make_grid(4, run_config={"sleep-s": 0.1})
    with server_identity():
        t0 = time.monotonic()
        batch = [train_msg(n) for n in grid.get_node_ids()]
        partial = list(grid.send_and_receive(batch, timeout=0.15))
        elapsed = time.monotonic() - t0
        full = list(grid.send_and_receive([train_msg(n) for n in grid.get_node_ids()]))
    assert 1 <= len(partial) < 4 and elapsed < 0.4  # not 4 x 0.1 s
    assert len(full) == 4


def test_push_then_pull_returns_each_reply_once_and_drops_unknown_nodes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = make_grid(2)
    n0, n1 = grid.get_node_ids()
    with server_identity(), caplog.at_level(logging.ERROR, logger="fedwon"):
        ids = list(grid.push_messages([train_msg(n0), train_msg(n1), train_msg(123)]))
    assert len(ids) == 2 and "Invalid destination node ID" in caplog.text
    replies = list(grid.pull_messages(ids))
    assert {r.metadata.reply_to_message_id for r in replies} == set(ids)
    assert list(grid.pull_messages(ids)) == []


def test_reply_messages_are_refused_as_input() -> None:
    grid = make_grid(1)
    node = next(iter(grid.get_node_ids()))
    with server_identity():
        (reply,) = grid.send_and_receive([train_msg(node)])
        with pytest.raises(ValueError, match="Invalid message"):
            grid.send_and_receive([reply])


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("no_such_module_xyz:app", "Cannot import module 'no_such_module_xyz'"),
        ("engine_toy_app:missing", "has no attribute 'missing'"),
        ("engine_toy_app:initial_arrays", "not a flwr ClientApp"),
        ("engine_toy_app", "'module:attribute'"),
    ],
)
def test_bad_client_app_reference_fails_clearly(ref: str, match: str) -> None:
    with pytest.raises(ClientAppLoadError, match=match):
        load_client_app(ref)
    with pytest.raises(ClientAppLoadError, match=match):
        run_fast(toy.make_server_app(1, 1, {}), ref, 1, num_workers=0)


def test_executor_choice_and_actor_sizing() -> None:
    assert isinstance(make_executor(APP, num_workers=0), InProcessExecutor)
    assert isinstance(make_executor(APP, num_workers=2), RayExecutor)
    assert isinstance(make_executor(APP, gpus_per_client=0.5), RayExecutor)
    assert isinstance(make_executor(APP, ray_init_args={"address": "auto"}), RayExecutor)
    with pytest.raises(ValueError, match=r"num_workers must be >= 0 or None, got -1"):
        make_executor(APP, num_workers=-1)
    cpu_node = {"Resources": {"CPU": 8.0}, "Alive": True}
    gpu_node = {"Resources": {"CPU": 8.0, "GPU": 2.0}, "Alive": True}
    dead = {"Resources": {"CPU": 64.0}, "Alive": False}
    assert actors_that_fit([cpu_node, dead], 1.0, 0.0) == 8
    assert actors_that_fit([cpu_node], 1.0, 0.5) == 0  # never wait for a missing GPU
    assert actors_that_fit([cpu_node, gpu_node], 2.0, 0.5) == 4


# ---- Ray (the only test that starts Ray) ---------------------------------------------------


@pytest.mark.ray
def test_ray_executor_and_flower_engine_agree() -> None:
    import ray
    from flwr.simulation import run_simulation

    from fedwon.engine.executors import ray_pythonpath

    expected: dict[str, Any] = {}
    run_fast(toy.make_server_app(3, 4, expected), APP, 4, num_workers=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's accelerator env-var tip
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"PYTHONPATH": ray_pythonpath()}},
        )
    try:
        # 1. Ray executor, 2 actors, same result bit for bit.
        got: dict[str, Any] = {}
        run_fast(toy.make_server_app(3, 4, got), APP, 4, num_workers=2)
        assert toy.summary(got) == toy.summary(expected)

        # 2. A dying actor: error replies for its batch, then a fresh actor serves on.
        executor = RayExecutor(APP, num_actors=2)
        executor.start()
        try:
            crashing = make_grid(4, {"crash-partition": 0}, executor)
            nodes = list(crashing.get_node_ids())
            with server_identity():
                replies = list(crashing.send_and_receive([train_msg(n) for n in nodes]))
                crashed = [r.error.code for r in replies if r.has_error()]
                assert crashed and set(crashed) == {ErrorCode.CLIENT_APP_CRASHED}
                assert not replies[1].has_error()  # the other actor's batch is fine
                again = list(crashing.send_and_receive([train_msg(n) for n in nodes[1:]]))
                assert not any(r.has_error() for r in again)

                # 3. Timeout: no replies, busy actors replaced, next batch served.
                slow = make_grid(2, {"sleep-s": 2.0}, executor)
                t0 = time.monotonic()
                batch = [train_msg(n) for n in slow.get_node_ids()]
                late = list(slow.send_and_receive(batch, timeout=0.5))
                assert late == [] and time.monotonic() - t0 < 1.5
                after = list(crashing.send_and_receive([train_msg(nodes[1])]))
                assert len(after) == 1 and not after[0].has_error()
        finally:
            executor.shutdown()
        assert ray.is_initialized()  # the executor did not start Ray, so it leaves it up

        # 3. Flower's own engine (it shuts Ray down when it finishes).
        flower: dict[str, Any] = {}
        run_simulation(
            toy.make_server_app(3, 4, flower),
            toy.client_app,
            4,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
        assert toy.summary(flower) == toy.summary(expected)
    finally:
        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_streamed_replies_snapshot_the_model_without_copies_and_free_them_at_once() -> None:
    """Round rules around FedAvg stream: each reply is folded and freed before the next client
    runs -- by reference counting, not the garbage collector -- so the cached model's memory
    is never copied (its snapshots are copy-on-write), and the results are those of Flower's
    own records (``fast_arrays=False``: copied snapshots), bit for bit."""
    results: list[dict[str, Any]] = [{}, {}]
    toy.weight_addresses.clear()
    enabled = gc.isenabled()
    gc.disable()
    try:
        run_fast(toy.torch_server_app(3, results[0]), toy.torch_client_app, 6, num_workers=0)
    finally:
        if enabled:
            gc.enable()
    assert len(toy.weight_addresses) == 18 and len(set(toy.weight_addresses)) == 1
    run_fast(
        toy.torch_server_app(3, results[1]),
        toy.torch_client_app,
        6,
        num_workers=0,
        fast_arrays=False,
    )
    for key, arr in results[0]["arrays"].items():
        assert arr.numpy().tobytes() == results[1]["arrays"][key].numpy().tobytes()


def test_message_ids_are_unique_and_uuid_shaped() -> None:
    grid = make_grid(3)
    with server_identity():
        replies = list(grid.send_and_receive([train_msg(n) for n in [*grid.get_node_ids()] * 2]))
    ids = [r.metadata.message_id for r in replies] + [
        r.metadata.reply_to_message_id for r in replies
    ]
    assert len(set(ids)) == len(ids) == 12
    assert all(len(i) == 36 and [len(p) for p in i.split("-")] == [8, 4, 4, 4, 12] for i in ids)
