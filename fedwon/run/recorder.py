"""Writing a run directory as rounds complete: per-round metrics, summary, table, plot, checkpoints.

:class:`RunRecorder` is the callback the server calls after each round; the writing is here, not
in the round loop. It writes nothing before it knows the run may write there: a new run's first
file appears with its first round, a resumed run's after
:meth:`~fedwon.run.directory.RunDir.check_resumable` passed. The directory's layout, reading it
back, and whether it may hold a *new* run are :class:`fedwon.run.directory.RunDir`'s business; the
checkpoint's format is :mod:`fedwon.run.checkpoint`'s. The experiment trackers a run asks for
(``track``, :mod:`fedwon.run.trackers`) receive each row from :meth:`RunRecorder.record` too.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedwon.config import ConfigError, RunConfig
from fedwon.protocol import CLIP_NORM_METRIC, CLIPPED_METRIC, EPSILON_METRIC, WEIGHT_KEY
from fedwon.run.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, write_text_atomic
from fedwon.run.directory import PER_DOMAIN_FILE, PLOT_FILE, Row, RunDir
from fedwon.run.trackers import Trackers
from fedwon.strategies.aggregation import as_number

__all__ = [
    "Checkpoint",
    "ClientStateHolder",
    "Row",
    "RunRecorder",
    "final_metrics",
    "per_domain",
    "plot_accuracy",
    "round_row",
]

log = logging.getLogger(__name__)


@runtime_checkable
class ClientStateHolder(Protocol):
    """A Grid that can hand out and take back its clients' ``Context.state`` (the fast
    engine's ``FastGrid``); Flower's engine and real SuperNodes keep states out of reach."""

    def snapshot_states(self) -> dict[int, RecordDict]: ...
    def restore_states(self, states: dict[int, RecordDict]) -> None: ...


def _clean(value: Any) -> Any:
    """JSON-safe scalars: NaN/Inf become null rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def round_row(
    server_round: int,
    train: MetricRecord | None,
    evaluate: MetricRecord | None,
    elapsed: float,
    dropped: int,
) -> Row:
    """The metrics.jsonl object of one round (``accuracy`` is null on rounds not evaluated)."""
    row: Row = {"round": server_round, "train_loss": None, "accuracy": None}
    if train is not None:
        row["train_loss"] = _clean(as_number(train.get("train_loss", math.nan)))
        row["clients"] = int(as_number(train.get("clients", 0)))
        for key in (EPSILON_METRIC, CLIPPED_METRIC, CLIP_NORM_METRIC):  # under DP
            if key in train:
                row[key] = _clean(as_number(train[key]))
    if evaluate is not None:
        for key, value in evaluate.items():
            if key != WEIGHT_KEY and not isinstance(value, list):
                row[key] = _clean(as_number(value))
    row["dropped"] = dropped
    row["time_s"] = round(elapsed, 4)
    return row


def final_metrics(rows: Sequence[Row]) -> Row:
    """The last evaluated round's metrics (the run's result)."""
    evaluated = [r for r in rows if r.get("accuracy") is not None]
    return evaluated[-1] if evaluated else {}


def per_domain(row: Row) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("accuracy/")}


class RunRecorder:
    """Writes a run directory as rounds complete. ``run_dir=None`` records in memory only."""

    def __init__(
        self,
        run_dir: str | Path | None,
        cfg: RunConfig,
        client_states: ClientStateHolder | None = None,
    ) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.dir = RunDir(self.run_dir) if self.run_dir else None
        self.cfg = cfg
        self.client_states = client_states
        self.server_state: Callable[[], dict[str, np.ndarray]] | None = None
        # user-level DP: the privacy ledger's history of rounds 1..r, saved with checkpoints
        self.privacy_history: Callable[[int], list[tuple[float, float, int]] | None] | None = None
        # user-level DP: the mechanism's state after the last round (adaptive clipping bound)
        self.privacy_state: Callable[[], dict[str, Any] | None] | None = None
        self.final_round = cfg.server.num_rounds  # always checkpointed (fewer under a DP budget)
        self.rows: list[Row] = []
        self.arrays: ArrayRecord | None = None
        self._t0 = time.perf_counter()
        self._started = False
        # opened with the run's first write, like every file of the run directory
        names, flat = cfg.output.track, cfg.to_flat()
        self.trackers = Trackers(names, self.dir.path, flat) if names and self.dir else None

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """A run that ends by an exception (or an interrupt) still ends its tracker runs, as
        failed: an MLflow run left RUNNING or a W&B run never finished misleads its reader."""
        self.close_trackers(failed=exc_type is not None)

    def close_trackers(self, failed: bool = False) -> None:
        if self.trackers is not None:
            self.trackers.close(failed)

    def _start(self) -> None:
        """A new run's first write: its config. Refuses to write over another run's files
        (callers check with :meth:`fedwon.run.directory.RunDir.check_new` before anything runs;
        this is the last line of defence against mixing two runs)."""
        if self._started or self.dir is None:
            return
        for path in (self.dir.config_file, self.dir.metrics_file):
            if path.exists():
                raise ConfigError(
                    f"{self.dir.path} already holds a run ({path.name}); resume it, overwrite it "
                    "or choose another directory"
                )
        self.dir.path.mkdir(parents=True, exist_ok=True)
        self.dir.config_file.write_text(self.cfg.to_toml())
        self._started = True
        if self.trackers is not None:
            self.trackers.open()

    def load_resume(self) -> Checkpoint:
        """The checkpoint a resumed run continues from, checked
        (:meth:`~fedwon.run.directory.RunDir.check_resumable`); writes nothing, so whatever else the
        caller checks can still refuse the resume."""
        if self.dir is None:
            raise ConfigError("cannot resume a run that has no output directory")
        self.dir.check_resumable(self.cfg)
        return load_checkpoint(self.dir.path)

    def resume(self, ckpt: Checkpoint | None = None) -> Checkpoint:
        """Continue from the run directory's checkpoint (rows after it are discarded): the
        first write of a resumed run (its config, its metrics up to the checkpoint)."""
        if ckpt is None:
            ckpt = self.load_resume()
        assert self.dir is not None
        self.rows = list(ckpt.rows)
        self.arrays = ckpt.arrays
        write_text_atomic(self.dir.config_file, self.cfg.to_toml())
        if self.client_states is not None:
            self.client_states.restore_states(ckpt.client_states or {})
        self._rewrite_metrics()
        self._started = True
        if self.trackers is not None:
            self.trackers.open(resume_round=ckpt.round, rows=self.rows)
        return ckpt

    def _rewrite_metrics(self) -> None:
        if self.dir:
            text = "".join(json.dumps(r) + "\n" for r in self.rows)
            write_text_atomic(self.dir.metrics_file, text)

    def record(
        self,
        server_round: int,
        arrays: ArrayRecord,
        train: MetricRecord | None,
        evaluate: MetricRecord | None,
        dropped: int = 0,
    ) -> Row:
        """Append a round's row; checkpoint every ``checkpoint_every`` rounds."""
        row = round_row(server_round, train, evaluate, time.perf_counter() - self._t0, dropped)
        self._t0 = time.perf_counter()
        self.rows.append(row)
        self.arrays = arrays
        if self.dir:
            self._start()
            with self.dir.metrics_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.trackers is not None:
                self.trackers.log(row)
            every = self.cfg.output.checkpoint_every
            if server_round == self.final_round or (every and server_round % every == 0):
                states = self.client_states.snapshot_states() if self.client_states else None
                server = self.server_state() if self.server_state else {}
                privacy = self.privacy_history(server_round) if self.privacy_history else None
                mechanism = self.privacy_state() if self.privacy_state else None
                ckpt = Checkpoint(
                    server_round, arrays, self.rows, states, server, privacy, mechanism
                )
                save_checkpoint(self.dir.path, ckpt)
        return row

    def summary(self) -> dict[str, Any]:
        final = final_metrics(self.rows)
        times = [r["time_s"] for r in self.rows]
        return {
            "strategy": self.cfg.server.strategy,
            "model": self.cfg.model.model,
            "norm": self.cfg.resolved_norm,
            "dataset": self.cfg.data.dataset,
            "rounds": len(self.rows),
            "final": {
                "round": final.get("round"),
                "accuracy": final.get("accuracy"),
                "loss": final.get("loss"),
                "per_domain": per_domain(final),
            },
            "best_accuracy": max(
                (r["accuracy"] for r in self.rows if r.get("accuracy") is not None),
                default=None,
            ),
            "seconds_per_round": float(np.median(times)) if times else None,
        }

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write summary.json (with ``extra`` blocks), per_domain.csv and accuracy.png; return
        the summary."""
        summary = {**self.summary(), **(extra or {})}
        if self.dir:
            self._start()
            self.dir.summary_file.write_text(json.dumps(summary, indent=2))
            with (self.dir.path / PER_DOMAIN_FILE).open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["domain", "accuracy"])
                for domain, acc in summary["final"]["per_domain"].items():
                    writer.writerow([domain, acc])
                writer.writerow(["all", summary["final"]["accuracy"]])
            title = f"{self.cfg.server.strategy}: test accuracy per round"
            plot_accuracy(self.rows, self.dir.path / PLOT_FILE, title=title)
        self.close_trackers()
        return summary


def plot_accuracy(rows: Sequence[Row], path: Path, title: str = "") -> None:
    """Accuracy per round: overall (bold) and each domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    evaluated = [r for r in rows if r.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({k for r in evaluated for k in r if k.startswith("accuracy/")})
    for key in keys:
        xs = [r["round"] for r in evaluated if r.get(key) is not None]
        ax.plot(xs, [r[key] for r in evaluated if r.get(key) is not None], label=key[9:], lw=1)
    ax.plot(
        [r["round"] for r in evaluated],
        [r["accuracy"] for r in evaluated],
        "k-",
        lw=2.5,
        label="all",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds: no 2.5
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
