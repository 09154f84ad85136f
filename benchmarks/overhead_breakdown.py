"""Where the per-client overhead goes, measured inside real runs of the cross-device workload.

Each step a client's round goes through is timed in place (this process's CPU time, so other
jobs on the machine do not count) while the lean loop and the fast engine run interleaved:

* the lean loop: copy the global parameters into the local model, train, add the client to
  the running weighted sum;
* the fast engine with Flower's ``FedAvg``: a timed twin of the tutorial ClientApp
  (``workloads.train`` with a clock between its steps) and ``FedAvg.aggregate_train`` timed
  through a subclass; "engine, strategy and Flower" is the rest of the run (delivery,
  contexts, messages, sampling, checks).

Training runs the same code in both and is left out; what remains per client, fast minus lean,
is the overhead — measured in context, where every copy of the model meets caches that
training has just filled with other data (steps timed on their own look ~2x cheaper).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from benchmarks import workloads as w

Row = dict[str, Any]

#: (who, step, lean loop's key, fast engine's key); None: the system has no such step.
STEPS = [
    ("ClientApp", "`to_torch_state_dict()`: tensors it may modify", None, "decode"),
    ("ClientApp", "`load_state_dict(...)` / lean: `copy_` in place", "copy", "load"),
    ("ClientApp", "`ArrayRecord(model.state_dict())` + reply: a snapshot", None, "reply"),
    ("server", "FedAvg's weighted sum / lean: running sum", "add", "aggregate"),
    ("engine", "engine, strategy and Flower: delivery, contexts, messages", None, "other"),
]

_phases: Counter[str] = Counter()
timed_client_app = ClientApp()


@timed_client_app.train()
def timed_train(msg: Message, context: Context) -> Message:
    """``workloads.train`` step by step, with the CPU clock read between steps."""
    t0 = time.process_time()
    model = w._cached_model()
    state = msg.content.array_records["arrays"].to_torch_state_dict()
    t1 = time.process_time()
    model.load_state_dict(state)
    t2 = time.process_time()
    x, y = w.client_data(int(context.node_config["partition-id"]), w.NUM_CLIENTS)
    loss = w.train_local(model, x, y, lr=float(context.run_config.get("lr", w.LR)))
    t3 = time.process_time()
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    reply = Message(content=content, reply_to=msg)
    t4 = time.process_time()
    _phases.update(decode=t1 - t0, load=t2 - t1, train=t3 - t2, reply=t4 - t3, clients=1)
    return reply


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, with the time spent in ``aggregate_train`` recorded."""

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        """Flower's aggregation, timed."""
        t0 = time.process_time()
        out = super().aggregate_train(server_round, replies)
        _phases["aggregate"] += time.process_time() - t0
        return out


#: Rounds before the clock starts: the first rounds carry one-off costs (imports, start-up).
WARMUP_ROUNDS = 3


def _clock(num_rounds: int, span: list[float]) -> Any:
    """``evaluate_fn`` that starts counting after the warm-up rounds and stops at the end."""

    def fn(server_round: int, arrays: ArrayRecord) -> None:
        del arrays
        if server_round == WARMUP_ROUNDS:
            _phases.clear()
            span.append(time.process_time())
        elif server_round == num_rounds:
            span.append(time.process_time())

    return fn


def _server_app(num_rounds: int, span: list[float]) -> ServerApp:
    """The benchmark's ServerApp with the timed FedAvg and the steady-rounds clock."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(w.SEED)
        strategy = TimedFedAvg(
            fraction_train=w.CLIENTS_PER_ROUND / w.NUM_CLIENTS,
            fraction_evaluate=0.0,
            min_train_nodes=w.CLIENTS_PER_ROUND,
            min_available_nodes=w.CLIENTS_PER_ROUND,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(w.make_model().state_dict()),
            num_rounds=num_rounds,
            train_config=ConfigRecord({"lr": w.LR}),
            evaluate_fn=_clock(num_rounds, span),
        )

    return app


def fast_phases(num_rounds: int) -> dict[str, float]:
    """CPU µs per client of each step of a fast-engine run (in-process), steady rounds."""
    from fedwon.engine import run_fast

    span: list[float] = []
    run_fast(_server_app(num_rounds, span), timed_client_app, w.NUM_CLIENTS, num_workers=0)
    total = span[1] - span[0]
    n = _phases.pop("clients")
    timed = sum(_phases.values())
    per = {k: 1e6 * v / n for k, v in _phases.items()}
    per["other"] = 1e6 * (total - timed) / n
    return per


def lean_phases(num_rounds: int) -> dict[str, float]:
    """CPU µs per client of each step of ``workloads.lean_fedavg``, same code, clocked."""
    global_params = [p.detach() for p in w.make_model().parameters()]
    local = w.Net()
    params = [p.detach() for p in local.parameters()]
    scratch = [torch.empty_like(p) for p in params]
    rng = random.Random(w.SEED)
    clock: Counter[str] = Counter()
    for _ in range(num_rounds):
        pids = rng.sample(range(w.NUM_CLIENTS), w.CLIENTS_PER_ROUND)
        data = [w.client_data(pid, w.NUM_CLIENTS) for pid in pids]
        total = sum(len(y) for _, y in data)
        sums: list[torch.Tensor] = []
        for x, y in data:
            t0 = time.process_time()
            for dst, src in zip(params, global_params, strict=True):
                dst.copy_(src)
            t1 = time.process_time()
            w.train_local(local, x, y)
            t2 = time.process_time()
            weight = len(y) / total
            if not sums:
                sums = [p * weight for p in params]
            else:
                for acc, p, tmp in zip(sums, params, scratch, strict=True):
                    acc += torch.mul(p, weight, out=tmp)
            clock.update(copy=t1 - t0, train=t2 - t1, add=time.process_time() - t2, clients=1)
        for dst, src in zip(global_params, sums, strict=True):
            dst.copy_(src)
    n = clock.pop("clients")
    return {k: 1e6 * v / n for k, v in clock.items()}


def measure(num_rounds: int = 60, repeats: int = 3) -> list[Row]:
    """Interleaved lean and fast runs; the median per step over runs."""
    if num_rounds <= WARMUP_ROUNDS:
        raise ValueError(f"num_rounds must exceed the {WARMUP_ROUNDS} warm-up rounds")
    lean_runs, fast_runs = [], []
    for _ in range(repeats):
        lean_runs.append(lean_phases(num_rounds))
        fast_runs.append(fast_phases(num_rounds))
    rows = []
    for who, step, lean_key, fast_key in STEPS:
        lean_us = statistics.median(r[lean_key] for r in lean_runs) if lean_key else 0.0
        fast_us = statistics.median(r[fast_key] for r in fast_runs)
        rows.append(
            {"bench": "breakdown", "who": who, "step": step, "lean_us": lean_us, "fast_us": fast_us}
        )
    train = [statistics.median(r["train"] for r in runs) for runs in (lean_runs, fast_runs)]
    rows.append({"bench": "breakdown-train", "lean_us": train[0], "fast_us": train[1]})
    return rows


def to_markdown(rows: list[Row]) -> str:
    """Steps side by side, the totals outside training, and their difference."""
    lines = [
        "| where | step | fast engine, CPU µs/client | lean loop, CPU µs/client |",
        "|---|---|---:|---:|",
    ]
    steps = [r for r in rows if r["bench"] == "breakdown"]
    for r in steps:
        lean = f"{r['lean_us']:.0f}" if r["lean_us"] else "–"
        lines.append(f"| {r['who']} | {r['step']} | {r['fast_us']:.0f} | {lean} |")
    fast_total = sum(r["fast_us"] for r in steps)
    lean_total = sum(r["lean_us"] for r in steps)
    lines.append(f"| | **total outside training** | **{fast_total:.0f}** | **{lean_total:.0f}** |")
    lines.append(
        f"| | **overhead per client: fast - lean** | **{fast_total - lean_total:.0f}** | |"
    )
    train = next(r for r in rows if r["bench"] == "breakdown-train")
    lines.append(
        f"| ClientApp | training (same code, for scale) | {train['fast_us']:.0f} "
        f"| {train['lean_us']:.0f} |"
    )
    return "\n".join(lines)


def bound_note(rows: list[Row]) -> str:
    """What bounds the overhead, with this run's numbers."""
    us = {r["step"]: r for r in rows if r["bench"] == "breakdown"}
    decode, load, reply, agg, other = (us[s[1]] for s in STEPS)
    return (
        "What bounds it: FedAvg and the ClientApp API, not delivery. "
        "`ArrayRecord(model.state_dict())` must snapshot the parameters, because the next "
        "client trains the same cached model before FedAvg aggregates the round "
        f"({reply['fast_us']:.0f} µs per client here); `load_state_dict` costs "
        f"{load['fast_us'] - load['lean_us']:.0f} µs more than the lean loop's plain `copy_` "
        "(its own Python); the engine, strategy and Flower's message objects "
        f"{other['fast_us']:.0f} µs; FedAvg's weighted sum {agg['fast_us'] - agg['lean_us']:+.0f}"
        " µs against the lean running sum (it reads each reply back after it has left the "
        "cache, but with no decode copy it does no more arithmetic). `to_torch_state_dict()` "
        f"costs {decode['fast_us']:.0f} µs: it hands out copy-on-write clones "
        "(`torch._lazy_clone`) of one tensor per round, so a ClientApp that only loads them "
        "copies nothing and one that writes into them gets its own copy at that moment. "
        "What the engine removed (issue 13): `.npy` serialisation (`Array`s keep their "
        "values as arrays; bytes only when something asks: Ray, gRPC, `.data`), the decode "
        "copy per client (copy-on-write) and per reply (FedAvg's weighted sum reads replies "
        "in place, bit for bit, with one reused product buffer), Flower's typing overhead on "
        "every record access, and the per-client deep copies (clients share read-only "
        "values; each gets its own `Array` objects). Tried and dropped: copy-on-write memory "
        "maps for numpy (page faults on this VM cost more than the copy), and any "
        "aliasing without copy-on-write (a ClientApp writing through `.data` or `.numpy()` "
        "would corrupt every other client). A lower bound needs a streaming aggregation "
        "(no snapshot held per reply; see the scaling section). See "
        "fedwon/engine/fastarrays.py.\n"
    )
