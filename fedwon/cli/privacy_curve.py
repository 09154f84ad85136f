"""``fedwon privacy-curve``: run (or reuse) the privacy–utility arms and write the table and plot.

Owns the command's options, its default cache and output folders and the command line recorded
in the results; the arms, table and plot are :mod:`fedwon.study.privacy_curve`'s.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedwon.cli.console import one_line_errors
from fedwon.config import ConfigError
from fedwon.study.privacy_curve import RECIPE, CurvePlan, arm_line, quick_plan, run_curve

__all__ = ["privacy_curve", "privacy_curve_cli"]

privacy_curve_cli = typer.Typer(add_completion=False)


@privacy_curve_cli.callback(invoke_without_command=True)
def privacy_curve(
    quick: Annotated[
        bool, typer.Option("--quick", help="a tiny federation, one round: the pipeline only")
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
    """Privacy–utility table and plot: per-layer clipping + LAMB vs flat clipping + FedAvg."""
    logging.basicConfig(level=logging.WARNING)
    # Opacus notes when the best RDP order is at the end of its range (small epsilons)
    warnings.filterwarnings("ignore", message="Optimal order is the")
    plan = quick_plan(recipe) if quick else CurvePlan(recipe)
    cache = cache or Path("runs/privacy-curve-quick" if quick else "runs/privacy-curve")
    out = out or (cache / "report" if quick else Path("docs"))
    command = "fedwon privacy-curve" + (" --quick" if quick else "")
    if recipe != RECIPE:
        command += f" --recipe {recipe}"
    console = Console(soft_wrap=True)
    console.print(f"privacy-curve: {len(plan.arms())} runs under {cache}, results to {out}")
    with one_line_errors(verbose=False):
        if not recipe.is_file():
            raise ConfigError(f"recipe {str(recipe)!r} not found")
        results = run_curve(
            plan,
            cache,
            out,
            command,
            on_arm=lambda done, total, result: console.print(
                arm_line(done, total, result), highlight=False
            ),
        )
    seconds = results["seconds"]
    console.print(f"wrote {out / 'privacy_results.md'} ({seconds:.0f} s of training)")
