"""``fedwon report``: finished (or unfinished) runs side by side, as a table and a plot.

Owns how a run directory is named in the table (its strategy, and its state when it did not
simply finish) and the comparison plot; what a run directory holds is
:class:`fedwon.run.directory.RunDir`'s to read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedwon.cli.console import console, one_line_errors, results_table, setup_logging
from fedwon.config import ConfigError
from fedwon.run.directory import RunDir
from fedwon.run.recorder import Row, final_metrics

__all__ = ["load_runs", "plot_path", "plot_runs", "report"]


def load_runs(dirs: list[Path]) -> dict[str, Row]:
    """Final metrics of each run directory, named by strategy (and directory when ambiguous);
    a run that has not reached its last round is named so, with the round it reached (or the
    privacy budget that stopped it)."""
    runs: dict[str, Row] = {}
    for d in dirs:
        view = RunDir(d).read()
        name = str((view.summary or {}).get("strategy", d.name))
        if name in runs:
            name = f"{name} ({d.name})"
        note = view.note()
        if note:
            name = f"{name} ({note})"
        runs[name] = final_metrics(view.rows)
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
        rows = [r for r in RunDir(d).metrics() if r.get("accuracy") is not None]
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


def report(
    dirs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    plot: Annotated[
        str | None,
        typer.Option(help="Write a comparison plot to this file (or DIR/compare.png)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks.")] = False,
) -> None:
    """Compare runs: per-domain table of final accuracies (and a plot)."""
    setup_logging(verbose)
    with one_line_errors(verbose):
        target = plot_path(plot) if plot is not None else None
        runs = load_runs(dirs)
        console.print(results_table(runs))
        if target is not None:
            plot_runs(list(runs), dirs, target)
            console.print(f"wrote {escape(str(target))}")
