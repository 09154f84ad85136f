"""DP overhead of a real fedwon run: the same recipe with and without differential privacy.

``benchmarks/dp_bench.py`` times the aggregation alone on a fixed workload; this one times
whole rounds of ``sims/dp_cross_device.toml`` (500 clients, 50 per round, FedWon ``cnn-tiny``,
LAMB) as ``fedwon run`` executes them -- the fast engine in one process, every round's client
training, aggregation, accounting and recording -- from the ``time_s`` fedwon writes to each
row of ``metrics.jsonl``:

* without DP (``dp.enabled = false``, the same LAMB server);
* user-level DP: per-layer clipping, Gaussian noise, RDP accounting (``CentralDP``);
* sample-level DP: every client trains with DP-SGD (Opacus; fixed z, so no per-client noise
  calibration is timed).

Per run: the median over rounds 2..N-1 (round 1 pays start-up and imports; only round N
evaluates). Runs alternate between the variants, repeated, so machine load hits them alike;
the ratio is the median of the per-repeat ratios.

    python -m benchmarks.dp_run_bench [--rounds N] [--repeats R] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import cpu_model, write_section
from fedwon.config import RunConfig, make_config, read_recipe
from fedwon.simulation import run_simulation

RECIPE = Path(__file__).resolve().parent.parent / "sims" / "dp_cross_device.toml"
TARGET = 1.05
VARIANTS: dict[str, dict[str, Any]] = {
    "no DP": {"dp.enabled": False},
    "user-level DP (per-layer clip + noise + RDP)": {},
    "sample-level DP-SGD (z = 1.0)": {
        "dp.level": "sample",
        "dp.target_epsilon": 0.0,
        "dp.noise_multiplier": 1.0,
    },
}


def config(overrides: dict[str, Any], rounds: int) -> RunConfig:
    values = read_recipe(RECIPE)
    values.update(
        {"num_rounds": rounds, "eval_every": rounds, "checkpoint_every": 0, "num_workers": 0}
    )
    values.update(overrides)
    if values.get("dp.enabled") is False:
        values = {k: v for k, v in values.items() if not k.startswith("dp.") or k == "dp.enabled"}
    return make_config(values)


def steady_round_s(cfg: RunConfig) -> float:
    """Median seconds per round of one run, rounds 2..N-1."""
    rows = run_simulation(cfg, None).rows
    return statistics.median(r["time_s"] for r in rows[1:-1])


def run(rounds: int = 12, repeats: int = 2) -> list[dict[str, Any]]:
    """Seconds per round of each variant, and its ratio to the run without DP."""
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, overrides in VARIANTS.items():
            times[name].append(steady_round_s(config(overrides, rounds)))
    base = times["no DP"]
    return [
        {
            "variant": name,
            "round_s": statistics.median(t),
            "ratio": statistics.median(a / b for a, b in zip(t, base, strict=True)),
            "runs": len(t),
            "rounds": rounds,
        }
        for name, t in times.items()
    ]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| variant | s/round (median) | × without DP | <= {TARGET}x |",
        "|---|---:|---:|:-:|",
    ]
    for r in rows:
        ok = "" if r["variant"] == "no DP" else ("yes" if r["ratio"] <= TARGET else "no")
        lines.append(f"| {r['variant']} | {r['round_s']:.3f} | {r['ratio']:.3f}x | {ok} |")
    return "\n".join(lines)


def write_docs(rows: list[dict[str, Any]], command: str) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (
        "\n## DP overhead in a real run (`benchmarks/dp_run_bench.py`)\n\n"
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {load}; Python "
        f"{platform.python_version()}, torch {torch.__version__}.\nCommand: `{command}`.\n\n"
        "Workload: `sims/dp_cross_device.toml` as `fedwon run` executes it (fast engine, one "
        "process): 500 clients, 50 per round, FedWon `cnn-tiny`, LAMB; per variant "
        f"{rows[0]['runs']} runs of {rows[0]['rounds']} rounds, alternating; s/round is "
        "fedwon's own `time_s`, median over rounds 2..N-1 (the first pays start-up, the last "
        "evaluates); the ratio is the median of the per-repeat ratios.\n\n"
        f"{to_markdown(rows)}\n"
    )
    write_section("dp_run_bench", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 rounds, one repeat (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message="Optimal order is the")
    torch.set_num_threads(1)  # as the fast engine runs a client
    rounds, repeats = (4, 1) if args.quick else (args.rounds, args.repeats)
    rows = run(rounds, repeats)
    print(to_markdown(rows))
    if not args.no_write:
        command = "python -m benchmarks.dp_run_bench" + (
            " --quick" if args.quick else f" --rounds {rounds} --repeats {repeats}"
        )
        write_docs(rows, command)


if __name__ == "__main__":
    main()
