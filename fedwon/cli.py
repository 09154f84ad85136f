"""The ``fedwon`` command: ``fedwon run`` a recipe, ``fedwon report`` runs side by side."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedwon.config import ConfigError, RunConfig, load_config, parse_override
from fedwon.datasets import DataError
from fedwon.deploy.cli import deploy
from fedwon.results import Row, final_metrics, per_domain, read_metrics, read_run_config

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one unbroken line per error
cli.add_typer(deploy, name="deploy")


def fail(err: Exception) -> typer.Exit:
    """Print ``err`` as one line and return the exit (code 2: bad input) to raise."""
    errors.print(f"[red]error:[/red] {err}", highlight=False)
    return typer.Exit(2)


def _fmt(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else "-"


def results_table(runs: dict[str, Row], title: str = "final test accuracy (%)") -> Table:
    """One row per run, one column per domain plus the overall accuracy."""
    domains = sorted({d for row in runs.values() for d in per_domain(row)})
    table = Table(title=title)
    table.add_column("run")
    for domain in domains:
        table.add_column(domain, justify="right")
    table.add_column("all", justify="right", style="bold")
    for name, row in runs.items():
        pd = per_domain(row)
        table.add_row(name, *[_fmt(pd.get(d)) for d in domains], _fmt(row.get("accuracy")))
    return table


def default_out(recipe: Path | None, cfg: RunConfig) -> Path:
    stem = recipe.stem if recipe else "run"
    return Path("runs") / f"{stem}-{cfg.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    cfg = read_run_config(run_dir)
    return cfg.replace(**dict(parse_override(o) for o in overrides))


@cli.command()
def run(
    recipe: Annotated[Path | None, typer.Argument(help="recipe TOML (see sims/)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="override: key=value (repeatable)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/...)")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue the run in this directory from its checkpoint")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Flower's logs")] = False,
) -> None:
    """Run a federated simulation and write its run directory."""
    from fedwon.simulation import run_simulation

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    overrides = set_ or []
    try:
        if resume is not None:
            cfg = _resume_config(resume, overrides)
            out = resume
        elif recipe is None:
            raise ConfigError("give a recipe (e.g. sims/cross_silo.toml) or --resume DIR")
        else:
            cfg = load_config(recipe, overrides)
    except (ConfigError, FileNotFoundError) as err:
        raise fail(err) from None
    out = out or default_out(recipe, cfg)
    console.print(
        f"[bold]{cfg.strategy}[/bold] · {cfg.model}/{cfg.resolved_norm} · {cfg.dataset} · "
        f"{cfg.num_clients} clients ({cfg.sampled_per_round}/round) · engine {cfg.engine} → {out}"
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("rounds", total=cfg.num_rounds)

        def on_round(row: Row) -> None:
            acc = row.get("accuracy")
            note = f" acc {100 * acc:.1f}%" if acc is not None else ""
            progress.update(task, completed=row["round"], description=f"round {row['round']}{note}")

        try:
            outcome = run_simulation(
                cfg, out, resume=resume is not None, on_round=on_round, verbose=verbose
            )
        except (ConfigError, DataError) as err:
            raise fail(err) from None
    console.print(results_table({cfg.strategy: final_metrics(outcome.rows)}))
    console.print(f"wrote {out}")


def load_runs(dirs: list[Path]) -> dict[str, Row]:
    """Final metrics of each run directory, named by strategy (and directory when ambiguous)."""
    runs: dict[str, Row] = {}
    for d in dirs:
        summary_path = d / "summary.json"
        name = json.loads(summary_path.read_text())["strategy"] if summary_path.exists() else d.name
        if name in runs:
            name = f"{name} ({d.name})"
        runs[name] = final_metrics(read_metrics(d))
    return runs


def plot_runs(names: list[str], dirs: list[Path], path: Path) -> None:
    """Overall accuracy per round of several runs (``names[i]`` is ``dirs[i]``) on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, d in zip(names, dirs, strict=True):
        rows = [r for r in read_metrics(d) if r.get("accuracy") is not None]
        ax.plot([r["round"] for r in rows], [r["accuracy"] for r in rows], label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@cli.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="run directories")],
    plot: Annotated[Path | None, typer.Option(help="write a comparison plot here")] = None,
) -> None:
    """Compare finished runs: per-domain table (and a plot)."""
    try:
        runs = load_runs(dirs)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise fail(err) from None
    console.print(results_table(runs))
    if plot is not None:
        plot_runs(list(runs), dirs, plot)
        console.print(f"wrote {plot}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
