"""``fedwon run``: a recipe (or a run to resume) as a simulation, with its round progress.

Owns the command's arguments (recipe, ``--set``, ``--out``, ``--resume``, ``--overwrite``,
``--track``: the recipe key ``track``, as ``--set track=...`` would set it), the
default run directory, and how rounds are shown while the run trains: a progress bar on a
terminal, one plain line per round otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedwon.cli.args import SET_OPTION
from fedwon.cli.console import (
    console,
    one_line_errors,
    privacy_line,
    results_table,
    setup_logging,
    signals_interrupt,
)
from fedwon.config import ConfigError, RunConfig, load_config, parse_override
from fedwon.protocol import EPSILON_METRIC
from fedwon.run.directory import RunDir
from fedwon.run.recorder import Row, final_metrics

__all__ = ["default_out", "round_line", "round_progress", "run"]


def default_out(recipe: Path | None, cfg: RunConfig) -> Path:
    stem = recipe.stem if recipe else "run"
    return Path("runs") / f"{stem}-{cfg.server.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The config a run directory was written with, and the overrides applied to it (whether
    a resumed run may change them is checked before anything is written)."""
    if not run_dir.is_dir():
        raise ConfigError(f"cannot resume {run_dir}: no such directory")
    cfg = RunDir(run_dir).config()
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


def run(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe TOML (see sims/).")] = None,
    set_: Annotated[list[str] | None, SET_OPTION] = None,
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
    track: Annotated[
        str | None,
        typer.Option(
            help="Also send each round to these trackers: tensorboard,mlflow,wandb (any of them; "
            "the recipe key track). Local by default; pip install 'fedwon[track]'.",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Flower's logs and tracebacks.")
    ] = False,
) -> None:
    """Run a federated simulation and write its run directory."""
    from fedwon.simulation import run_simulation

    setup_logging(verbose)
    with one_line_errors(verbose):
        overrides = [*(set_ or []), *([f"track={track}"] if track is not None else [])]
        cfg, run_dir = _run_config(recipe, overrides, out, resume, overwrite)
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
