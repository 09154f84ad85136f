"""Cross-device speed and memory: fedwon's fast engine against its real peers, in one run.

Speed (same workload everywhere — see ``benchmarks.workloads``), in this order:
  1. in-process, interleaved repeats (lean loops, state-dict loop, pfl, fast engine, lean, ...):
     - the lean bare PyTorch loop (the limit: ``workloads.lean_fedavg``), with Flower's
       ``FedAvg`` cohorts and arithmetic, and with ``RoundRules``' cohorts and streamed mean,
     - the bare loop with state-dict clones (``workloads.bare_fedavg``),
     - apple/pfl-research's ``SimulatedBackend`` (``benchmarks.pfl_workload``; a row saying
       so when pfl is not installed),
     - the fast engine in-process running the tutorial ClientApp under ``RoundRules(FedAvg)``
       (streamed, what ``fedwon run`` builds), under Flower's ``FedAvg`` alone, and the
       latter with Flower's records as they are;
  2. the fast engine with Ray actors (repeats), then Flower's ``run_simulation`` (once: it is
     an order of magnitude slower, and it shuts Ray down when it finishes).
A run's steady time per round is the median of its rounds after a warm-up; a row reports the
median over its runs, their spread, and the per-client overhead: (ms/round - ms/round of the
lean loop doing the same work) / clients per round. Start-up is the time steady rounds do not
explain (Ray, actors, first rounds).

Memory: peak RSS of the fast engine with 1,000 vs 10,000 clients, each in a fresh subprocess.

    python -m benchmarks.cross_device_bench [--rounds N] [--repeats R] [--quick] [--no-write]

writes the tables into docs/benchmarks.md between the ``cross_device_bench`` and
``memory_bench`` markers (nothing else in the file is touched).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import overhead_breakdown, pfl_workload
from benchmarks import workloads as w
from benchmarks.report import DOC, cpu_model, write_section

CLIENT_APP_REF = "benchmarks.workloads:client_app"
WARMUP_ROUNDS = 3

Row = dict[str, Any]
State = dict[str, torch.Tensor]


@dataclass
class Run:
    """One run of one system: round timestamps, wall time of the call, final weights."""

    stamps: list[w.Stamp]
    seconds: float
    final: State | None = None


@dataclass
class System:
    """A row of the speed table: how to run it, and its runs so far."""

    key: str
    label: str
    run: Callable[[int], Run]
    fedavg_weights: bool = True  # aggregates like FedAvg: its weights can equal the lean loop's
    in_process: bool = True  # all its work in this process: its CPU time per round is its cost
    limit: str = "lean"  # the lean loop doing the same work (cohorts, arithmetic): its limit
    runs: list[Run] = field(default_factory=list)


# ---- timing helpers ------------------------------------------------------------------------


def steady_ms_per_round(
    stamps: list[w.Stamp], warmup: int = WARMUP_ROUNDS, cpu: bool = False
) -> float:
    """Median round time after ``warmup`` rounds (``stamps[0]``: before round 1), wall
    clock or (``cpu``) this process's CPU time."""
    i = 1 if cpu else 0
    ticks = [s[i] for s in stamps[warmup:]]
    durations = [b - a for a, b in itertools.pairwise(ticks)]
    if not durations:
        raise ValueError("no steady-state rounds measured")
    return 1000 * statistics.median(durations)


def _timed(fn: Callable[[list[w.Stamp]], State | None]) -> Run:
    """Call ``fn(stamps)`` and wrap its timestamps, wall time and final weights."""
    stamps: list[w.Stamp] = []
    t0 = time.perf_counter()
    final = fn(stamps)
    return Run(stamps, time.perf_counter() - t0, final)


def _quiet_flower() -> None:
    """Flower logs every round at INFO; keep benchmark output readable."""
    logging.getLogger("flwr").setLevel(logging.WARNING)


def _warm_torch() -> None:
    """Pay one-off costs (the first optimizer imports ``torch._dynamo``, ~1.5 s) before any
    measured run, so that no system is billed for them."""
    torch.optim.SGD(w.Net().parameters(), lr=w.LR)
    w.digits_28()


# ---- the systems ------------------------------------------------------------------------------


def run_lean(rounds: int) -> Run:
    """The lean bare loop."""
    return _timed(lambda st: w.lean_fedavg(rounds, round_times=st))


def run_lean_streamed(rounds: int) -> Run:
    """The lean bare loop with ``RoundRules``' cohorts and streamed mean."""
    return _timed(lambda st: w.lean_fedavg(rounds, round_times=st, streamed=True))


def run_lean_client_calls(rounds: int) -> Run:
    """The lean streamed loop making the tutorial ClientApp's calls on the model."""
    return _timed(
        lambda st: w.lean_fedavg(rounds, round_times=st, streamed=True, client_calls=True)
    )


def run_bare(rounds: int) -> Run:
    """The bare loop with state-dict clones."""
    return _timed(lambda st: w.bare_fedavg(rounds, round_times=st))


def run_pfl(rounds: int) -> Run:
    """pfl-research's simulator."""
    return _timed(lambda st: pfl_workload.pfl_fedavg(rounds, round_times=st))


def run_fast(
    rounds: int, num_workers: int, fast_arrays: bool = True, round_rules: bool = False
) -> Run:
    """The fast engine with the tutorial ClientApp (``num_workers`` 0 = in-process);
    ``fast_arrays=False`` leaves Flower's record layer as it is (``.npy`` bytes);
    ``round_rules``: Flower's FedAvg inside fedwon's ``RoundRules`` (streamed)."""
    from fedwon.engine import run_fast as engine_run_fast

    rec = w.RunRecord()
    app = w.make_server_app(rounds, record=rec, round_rules=round_rules)
    t0 = time.perf_counter()
    engine_run_fast(
        app, CLIENT_APP_REF, w.NUM_CLIENTS, num_workers=num_workers, fast_arrays=fast_arrays
    )
    return Run(rec.round_times, time.perf_counter() - t0, rec.final_state)


def run_flower(rounds: int) -> Run:
    """Flower's own simulation engine, same ServerApp and ClientApp, one CPU per client."""
    from flwr.simulation import run_simulation

    rec = w.RunRecord()
    app = w.make_server_app(rounds, record=rec)
    backend = {"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}}
    t0 = time.perf_counter()
    run_simulation(app, w.client_app, w.NUM_CLIENTS, backend_config=backend)  # type: ignore[arg-type]
    return Run(rec.round_times, time.perf_counter() - t0, rec.final_state)


def in_process_systems() -> list[System]:
    """The systems measured with interleaved repeats in this process (pfl if installed)."""
    systems = [
        System("lean", "bare PyTorch loop, lean (the limit)", run_lean),
        System(
            "lean-stream",
            "bare PyTorch loop, lean, fedwon's cohorts and streamed mean (its limit)",
            run_lean_streamed,
            limit="lean-stream",
        ),
        System(
            "lean-calls",
            "bare PyTorch loop, lean, streamed, the tutorial ClientApp's calls "
            "(`load_state_dict`, `state_dict()` snapshots, copy-on-write): its floor",
            run_lean_client_calls,
            limit="lean-stream",
        ),
        System("bare", "bare PyTorch loop, state-dict clones", run_bare),
    ]
    if pfl_workload.available():
        label = f"pfl-research {pfl_workload.PFL_VERSION}, SimulatedBackend in-process"
        systems.append(System("pfl", label, run_pfl, fedavg_weights=False))
    systems.append(
        System(
            "fast-stream",
            "**fedwon fast engine, in-process, `RoundRules(FedAvg)`: streamed (`fedwon run`)**",
            lambda n: run_fast(n, 0, round_rules=True),
            limit="lean-stream",
        )
    )
    systems.append(
        System(
            "fast", "fedwon fast engine, in-process, Flower's `FedAvg`", lambda n: run_fast(n, 0)
        )
    )
    systems.append(
        System(
            "fast-bytes",
            "fedwon fast engine, in-process, Flower's records as they are (`fast_arrays=False`)",
            lambda n: run_fast(n, 0, fast_arrays=False),
        )
    )
    return systems


def _with_ray(fn: Callable[[], None]) -> None:
    """Run ``fn`` with Ray started here first, so that its start-up is not billed to the
    fast engine's first run; Flower's engine shuts Ray down itself when it finishes."""
    import ray

    from fedwon.engine.executors import ray_pythonpath

    if not ray.is_initialized():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # Ray's accelerator env-var tip
            ray.init(
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": {"PYTHONPATH": ray_pythonpath()}},
            )
    fn()


def measure(rounds: int, repeats: int, flower_rounds: int) -> list[System]:
    """Every system's runs: interleaved in-process repeats, then Ray actors, then Flower."""
    systems = in_process_systems()
    for _ in range(repeats):
        for system in systems:
            system.runs.append(system.run(WARMUP_ROUNDS + rounds))
    actors = os.cpu_count() or 1
    fast_ray = System(
        "fast-ray",
        f"fedwon fast engine, {actors} Ray actors",
        lambda n: run_fast(n, actors),
        in_process=False,
    )
    flower = System(
        "flower", f"Flower run_simulation, {actors} actors", run_flower, in_process=False
    )

    def ray_runs() -> None:
        for _ in range(repeats):
            fast_ray.runs.append(fast_ray.run(WARMUP_ROUNDS + rounds))
        flower.runs.append(flower.run(WARMUP_ROUNDS + flower_rounds))

    _with_ray(ray_runs)
    return [*systems, fast_ray, flower]


def summarise(systems: list[System]) -> list[Row]:
    """One row per system: medians over runs, overhead per client against its lean loop."""
    finals = {s.key: s.runs[0].final for s in systems if s.key.startswith("lean")}
    rows: list[Row] = []
    for s in systems:
        lean_final = finals[s.limit]
        per_run = [steady_ms_per_round(r.stamps) for r in s.runs]
        cpu_per_run = [steady_ms_per_round(r.stamps, cpu=True) for r in s.runs]
        ms = statistics.median(per_run)
        startups = [
            max(0.0, r.seconds - (len(r.stamps) - 1) * m / 1000)
            for r, m in zip(s.runs, per_run, strict=True)
        ]
        equal = None
        if s.fedavg_weights and lean_final is not None and s.runs[0].final is not None:
            final = s.runs[0].final
            equal = all(torch.equal(lean_final[k], final[k]) for k in lean_final)
        rows.append(
            {
                "bench": "speed",
                "key": s.key,
                "engine": s.label,
                "runs": len(s.runs),
                "rounds": len(s.runs[0].stamps) - 1 - WARMUP_ROUNDS,
                "ms_per_round": ms,
                "cpu_ms_per_round": statistics.median(cpu_per_run) if s.in_process else None,
                "ms_min": min(per_run),
                "ms_max": max(per_run),
                "rounds_per_s": 1000 / ms,
                "startup_s": statistics.median(startups),
                "equal_to_lean": equal,
                "limit": s.limit,
                "per_run_ms": per_run,
            }
        )
    limits = {r["key"]: r for r in rows if r["key"].startswith("lean")}
    for r in rows:
        lean = limits[r["limit"]]
        lean_ms, lean_cpu = lean["ms_per_round"], lean["cpu_ms_per_round"]
        r["vs_lean"] = r["ms_per_round"] / lean_ms
        r["overhead_ms_per_client"] = (r["ms_per_round"] - lean_ms) / w.CLIENTS_PER_ROUND
        cpu = r["cpu_ms_per_round"]
        r["cpu_overhead_ms_per_client"] = (
            None if cpu is None else (cpu - lean_cpu) / w.CLIENTS_PER_ROUND
        )
        # run by run against the lean run interleaved with it: the spread of the overhead
        if len(r["per_run_ms"]) == len(lean["per_run_ms"]) and r is not lean:
            paired = [
                (a - b) / w.CLIENTS_PER_ROUND
                for a, b in zip(r["per_run_ms"], lean["per_run_ms"], strict=True)
            ]
            r["overhead_spread"] = (min(paired), max(paired))
    if not pfl_workload.available():
        after_bare = next(i for i, r in enumerate(rows) if r["key"] == "bare") + 1
        rows.insert(after_bare, {"bench": "speed", "key": "pfl", "missing": True})
    return rows


def run(quick: bool = False, rounds: int | None = None, repeats: int | None = None) -> list[Row]:
    """Speed rows (every system) then memory rows."""
    _quiet_flower()
    # One intra-op thread in this process, like every Ray actor (OMP_NUM_THREADS=1): batch
    # size 1 gains nothing from a second thread, while two spinning OpenMP threads collapse
    # when other jobs share the cores.
    torch.set_num_threads(1)
    _warm_torch()
    # Many short interleaved runs rather than a few long ones: on a shared machine the load
    # drifts over minutes, and alternating often spreads it evenly over the systems.
    n = rounds if rounds is not None else (20 if quick else 60)
    reps = repeats if repeats is not None else (2 if quick else 7)
    load_before = os.getloadavg()
    rows = summarise(measure(n, reps, flower_rounds=3 if quick else 10))
    for r in rows:
        r["load_before"] = load_before
    rows.extend(
        overhead_breakdown.measure(num_rounds=20 if quick else 60, repeats=1 if quick else 3)
    )
    rows.extend(run_memory(quick))
    return rows


# ---- memory ---------------------------------------------------------------------------------


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc (Linux), else
    ``getrusage`` for both."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def memory_child(num_clients: int, rounds: int) -> dict[str, float]:
    """Run the fast engine in this (fresh) process; report RSS before, after and peak."""
    from fedwon.engine import run_fast as engine_run_fast

    _quiet_flower()
    torch.set_num_threads(1)
    w.digits_28()  # data set and imports loaded before the baseline
    before, _ = rss_mb()
    app = w.make_server_app(rounds, num_clients=num_clients)
    engine_run_fast(app, CLIENT_APP_REF, num_clients, num_workers=0)
    after, peak = rss_mb()
    return {"rss_before_mb": before, "rss_after_mb": after, "peak_mb": peak}


def run_memory(quick: bool = False) -> list[Row]:
    """Peak RSS with 1,000 and 10,000 clients, each size in its own subprocess."""
    rounds = 20 if quick else 100
    rows: list[Row] = []
    for clients in (1_000, 10_000):
        cmd = [sys.executable, "-m", "benchmarks.cross_device_bench", "--memory-child"]
        cmd += [str(clients), "--rounds", str(rounds)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        rows.append({"bench": "memory", "clients": clients, "rounds": rounds, **res})
    for r in rows:
        r["growth_vs_1000"] = r["peak_mb"] / rows[0]["peak_mb"]
    return rows


# ---- reporting ------------------------------------------------------------------------------


def machine() -> str:
    """CPU model, cores, memory, load and library versions, for the record."""
    import flwr
    import ray

    model = cpu_model()
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 2**20:.0f} GiB RAM"
    except OSError:
        mem = "RAM unknown"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, {mem}, load average {load}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, flwr {flwr.__version__}, "
        f"ray {ray.__version__}"
    )


def _equal_cell(r: Row) -> str:
    """The 'final weights == lean' cell."""
    if r["key"] == "pfl":
        return "n/a (uniform weights)"
    eq = r["equal_to_lean"]
    if eq is None or r["key"] == r["limit"]:  # a limit is not compared with itself
        return ""
    return "yes" if eq else "no"


def _cpu_cells(r: Row) -> str:
    """The CPU-time cells: in-process systems only (others work in other processes)."""
    if r["cpu_ms_per_round"] is None:
        return "– | –"
    return f"{r['cpu_ms_per_round']:.1f} | {r['cpu_overhead_ms_per_client']:.2f}"


def speed_markdown(rows: list[Row]) -> str:
    """The speed table."""
    lines = [
        "| system | ms/round | rounds/s | time vs lean | overhead ms/client (run by run) "
        "| CPU ms/round | CPU overhead ms/client | runs x rounds: ms/round min-max | start-up s "
        "| final weights == lean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in (r for r in rows if r["bench"] == "speed"):
        if r.get("missing"):
            lines.append(
                f"| pfl-research {pfl_workload.PFL_VERSION} | not installed: "
                "`pip install -e '.[bench]'` | | | | | | | | |"
            )
            continue
        spread = f"{r['runs']} x {r['rounds']}: {r['ms_min']:.1f}-{r['ms_max']:.1f}"
        overhead = f"{r['overhead_ms_per_client']:.2f}"
        if "overhead_spread" in r:
            overhead += " ({:.2f} to {:.2f})".format(*r["overhead_spread"])
        lines.append(
            f"| {r['engine']} | {r['ms_per_round']:.1f} | {r['rounds_per_s']:.1f} "
            f"| {r['vs_lean']:.2f}x | {overhead} | {_cpu_cells(r)} "
            f"| {spread} | {r['startup_s']:.1f} | {_equal_cell(r)} |"
        )
    return "\n".join(lines)


def memory_markdown(rows: list[Row]) -> str:
    """The memory table."""
    lines = [
        "| clients | rounds | RSS before run (MB) | RSS after run (MB) | peak RSS (MB) "
        "| peak vs 1,000 clients |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if r["bench"] == "memory"):
        lines.append(
            f"| {r['clients']:,} | {r['rounds']} | {r['rss_before_mb']:.0f} "
            f"| {r['rss_after_mb']:.0f} | {r['peak_mb']:.0f} | {r['growth_vs_1000']:.3f}x |"
        )
    return "\n".join(lines)


def to_markdown(rows: list[Row]) -> str:
    """The tables (speed, breakdown, memory) as Markdown."""
    parts = [speed_markdown(rows)] if any(r["bench"] == "speed" for r in rows) else []
    if any(r["bench"] == "breakdown" for r in rows):
        parts.append(overhead_breakdown.to_markdown(rows))
    if any(r["bench"] == "memory" for r in rows):
        parts.append(memory_markdown(rows))
    return "\n\n".join(parts)


def _section(body: str, command: str) -> str:
    """A marker section's content: what was run, where, then the table."""
    return f"\nMachine: {machine()}.\nCommand: `{command}`.\n\n{body}\n"


def speed_note(rows: list[Row]) -> str:
    """What the speed table measured, and under which conditions."""
    speed = [r for r in rows if r["bench"] == "speed" and not r.get("missing")]
    load = ", ".join(f"{x:.1f}" for x in speed[0]["load_before"]) if speed else "?"
    return (
        "Workload: 1,000 clients x 1-2 digits (1x28x28), 10 clients/round, batch size 1, "
        "1 local epoch, CNN 421,642 params, SGD 0.05. fedwon and Flower rows: a tutorial-style "
        "ClientApp (`ArrayRecord(model.state_dict())`, one cached model per process) under "
        "Flower's own `FedAvg` (train only), either inside fedwon's `RoundRules` (what "
        "`fedwon run` builds: its cohorts, seeded per round, and the streamed mean) or on its "
        "own. Lean loops: parameters copied in place into one reused model, each client "
        "added to a running weighted sum: with Flower's `FedAvg` cohorts and arithmetic, or "
        "with `RoundRules`' cohorts and streamed mean; each one's weights are bitwise those of "
        "the rows measured against it. The lean loop making the tutorial ClientApp's calls "
        "(`load_state_dict` of copy-on-write clones of the global tensors, copy-on-write "
        "snapshots of `state_dict()` folded into the sum) is the floor under any engine "
        "running that ClientApp: what the streamed row costs above it is the engine's, "
        "Flower's messages and records', and the exact NaN/Inf check of each reply. pfl: "
        "`FederatedAveraging` on `SimulatedBackend`, "
        "uniform user weights, the same users per round as Flower's `FedAvg`. ms/round: "
        f"median of each run's rounds after {WARMUP_ROUNDS} warm-up rounds, then the median "
        "over runs (in-process systems interleaved in table order, run after run); overhead "
        "ms/client = (ms/round - its lean loop's ms/round) / 10, in brackets the lowest and "
        "highest of the same difference run by run (each run against the lean run "
        "interleaved with it). CPU columns: the same from this process's CPU time, which "
        "leaves out the time other jobs on a shared machine keep it waiting (in-process "
        "systems only; Ray and Flower work in other processes). One torch thread per "
        f"process; load average {load} when the runs started (other jobs share these cores: "
        "compare rows within one table, not across tables).\n\n"
    )


BREAKDOWN_NOTE = (
    "Where the per-client overhead of the streamed row goes, measured inside runs "
    "(`benchmarks/overhead_breakdown.py`): each step of a client's round timed in place, in "
    "CPU time, the lean loop (fedwon's cohorts, streamed mean) and the fast engine "
    "(`RoundRules(FedAvg)`) interleaved, median over runs; training is the same code in both "
    "and is left out of the totals.\n\n"
)


def write_docs(rows: list[Row], command: str, path: Path = DOC) -> None:
    """Write both tables between their markers, re-reading the file right before writing."""
    if any(r["bench"] == "speed" for r in rows):
        speed = "\n## Cross-device: fast engine vs the lean loop, pfl-research and Flower\n"
        body = speed_note(rows) + speed_markdown(rows)
        if any(r["bench"] == "breakdown" for r in rows):
            table = overhead_breakdown.to_markdown(rows)
            body += f"\n\n{BREAKDOWN_NOTE}{table}\n\n{overhead_breakdown.bound_note(rows)}"
        write_section("cross_device_bench", speed + _section(body, command), path)
    if any(r["bench"] == "memory" for r in rows):
        memory = "\n## Memory: 1,000 vs 10,000 clients (fast engine)\n"
        write_section("memory_bench", memory + _section(memory_markdown(rows), command), path)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="steady-state rounds per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per system")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and runs")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.rounds or 100)))
        return
    rows = run(quick=args.quick, rounds=args.rounds, repeats=args.repeats)
    print(to_markdown(rows))
    if not args.no_write:
        command = "python -m benchmarks.cross_device_bench " + " ".join(sys.argv[1:])
        write_docs(rows, command.strip())


if __name__ == "__main__":
    main()
