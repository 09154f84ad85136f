"""The benchmarks still run: `make bench` is not part of `make test`, so without this a refactor
can break a benchmark unnoticed (the recipe benchmark once called a client function with the run
config). Tiny schedules; the numbers are not checked, only that both loops ran every round."""

from __future__ import annotations

import math

from benchmarks import deploy_bench, recipe_bench


def test_recipe_benchmark_runs_both_loops_and_reports_the_overhead() -> None:
    overrides = ["model=cnn-tiny", "num_clients=20", "clients_per_round=4", "train_per_domain=40"]
    row = recipe_bench.run(recipe_bench.RECIPE, overrides, rounds=4, repeats=1)
    assert row["clients_per_round"] == 4 and row["model"] == "cnn-tiny"
    for key in ("bare_ms", "fedwon_ms", "overhead_ms_per_client", "cpu_overhead_ms_per_client"):
        assert math.isfinite(row[key]), key
    assert row["bare_ms"] > 0 and row["fedwon_ms"] > 0
    assert "| `fedwon run` (fast engine, in-process) |" in recipe_bench.to_markdown(row)


def test_deploy_benchmark_table_compares_each_deployment_with_the_simulated_run() -> None:
    rows = [{"round": 1, "accuracy": 0.5, "time_s": 1.0}]
    deployed = [
        {"variant": v, "rounds": [9.0, 3.0, 2.0], "wall": 30.0, "rows": rows}
        for v in deploy_bench.VARIANTS
    ]
    deployed[-1]["rows"] = [{"round": 1, "accuracy": 0.4, "time_s": 1.0}]
    simulated = {"rounds": [1.0, 0.2, 0.2], "wall": 2.0, "rows": [{**rows[0], "time_s": 0.1}]}
    table = deploy_bench.to_markdown(
        {"deployed": deployed, "simulated": simulated, "evaluations": 3}
    )
    lines = table.splitlines()
    assert lines[2].startswith("| warm workers, fedwon's polls (the default) | 9.0 | 3.0 | 2.0 |")
    assert lines[2].endswith("| 2.5 | 30 | yes |")  # steady: rounds 2 and 3
    assert lines[5].endswith("| NO |")  # other metrics than simulated
    assert "= 6.3 s" in table  # 1.5 x 0.2 + 3 s x 2 phases


def test_cross_device_rows_run_and_fedwons_weights_equal_their_lean_loops() -> None:
    """The in-process rows of `make bench`'s anchor table (a few rounds each): each fedwon row
    ends with the weights of the lean loop doing the same work, bit for bit -- Flower's FedAvg
    those of the FedAvg lean loop, the round rules' streamed mean those of the streamed one."""
    import torch

    from benchmarks import cross_device_bench, overhead_breakdown

    torch.set_num_threads(1)
    systems = cross_device_bench.in_process_systems()
    for system in systems:
        system.runs.append(system.run(cross_device_bench.WARMUP_ROUNDS + 2))
    rows = {r["key"]: r for r in cross_device_bench.summarise(systems) if not r.get("missing")}
    assert rows["fast"]["equal_to_lean"] and rows["fast-stream"]["equal_to_lean"]
    assert rows["fast-stream"]["limit"] == "lean-stream" and "overhead_spread" in rows["fast"]
    # the tutorial ClientApp's calls alone (the floor under the engine): the same weights
    assert rows["lean-calls"]["equal_to_lean"] and rows["lean-calls"]["limit"] == "lean-stream"
    table = cross_device_bench.speed_markdown(list(rows.values()))
    assert "`RoundRules(FedAvg)`: streamed" in table
    steps = overhead_breakdown.measure(num_rounds=overhead_breakdown.WARMUP_ROUNDS + 2, repeats=1)
    assert "overhead per client" in overhead_breakdown.to_markdown(steps)
    assert "What is left" in overhead_breakdown.bound_note(steps)
