"""A DP run shows its ε on screen (each round, the final table, δ beside it), and Opacus'
"optimal order" warning does not drown it."""

import warnings

from rich.console import Console

from fedwon.cli.console import privacy_line, results_table, setup_logging
from fedwon.cli.run import round_line
from fedwon.privacy import compute_epsilon


def test_round_line_shows_epsilon_only_under_dp() -> None:
    row = {"round": 3, "train_loss": 0.5, "accuracy": 0.8, "epsilon": 2.345, "time_s": 1.0}
    assert round_line(row, 10) == "round 3/10  train_loss 0.5000  accuracy 80.0%  ε 2.35  1.0 s"
    del row["epsilon"]
    assert "ε" not in round_line(row, 10)


def test_results_table_has_an_epsilon_column_when_a_run_is_private() -> None:
    def render(runs: dict[str, dict[str, float]]) -> str:
        console = Console(width=200, record=True)
        console.print(results_table(runs))
        return console.export_text()

    private = render({"dp": {"accuracy": 0.5, "epsilon": 7.994}, "plain": {"accuracy": 0.6}})
    assert "ε" in private and "7.99" in private
    assert "ε" not in render({"plain": {"accuracy": 0.6}})


def test_privacy_line_names_epsilon_delta_and_level() -> None:
    summary = {"privacy": {"level": "user", "epsilon": 7.994, "delta": 1e-4}}
    assert privacy_line(summary) == "privacy: ε = 7.99 at δ = 0.0001, user-level DP"
    assert privacy_line({}) is None


def test_the_optimal_order_warning_is_silenced_by_the_cli() -> None:
    """z = 50 at q = 0.01 makes the largest RDP order optimal: Opacus warns, the CLI does not."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compute_epsilon(50.0, 0.01, 1, 1e-5)
        assert any("Optimal order is the largest alpha" in str(w.message) for w in seen)
        seen.clear()
        setup_logging(False)
        compute_epsilon(50.0, 0.01, 1, 1e-5)
        assert not seen, [str(w.message) for w in seen]


def test_the_banner_says_whether_dp_is_on_at_what_target_and_for_which_population() -> None:
    """`fedwon run` prints this line before anything trains: DP is never silently off."""
    from fedwon.config import make_config

    assert make_config({}).dp.describe(5, 5) == "DP off"
    dp = make_config(
        {"num_clients": 20, "clients_per_round": 5, "min_clients": 5, "dp.enabled": True}
        | {"dp.target_epsilon": 8.0, "dp.population": 100_000, "dp.delta": 1e-6}
    )
    line = dp.dp.describe(dp.dp_check().population, dp.data.num_clients)
    assert line.startswith("DP user-level: target epsilon 8 at delta 1e-06")
    assert line.endswith("epsilon stated for a population of 100000 (simulated: 20)")
