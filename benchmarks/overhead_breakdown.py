"""Where the per-client overhead goes, measured inside real runs of the cross-device workload.

Each step a client's round goes through is timed in place (this process's CPU time, so other
jobs on the machine do not count) while the lean loop and the fast engine run interleaved:

* the lean loop with fedwon's cohorts and streamed mean (``workloads.lean_fedavg(...,
  streamed=True)``): copy the global parameters into the local model, train, add the client
  to the running weighted sum; per round, divide and copy into the global model;
* the fast engine with ``RoundRules(FedAvg)`` (what ``fedwon run`` builds; streamed): a timed
  twin of the tutorial ClientApp (``workloads.train`` with a clock between its steps), the
  round rules' running mean timed per reply (NaN/Inf check and weighted sum) and per round
  (the mean, FedAvg on it, the check of the new model); "engine, round rules and Flower" is
  the rest of the run (delivery, contexts, messages, sampling, reply checks).

Training runs the same code in both and is left out; what remains per client, fast minus lean,
is the overhead -- measured in context, where every copy of the model meets caches that
training has just filled with other data (steps timed on their own look ~2x cheaper).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from benchmarks import workloads as w
from fedwon.strategies import RoundRules, round_rules, streaming

Row = dict[str, Any]

#: (who, step, lean loop's key, fast engine's key); None: the system has no such step.
STEPS = [
    ("ClientApp", "`to_torch_state_dict()`: tensors it may modify", None, "decode"),
    ("ClientApp", "`load_state_dict(...)` / lean: `copy_` in place", "copy", "load"),
    (
        "ClientApp",
        "`ArrayRecord(model.state_dict())` + reply: a copy-on-write snapshot",
        None,
        "reply",
    ),
    ("server", "running mean: NaN/Inf check + weighted sum / lean: weighted sum", "add", "fold"),
    ("server", "per round: mean, FedAvg on it, model check / lean: mean, copy", "round", "round"),
    ("engine", "engine, round rules and Flower: delivery, contexts, messages", None, "other"),
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


def _timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
    """``fn``, with its CPU time added to ``_phases[key]``."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _phases[key] += time.process_time() - t0

    return timed


class TimedMean(streaming.RunningMean):
    """The round rules' running mean, with each reply's fold and the mean's reply timed."""

    def add(self, reply: Message, *, check_finite: bool = False) -> list[str]:
        """The fold (and NaN/Inf check), timed."""
        t0 = time.process_time()
        out = super().add(reply, check_finite=check_finite)
        _phases["fold"] += time.process_time() - t0
        return out

    def reply(self, metrics_aggr_fn: Any) -> Message:
        """The mean as one reply, timed."""
        t0 = time.process_time()
        out = super().reply(metrics_aggr_fn)
        _phases["round"] += time.process_time() - t0
        return out


@contextmanager
def _timed_mean() -> Iterator[None]:
    """The round rules build ``TimedMean`` instead of ``RunningMean`` inside the block."""
    saved = round_rules.RunningMean
    round_rules.RunningMean = TimedMean  # type: ignore[misc]
    try:
        yield
    finally:
        round_rules.RunningMean = saved  # type: ignore[misc]


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
    """The benchmark's ServerApp: ``RoundRules(FedAvg)`` with per-round steps timed (on the
    instances: the types stay the exact ones that stream) and the steady-rounds clock."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(w.SEED)
        fedavg = FedAvg(
            fraction_train=w.CLIENTS_PER_ROUND / w.NUM_CLIENTS,
            fraction_evaluate=0.0,
            min_train_nodes=w.CLIENTS_PER_ROUND,
            min_available_nodes=w.CLIENTS_PER_ROUND,
        )
        fedavg.aggregate_train = _timed(fedavg.aggregate_train, "round")  # type: ignore[method-assign]
        rules = RoundRules(fedavg, num_rounds=num_rounds, seed=w.SEED)
        rules._check_server_update = _timed(rules._check_server_update, "round")  # type: ignore[method-assign]
        rules.start(
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
    with _timed_mean():
        run_fast(_server_app(num_rounds, span), timed_client_app, w.NUM_CLIENTS, num_workers=0)
    total = span[1] - span[0]
    n = _phases.pop("clients")
    timed = sum(_phases.values())
    per = {k: 1e6 * v / n for k, v in _phases.items()}
    per["other"] = 1e6 * (total - timed) / n
    return per


def lean_phases(num_rounds: int) -> dict[str, float]:
    """CPU µs per client of each step of ``workloads.lean_fedavg(..., streamed=True)``, same
    code, clocked."""
    global_params = [p.detach() for p in w.make_model().parameters()]
    local = w.Net()
    params = [p.detach() for p in local.parameters()]
    scratch = [torch.empty_like(p) for p in params]
    clock: Counter[str] = Counter()
    for server_round in range(1, num_rounds + 1):
        cohort = w.fedwon_cohort(server_round, w.NUM_CLIENTS, w.CLIENTS_PER_ROUND, w.SEED)
        data = [w.client_data(pid, w.NUM_CLIENTS) for pid in cohort]
        total = sum(len(y) for _, y in data)
        sums: list[torch.Tensor] = []
        for x, y in data:
            t0 = time.process_time()
            for dst, src in zip(params, global_params, strict=True):
                dst.copy_(src)
            t1 = time.process_time()
            w.train_local(local, x, y)
            t2 = time.process_time()
            weight = float(len(y))
            if not sums:
                sums = [p * weight for p in params]
            else:
                for acc, p, tmp in zip(sums, params, scratch, strict=True):
                    acc += torch.mul(p, weight, out=tmp)
            clock.update(copy=t1 - t0, train=t2 - t1, add=time.process_time() - t2, clients=1)
        t3 = time.process_time()
        for dst, src in zip(global_params, sums, strict=True):
            dst.copy_(src / total)
        clock["round"] += time.process_time() - t3
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
    decode, load, reply, fold, per_round, other = (us[s[1]] for s in STEPS)
    return (
        "What is left: the tutorial ClientApp's own calls and Flower's message objects. "
        f"`load_state_dict` costs {load['fast_us'] - load['lean_us']:.0f} µs more than the "
        "lean loop's plain `copy_` (torch's Python, per module); `to_torch_state_dict()` "
        f"{decode['fast_us']:.0f} µs (copy-on-write clones, `torch._lazy_clone`, of the "
        "mean, which the running mean keeps in torch memory: no copy at all); the reply "
        f"{reply['fast_us']:.0f} µs (`state_dict()`, eight copy-on-write snapshots, the "
        "reply's records and `Message`); the running mean "
        f"{fold['fast_us'] - fold['lean_us']:+.0f} µs against the lean weighted sum (its "
        "NaN/Inf check: a BLAS dot over each product, exact); per round "
        f"{per_round['fast_us'] - per_round['lean_us']:+.0f} µs per client; the engine, the "
        f"round rules and Flower's messages {other['fast_us']:.0f} µs. What the streamed "
        "round removed (issue 22): the reply's snapshot copy (while the grid streams, "
        "`ArrayRecord(model.state_dict())` holds copy-on-write clones of the model's tensors; "
        "the reply is folded and dropped before the next client's `load_state_dict` writes "
        "them, so torch hands the memory back without a copy -- a reply still held then is "
        "copied by torch at that write), the NaN/Inf sum pass per reply (checked on each "
        "weighted product while in cache, a BLAS dot), the mean's copies (divided in place, "
        "handed to FedAvg as its payload, and FedAvg's mean of that one reply shares it: "
        "`x * 1.0` is `x`), the per-round copy of the new model into torch (clients clone "
        "the mean's own torch memory), a reference cycle in record views that kept every "
        "streamed reply alive until the garbage collector ran (so past the next client: its "
        "snapshot was then copied), and per-message Python (uuid4 message ids, generator "
        "context managers, Flower's argument checks on copies of valid messages, type-check "
        "passes of `ArrayRecord(state_dict)`). Earlier (issue 13): `.npy` serialisation, the "
        "decode copy per client, per-reply copies in FedAvg's sum, Flower's typing overhead "
        "on record access, per-client deep copies. Tried and dropped: the weighted sum a "
        "cache-sized chunk at a time into a second buffer (so that a reply found non-finite "
        "halfway could leave the sums untouched): slower than adding in place; copy-on-write "
        "memory maps for numpy (page faults on this VM cost more than the copy); any aliasing "
        "without copy-on-write (a ClientApp writing through `.data` or `.numpy()` would "
        "corrupt every other client). See fedwon/engine/fastarrays.py and "
        "fedwon/strategies/streaming.py.\n"
    )
