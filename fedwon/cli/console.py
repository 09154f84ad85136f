"""What every ``fedwon`` subcommand prints through: the consoles, one-line errors, signals,
logging and the results table.

The bottom of :mod:`fedwon.cli`: each subcommand module imports this one and the library, never
another subcommand. Every error a user can cause ends a command with one line on stderr naming
what is wrong and exit status 2 (``-v`` adds the traceback); an unexpected one says so, with exit
status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedwon.common.errors import error_line
from fedwon.config import ConfigError
from fedwon.datasets import DataError
from fedwon.protocol import EPSILON_METRIC
from fedwon.run.recorder import Row, per_domain
from fedwon.strategies import RoundFailedError

__all__ = [
    "USER_ERRORS",
    "console",
    "errors",
    "fail",
    "one_line_errors",
    "privacy_line",
    "results_table",
    "setup_logging",
    "signals_interrupt",
]

console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one unbroken line per error

# What a user can cause: bad config, data, paths, or clients all failing on the given settings.
USER_ERRORS = (ConfigError, DataError, RoundFailedError, OSError)


def fail(err: Exception | str) -> typer.Exit:
    """Print ``err`` as one line and return the exit (code 2: bad input) to raise."""
    text = err if isinstance(err, str) else error_line(err, with_type=False)
    errors.print(f"[red]error:[/red] {escape(text)}", highlight=False)
    return typer.Exit(2)


@contextmanager
def one_line_errors(verbose: bool, interrupted_hint: str = "") -> Iterator[None]:
    """Turn any exception into one line and an exit status (the traceback only with ``-v``)."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        errors.print(f"[red]interrupted[/red]{escape(interrupted_hint)}", highlight=False)
        raise typer.Exit(130) from None
    except SystemExit as stop:
        # Ray's driver turns SIGTERM into SystemExit (after ray.init replaced our handler)
        if not interrupted_hint or stop.code in (0, None):
            raise
        errors.print(f"[red]stopped[/red]{escape(interrupted_hint)}", highlight=False)
        raise typer.Exit(stop.code if isinstance(stop.code, int) else 1) from None
    except USER_ERRORS as err:
        if verbose:
            traceback.print_exc()
        raise fail(err) from None
    except Exception as err:
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run with -v for the traceback)"
        errors.print(f"[red]error:[/red] {escape(error_line(err))}{hint}", highlight=False)
        raise typer.Exit(1) from None


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP end the run like Ctrl-C: ``finally`` blocks run, Ray is shut down."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While running, SIGTERM and SIGHUP raise KeyboardInterrupt instead of killing the
    process outright (which would leave Ray's processes behind). ``ray.init`` replaces the
    SIGTERM handler with its own, which raises ``SystemExit`` (also a clean exit); Ray's C++
    failure handler, which would dump a stack and abort instead, is switched off."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def setup_logging(verbose: bool) -> None:
    """Warnings (ours and Flower's errors) by default; ``-v``: INFO, fedwon's DEBUG (client
    tracebacks) and Flower's own lines once (Flower prints through its own handler)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("flwr").propagate = False
    # Opacus' RDP accountant warns when the best order is the largest one it tried: a larger
    # order might give a slightly smaller ε. The ε it returns is still a valid upper bound, so
    # the warning (once per round, with no action for the user) is noise on a DP run's screen.
    warnings.filterwarnings(
        "ignore", message="Optimal order is the largest alpha", category=UserWarning
    )
    if verbose:
        logging.getLogger("fedwon").setLevel(logging.DEBUG)


def _fmt(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else "-"


def _fmt_epsilon(row: Row) -> str:
    eps = row.get(EPSILON_METRIC)
    return f"{eps:.2f}" if isinstance(eps, (int, float)) else "-"


def results_table(runs: dict[str, Row], title: str = "final test accuracy (%)") -> Table:
    """One row per run, one column per domain plus the overall accuracy, and the ε spent
    when any run is differentially private (a DP result without its ε is half a result)."""
    domains = sorted({d for row in runs.values() for d in per_domain(row)})
    private = any(row.get(EPSILON_METRIC) is not None for row in runs.values())
    table = Table(title=title)
    table.add_column("run")
    for domain in domains:
        table.add_column(domain, justify="right")
    table.add_column("all", justify="right", style="bold")
    if private:
        table.add_column("ε", justify="right")
    for name, row in runs.items():
        pd = per_domain(row)
        cells = [name, *[_fmt(pd.get(d)) for d in domains], _fmt(row.get("accuracy"))]
        table.add_row(*cells, *([_fmt_epsilon(row)] if private else []))
    return table


def privacy_line(summary: dict[str, Any]) -> str | None:
    """The guarantee a finished DP run gives, in one line (None without DP): the table shows
    ε, this adds δ and the level, without which ε means nothing."""
    privacy = summary.get("privacy")
    if not privacy or privacy.get("epsilon") is None:
        return None
    level = "user-level" if privacy.get("level") == "user" else "sample-level (worst client)"
    return f"privacy: ε = {privacy['epsilon']:.2f} at δ = {privacy['delta']:g}, {level} DP"
