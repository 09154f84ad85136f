"""The ``fedwon`` command: ``fedwon run`` a recipe, ``fedwon report`` runs side by side.

Every error a user can cause ends the command with one line on stderr naming what is wrong
and exit status 2 (``-v`` adds the traceback); an unexpected one says so, with exit status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedwon.cli_args import ManySetCommand
from fedwon.config import ConfigError, RunConfig, load_config, parse_override
from fedwon.datasets import DataError
from fedwon.deploy.cli import deploy
from fedwon.errors import error_line
from fedwon.privacy_curve import privacy_curve_cli
from fedwon.records import EPSILON_METRIC
from fedwon.results import (
    Row,
    final_metrics,
    per_domain,
    read_metrics,
    read_run_config,
    read_summary,
    run_state,
)
from fedwon.strategies import RoundFailedError
from fedwon.study.cli import study_cli

cli = typer.Typer(add_completion=False, no_args_is_help=True)  # help: main_options' docstring
cli.add_typer(study_cli, name="study")
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one unbroken line per error
cli.add_typer(deploy, name="deploy")

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


def _setup_logging(verbose: bool) -> None:
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


def default_out(recipe: Path | None, cfg: RunConfig) -> Path:
    stem = recipe.stem if recipe else "run"
    return Path("runs") / f"{stem}-{cfg.server.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The config a run directory was written with, and the overrides applied to it (whether
    a resumed run may change them is checked before anything is written)."""
    if not run_dir.is_dir():
        raise ConfigError(f"cannot resume {run_dir}: no such directory")
    cfg = read_run_config(run_dir)
    return cfg.replace(**dict(parse_override(o) for o in overrides))


def _run_config(
    recipe: Path | None,
    overrides: list[str],
    out: Path | None,
    resume: Path | None,
    overwrite: bool,
) -> tuple[RunConfig, Path]:
    """The validated config and run directory of ``fedwon run``'s arguments."""
    if resume is not None:
        if recipe is not None:
            raise ConfigError(
                "give either a recipe (a new run) or --resume DIR (continue a run), not both"
            )
        if out is not None and out.resolve() != resume.resolve():
            raise ConfigError(
                "--resume continues a run in its own directory; --out cannot move it (copy the "
                "directory first to branch a run)"
            )
        if overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it: give one")
        return _resume_config(resume, overrides), resume
    if recipe is None:
        raise ConfigError("give a recipe (e.g. sims/cross_silo.toml) or --resume DIR")
    cfg = load_config(recipe, overrides)
    return cfg, out or default_out(recipe, cfg)


def round_line(row: Row, total: int) -> str:
    """A round as one plain line (the progress shown when stdout is not a terminal)."""
    loss, acc = row.get("train_loss"), row.get("accuracy")
    parts = [f"round {row['round']}/{total}"]
    parts.append(f"train_loss {loss:.4f}" if isinstance(loss, float) else "train_loss -")
    if isinstance(acc, float):
        parts.append(f"accuracy {100 * acc:.1f}%")
    if isinstance(row.get(EPSILON_METRIC), (int, float)):
        parts.append(f"ε {row[EPSILON_METRIC]:.2f}")
    if row.get("dropped"):
        parts.append(f"dropped {row['dropped']}")
    parts.append(f"{row.get('time_s', 0):.1f} s")
    return "  ".join(parts)


@contextmanager
def round_progress(total: int) -> Iterator[Callable[[Row], None]]:
    """A progress bar on a terminal; one line per round otherwise (logs, CI, ``| tee``)."""
    if not console.is_terminal:
        yield lambda row: console.print(round_line(row, total), highlight=False, markup=False)
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("rounds", total=total)

        def on_round(row: Row) -> None:
            acc = row.get("accuracy")
            note = f" acc {100 * acc:.1f}%" if acc is not None else ""
            if isinstance(row.get(EPSILON_METRIC), (int, float)):
                note += f" ε {row[EPSILON_METRIC]:.2f}"
            progress.update(task, completed=row["round"], description=f"round {row['round']}{note}")

        yield on_round


@cli.command(cls=ManySetCommand)
def run(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe TOML (see sims/).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override: key=value; several may follow one --set (repeatable)."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory: new or empty (default runs/<recipe>-<strategy>-<time>)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its checkpoint.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace the previous run in --out (deletes its files)."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Flower's logs and tracebacks.")
    ] = False,
) -> None:
    """Run a federated simulation and write its run directory."""
    from fedwon.simulation import run_simulation

    _setup_logging(verbose)
    with one_line_errors(verbose):
        cfg, run_dir = _run_config(recipe, set_ or [], out, resume, overwrite)
    console.print(
        f"[bold]{cfg.server.strategy}[/bold] · {cfg.model.model}/{cfg.resolved_norm} · "
        f"{cfg.data.dataset} · {cfg.data.num_clients} clients ({cfg.sampled_per_round}/round) · "
        f"engine {cfg.engine.engine} → "
        f"{escape(str(run_dir))}"
    )
    console.print(escape(cfg.dp.describe(cfg.dp_check().population, cfg.data.num_clients)))
    hint = f"; continue with: fedwon run --resume {run_dir}"
    with (
        one_line_errors(verbose, interrupted_hint=hint),
        signals_interrupt(),
        round_progress(cfg.server.num_rounds) as on_round,
    ):
        outcome = run_simulation(
            cfg,
            run_dir,
            resume=resume is not None,
            overwrite=overwrite,
            on_round=on_round,
            verbose=verbose,
        )
    console.print(results_table({cfg.server.strategy: final_metrics(outcome.rows)}))
    if (line := privacy_line(outcome.summary)) is not None:
        console.print(line, highlight=False, markup=False)
    console.print(f"wrote {escape(str(run_dir))}")


def load_runs(dirs: list[Path]) -> dict[str, Row]:
    """Final metrics of each run directory, named by strategy (and directory when ambiguous);
    a run that has not reached its last round is named so, with the round it reached (or the
    privacy budget that stopped it)."""
    runs: dict[str, Row] = {}
    for d in dirs:
        rows = read_metrics(d)
        summary = read_summary(d)
        name = str((summary or {}).get("strategy", d.name))
        if name in runs:
            name = f"{name} ({d.name})"
        state = run_state(d, rows, summary)
        if state:
            name = f"{name} ({state})"
        runs[name] = final_metrics(rows)
    return runs


def plot_path(raw: str) -> Path:
    """Where ``--plot`` writes: a directory (existing, or written with a trailing ``/``) gets
    ``compare.png`` inside it; a name without suffix gets ``.png``; an unknown format is
    refused before anything is read."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(raw).expanduser()
    if raw.endswith(("/", "\\")) or path.is_dir():
        path = path / "compare.png"
    elif not path.suffix:
        path = path.with_suffix(".png")
    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in formats:
        raise ConfigError(
            f"--plot {raw}: unknown image format {path.suffix!r}; use one of "
            f"{', '.join('.' + f for f in sorted(formats))}"
        )
    return path


def plot_runs(names: list[str], dirs: list[Path], path: Path) -> None:
    """Overall accuracy per round of several runs (``names[i]`` is ``dirs[i]``) on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, d in zip(names, dirs, strict=True):
        rows = [r for r in read_metrics(d) if r.get("accuracy") is not None]
        ax.plot([r["round"] for r in rows], [r["accuracy"] for r in rows], label=name)
    ax.set_title("test accuracy per round (all domains)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds: no 2.5
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise ConfigError(f"cannot write the plot to {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)


@cli.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    plot: Annotated[
        str | None,
        typer.Option(help="Write a comparison plot to this file (or DIR/compare.png)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks.")] = False,
) -> None:
    """Compare runs: per-domain table of final accuracies (and a plot)."""
    _setup_logging(verbose)
    with one_line_errors(verbose):
        target = plot_path(plot) if plot is not None else None
        runs = load_runs(dirs)
        console.print(results_table(runs))
        if target is not None:
            plot_runs(list(runs), dirs, target)
            console.print(f"wrote {escape(str(target))}")


cli.add_typer(privacy_curve_cli, name="privacy-curve")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
