"""A toy, exactly deterministic Flower app for the engine tests (importable by Ray workers).

The "model" is a few float64 numpy arrays holding dyadic rationals; clients move them half
way towards a target that depends on their partition and on a counter kept in
``context.state``, and all nodes report one example each. With a power-of-two number of nodes
every sum FedAvg computes is then exact, so results are bit-identical whatever order replies
arrive in — which lets the tests compare engines (Flower's replies arrive in completion order)
with ``==``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client_app = ClientApp()


def initial_arrays() -> ArrayRecord:
    """The global model before round 1 (small dyadic values)."""
    return ArrayRecord(
        [np.arange(6, dtype=np.float64).reshape(2, 3) / 4, np.array([1.0, -0.5, 0.25])]
    )


def _bump_counter(context: Context) -> int:
    """Count this node's train messages in ``context.state`` (persists across rounds)."""
    n = int(context.state["counter"]["n"]) + 1 if "counter" in context.state else 1
    context.state["counter"] = MetricRecord({"n": n})
    return n


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Move each array half way towards a partition- and counter-dependent target."""
    pid = int(context.node_config["partition-id"])
    if pid == context.run_config.get("fail-partition", -1):
        raise RuntimeError(f"partition {pid} fails on purpose")
    if pid == context.run_config.get("crash-partition", -1):
        os._exit(1)  # simulates a worker process dying (segfault, OOM kill)
    delay = float(context.run_config.get("sleep-s", 0.0))
    if delay > 0:
        time.sleep(delay)
    n = _bump_counter(context)
    context.state["local"] = ArrayRecord([np.full(2, pid + n / 8, dtype=np.float64)])
    target = (pid + 1) / 4 + n / 8
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    new = [a + (target - a) / 2 for a in arrays]
    metrics = MetricRecord({"num-examples": 1, "target": target, "count": n})
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Report an exact function of the received arrays and the node's partition."""
    pid = int(context.node_config["partition-id"])
    first = msg.content["arrays"].to_numpy_ndarrays()[0]
    score = float(first.sum()) / 8 + pid / 4
    metrics = MetricRecord({"num-examples": 1, "score": score})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@client_app.train("mutate")
def mutate(msg: Message, context: Context) -> Message:
    """Tamper with the received message; report whether an earlier client's tampering showed."""
    seen = "poison" in msg.content["config"]
    msg.content["config"]["poison"] = 1
    del msg.content["arrays"]
    return Message(RecordDict({"seen": ConfigRecord({"poison-seen": seen})}), reply_to=msg)


def _fingerprint(record: ArrayRecord) -> list[float]:
    """What a client saw: every array's sum in key order, decoded for numpy then for torch."""
    numpy_sums = [float(a.sum()) for a in record.to_numpy_ndarrays()]
    return numpy_sums + [float(t.sum()) for t in record.to_torch_state_dict().values()]


@client_app.train("mutate_arrays")
def mutate_arrays(msg: Message, context: Context) -> Message:
    """Report what arrived, then tamper with it every way Flower's API allows."""
    record = msg.content["arrays"]
    seen = _fingerprint(record)
    for array in record.to_numpy_ndarrays(keep_input=True):
        array += 100.0  # a decoded copy
    for tensor in record.to_torch_state_dict().values():
        tensor.add_(100.0)
    for tensor in record.to_torch_state_dict().values():
        tensor.numpy()[...] = 7.0
    for tensor in record.to_torch_state_dict().values():
        tensor.data.mul_(3.0)
    first_key = next(iter(record.keys()))
    record[first_key].numpy()[...] = -1.0
    record[first_key].shape = (1,)  # the Array object itself
    record[first_key].data = b"tampered"
    record["extra"] = ArrayRecord([np.zeros(1)])["0"]
    context.state["kept"] = msg.content["arrays"]
    return Message(RecordDict({"seen": ConfigRecord({"sums": seen})}), reply_to=msg)


@client_app.train("keep")
def keep(msg: Message, context: Context) -> Message:
    """Keep what arrived in the node's state (compared later with the server's copy)."""
    context.state["kept"] = msg.content["arrays"]
    seen = _fingerprint(msg.content["arrays"])
    return Message(RecordDict({"seen": ConfigRecord({"sums": seen})}), reply_to=msg)


@client_app.train("mutate_config")
def mutate_config(msg: Message, context: Context) -> Message:
    """Change ``run_config``, which Flower forbids (the reply must become an error)."""
    context.run_config["tampered"] = True
    context.state["counter"] = MetricRecord({"n": 99})
    return Message(RecordDict(), reply_to=msg)


@client_app.query("new_message")
def new_message(msg: Message, context: Context) -> Message:
    """Build a non-reply ``Message`` (needs ``TaskIdentity``), then reply with its metadata."""
    made = Message(RecordDict(), dst_node_id=1, message_type="query")
    info = ConfigRecord({"run-id": made.metadata.run_id, "src": made.metadata.src_node_id})
    return Message(RecordDict({"info": info}), reply_to=msg)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Echo this node's identity and stored state (used to inspect contexts in tests)."""
    counter = int(context.state["counter"]["n"]) if "counter" in context.state else 0
    info = ConfigRecord(
        {
            "node-id": context.node_id,
            "partition-id": int(context.node_config["partition-id"]),
            "counter": counter,
            "has-local": "local" in context.state,
        }
    )
    return Message(RecordDict({"info": info}), reply_to=msg)


def make_server_app(num_rounds: int, num_nodes: int, sink: dict[str, Any]) -> ServerApp:
    """A ServerApp running Flower's FedAvg on every node; results land in ``sink``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=num_nodes,
            min_evaluate_nodes=num_nodes,
            min_available_nodes=num_nodes,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=initial_arrays(),
            num_rounds=num_rounds,
            train_config=ConfigRecord({"lr": 0.5}),
        )
        sink["arrays"] = result.arrays
        sink["train"] = {r: dict(m) for r, m in result.train_metrics_clientapp.items()}
        sink["evaluate"] = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
        context.state["final"] = result.arrays

    return app


def summary(sink: dict[str, Any]) -> dict[str, Any]:
    """What two engines must agree on exactly: arrays as raw bytes, and all metrics."""
    arrays: ArrayRecord = sink["arrays"]
    return {
        "arrays": {k: (a.dtype, a.shape, a.data) for k, a in arrays.items()},
        "train": sink["train"],
        "evaluate": sink["evaluate"],
    }


# ---- a tutorial-style torch ClientApp (one cached model, `ArrayRecord(model.state_dict())`) ----

torch_client_app = ClientApp()
_torch_model: list[torch.nn.Linear] = []
#: The cached model's weight address when each client starts (reading it takes the memory
#: back from a dropped snapshot, or copies it while a snapshot still holds it).
weight_addresses: list[int] = []


@torch_client_app.train()
def torch_train(msg: Message, context: Context) -> Message:
    """Load the global model into the process's cached model, change it in place, reply."""
    if not _torch_model:
        _torch_model.append(torch.nn.Linear(64, 32))
    model = _torch_model[0]
    weight_addresses.append(model.weight.data_ptr())
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(0.5).add_(pid / 8)
    metrics = MetricRecord({"num-examples": 1 + pid % 2})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content, reply_to=msg)


def torch_server_app(num_rounds: int, result: dict[str, Any]) -> ServerApp:
    """``RoundRules(FedAvg)`` over every node (streamed on the fast engine); the final
    arrays land in ``result["arrays"]``."""
    from fedwon.strategies import RoundRules

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(0)
        initial = ArrayRecord(torch.nn.Linear(64, 32).state_dict())
        strategy = RoundRules(FedAvg(fraction_evaluate=0.0), num_rounds=num_rounds)
        result["arrays"] = strategy.start(grid, initial, num_rounds=num_rounds).arrays

    return app
