"""``fedwon privacy-curve``: run (or reuse) the privacy–utility arms and write the table and plot.

Two plans: ``--plan epsilon`` (the default: Apple's ablation against ε on the recipe,
:mod:`fedwon.study.privacy_curve`) and ``--plan population`` (accuracy against the population
with a stated cohort rule, and per-layer clipping on a deep model over seeds,
:mod:`fedwon.study.population_curve`, whose run records are committed and whose tables
``--records-only`` rebuilds without training). This module owns the command's options, its
default cache, record and output folders and the command line recorded in the results.
"""

from __future__ import annotations

import logging
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedwon.cli.console import one_line_errors
from fedwon.config import ConfigError
from fedwon.study import population_curve
from fedwon.study.privacy_curve import RECIPE, CurvePlan, arm_line, quick_plan, run_curve

__all__ = ["privacy_curve", "privacy_curve_cli"]

privacy_curve_cli = typer.Typer(add_completion=False)


class Plan(str, Enum):
    epsilon = "epsilon"
    population = "population"


@privacy_curve_cli.callback(invoke_without_command=True)
def privacy_curve(
    quick: Annotated[
        bool, typer.Option("--quick", help="a tiny federation, one round: the pipeline only")
    ] = False,
    plan: Annotated[
        Plan,
        typer.Option(
            "--plan",
            help="epsilon: the ablation against ε; population: accuracy against the population "
            "N and per-layer clipping on a deep model",
        ),
    ] = Plan.epsilon,
    records: Annotated[
        Path | None,
        typer.Option(help="--plan population: where each finished run's record is kept"),
    ] = None,
    records_only: Annotated[
        bool,
        typer.Option(
            "--records-only",
            help="--plan population: build the tables from the records, train nothing",
        ),
    ] = False,
    recipe: Annotated[Path, typer.Option(help="the DP recipe every arm starts from")] = RECIPE,
    cache: Annotated[
        Path | None,
        typer.Option(help="run directories (reused when finished, resumed when interrupted)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="where privacy_results.md/.json and img/ go")
    ] = None,
) -> None:
    """Privacy–utility table and plot: per-layer clipping + LAMB vs flat clipping + FedAvg
    against ε, or (--plan population) against the population."""
    logging.basicConfig(level=logging.WARNING)
    # Opacus notes when the best RDP order is at the end of its range (small epsilons)
    warnings.filterwarnings("ignore", message="Optimal order is the")
    if plan is Plan.population:
        population(quick, recipe, cache, out, records, records_only)
        return
    if records is not None or records_only:
        with one_line_errors(verbose=False):
            raise ConfigError("--records and --records-only belong to --plan population")
    curve_plan = quick_plan(recipe) if quick else CurvePlan(recipe)
    cache = cache or Path("runs/privacy-curve-quick" if quick else "runs/privacy-curve")
    out = out or (cache / "report" if quick else Path("docs"))
    command = "fedwon privacy-curve" + (" --quick" if quick else "")
    if recipe != RECIPE:
        command += f" --recipe {recipe}"
    console = Console(soft_wrap=True)
    console.print(f"privacy-curve: {len(curve_plan.arms())} runs under {cache}, results to {out}")
    with one_line_errors(verbose=False):
        if not recipe.is_file():
            raise ConfigError(f"recipe {str(recipe)!r} not found")
        results = run_curve(
            curve_plan,
            cache,
            out,
            command,
            on_arm=lambda done, total, result: console.print(
                arm_line(done, total, result), highlight=False
            ),
        )
    seconds = results["seconds"]
    console.print(f"wrote {out / 'privacy_results.md'} ({seconds:.0f} s of training)")


def population(
    quick: bool,
    recipe: Path,
    cache: Path | None,
    out: Path | None,
    records: Path | None,
    records_only: bool,
) -> None:
    """``--plan population``: records under docs/privacy_study/ (quick: under the cache),
    the tables to docs/privacy_population.md."""
    plan = population_curve.quick_plan(recipe) if quick else population_curve.full_plan(recipe)
    name = "privacy-population" + ("-quick" if quick else "")
    cache = cache or Path("runs") / name
    records = records or (cache / "records" if quick else Path("docs/privacy_study"))
    out = out or (cache / "report" if quick else Path("docs"))
    command = "fedwon privacy-curve --plan population" + (" --quick" if quick else "")
    if recipe != RECIPE:
        command += f" --recipe {recipe}"
    console = Console(soft_wrap=True)
    where = (
        f"records from {records}" if records_only else f"runs under {cache}, records in {records}"
    )
    console.print(f"privacy-curve --plan population: {len(plan.arms())} {where}, results to {out}")
    with one_line_errors(verbose=False):
        if not recipe.is_file():
            raise ConfigError(f"recipe {str(recipe)!r} not found")
        results = population_curve.run_population(
            plan,
            cache,
            records,
            out,
            command,
            records_only=records_only,
            on_arm=lambda done, total, result, arm: console.print(
                population_curve.arm_line(done, total, result, arm), highlight=False
            ),
        )
    missing = f", {len(results['missing'])} arms without a record" if results["missing"] else ""
    console.print(
        f"wrote {out / 'privacy_population.md'} ({results['seconds']:.0f} s of training{missing})"
    )
