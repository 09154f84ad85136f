"""Experiment trackers: each round's metrics, as :class:`fedwon.run.recorder.RunRecorder` records
them, also go to TensorBoard, MLflow or Weights & Biases (``track = "tensorboard,mlflow,wandb"``).

Researchers compare runs in the tools they already use; ``metrics.jsonl`` stays the record of a
run, and a tracker receives exactly its rows, when they are written (the recorder calls
:meth:`Trackers.log` with each row: there is no second loop). Each tracker receives:

- every numeric value of the row as a metric at step = round: ``train_loss``, ``loss``,
  ``accuracy``, ``accuracy/<domain>``, ``clients``, ``dropped``, ``time_s`` and, under DP,
  ``epsilon`` and ``clipped_fraction`` (a value the round did not produce, such as accuracy on
  a round not evaluated, is left out rather than sent as NaN);
- the resolved config, :meth:`fedwon.config.RunConfig.to_flat`, as hyper-parameters/params;
- the run directory's absolute path (``run_dir``).

Everything stays on this machine unless the user says otherwise:

- TensorBoard: event files in ``<run_dir>/tensorboard/``;
- MLflow: a SQLite store in ``mlruns/`` beside the run directory
  (``<run_dir>/../mlruns/mlflow.db``: MLflow 3 refuses its old file store unless told to),
  or ``MLFLOW_TRACKING_URI`` when set; experiment ``MLFLOW_EXPERIMENT_NAME`` or ``fedwon``;
- W&B: offline mode (unless ``WANDB_MODE`` is set) under ``<run_dir>/wandb/``; project
  ``WANDB_PROJECT`` or ``fedwon``.

A resumed run continues the same tracker run (MLflow's run id and W&B's are kept in
``<run_dir>/trackers.json``) and no step appears twice: TensorBoard's new event file purges the
steps after the checkpoint, which the resumed run writes again; MLflow and W&B cannot delete a
step, so the rounds they already hold are not sent again (a round the first attempt recorded
after its last checkpoint keeps its first values there; the fast engine recomputes it
identically but for ``time_s``). A tracker asked for on resume that the run did not use before
first receives the checkpoint's rows.

The tracker packages are an optional extra (``pip install 'fedwon[track]'``):
:func:`check_trackers` refuses a missing one before anything runs. A tracker that fails during
a run is dropped with a warning; ``metrics.jsonl`` is written regardless.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedwon.common.errors import error_line
from fedwon.config import ConfigError, RunConfig
from fedwon.run.checkpoint import write_text_atomic
from fedwon.run.directory import TENSORBOARD_DIR, TRACKERS_FILE, Row

__all__ = [
    "EXTRA",
    "MLFLOW_DIR",
    "TRACKERS",
    "Tracker",
    "Trackers",
    "check_trackers",
    "row_metrics",
]

log = logging.getLogger(__name__)

EXTRA = "fedwon[track]"
MLFLOW_DIR = "mlruns"  # beside the run directory: the MLflow runs of every run in that folder
PROJECT = "fedwon"  # MLflow experiment and W&B project, unless the user names one

Params = dict[str, bool | int | float | str]


def row_metrics(row: Row) -> dict[str, float]:
    """What a tracker receives of a metrics.jsonl row: its numbers but the round (the step)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "round" and isinstance(value, int | float) and not isinstance(value, bool)
    }


@dataclass
class TrackedRun:
    """What every tracker of a run needs: where the run is, its config, and the ids of tracker
    runs it already has (``trackers.json``, kept so that a resume appends to them)."""

    run_dir: Path
    params: Params
    resume_round: int | None  # the checkpoint a resumed run continues from; None: a new run
    state: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.run_dir / TRACKERS_FILE

    def save_state(self) -> None:
        write_text_atomic(self.state_file, json.dumps(self.state, indent=2))


class Tracker(Protocol):
    """One tracker's run. ``held`` is the last step it already holds when opened (0: none), so
    that a resume sends neither a step twice nor leaves out the checkpoint's rows."""

    held: int

    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self, failed: bool) -> None: ...


class TensorBoardTracker:
    """Scalars at step = round, the config as hparams, the run directory as text."""

    def __init__(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        log_dir = run.run_dir / TENSORBOARD_DIR
        earlier = log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))
        resume = run.resume_round
        # a resumed run's file purges the steps after the checkpoint (the first attempt may have
        # written rounds it never checkpointed): readers see each step once, the new values
        self.held = resume if resume is not None and earlier else 0
        purge = resume + 1 if resume is not None and earlier else None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)
        if not self.held:
            events = self.writer.file_writer  # opened by SummaryWriter's constructor
            for summary in hparams({**run.params, "run_dir": str(run.run_dir)}, {}):
                if events is not None:
                    events.add_summary(summary)
            self.writer.add_text("run_dir", str(run.run_dir))
            self.writer.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a round is minutes apart: show it now, not at the 2-minute flush

    def close(self, failed: bool) -> None:
        self.writer.close()


class MLflowTracker:
    """An MLflow run: metrics at step = round, the config as params, ``fedwon.run_dir`` tag."""

    def __init__(self, run: TrackedRun) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        artifacts = None
        if not uri:
            store = run.run_dir.parent / MLFLOW_DIR
            store.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{store / 'mlflow.db'}"
            artifacts = (store / "artifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        known = run.state.get("mlflow", {})
        run_id = known.get("run_id") if known.get("tracking_uri") == uri else None
        params = {k: str(v) for k, v in run.params.items()}
        if run_id is not None and run.resume_round is not None and self._exists(run_id):
            self.run_id = str(run_id)
            held = self.client.get_run(self.run_id).data.params
            changed = {k: v for k, v in params.items() if k in held and held[k] != v}
            for key, value in changed.items():  # params cannot change: the resume's, as tags
                self.client.set_tag(self.run_id, f"fedwon.resumed.{key}", value)
            params = {k: v for k, v in params.items() if k not in held}
            self.held = self._last_step()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
            created = self.client.create_run(
                self._experiment(name, artifacts),
                run_name=run.run_dir.name,
                tags={"fedwon.run_dir": str(run.run_dir)},
            )
            self.run_id = created.info.run_id
            self.held = 0
            run.state["mlflow"] = {"run_id": self.run_id, "tracking_uri": uri}
            run.save_state()
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow run %s is gone: the resumed run starts a new one", run_id)
            return False
        return True

    def _experiment(self, name: str, artifacts: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifacts))
        except MlflowException:  # another run created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _last_step(self) -> int:
        keys = self.client.get_run(self.run_id).data.metrics
        steps = (m.step for key in keys for m in self.client.get_metric_history(self.run_id, key))
        return max(steps, default=0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandbTracker:
    """A W&B run (offline unless ``WANDB_MODE`` says otherwise): history at step = round, the
    config and ``run_dir`` as its config."""

    def __init__(self, run: TrackedRun) -> None:
        import wandb

        known = run.state.get("wandb", {})
        resuming = run.resume_round is not None and "run_id" in known
        run_id = str(known["run_id"]) if resuming else secrets.token_hex(4)
        self.held = int(known.get("last_step", 0)) if resuming else 0
        self.run = run
        self.wandb_run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            dir=str(run.run_dir),
            id=run_id,
            name=run.run_dir.name,
            resume="allow" if resuming else None,
            config={**run.params, "run_dir": str(run.run_dir)},
            allow_val_change=True,  # a resume may change num_rounds, eval_every, ...
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            reinit="create_new",  # several runs in one process (a study, the tests)
            settings=wandb.Settings(
                silent=True,  # the run's own progress is the console's
                console="off",
                x_disable_stats=True,  # no system metrics sampled each few seconds
                save_code=False,
                disable_git=True,
                x_save_requirements=False,
            ),
        )
        run.state["wandb"] = {"run_id": run_id, "last_step": self.held}
        run.save_state()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.wandb_run.log(metrics, step=step)
        self.run.state["wandb"]["last_step"] = step  # what a resume must not send again
        self.run.save_state()

    def close(self, failed: bool) -> None:
        self.wandb_run.finish(exit_code=1 if failed else 0)


@dataclass(frozen=True)
class TrackerKind:
    """A tracker as the registry knows it: the package it needs and how it opens."""

    module: str
    open: Callable[[TrackedRun], Tracker]


TRACKERS: dict[str, TrackerKind] = {
    "tensorboard": TrackerKind("tensorboard", TensorBoardTracker),
    "mlflow": TrackerKind("mlflow", MLflowTracker),
    "wandb": TrackerKind("wandb", WandbTracker),
}
"""Every tracker ``track`` may name (:data:`fedwon.config.TRACKER_NAMES`, which validates
the key, lists the same names: a test checks it)."""


def check_trackers(cfg: RunConfig, run_dir: Path | None) -> None:
    """Refuse, before anything runs, a tracker that cannot work: its package missing (one line
    naming the extra), or a run without a directory (a tracker links its run directory and
    keeps its ids there)."""
    names = cfg.output.track or ()
    if names and run_dir is None:
        raise ConfigError(f"track={','.join(names)} needs a run directory; give --out")
    for name in names:
        try:
            importlib.import_module(TRACKERS[name].module)
        except ImportError:
            raise ConfigError(
                f"tracker {name!r} needs the {TRACKERS[name].module} package, which is not "
                f"installed: pip install '{EXTRA}'"
            ) from None


class Trackers:
    """The trackers of one run, fed by the recorder: opened with the run's first write (a new
    run's first round, or a resume), sent each row, closed when the run ends."""

    def __init__(self, names: Sequence[str], run_dir: Path, params: Params) -> None:
        self.names = tuple(names)
        self.run_dir = run_dir.resolve()
        self.params = params
        self.open_trackers: dict[str, Tracker] = {}

    def open(self, resume_round: int | None = None, rows: Sequence[Row] = ()) -> None:
        """Open each tracker; on resume, first send each the checkpoint's ``rows`` it lacks."""
        state: dict[str, dict[str, Any]] = {}
        if resume_round is not None and (self.run_dir / TRACKERS_FILE).is_file():
            state = json.loads((self.run_dir / TRACKERS_FILE).read_text())
        run = TrackedRun(self.run_dir, self.params, resume_round, state)
        for name in self.names:
            try:
                self.open_trackers[name] = TRACKERS[name].open(run)
            except Exception as err:
                log.warning(
                    "tracker %s could not start (%s); the run goes on without it",
                    name,
                    error_line(err),
                )
        for row in rows:
            self.log(row)

    def log(self, row: Row) -> None:
        """Send a metrics.jsonl row to every tracker that does not hold its round yet."""
        step, metrics = int(row["round"]), row_metrics(row)
        for name, tracker in list(self.open_trackers.items()):
            if step <= tracker.held:
                continue
            try:
                tracker.log(step, metrics)
            except Exception as err:
                del self.open_trackers[name]
                log.warning(
                    "tracker %s failed at round %d (%s); the run goes on without it "
                    "(metrics.jsonl has every round)",
                    name,
                    step,
                    error_line(err),
                )

    def close(self, failed: bool = False) -> None:
        """End each tracker's run (MLflow's status FINISHED or FAILED, W&B's exit code)."""
        trackers, self.open_trackers = self.open_trackers, {}
        for name, tracker in trackers.items():
            try:
                tracker.close(failed)
            except Exception as err:
                log.warning("tracker %s did not close cleanly (%s)", name, error_line(err))
