"""The benchmarks still run: `make bench` is not part of `make test`, so without this a refactor
can break a benchmark unnoticed (the recipe benchmark once called a client function with the run
config). Tiny schedules; the numbers are not checked, only that both loops ran every round."""

from __future__ import annotations

import math

from benchmarks import recipe_bench


def test_recipe_benchmark_runs_both_loops_and_reports_the_overhead() -> None:
    overrides = ["model=cnn-tiny", "num_clients=20", "clients_per_round=4", "train_per_domain=40"]
    row = recipe_bench.run(recipe_bench.RECIPE, overrides, rounds=4, repeats=1)
    assert row["clients_per_round"] == 4 and row["model"] == "cnn-tiny"
    for key in ("bare_ms", "fedwon_ms", "overhead_ms_per_client", "cpu_overhead_ms_per_client"):
        assert math.isfinite(row[key]), key
    assert row["bare_ms"] > 0 and row["fedwon_ms"] > 0
    assert "| `fedwon run` (fast engine, in-process) |" in recipe_bench.to_markdown(row)
