"""The ``fedwon`` command: the typer app assembled from one module per subcommand.

``fedwon run`` a recipe (:mod:`fedwon.cli.run`), ``fedwon report`` runs side by side
(:mod:`fedwon.cli.report`), ``fedwon study`` (:mod:`fedwon.cli.study`), ``fedwon deploy``
(:mod:`fedwon.cli.deploy`), ``fedwon privacy-curve`` (:mod:`fedwon.cli.privacy_curve`) and
``fedwon data export`` (:mod:`fedwon.cli.data`). Each
imports the bottom module :mod:`fedwon.cli.console` (one-line errors, tables, signals, logging)
and the library, never another subcommand; nothing outside this package imports it but the
entry points (``[project.scripts]``, ``python -m fedwon.cli``, ``make demo``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from fedwon.cli import data, deploy, privacy_curve, report, run, study
from fedwon.cli.args import ManySetCommand
from fedwon.cli.console import console, results_table

__all__ = ["cli", "main", "results_table"]

cli = typer.Typer(add_completion=False, no_args_is_help=True)  # help: main_options' docstring
cli.add_typer(study.study_cli, name="study")
cli.add_typer(deploy.deploy, name="deploy")
cli.command(cls=ManySetCommand)(run.run)
cli.command()(report.report)
cli.add_typer(privacy_curve.privacy_curve_cli, name="privacy-curve")
cli.add_typer(data.data_cli, name="data")


def _print_version(value: bool) -> None:
    if value:
        try:
            console.print(f"fedwon {version('fedwon')}", highlight=False)
        except PackageNotFoundError:
            console.print("fedwon (not installed: no version)", highlight=False)
        raise typer.Exit()


@cli.callback()
def main_options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """Federated learning without normalization (FedWon) and its baselines FedAvg and FedBN:
    run recipes as simulations, compare finished runs."""


def main() -> None:
    cli()
