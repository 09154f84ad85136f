"""Deployed rounds against simulated ones, measured in one go: ``fedwon deploy local`` with warm
ClientApp workers (the default) and with Flower's process per message (``--isolation
subprocess``), each with fedwon's short polls and with Flower's 3 s ones, and the same run
simulated on the fast engine.

Every variant runs the same recipe on the same machine one after the other, and each deployed
run's metrics are compared with the simulated run's (the same seeds give the same numbers: one
torch thread per client everywhere). A round's time is what the ServerApp records
(``metrics.jsonl``'s ``time_s``: from the end of one round to the end of the next, train and
evaluate included); "steady" is the mean of the rounds after the first. The table goes into
docs/deployment.md (section ``deploy_bench``).

    python -m benchmarks.deploy_bench [--nodes 2] [--rounds 3] [--set key=value ...] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cross_device_bench import machine
from benchmarks.report import write_section
from fedwon.config import make_config, read_recipe
from fedwon.deploy.local import DEFAULT_RECIPE, deploy_local
from fedwon.run.directory import Row
from fedwon.simulation import run_simulation

DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
TINY = ("model=cnn-tiny", "train_per_domain=100", "test_per_domain=50", "checkpoint_every=0")
SERVER_POLL_S = 3.0  # the ServerApp's wait between two pulls of replies (flwr 1.39, fixed)


@dataclass(frozen=True)
class Variant:
    name: str
    isolation: str = "process"
    poll_interval: float = 0.5  # the SuperNode's, between polls of the SuperLink
    reply_poll: float = 0.2  # the ServerApp's, between pulls of replies


VARIANTS = (
    Variant("warm workers, fedwon's polls (the default)"),
    Variant("warm workers, Flower's 3 s polls", poll_interval=3.0, reply_poll=3.0),
    Variant("a process per message, fedwon's polls", "subprocess"),
    Variant(
        "a process per message, Flower's 3 s polls (Flower's defaults)", "subprocess", 3.0, 3.0
    ),
)


def comparable(rows: list[Row]) -> list[Row]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


def measure(nodes: int, rounds: int, overrides: list[str]) -> dict[str, Any]:
    """Each variant's rounds and wall time, and the simulated run's."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedwon-deploy-bench-") as tmp:
        cfg = None
        for i, variant in enumerate(VARIANTS):
            print(f"{variant.name} ...", file=sys.stderr, flush=True)
            result = deploy_local(
                Path(tmp) / f"run-{i}",
                nodes,
                rounds,
                overrides=overrides,
                isolation=variant.isolation,
                poll_interval=variant.poll_interval,
                reply_poll=variant.reply_poll,
            )
            cfg = cfg or make_config(read_recipe(result.out / "config.toml"))
            results.append(
                {
                    "variant": variant,
                    "rounds": result.round_s,
                    "wall": result.wall_s,
                    "rows": result.rows,
                }
            )
        assert cfg is not None
        print("simulated ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        simulated = run_simulation(cfg.replace(engine="fast", num_workers=0), Path(tmp) / "sim")
        sim = {
            "rounds": [float(r["time_s"]) for r in simulated.rows],
            "wall": time.monotonic() - start,
            "rows": simulated.rows,
        }
    evaluations = sum(r.get("accuracy") is not None for r in sim["rows"])
    return {"deployed": results, "simulated": sim, "cfg": cfg, "evaluations": evaluations}


def steady(rounds: list[float]) -> float:
    return statistics.fmean(rounds[1:] or rounds)


def to_markdown(measured: dict[str, Any]) -> str:
    sim = measured["simulated"]
    rounds = len(sim["rounds"])
    phases = 1 + measured["evaluations"] / max(rounds, 1)  # train + evaluate per round, on average
    target = 1.5 * steady(sim["rounds"]) + SERVER_POLL_S * phases
    head = " | ".join(f"round {i + 1}" for i in range(rounds))
    lines = [
        f"| deployed: ClientApp, polls | {head} | steady (s/round) | wall (s) | "
        "metrics = simulated |",
        "|---|" + "---:|" * (rounds + 2) + ":---:|",
    ]
    for result in measured["deployed"]:
        same = comparable(result["rows"]) == comparable(sim["rows"])
        cells = " | ".join(f"{s:.1f}" for s in result["rounds"])
        lines.append(
            f"| {result['variant'].name} | {cells} | {steady(result['rounds']):.1f} | "
            f"{result['wall']:.0f} | {'yes' if same else 'NO'} |"
        )
    cells = " | ".join(f"{s:.2f}" for s in sim["rounds"])
    lines.append(
        f"| simulated (`fedwon run`, fast engine) | {cells} | {steady(sim['rounds']):.2f} | "
        f"{sim['wall']:.0f} | — |"
    )
    lines.append(
        f"\nTarget for a steady deployed round: 1.5 × simulated + Flower's reply poll "
        f"({SERVER_POLL_S:.0f} s per train or evaluate phase) = {target:.1f} s. Polls: the "
        "SuperNode's between asks for work (fedwon 0.5 s, Flower 3 s) and the ServerApp's "
        "between pulls of replies (fedwon 0.2 s, Flower 3 s)."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", nargs="*", default=list(TINY))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    command = " ".join(["python -m benchmarks.deploy_bench", *sys.argv[1:]])
    measured = measure(args.nodes, args.rounds, args.overrides)
    cfg = measured["cfg"]
    body = (
        f"\n{args.nodes} SuperNodes, {args.rounds} rounds of `{DEFAULT_RECIPE.name}` "
        f"({cfg.server.strategy}, `{cfg.model.model}`, {cfg.data.train_per_domain} training "
        f"images per client, evaluation every {cfg.server.eval_every} round(s)). Machine: "
        f"{machine()}. Command: `{command}`.\n\n{to_markdown(measured)}\n"
    )
    print(body)
    if not args.no_write:
        write_section("deploy_bench", body, DOC)


if __name__ == "__main__":
    main()
