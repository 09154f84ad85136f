"""``fedwon study``: run (or reuse) the study's runs and write the report.

Owns the command's options, its default cache and report folders, and the one line printed per
run and at the end; the study itself is :mod:`fedwon.study`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedwon.cli.console import fail, one_line_errors
from fedwon.study.plan import PLANS
from fedwon.study.runs import RunRecord

study_cli = typer.Typer(
    add_completion=False, help="Reproduce the FedWon paper's comparisons and write the report."
)
console = Console(soft_wrap=True)  # one line per run, however narrow the terminal

DEFAULT_CACHE = {"full": Path("runs/study"), "quick": Path("runs/study-quick")}
DEFAULT_RECORDS = {"full": Path("docs/study"), "quick": Path("runs/study-quick/records")}
DEFAULT_OUT = {"full": Path("docs"), "quick": Path("runs/study-quick/report")}


def progress_line(done: int, total: int, record: RunRecord) -> str:
    """``[ 3/57] cross_silo fedwon lr=0.05 clip=0.32 seed 0 (tune) to 8 rounds: trained in
    12s · val 71.2%``"""
    width = len(str(total))
    how = {"failed": "FAILED"}.get(record.status, record.status)
    if record.status in ("trained", "resumed", "cached"):
        how += f" in {record.seconds:.0f}s"
    scores = []
    val = record.val_at(record.rounds)
    if val is not None:
        scores.append(f"val {100 * val:.1f}%")
    if record.test.get("accuracy") is not None:
        scores.append(f"test {100 * record.test['accuracy']:.1f}%")
    if record.heldout:
        scores.append(f"held-out {100 * record.heldout['accuracy']:.1f}%")
    if record.error:
        scores.append(record.error)
    to = f" to {record.rounds} rounds"
    line = f"[{done:>{width}}/{total}] {record.spec.describe()}{to}: {how}"
    return line + "".join(f" · {s}" for s in scores)


@study_cli.callback(invoke_without_command=True)
def study(
    quick: Annotated[
        bool, typer.Option("--quick", help="tiny model, data and rounds: the pipeline in minutes")
    ] = False,
    cache: Annotated[
        Path | None,
        typer.Option(help="run directories with checkpoints (resumed from rung to rung)"),
    ] = None,
    records: Annotated[
        Path | None,
        typer.Option(
            help="each run's small record (config, metrics, summary, validation): a run "
            "whose record answers is not trained (default docs/study; with --quick "
            "runs/study-quick/records)"
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="where results.md, results.json and img/ go")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="runs trained in parallel processes")] = 1,
    part: Annotated[
        list[str] | None,
        typer.Option(
            "--part",
            help="only this part (repeatable; with the part it reuses): "
            + ", ".join(p.name for p in PLANS["full"].parts),
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            help="where every run trains: auto (a GPU when torch sees one), cpu or cuda; "
            "with --jobs N, N runs share the GPU"
        ),
    ] = "auto",
    records_only: Annotated[
        bool,
        typer.Option(
            "--records-only",
            help="train nothing: every run must be answered by its record (an error names "
            "the first that is not); checks that a report is its records' alone",
        ),
    ] = False,
    estimate: Annotated[
        bool,
        typer.Option(
            "--estimate",
            help="print what the plan trains and what it costs at the pilot's speed; run nothing",
        ),
    ] = False,
) -> None:
    """Reproduce the FedWon paper's comparisons: tune on validation, run seeds, write report."""
    from fedwon.study.report import write_report
    from fedwon.study.runner import run_study

    logging.basicConfig(level=logging.WARNING)
    base = PLANS["quick" if quick else "full"]
    try:
        plan = base.only(part) if part else base
    except KeyError as err:
        raise fail(ValueError(err.args[0])) from None
    if device not in ("auto", "cpu", "cuda"):
        raise fail(f"--device must be auto, cpu or cuda, got {device!r}")
    plan = plan.on_device(device)
    if estimate:  # priced at the CPU pilot's speed whatever the device
        from fedwon.study.budget import table

        console.print(table(plan, jobs), highlight=False)
        return
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise fail("--device cuda: torch sees no CUDA device on this machine (use auto or cpu)")
    cache = cache or DEFAULT_CACHE[base.name]
    records = records or DEFAULT_RECORDS[base.name]
    out = out or DEFAULT_OUT[base.name]
    command = " ".join(
        ["fedwon study", *(["--quick"] if quick else []), *(f"--part {p}" for p in part or [])]
    )
    console.print(
        f"[bold]study[/bold] plan {plan.name}: runs under {cache}, records in {records}, "
        f"report to {out}"
    )
    with one_line_errors(verbose=False):  # e.g. the cache is in use by another study
        results = run_study(
            plan,
            cache,
            records=records,
            command=command,
            jobs=jobs,
            train=not records_only,
            on_run=lambda done, total, record: console.print(
                progress_line(done, total, record), highlight=False
            ),
        )
        for path in write_report(results, out):
            console.print(f"wrote {path}")
    console.print(summary_line(results.records))


def summary_line(records: list[RunRecord]) -> str:
    """How many run requests were trained, answered by a record or failed, and the time spent
    on them now."""
    counts = {s: sum(r.status == s for r in records) for s in ("trained", "resumed", "recorded")}
    reused = counts["recorded"] + sum(r.status == "cached" for r in records)
    failed = sum(not r.ok for r in records)
    took = human_duration(sum(r.seconds for r in records))
    return (
        f"{len(records)} runs: {counts['trained']} trained, {counts['resumed']} resumed, "
        f"{reused} reused, {failed} failed; {took} spent on them now"
    )


def human_duration(seconds: float) -> str:
    """Seconds, minutes or hours, whichever reads best: the quick study's rounds take seconds,
    which "0.00 h" hid, and the full study's take hours."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
