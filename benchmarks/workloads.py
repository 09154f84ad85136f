"""The cross-device benchmark workload: data, model, local training, Flower apps.

This module owns everything the cross-device benchmark runs, in an importable place (never
``__main__``) so that Ray workers can import the ClientApp by reference:

* data: scikit-learn ``load_digits`` (1,797 real 8x8 digits) upsampled to 1x28x28, shared by
  all clients; client ``i`` of ``n`` holds 1-2 images chosen by index arithmetic, so nothing
  per client lives in memory (1,000 or 10,000 clients cost the same);
* model: CNN conv32-conv64-fc128-fc10 (421,642 parameters, no normalization);
* local training: SGD (lr 0.05), batch size 1, one local epoch — one function used by the bare
  PyTorch loop *and* by the ClientApp, so the benchmark compares engines, not training code;
* ``client_app``: a tutorial-style Flower ClientApp (``@app.train()``/``@app.evaluate()``,
  model and data cached per process, ``ArrayRecord(model.state_dict())`` /
  ``.to_torch_state_dict()``);
* ``make_server_app``: a Flower ServerApp running Flower's own FedAvg (Message API), timing
  each round through ``evaluate_fn`` (called before round 1 and after every round).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from fedwon.strategies import RoundRules

#: A timestamp: (wall seconds, this process's CPU seconds). CPU time leaves out the time other
#: jobs on a shared machine keep this process waiting, so in-process systems compare robustly.
Stamp = tuple[float, float]

NUM_CLIENTS = 1_000
CLIENTS_PER_ROUND = 10
LR = 0.05
LOCAL_EPOCHS = 1
SEED = 0


def stamp() -> Stamp:
    """Now, as (wall, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


# ---- data -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 scikit-learn digits as (N,1,28,28) float32 in [-1, 1] and int64 labels.

    Cached per process: every client of this process shares these two tensors.
    """
    from sklearn.datasets import load_digits  # slow import: only when the data is used

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(bunch.target, dtype=torch.int64)
    return x.contiguous(), y


@functools.lru_cache(maxsize=1)
def _permutation(n: int) -> np.ndarray:
    """A fixed shuffle of the data set so that neighbouring clients get unrelated images."""
    return np.random.default_rng(SEED).permutation(n)


def partition_indices(partition_id: int, num_partitions: int) -> list[int]:
    """Indices of client ``partition_id``'s 1-2 images, computed, never stored.

    Sizes alternate pseudo-randomly between 1 and 2 (a multiplicative hash of the id); images
    are taken round-robin from a fixed permutation, so any number of clients is supported.
    """
    del num_partitions  # the split does not depend on the population size
    n_data = digits_28()[1].shape[0]
    perm = _permutation(n_data)
    size = 1 + ((partition_id * 2654435761) >> 16) % 2
    start = 2 * partition_id
    return [int(perm[(start + k) % n_data]) for k in range(size)]


def client_data(partition_id: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's images and labels (views gathered from the shared tensors)."""
    x, y = digits_28()
    idx = torch.tensor(partition_indices(partition_id, num_partitions))
    return x[idx], y[idx]


# ---- model and local training ---------------------------------------------------------


class Net(nn.Module):
    """CNN conv32-conv64-fc128-fc10 (421,642 parameters), no normalization layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """28x28 -> pool -> 14x14 -> pool -> 7x7 -> fc128 -> logits."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def make_model(seed: int = SEED) -> Net:
    """The initial global model, identical for every engine given the same seed."""
    torch.manual_seed(seed)
    return Net()


def train_local(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = LR, epochs: int = LOCAL_EPOCHS
) -> float:
    """Plain SGD, batch size 1, in data order; returns the mean training loss.

    Shared by the bare loop and the ClientApp so both do exactly the same arithmetic.
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    total = 0.0
    for _ in range(epochs):
        for i in range(x.shape[0]):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            loss.backward()
            opt.step()
            total += float(loss.detach())
    return total / max(1, epochs * x.shape[0])


@torch.no_grad()
def evaluate_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on (x, y)."""
    model.eval()
    logits = model(x)
    loss = float(F.cross_entropy(logits, y))
    acc = float((logits.argmax(1) == y).float().mean())
    return loss, acc


# ---- bare PyTorch FedAvg loops (the speed limit) ---------------------------------------


def fedwon_cohort(
    server_round: int, num_clients: int, clients_per_round: int, seed: int
) -> list[int]:
    """The clients fedwon's ``RoundRules`` around Flower's ``FedAvg`` train in a round, in the
    order their replies are folded: Flower's sampling (``random.sample`` over the node ids)
    after the round rules seed it from (seed, round, phase), then node (= partition) order."""
    rng = random.Random(f"fedwon:{seed}:{server_round}:train")
    return sorted(rng.sample(range(num_clients), clients_per_round))


def lean_fedavg(
    num_rounds: int,
    num_clients: int = NUM_CLIENTS,
    clients_per_round: int = CLIENTS_PER_ROUND,
    seed: int = SEED,
    round_times: list[Stamp] | None = None,
    streamed: bool = False,
    client_calls: bool = False,
) -> dict[str, torch.Tensor]:
    """The leanest FedAvg loop: the limit any engine is measured against.

    One local model reused by every client, the global parameters copied into it in place,
    and each client's parameters added to one running weighted sum as soon as it has
    trained: no state-dict clones, no allocation per client (one scratch buffer holds each
    product). The weights are the sampled clients' example counts, known before training,
    and the arithmetic is Flower's FedAvg's (``x * w`` then ``+=``, in sampling order), so the
    result is bitwise equal to FedAvg's.

    ``streamed``: the same loop with the cohorts and arithmetic of ``RoundRules(FedAvg)``
    (what ``fedwon run`` builds): :func:`fedwon_cohort`, ``sum(n_i * x_i)`` then one
    division by ``sum(n_i)`` (``fedwon.strategies.streaming``), so the result is bitwise
    equal to that strategy's.

    ``client_calls``: what the tutorial ClientApp does to the model, and nothing of an engine or
    of Flower: ``load_state_dict`` of copy-on-write clones of the global tensors in place of the
    copy, and the sum folded from copy-on-write snapshots of ``state_dict()`` (dropped before
    the next client writes the model, so never copied) -- the floor any engine running that
    ClientApp stands on, with the same arithmetic.
    Appends a timestamp after every round to ``round_times`` (first entry: the start).
    """
    global_model = make_model(seed)
    global_params = [p.detach() for p in global_model.parameters()]
    global_state = {k: v.detach() for k, v in global_model.state_dict().items()}
    local = Net()
    local_params = [p.detach() for p in local.parameters()]
    assert len(global_state) == len(local_params)  # Net has no buffers: the state is its params
    scratch = [torch.empty_like(p) for p in local_params]
    rng = random.Random(seed)
    if round_times is not None:
        round_times.append(stamp())
    for server_round in range(1, num_rounds + 1):
        if streamed:
            cohort = fedwon_cohort(server_round, num_clients, clients_per_round, seed)
        else:
            cohort = rng.sample(range(num_clients), clients_per_round)
        data = [client_data(pid, num_clients) for pid in cohort]
        total = sum(len(y) for _, y in data)
        sums: list[torch.Tensor] = []
        for x, y in data:
            if client_calls:
                local.load_state_dict({k: torch._lazy_clone(v) for k, v in global_state.items()})
            else:
                for dst, src in zip(local_params, global_params, strict=True):
                    dst.copy_(src)
            train_local(local, x, y)
            weight = float(len(y)) if streamed else len(y) / total
            reply = (
                [torch._lazy_clone(v) for v in local.state_dict().values()]
                if client_calls
                else local_params
            )
            if not sums:
                sums = [p * weight for p in reply]
            else:
                for acc, p, tmp in zip(sums, reply, scratch, strict=True):
                    acc += torch.mul(p, weight, out=tmp)
            del reply
        for dst, src in zip(global_params, sums, strict=True):
            dst.copy_(src / total if streamed else src)
        if round_times is not None:
            round_times.append(stamp())
    return {k: v.clone() for k, v in global_model.state_dict().items()}


def bare_fedavg(
    num_rounds: int,
    num_clients: int = NUM_CLIENTS,
    clients_per_round: int = CLIENTS_PER_ROUND,
    seed: int = SEED,
    round_times: list[Stamp] | None = None,
) -> dict[str, torch.Tensor]:
    """FedAvg in one process the obvious way: load the global state dict into the local
    model, train, clone the state dict, average the clones' dictionaries at the end.

    Appends a timestamp after every round to ``round_times`` (first entry: the start).
    """
    global_model = make_model(seed)
    local = Net()
    rng = random.Random(seed)
    if round_times is not None:
        round_times.append(stamp())
    for _ in range(num_rounds):
        updates: list[tuple[dict[str, torch.Tensor], int]] = []
        for pid in rng.sample(range(num_clients), clients_per_round):
            local.load_state_dict(global_model.state_dict())
            x, y = client_data(pid, num_clients)
            train_local(local, x, y)
            updates.append(({k: v.clone() for k, v in local.state_dict().items()}, len(y)))
        total = sum(n for _, n in updates)
        new_state = {
            k: sum(sd[k] * (n / total) for sd, n in updates) for k in global_model.state_dict()
        }
        global_model.load_state_dict(new_state)
        if round_times is not None:
            round_times.append(stamp())
    return global_model.state_dict()


# ---- the tutorial-style Flower ClientApp ----------------------------------------------


@functools.lru_cache(maxsize=1)
def _cached_model() -> Net:
    """One model object per process, reused by every client this process runs."""
    return Net()


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global arrays, train on this node's partition, reply with the new arrays."""
    model = _cached_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config["num-partitions"])
    x, y = client_data(pid, num)
    lr = float(context.run_config.get("lr", LR))
    loss = train_local(model, x, y, lr=lr)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
        }
    )
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global arrays on this node's partition."""
    model = _cached_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    x, y = client_data(int(context.node_config["partition-id"]), 1)
    loss, acc = evaluate_local(model, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


# ---- the ServerApp -----------------------------------------------------------------------


@dataclass
class RunRecord:
    """What a benchmark ServerApp run leaves behind for the caller."""

    round_times: list[Stamp] = field(default_factory=list)
    final_state: dict[str, torch.Tensor] | None = None


def make_server_app(
    num_rounds: int,
    num_clients: int = NUM_CLIENTS,
    clients_per_round: int = CLIENTS_PER_ROUND,
    seed: int = SEED,
    record: RunRecord | None = None,
    round_rules: bool = False,
) -> ServerApp:
    """A ServerApp running Flower's FedAvg (train only: ``fraction_evaluate=0``).

    ``record`` (filled in place) gets a timestamp before round 1 and after every round, and
    the final weights; the ServerApp runs in the driver process, so a closure is fine here.
    ``round_rules``: the same FedAvg inside fedwon's ``RoundRules`` (as ``fedwon run`` builds
    it), whose streaming mean holds one running sum instead of every reply of the round; it
    samples with its own seeding, so its cohorts differ from the plain FedAvg's.
    """
    rec = record if record is not None else RunRecord()
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(seed)
        strategy: Strategy = FedAvg(
            fraction_train=clients_per_round / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=clients_per_round,
            min_available_nodes=clients_per_round,
        )
        if round_rules:
            strategy = RoundRules(strategy, num_rounds=num_rounds, seed=seed)
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(make_model(seed).state_dict()),
            num_rounds=num_rounds,
            train_config=ConfigRecord({"lr": LR}),
            evaluate_fn=_timestamp_fn(rec.round_times),
        )
        rec.final_state = result.arrays.to_torch_state_dict()
        context.state["final"] = result.arrays

    return app


def _timestamp_fn(times: list[Stamp]) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """``evaluate_fn`` that only records when each round ended (no evaluation)."""

    def fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        del server_round, arrays
        times.append(stamp())
        return None

    return fn
