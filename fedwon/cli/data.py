"""``fedwon data export``: the embedded digits written as a Hugging Face data set on disk.

Owns the command's options and the lines it prints; writing is
:func:`fedwon.datasets.export.export_embedded`'s. The folder it writes is what
``dataset = "hf"`` reads, so a user can try the Hugging Face path (and see the format their own
data must have) without a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedwon.cli.console import console, one_line_errors, setup_logging
from fedwon.datasets.export import export_embedded

__all__ = ["data_cli", "export"]

data_cli = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Bring data in and out of fedwon."
)


def _not_set(value: int) -> int | None:
    return value or None


@data_cli.command()
def export(
    out: Annotated[Path, typer.Option(help="a new (or empty) folder for the saved DatasetDict")],
    train_per_domain: Annotated[
        int, typer.Option(min=0, help="training images per domain (0: the default, 743)")
    ] = 0,
    test_per_domain: Annotated[
        int, typer.Option(min=0, help="test images per domain (0: the default, 400)")
    ] = 0,
    seed: Annotated[int, typer.Option(min=0, help="the seed the images are built with")] = 0,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="tracebacks on error")] = False,
) -> None:
    """Write the embedded digits as a Hugging Face DatasetDict (splits train and test, columns
    image, label, domain) for dataset = "hf"."""
    setup_logging(verbose)
    with one_line_errors(verbose):
        path = export_embedded(
            out,
            train_per_domain=_not_set(train_per_domain),
            test_per_domain=_not_set(test_per_domain),
            seed=seed,
        )
    console.print(
        f"wrote {path} (splits train and test; columns image, label, domain). Train on it with: "
        f"fedwon run sims/cross_silo.toml --set dataset=hf data_root={path} "
        "domain_column=domain partition=natural_id",
        highlight=False,
        soft_wrap=True,
    )
