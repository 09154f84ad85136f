"""Cross-device speed and memory benchmarks of the fast engine, measured side by side.

Speed (one process, one machine, same workload — see ``benchmarks.workloads``):
  (a) the bare PyTorch FedAvg loop (the speed limit),
  (b) the fast engine running the tutorial-style Flower ClientApp under Flower's FedAvg,
      in-process and with Ray actors,
  (c) Flower's ``run_simulation`` with the same ServerApp and ClientApp (a few rounds).
Each configuration's steady-state time per round is the median of the mean round time over
blocks of rounds after a warm-up (robust to other jobs sharing the machine); start-up (Ray,
imports, first round's one-time work) is reported separately.

Memory: peak RSS of the fast engine with 1,000 vs 10,000 clients, each in a fresh subprocess.

    python -m benchmarks.cross_device_bench [--rounds N] [--quick] [--no-write]

writes the tables into docs/benchmarks.md between the ``cross_device_bench`` and
``memory_bench`` markers (nothing else in the file is touched).
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import torch

from benchmarks import workloads as w
from benchmarks.report import DOC, cpu_model, write_section

CLIENT_APP_REF = "benchmarks.workloads:client_app"
WARMUP_ROUNDS = 3
BLOCK = 10

Row = dict[str, Any]


# ---- timing helpers ------------------------------------------------------------------------


def steady_ms_per_round(stamps: list[float], warmup: int = WARMUP_ROUNDS) -> float:
    """Median over blocks of ``BLOCK`` rounds of the mean round time, after ``warmup`` rounds.

    ``stamps[0]`` is taken before round 1 and ``stamps[r]`` after round r.
    """
    durations = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)]
    if not durations:
        raise ValueError("no steady-state rounds measured")
    blocks = [durations[i : i + BLOCK] for i in range(0, len(durations), BLOCK)]
    blocks = [b for b in blocks if len(b) == BLOCK] or [durations]
    return 1000 * statistics.median(statistics.fmean(b) for b in blocks)


def _row(name: str, stamps: list[float], t_call: float, t_end: float, **extra: Any) -> Row:
    """One result row: steady ms/round, rounds/s, start-up and end-to-end seconds."""
    ms = steady_ms_per_round(stamps)
    rounds = len(stamps) - 1
    total = t_end - t_call
    return {
        "bench": "speed",
        "engine": name,
        "rounds": rounds,
        "ms_per_round": ms,
        "rounds_per_s": 1000 / ms,
        # Whatever steady-state rounds do not explain: Ray/actor start-up, imports, the first
        # rounds' one-time work (Flower starts Ray while its round 1 is already waiting).
        "startup_s": max(0.0, total - rounds * ms / 1000),
        "total_s": total,
        **extra,
    }


def _quiet_flower() -> None:
    """Flower logs every round at INFO; keep benchmark output readable."""
    logging.getLogger("flwr").setLevel(logging.WARNING)


# ---- the configurations -----------------------------------------------------------------


def bench_bare(rounds: int) -> tuple[Row, dict[str, torch.Tensor]]:
    """(a) the bare loop; returns its row and final weights."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    final = w.bare_fedavg(WARMUP_ROUNDS + rounds, round_times=stamps)
    return _row("bare PyTorch loop (1 process)", stamps, t0, time.perf_counter()), final


def bench_fast(rounds: int, num_workers: int, bare_final: dict[str, torch.Tensor] | None) -> Row:
    """(b) the fast engine with the tutorial ClientApp (``num_workers`` 0 = in-process)."""
    from fedwon.engine import run_fast

    rec = w.RunRecord()
    app = w.make_server_app(WARMUP_ROUNDS + rounds, record=rec)
    t0 = time.perf_counter()
    run_fast(app, CLIENT_APP_REF, w.NUM_CLIENTS, num_workers=num_workers)
    t1 = time.perf_counter()
    name = (
        "fast engine, in-process" if num_workers == 0 else f"fast engine, {num_workers} Ray actors"
    )
    equal = None
    if bare_final is not None and rec.final_state is not None:
        equal = all(torch.equal(bare_final[k], rec.final_state[k]) for k in bare_final)
    return _row(name, rec.round_times, t0, t1, bitwise_equal_to_bare=equal)


def bench_flower(rounds: int, num_cpus: float) -> Row:
    """(c) Flower's own simulation engine, same ServerApp and ClientApp."""
    from flwr.simulation import run_simulation

    rec = w.RunRecord()
    app = w.make_server_app(WARMUP_ROUNDS + rounds, record=rec)
    backend = {"client_resources": {"num_cpus": num_cpus, "num_gpus": 0.0}}
    t0 = time.perf_counter()
    run_simulation(app, w.client_app, w.NUM_CLIENTS, backend_config=backend)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    actors = int((os.cpu_count() or 1) // num_cpus)
    return _row(f"Flower run_simulation, {actors} actor(s)", rec.round_times, t0, t1)


def _with_ray(fn: Callable[[], Row]) -> Row:
    """Run ``fn`` with Ray started here first, so its start-up is not in the fast engine's
    numbers twice; Flower's engine shuts Ray down itself when it finishes."""
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
    return fn()


def run(quick: bool = False, rounds: int | None = None) -> list[Row]:
    """Speed rows (bare, fast in-process, fast Ray, Flower) then memory rows."""
    _quiet_flower()
    # One intra-op thread in this process, like every Ray actor (OMP_NUM_THREADS=1): batch
    # size 1 gains nothing from a second thread (19.1 vs 19.0 ms/round on an idle machine),
    # while two spinning OpenMP threads collapse (x30) when other jobs share the cores.
    torch.set_num_threads(1)
    n = rounds if rounds is not None else (20 if quick else 100)
    flower_rounds = 3 if quick else 10
    cpus = os.cpu_count() or 1
    bare_row, bare_final = bench_bare(n)
    rows = [bare_row]
    rows.append(bench_fast(n, 0, bare_final))
    rows.append(_with_ray(lambda: bench_fast(n, cpus, bare_final)))
    rows.append(_with_ray(lambda: bench_flower(flower_rounds, 1.0)))
    _add_ratios(rows)
    rows.extend(run_memory(quick))
    return rows


def _add_ratios(rows: list[Row]) -> None:
    """fast/bare (time per round, lower is better) and Flower/this speed-ups: steady state,
    and end to end (start-up included) for as many rounds as Flower ran."""
    bare = next(r for r in rows if r["engine"].startswith("bare"))
    flower = next(r for r in rows if r["engine"].startswith("Flower"))
    for r in rows:
        r["vs_bare"] = r["ms_per_round"] / bare["ms_per_round"]
        r["flower_speedup"] = flower["ms_per_round"] / r["ms_per_round"]
        r["e2e_s"] = r["startup_s"] + flower["rounds"] * r["ms_per_round"] / 1000
    for r in rows:
        r["flower_speedup_e2e"] = flower["e2e_s"] / r["e2e_s"] if r["e2e_s"] > 0 else float("inf")


# ---- memory ---------------------------------------------------------------------------------


def _rss_mb() -> tuple[float, float]:
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
    from fedwon.engine import run_fast

    _quiet_flower()
    torch.set_num_threads(1)
    w.digits_28()  # data set and imports loaded before the baseline
    before, _ = _rss_mb()
    app = w.make_server_app(rounds, num_clients=num_clients)
    run_fast(app, CLIENT_APP_REF, num_clients, num_workers=0)
    after, peak = _rss_mb()
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


def speed_markdown(rows: list[Row]) -> str:
    """The speed table."""
    flower_rounds = next((r["rounds"] for r in rows if r["engine"].startswith("Flower")), 0)
    lines = [
        "| engine | ms/round | rounds/s | time vs bare | Flower time / this | start-up s "
        f"| Flower / this, {flower_rounds} rounds end to end | final weights == bare |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in (r for r in rows if r["bench"] == "speed"):
        eq = r.get("bitwise_equal_to_bare")
        same = "" if eq is None else ("yes" if eq else "no")
        lines.append(
            f"| {r['engine']} | {r['ms_per_round']:.1f} | {r['rounds_per_s']:.1f} "
            f"| {r['vs_bare']:.2f}x | {r['flower_speedup']:.1f}x | {r['startup_s']:.1f} "
            f"| {r['flower_speedup_e2e']:.1f}x | {same} |"
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
    """Both tables (speed, then memory) as Markdown."""
    parts = [speed_markdown(rows)] if any(r["bench"] == "speed" for r in rows) else []
    if any(r["bench"] == "memory" for r in rows):
        parts.append(memory_markdown(rows))
    return "\n\n".join(parts)


def _section(body: str, command: str) -> str:
    """A marker section's content: what was run, where, then the table."""
    return f"\nMachine: {machine()}.\nCommand: `{command}`.\n\n{body}\n"


def write_docs(rows: list[Row], command: str, path: Path = DOC) -> None:
    """Write both tables between their markers, re-reading the file right before writing."""
    note = (
        "Workload: 1,000 clients x 1-2 digits (1x28x28), 10 clients/round, batch size 1, "
        "1 local epoch, CNN 421,642 params, SGD 0.05, Flower's FedAvg (train only). ms/round: "
        f"median over {BLOCK}-round blocks after {WARMUP_ROUNDS} warm-up rounds; one torch "
        "thread per process (as in Ray actors); start-up: time not explained by steady "
        "rounds (Ray, actors, first rounds). Final weights == bare: the engine sampled the "
        "same clients (same seed) and its weights are bitwise equal to the bare loop's.\n\n"
    )
    speed = "\n## Cross-device: fast engine vs bare PyTorch vs Flower\n" + _section(
        note + speed_markdown(rows), command
    )
    memory = "\n## Memory: 1,000 vs 10,000 clients (fast engine)\n" + _section(
        memory_markdown(rows), command
    )
    if any(r["bench"] == "speed" for r in rows):
        write_section("cross_device_bench", speed, path)
    if any(r["bench"] == "memory" for r in rows):
        write_section("memory_bench", memory, path)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="steady-state rounds")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.rounds or 100)))
        return
    rows = run(quick=args.quick, rounds=args.rounds)
    print(to_markdown(rows))
    if not args.no_write:
        command = "python -m benchmarks.cross_device_bench " + " ".join(sys.argv[1:])
        write_docs(rows, command.strip())


if __name__ == "__main__":
    main()
