"""What fedwon costs on a recipe: ``fedwon run``'s rounds against a bare loop of the same training.

The recipe runs exactly as ``fedwon run RECIPE --set ...`` runs it (``fedwon.simulation.
run_simulation``: the project's ServerApp, ClientApp and strategy on the fast engine,
in-process), with checkpoints off and evaluation only in the last round. The bare loop does
the same client work with the same code (``fedwon.clients.train_epochs``: same model, data,
batch size, learning rate, AGC, local epochs) in one process: sample the round's clients,
copy the global parameters into one reused model in place, train, add to a running weighted
sum. Per-client overhead = (fedwon ms/round - bare ms/round) / clients per round, from the
steady rounds (the first round starts things up, the last one evaluates).

    python -m benchmarks.recipe_bench [--recipe sims/cross_device.toml] [--set model=cnn-tiny]
        [--rounds N] [--repeats R] [--no-write]
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
from typing import Any

import torch

from benchmarks import workloads as w
from benchmarks.cross_device_bench import machine
from benchmarks.report import write_section
from fedwon.clients import train_epochs
from fedwon.config import RunConfig, load_config
from fedwon.datasets import load_federation
from fedwon.simulation import run_simulation

RECIPE = "sims/cross_device.toml"
OVERRIDES = ("model=cnn-tiny",)

Row = dict[str, Any]


def recipe_config(recipe: str, overrides: list[str], rounds: int) -> RunConfig:
    """The recipe as ``fedwon run`` reads it, timed: no checkpoints, evaluation last only."""
    extra = [f"num_rounds={rounds}", f"eval_every={rounds}", "checkpoint_every=0"]
    return load_config(recipe, [*overrides, *extra, "engine=fast", "num_workers=0"])


def bare_loop(cfg: RunConfig) -> list[w.Stamp]:
    """The same client training in one process; a timestamp after every round."""
    torch.set_num_threads(max(1, int(cfg.engine.cpus_per_client)))  # what each fedwon client uses
    spec = cfg.model_spec  # what each fedwon client builds (norm resolved)
    fed = load_federation(cfg.data)
    model = spec.initial_model(fed.num_classes, fed.in_channels, cfg.seed)
    global_model = spec.initial_model(fed.num_classes, fed.in_channels, cfg.seed)
    params = [p.detach() for p in model.parameters()]
    global_params = [p.detach() for p in global_model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    rng = random.Random(cfg.seed)
    stamps = []
    for rnd in range(1, cfg.server.num_rounds + 1):
        pids = rng.sample(range(cfg.data.num_clients), cfg.sampled_per_round)
        total = sum(fed.num_train(pid) for pid in pids)
        sums = [torch.zeros_like(p) for p in params]
        for pid in pids:
            for dst, src in zip(params, global_params, strict=True):
                dst.copy_(src)
            optimizer.state.clear()
            x, y = fed.train_data(pid)
            train_epochs(
                model,
                optimizer,
                x,
                y,
                epochs=cfg.train.local_epochs,
                batch_size=cfg.train.batch_size,
                agc_clip=cfg.train.agc_clip,
                agc_rule=cfg.train.agc_rule,
                generator=torch.Generator().manual_seed(rnd * 1000 + pid),
            )
            for acc, p in zip(sums, params, strict=True):
                acc.add_(p, alpha=len(y) / total)
        for dst, src in zip(global_params, sums, strict=True):
            dst.copy_(src)
        stamps.append(w.stamp())
    return stamps


def fedwon_run(cfg: RunConfig) -> list[w.Stamp]:
    """``fedwon run``: a timestamp after every round (its ``on_round`` hook)."""
    stamps: list[w.Stamp] = []
    run_simulation(cfg, None, on_round=lambda row: stamps.append(w.stamp()))
    return stamps


def steady_ms(stamps: list[w.Stamp]) -> tuple[float, float]:
    """Median (wall, CPU) ms of the rounds between the first (start-up) and the last
    (evaluation): ``stamps[r]`` is taken after round r + 1."""
    pairs = list(itertools.pairwise(stamps[:-1]))
    return (
        1000 * statistics.median(b[0] - a[0] for a, b in pairs),
        1000 * statistics.median(b[1] - a[1] for a, b in pairs),
    )


def run(recipe: str, overrides: list[str], rounds: int, repeats: int) -> Row:
    """Interleaved bare/fedwon runs; medians of their steady ms/round."""
    cfg = recipe_config(recipe, overrides, rounds)
    load_federation(cfg.data)  # build/cache the data outside every timing
    bare, fedwon = [], []
    for _ in range(repeats):
        bare.append(steady_ms(bare_loop(cfg)))
        fedwon.append(steady_ms(fedwon_run(cfg)))
    bare_ms, fedwon_ms = (statistics.median(t[0] for t in runs) for runs in (bare, fedwon))
    bare_cpu, fedwon_cpu = (statistics.median(t[1] for t in runs) for runs in (bare, fedwon))
    return {
        "recipe": recipe,
        "overrides": overrides,
        "model": cfg.model.model,
        "clients_per_round": cfg.sampled_per_round,
        "rounds": rounds,
        "repeats": repeats,
        "bare_ms": bare_ms,
        "fedwon_ms": fedwon_ms,
        "overhead_ms_per_client": (fedwon_ms - bare_ms) / cfg.sampled_per_round,
        "bare_cpu_ms": bare_cpu,
        "fedwon_cpu_ms": fedwon_cpu,
        "cpu_overhead_ms_per_client": (fedwon_cpu - bare_cpu) / cfg.sampled_per_round,
    }


def to_markdown(row: Row) -> str:
    """The recipe's two rows and the per-client overhead."""
    per, cpu_per = row["overhead_ms_per_client"], row["cpu_overhead_ms_per_client"]
    return "\n".join(
        [
            "| loop | ms/round | time vs bare | overhead ms/client | CPU ms/round "
            "| CPU overhead ms/client |",
            "|---|---:|---:|---:|---:|---:|",
            f"| bare loop, same training code (1 process) | {row['bare_ms']:.1f} | 1.00x | "
            f"| {row['bare_cpu_ms']:.1f} | |",
            f"| `fedwon run` (fast engine, in-process) | {row['fedwon_ms']:.1f} "
            f"| {row['fedwon_ms'] / row['bare_ms']:.2f}x | {per:.2f} "
            f"| {row['fedwon_cpu_ms']:.1f} | {cpu_per:.2f} |",
        ]
    )


def write_docs(row: Row, command: str) -> None:
    """Write the table between the ``recipe_bench`` markers."""
    sets = " ".join(f"--set {o}" for o in row["overrides"])
    note = (
        f"`fedwon run {row['recipe']} {sets}`: {row['clients_per_round']} clients per round, "
        f"model `{row['model']}`; ms/round: median of the steady rounds of each run (not the "
        f"first, not the last), median of {row['repeats']} interleaved runs of "
        f"{row['rounds']} rounds. Overhead ms/client = (fedwon - bare) / clients per round: "
        "what the framework (engine, Flower's records, the project's ClientApp and "
        "strategy) costs per client on this recipe; CPU columns: the same from this "
        "process's CPU time (robust to other jobs sharing the machine).\n\n"
    )
    body = (
        "\n## Your recipe: `fedwon run` vs a bare loop of the same training code\n\n"
        f"Machine: {machine()}.\nCommand: `{command}`.\n\n{note}{to_markdown(row)}\n"
    )
    write_section("recipe_bench", body)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=RECIPE, help="recipe TOML (default: %(default)s)")
    parser.add_argument(
        "--set", action="append", dest="overrides", help="key=value (default: model=cnn-tiny)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="rounds per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/")
    args = parser.parse_args(argv)
    overrides = args.overrides if args.overrides is not None else list(OVERRIDES)
    row = run(args.recipe, overrides, args.rounds, args.repeats)
    print(to_markdown(row))
    if not args.no_write:
        write_docs(row, " ".join(["python -m benchmarks.recipe_bench", *sys.argv[1:]]).strip())


if __name__ == "__main__":
    main()
