"""Cross-silo speed: fedwon's engines vs a bare PyTorch FedAvg loop doing the same work.

Workload: digits-embedded, 5 clients (one per domain, 743 training images each), FedBN's
DigitModel (``cnn``) with FedWon's normalization-free layers, batch 32, one local epoch,
SGD lr 0.05. Steady-state time per round excludes the first round (start-up: Ray, data, model)
and the last (it evaluates); start-up is reported on its own.

    python -m benchmarks.cross_silo_bench [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from fedwon.clients import train_epochs
from fedwon.config import RunConfig, make_config
from fedwon.datasets import load_federation
from fedwon.simulation import run_simulation

Row = dict[str, Any]


def workload(rounds: int, **extra: Any) -> RunConfig:
    return make_config(
        {
            "strategy": "fedwon",
            "model": "cnn",
            "num_clients": 5,
            "num_rounds": rounds,
            "batch_size": 32,
            "lr": 0.05,
            "eval_every": rounds,
            "checkpoint_every": 0,
            **extra,
        }
    )


def bare_loop(cfg: RunConfig) -> list[float]:
    """FedAvg in one process: copy global → model, train each client, weighted average.

    One torch thread, like each fedwon client (``cpus_per_client=1``), so both do equal work.
    """
    torch.set_num_threads(1)
    fed = load_federation(cfg.data)
    model = cfg.model_spec.initial_model(fed.num_classes, fed.in_channels, cfg.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for rnd in range(1, cfg.server.num_rounds + 1):
        t0 = time.perf_counter()
        total: dict[str, torch.Tensor] = {}
        n_total = 0
        for pid in range(cfg.data.num_clients):
            model.load_state_dict(global_state)
            optimizer.state.clear()
            x, y = fed.train_data(pid)
            train_epochs(
                model,
                optimizer,
                x,
                y,
                epochs=1,
                batch_size=cfg.train.batch_size,
                agc_clip=0.0,
                generator=torch.Generator().manual_seed(rnd * 1000 + pid),
            )
            for k, v in model.state_dict().items():
                total[k] = total.get(k, 0) + v.detach() * len(y)
            n_total += len(y)
        global_state = {k: v / n_total for k, v in total.items()}
        times.append(time.perf_counter() - t0)
    return times


def engine_run(cfg: RunConfig) -> tuple[list[float], float]:
    """Per-round times of a fedwon simulation, and the wall time of the whole call."""
    t0 = time.perf_counter()
    outcome = run_simulation(cfg, None)
    wall = time.perf_counter() - t0
    return [r["time_s"] for r in outcome.rows], wall


def _steady(times: list[float]) -> float:
    middle = times[1:-1] or times[-1:]
    return statistics.median(middle)


def run(quick: bool = False, rounds: int | None = None) -> list[Row]:
    rounds = rounds or (3 if quick else 4)
    cfg = workload(rounds)
    load_federation(cfg.data)  # build/cache the data outside every timing
    bare_times = bare_loop(cfg)
    rows: list[Row] = [
        {
            "engine": "bare PyTorch loop (1 process)",
            "s_per_round": _steady(bare_times),
            "startup_s": 0.0,
        }
    ]
    for name, extra in (
        ("fedwon fast engine, in-process", {"num_workers": 0}),
        ("fedwon fast engine, 2 Ray workers", {"num_workers": 2}),
        ("Flower engine (run_simulation)", {"engine": "flower"}),
    ):
        times, wall = engine_run(workload(rounds, **extra))
        rows.append(
            {
                "engine": name,
                "s_per_round": _steady(times),
                "startup_s": max(wall - sum(times), 0.0) + times[0] - _steady(times),
            }
        )
    bare = rows[0]["s_per_round"]
    for row in rows:
        row["vs_bare"] = row["s_per_round"] / bare
    return rows


def to_markdown(rows: list[Row]) -> str:
    lines = [
        "| engine | s/round (steady) | × bare loop | start-up s |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['s_per_round']:.2f} | {r['vs_bare']:.2f}x | "
            f"{r['startup_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(to_markdown(run(args.quick, args.rounds)))


if __name__ == "__main__":
    main()
