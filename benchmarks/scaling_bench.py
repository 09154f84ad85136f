"""Scaling with the cohort: time and memory per round for 10, 100 and 1,000 clients per round.

Population 10,000 clients of the cross-device workload (``benchmarks.workloads``). Each
(system, cohort) runs in a fresh subprocess, so that its peak RSS is its own:

* the lean bare loop (``workloads.lean_fedavg``): one running weighted sum, the memory floor;
* the fast engine in-process with Flower's ``FedAvg`` and the tutorial ClientApp;
* the same inside fedwon's ``RoundRules``, which streams: each reply is folded into one
  running mean as the client finishes and dropped (``fedwon.strategies.streaming``).

Reported per cohort: median ms/round after one warm-up round, ms per client (linear scaling
keeps it constant), and peak RSS above the RSS before the run, in total and per client of the
cohort. Flower's ``FedAvg`` on its own aggregates only once every reply of the round has
arrived, so it holds one model per client of the cohort; around it, the round rules hold one.

    python -m benchmarks.scaling_bench [--quick] [--repeats R] [--no-write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from benchmarks import workloads as w
from benchmarks.cross_device_bench import CLIENT_APP_REF, machine, rss_mb
from benchmarks.report import DOC, write_section

POPULATION = 10_000
COHORTS = (10, 100, 1_000)
SYSTEMS = ("lean", "fast", "stream")
LABELS = {
    "lean": "bare loop, lean",
    "fast": "fedwon fast engine, in-process, Flower FedAvg",
    "stream": "fedwon fast engine, in-process, RoundRules(Flower FedAvg): streaming mean",
}

Row = dict[str, Any]


def rounds_for(cohort: int, quick: bool) -> int:
    """Rounds per run (the first is a warm-up): about 3,000 client trainings, at least 3."""
    if quick:
        return 3
    return max(3, 3_000 // cohort + 1)


def child(system: str, cohort: int, rounds: int) -> dict[str, float]:
    """Run one system in this (fresh) process; return steady ms/round and RSS figures."""
    from fedwon.engine import run_fast

    torch.set_num_threads(1)
    w.digits_28()
    torch.optim.SGD(w.Net().parameters(), lr=w.LR)  # one-off imports before the baseline
    logging.getLogger("flwr").setLevel(logging.WARNING)
    before, _ = rss_mb()
    if system == "lean":
        stamps: list[w.Stamp] = []
        w.lean_fedavg(rounds, POPULATION, cohort, round_times=stamps)
    else:
        rec = w.RunRecord()
        app = w.make_server_app(
            rounds,
            num_clients=POPULATION,
            clients_per_round=cohort,
            record=rec,
            round_rules=system == "stream",
        )
        run_fast(app, CLIENT_APP_REF, POPULATION, num_workers=0)
        stamps = rec.round_times
    _, peak = rss_mb()
    walls = [b[0] - a[0] for a, b in itertools.pairwise(stamps[1:])]  # round 1 warms up
    cpus = [b[1] - a[1] for a, b in itertools.pairwise(stamps[1:])]
    return {
        "ms_per_round": 1000 * statistics.median(walls),
        "cpu_ms_per_round": 1000 * statistics.median(cpus),
        "rss_before_mb": before,
        "peak_mb": peak,
    }


def run(quick: bool = False, repeats: int = 1) -> list[Row]:
    """Every (system, cohort) ``repeats`` times, systems alternating; medians per pair."""
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(repeats):
        for cohort in COHORTS:
            for system in SYSTEMS:
                cmd = [sys.executable, "-m", "benchmarks.scaling_bench", "--child", system]
                cmd += [str(cohort), str(rounds_for(cohort, quick))]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results.setdefault((system, cohort), []).append(
                    json.loads(out.strip().splitlines()[-1])
                )
    rows = []
    for (system, cohort), runs in results.items():
        ms = statistics.median(r["ms_per_round"] for r in runs)
        cpu_ms = statistics.median(r["cpu_ms_per_round"] for r in runs)
        extra = statistics.median(r["peak_mb"] - r["rss_before_mb"] for r in runs)
        rows.append(
            {
                "system": system,
                "cohort": cohort,
                "rounds": rounds_for(cohort, quick) - 1,
                "runs": len(runs),
                "ms_per_round": ms,
                "ms_per_client": ms / cohort,
                "cpu_ms_per_client": cpu_ms / cohort,
                "extra_peak_mb": extra,
                "extra_peak_mb_per_client": extra / cohort,
            }
        )
    return rows


def to_markdown(rows: list[Row]) -> str:
    """The scaling table, systems side by side per cohort."""
    lines = [
        "| clients per round | system | ms/round | ms per client | CPU ms per client "
        "| peak RSS above start (MB) | ... per client of the cohort (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["cohort"], SYSTEMS.index(r["system"]))):
        lines.append(
            f"| {r['cohort']:,} | {LABELS[r['system']]} | {r['ms_per_round']:.1f} "
            f"| {r['ms_per_client']:.2f} | {r['cpu_ms_per_client']:.2f} "
            f"| {r['extra_peak_mb']:.0f} "
            f"| {r['extra_peak_mb_per_client']:.2f} |"
        )
    return "\n".join(lines)


def linearity(rows: list[Row]) -> str:
    """ms per client at the largest cohort over ms per client at the smallest, per system."""
    parts = []
    for system in SYSTEMS:
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["cohort"])
        wall = mine[-1]["ms_per_client"] / mine[0]["ms_per_client"]
        cpu = mine[-1]["cpu_ms_per_client"] / mine[0]["cpu_ms_per_client"]
        parts.append(f"{LABELS[system]} {wall:.2f}x wall, {cpu:.2f}x CPU")
    return (
        f"ms per client at {COHORTS[-1]:,} clients per round over {COHORTS[0]}: "
        + ", ".join(parts)
        + " (1.00x = time linear in the cohort, a constant cost per client).\n\n"
    )


STREAMING_NOTE = (
    "Memory: Flower's `FedAvg` on its own aggregates only after every reply of the round has "
    "arrived, and `Strategy.start` still holds the previous round's replies (`train_replies`) "
    "while the next round trains: about two models per client of the cohort. Inside fedwon's "
    "`RoundRules` (what `fedwon run` builds; `fedwon.strategies.streaming`) the fast engine's "
    "grid hands replies over one at a time, each client running when the round rules ask "
    "for its reply; the reply (copy-on-write snapshots of the client's model, no copies) is "
    "checked for errors and NaN/Inf as it is added into one running weighted sum, and "
    "dropped before the next client trains; FedAvg receives the mean as a single reply. "
    "Memory is one running sum plus one reply, whatever the cohort; results "
    "equal FedAvg's to rounding (the sum is `sum(w_i x_i) / W` where FedAvg adds "
    "`x_i (w_i / W)`). With Ray actors a batch still returns whole.\n"
)


def write_docs(rows: list[Row], command: str) -> None:
    """Write the table between the ``scaling_bench`` markers."""
    note = (
        f"Population {POPULATION:,} clients of the cross-device workload; each (system, "
        "cohort) in a fresh process, one torch thread; ms/round: median after one warm-up "
        f"round over {min(r['rounds'] for r in rows)}-{max(r['rounds'] for r in rows)} "
        "rounds. The model is 1.6 MB of float32 parameters.\n\n"
    )
    body = (
        "\n## Scaling with the cohort: 10, 100, 1,000 clients per round\n\n"
        f"Machine: {machine()}.\nCommand: `{command}`.\n\n{note}{to_markdown(rows)}\n\n"
        f"{linearity(rows)}{STREAMING_NOTE}"
    )
    write_section("scaling_bench", body, DOC)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (system, cohort)")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        system, cohort, rounds = args.child
        print(json.dumps(child(system, int(cohort), int(rounds))))
        return
    t0 = time.perf_counter()
    rows = run(quick=args.quick, repeats=args.repeats)
    print(to_markdown(rows))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if not args.no_write:
        write_docs(rows, " ".join(["python -m benchmarks.scaling_bench", *sys.argv[1:]]).strip())


if __name__ == "__main__":
    main()
