"""``make bench``: every benchmark, side by side on this machine, into docs/benchmarks.md.

python -m benchmarks.run [--quick]
    [--only layer,cross_device,memory,scaling,recipe,cross_silo,dp,dp_run]
"""

from __future__ import annotations

import argparse
import logging
import sys

from benchmarks import (
    cross_device_bench,
    cross_silo_bench,
    dp_bench,
    dp_run_bench,
    layer_bench,
    recipe_bench,
    scaling_bench,
)
from benchmarks.report import DOC, write_section

ALL = ("layer", "cross_device", "memory", "scaling", "recipe", "cross_silo", "dp", "dp_run")


def write_cross_silo(rows: list[dict], command: str) -> None:
    body = (
        "\n## Cross-silo: 5 clients, digits-embedded, `cnn` (FedWon), steady state\n\n"
        f"Machine: {cross_device_bench.machine()}.\nCommand: `{command}`.\n\n"
        "Workload: one client per domain, 743 images each, batch 32, 1 local epoch, "
        "FedBN's DigitModel with scaled WS (14.2M parameters). s/round: median of the rounds "
        "between the first (start-up) and the last (evaluation). One torch thread per client "
        "everywhere (`cpus_per_client`=1); the Ray and Flower rows run two clients at once.\n\n"
        f"{cross_silo_bench.to_markdown(rows)}\n"
    )
    write_section("cross_silo_bench", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    parser.add_argument("--only", default=",".join(ALL), help=f"subset of {','.join(ALL)}")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(ALL):
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(ALL)}")
    logging.basicConfig(level=logging.WARNING)
    command = " ".join(["python -m benchmarks.run", *sys.argv[1:]]).strip()  # `make bench`
    if "layer" in only:
        rows = layer_bench.run(quick=args.quick)
        table = layer_bench.to_markdown(rows)
        print(table)
        layer_bench.write_docs(table, command)
    device_rows = []
    if "cross_device" in only:  # speed rows, then the memory rows
        device_rows = cross_device_bench.run(quick=args.quick)
    elif "memory" in only:
        device_rows = cross_device_bench.run_memory(quick=args.quick)
    if device_rows:
        print(cross_device_bench.to_markdown(device_rows))
        cross_device_bench.write_docs(device_rows, command)
    if "scaling" in only:
        scaling_rows = scaling_bench.run(quick=args.quick)
        print(scaling_bench.to_markdown(scaling_rows))
        scaling_bench.write_docs(scaling_rows, command)
    if "recipe" in only:
        recipe_row = recipe_bench.run(
            recipe_bench.RECIPE,
            list(recipe_bench.OVERRIDES),
            rounds=6 if args.quick else 20,
            repeats=1 if args.quick else 3,
        )
        print(recipe_bench.to_markdown(recipe_row))
        recipe_bench.write_docs(recipe_row, command)
    if "cross_silo" in only:
        silo_rows = cross_silo_bench.run(quick=args.quick)
        print(cross_silo_bench.to_markdown(silo_rows))
        write_cross_silo(silo_rows, command)
    if "dp" in only:
        dp_rows = dp_bench.run(quick=args.quick)
        print(dp_bench.to_markdown(dp_rows))
        dp_bench.write_docs(dp_rows, command)
    if "dp_run" in only:
        dp_run_rows = dp_run_bench.run(*((4, 1) if args.quick else (12, 2)))
        print(dp_run_bench.to_markdown(dp_run_rows))
        dp_run_bench.write_docs(dp_run_rows, command)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
