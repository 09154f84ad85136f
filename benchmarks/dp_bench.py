"""DP overhead per round: clip + noise + accounting vs the same round without DP.

Workload (``benchmarks.workloads``): the cross-device CNN (421,642 parameters), 10 of 1,000
clients per round, batch size 1, 1-2 images per client. Each round, in one process and with
the fast engine's array codec:

* the clients train for real (their replies are Flower messages, as the ClientApp sends them);
* Flower's FedAvg configures and aggregates the round (the run without DP);
* ``CentralDP`` around another FedAvg configures and aggregates the *same* replies: per-layer
  clipping of each update, the sum, Gaussian noise, the average over the expected cohort,
  epsilon from the RDP accountant.

A round without DP = training + FedAvg; with DP = training + CentralDP(FedAvg). Both
aggregations run on the same replies in the same round, so machine load hits them alike.
Reported: medians over the rounds after a warm-up (the first round imports Opacus).

    python -m benchmarks.dp_bench [--rounds N] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy

from benchmarks import workloads as w
from benchmarks.report import cpu_model, write_section
from fedwon.engine.fastarrays import fast_array_codec
from fedwon.engine.worker import task_identity
from fedwon.privacy import CentralDP

WARMUP = 2
TARGET = 1.05
Z, CLIP, DELTA = 1.0, 1.0, 1e-5


class NodeGrid:
    """The node ids a strategy samples from (nothing is sent: the benchmark plays the clients)."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))

    def get_node_ids(self) -> Iterable[int]:
        return self.ids


def fedavg() -> FedAvg:
    n = w.CLIENTS_PER_ROUND
    return FedAvg(
        fraction_train=n / w.NUM_CLIENTS,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )


def central_dp(**overrides: Any) -> CentralDP:
    settings: dict[str, Any] = dict(
        noise_multiplier=Z,
        clip_norm=CLIP,
        expected_clients=w.CLIENTS_PER_ROUND,
        sample_rate=w.CLIENTS_PER_ROUND / w.NUM_CLIENTS,
        delta=DELTA,
        clipping="per_layer",
        split="uniform",
    )
    settings.update(overrides)
    return CentralDP(fedavg(), **settings)


def train_clients(messages: list[Message], model: torch.nn.Module) -> list[Message]:
    """What the tutorial ClientApp does for each sampled node (load, train, reply)."""
    replies = []
    for msg in messages:
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        pid = msg.metadata.dst_node_id - 1
        x, y = w.client_data(pid, w.NUM_CLIENTS)
        loss = w.train_local(model, x, y)
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
            }
        )
        replies.append(Message(content, reply_to=msg))
    return replies


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def one_round(
    r: int,
    arrays: ArrayRecord,
    model: torch.nn.Module,
    plain: Strategy,
    variants: dict[str, Strategy],
) -> tuple[ArrayRecord, dict[str, float]]:
    """Train one round's cohort once; time FedAvg and every DP variant on the same replies."""
    grid = NodeGrid(w.NUM_CLIENTS)
    ms: dict[str, float] = {}
    random.seed(r)
    messages, ms["configure"] = timed(
        lambda: list(plain.configure_train(r, arrays, ConfigRecord(), grid))
    )
    replies, ms["train"] = timed(lambda: train_clients(messages, model))
    (new, _), ms["fedavg"] = timed(lambda: plain.aggregate_train(r, replies))
    for name, strategy in variants.items():
        random.seed(r)  # the same cohort
        _, conf = timed(lambda s=strategy: list(s.configure_train(r, arrays, ConfigRecord(), grid)))
        _, agg = timed(lambda s=strategy: s.aggregate_train(r, replies))
        ms[name] = conf + agg
    return new, ms


def run(rounds: int = 30, quick: bool = False) -> list[dict[str, Any]]:
    """Median ms per phase and the with/without-DP round ratio for each DP variant."""
    rounds = 8 if quick else rounds
    torch.set_num_threads(1)  # as a Ray actor or the in-process engine runs a client
    variants: dict[str, Strategy] = {
        "per_layer (uniform), seeded": central_dp(),
        "flat, seeded": central_dp(clipping="flat"),
        "per_layer (uniform), OS-secure noise": central_dp(secure_rng=True),
    }
    samples: list[dict[str, float]] = []
    with task_identity(run_id=1, node_id=0), fast_array_codec():
        model = w.make_model()
        arrays = ArrayRecord(model.state_dict())
        local, plain = w.Net(), fedavg()
        for r in range(1, rounds + WARMUP + 1):
            arrays, ms = one_round(r, arrays, local, plain, variants)
            if r > WARMUP:
                samples.append(ms)
    med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
    base_agg = med["configure"] + med["fedavg"]
    round_ms = med["train"] + base_agg
    rows = []
    for name in variants:
        overhead = med[name] - base_agg
        rows.append(
            {
                "variant": name,
                "train_ms": med["train"],
                "fedavg_ms": base_agg,
                "dp_ms": med[name],
                "overhead_ms": overhead,
                "round_ms": round_ms,
                "ratio": (round_ms + overhead) / round_ms,
                "rounds": len(samples),
            }
        )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| DP variant | train 10 clients ms | FedAvg ms | CentralDP(FedAvg) ms | DP overhead ms "
        f"| round ms (no DP) | round with DP / without | <= {TARGET}x |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['train_ms']:.1f} | {r['fedavg_ms']:.1f} | {r['dp_ms']:.1f} "
            f"| {r['overhead_ms']:.1f} | {r['round_ms']:.1f} | {r['ratio']:.3f}x "
            f"| {'yes' if r['ratio'] <= TARGET else 'no'} |"
        )
    return "\n".join(lines)


def write_docs(rows: list[dict[str, Any]], command: str) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (
        "\n## DP overhead per round (`benchmarks/dp_bench.py`)\n\n"
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {load}; Python "
        f"{platform.python_version()}, torch {torch.__version__}.\nCommand: `{command}`.\n\n"
        "Workload: the cross-device round (421,642-parameter CNN, 10 of 1,000 clients, batch "
        "size 1, one torch thread). Without DP: Flower's FedAvg. With DP: `CentralDP` around "
        f"FedAvg -- clip each update, sum, Gaussian noise (z={Z}, C={CLIP}), average over the "
        f"cohort, RDP epsilon at delta={DELTA}. Medians over {rows[0]['rounds']} rounds; both "
        "aggregations run on the same replies in the same round.\n\n"
        f"{to_markdown(rows)}\n"
    )
    write_section("dp_bench", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="8 rounds (smoke run)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = run(args.rounds, args.quick)
    print(to_markdown(rows))
    if not args.no_write:
        command = "python -m benchmarks.dp_bench" + (" --quick" if args.quick else "")
        write_docs(rows, command)


if __name__ == "__main__":
    main()
