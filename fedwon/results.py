"""A run directory: resolved config, per-round metrics, summary, table, plot, checkpoints.

Layout (the contract the README documents for users)::

    DIR/config.toml        fully resolved config
    DIR/metrics.jsonl      one JSON object per round: round, train_loss, accuracy, accuracy/<domain>
    DIR/summary.json       {"strategy", "final": {"accuracy", "per_domain"}, ...}
    DIR/per_domain.csv     final accuracy per domain
    DIR/accuracy.png       accuracy per round, overall and per domain
    DIR/checkpoint/        shared arrays, round, rows and (fast engine) every client's
                           ``Context.state`` — FedBN's local layers — for --resume

:class:`RunRecorder` is the callback the server calls after each round; the writing is here, not
in the round loop. It writes nothing before it knows the run may write there: a new run's first
file appears with its first round, a resumed run's after :func:`check_resumable` passed.
Whether a directory may hold a *new* run is :mod:`fedwon.run_dir`'s business.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedwon.config import (
    RESUMABLE_KEYS,
    ConfigError,
    RunConfig,
    make_config,
    read_recipe,
    resume_conflicts,
)
from fedwon.errors import error_line
from fedwon.records import CLIPPED_METRIC, EPSILON_METRIC, TRAIN_LOSS, WEIGHT_KEY
from fedwon.strategies.aggregation import as_number

log = logging.getLogger(__name__)

Row = dict[str, Any]
T = TypeVar("T")
CHECKPOINT = "checkpoint"
CLIENT_STATES = "client_states"  # in the checkpoint: one <partition>.pb per client
STATE_FILE = "state.json"  # written last: a checkpoint copy holding it is complete


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
        row["train_loss"] = _clean(as_number(train.get(TRAIN_LOSS, math.nan)))
        row["clients"] = int(as_number(train.get("clients", 0)))
        for key in (EPSILON_METRIC, CLIPPED_METRIC):  # under DP
            if key in train:
                row[key] = _clean(as_number(train[key]))
    if evaluate is not None:
        for key, value in evaluate.items():
            if key != WEIGHT_KEY and not isinstance(value, list):
                row[key] = _clean(as_number(value))
    row["dropped"] = dropped
    row["time_s"] = round(elapsed, 4)
    return row


def read_metrics(run_dir: str | Path) -> list[Row]:
    """The rows of ``run_dir/metrics.jsonl``.

    A killed run can leave its last line half-written: that line is skipped with a warning.
    Any other line that is not a JSON object is an error naming the file and line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a fedwon run directory?")
    lines = path.read_text().splitlines()
    rows: list[Row] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                log.warning("%s: skipped its incomplete last line (the run was stopped)", path)
                break
            raise ConfigError(f"{path} line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise ConfigError(f"{path} line {number} is not a metrics row (no integer 'round')")
        rows.append(row)
    return rows


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run directory was written with."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no config.toml: is it a fedwon run directory?")
    return make_config(read_recipe(path))


def run_progress(run_dir: str | Path, rows: Sequence[Row]) -> tuple[int, int | None]:
    """``(last round recorded, rounds the run was configured for)``; the second is ``None``
    when the directory has no readable config. Equal numbers mean the run finished."""
    last = max((int(r["round"]) for r in rows), default=0)
    try:
        return last, read_run_config(run_dir).server.num_rounds
    except ConfigError:
        return last, None


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/summary.json``; ``None`` when there is none or it cannot be read.

    A run writes its summary last, so a truncated or invalid one (a disk that filled up, a
    copy interrupted) is a run that has not finished: said in one warning naming the file,
    never as a parser's traceback.
    """
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("%s cannot be read (%s): the run counts as not finished", path, error_line(err))
        return None
    if not isinstance(summary, dict):
        log.warning("%s is not a JSON object: the run counts as not finished", path)
        return None
    return summary


def run_state(run_dir: str | Path, rows: Sequence[Row], summary: dict[str, Any] | None) -> str:
    """How a run ended, as a table shows it: ``""`` when it finished, else why it did not.

    A DP run stopped by its privacy budget (``privacy.stopped_by_budget``) ended as planned,
    short of ``num_rounds``: it is not an unfinished run to resume.
    """
    last, total = run_progress(run_dir, rows)
    if summary is None and (Path(run_dir) / "summary.json").exists():
        return f"unfinished: round {last} of {total or '?'}, summary.json unreadable"
    if ((summary or {}).get("privacy") or {}).get("stopped_by_budget"):
        return f"stopped at the privacy budget after round {last} of {total or '?'}"
    if total is None or last < total:
        return f"unfinished: round {last} of {total or '?'}"
    return ""


def final_metrics(rows: Sequence[Row]) -> Row:
    """The last evaluated round's metrics (the run's result)."""
    evaluated = [r for r in rows if r.get("accuracy") is not None]
    return evaluated[-1] if evaluated else {}


def per_domain(row: Row) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("accuracy/")}


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def numpy_to_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Arrays with their shapes as saved (a 0-d BN counter stays 0-d, as the model has it)."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


@dataclass
class Checkpoint:
    round: int
    arrays: ArrayRecord
    rows: list[Row] = field(default_factory=list)
    client_states: dict[int, RecordDict] | None = None  # None: not captured by this grid
    server_state: dict[str, np.ndarray] = field(default_factory=dict)  # optimizer moments
    # user-level DP: the (noise multiplier, sample rate, rounds) of rounds 1..round, so a
    # resumed run accounts every round at the noise it actually used (None: no DP ledger)
    privacy: list[tuple[float, float, int]] | None = None


def _save_states(directory: Path, states: dict[int, RecordDict]) -> None:
    """One file per client, in Flower's own protobuf encoding (no pickle: safe to load)."""
    directory.mkdir()
    for partition, state in states.items():
        (directory / f"{partition}.pb").write_bytes(recorddict_to_proto(state).SerializeToString())


def _load_state(path: Path) -> RecordDict:
    proto = ProtoRecordDict()
    proto.ParseFromString(path.read_bytes())
    return recorddict_from_proto(proto)


def _load_states(directory: Path) -> dict[int, RecordDict]:
    return {
        int(path.stem): _read_checkpoint_file(path, _load_state)
        for path in sorted(directory.glob("*.pb"))
    }


def _write_text_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    part.replace(path)


def _complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    """Write arrays, rows and the clients' and server's states; swap it in atomically.

    The copy is written to ``checkpoint.tmp`` with ``state.json`` last, so a copy holding
    ``state.json`` is complete. The swap takes two renames (``checkpoint`` → ``.old``, ``.tmp``
    → ``checkpoint``); a crash between them leaves two complete copies and no ``checkpoint``,
    which :func:`find_checkpoint` repairs.
    """
    find_checkpoint(run_dir)  # repair an interrupted swap before .tmp is reused
    tmp = run_dir / f"{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / "arrays.npz", **arrays_to_numpy(ckpt.arrays))  # type: ignore[arg-type]
    if ckpt.server_state:
        np.savez(tmp / "server_state.npz", **ckpt.server_state)  # type: ignore[arg-type]
    if ckpt.client_states is not None:
        _save_states(tmp / CLIENT_STATES, ckpt.client_states)
    state: dict[str, Any] = {"round": ckpt.round, "rows": ckpt.rows}
    if ckpt.privacy is not None:
        state["privacy_history"] = [list(entry) for entry in ckpt.privacy]
    _write_text_atomic(tmp / STATE_FILE, json.dumps(state))
    old = run_dir / f"{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if (run_dir / CHECKPOINT).exists():
        (run_dir / CHECKPOINT).rename(old)
    tmp.rename(run_dir / CHECKPOINT)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The run's complete checkpoint, or ``None``.

    After a crash between the two renames of :func:`save_checkpoint` there is no
    ``checkpoint`` but a complete ``checkpoint.tmp`` (newer) and ``checkpoint.old``: the
    newer one is renamed back to ``checkpoint``, so the run resumes from its latest state.
    """
    path = run_dir / CHECKPOINT
    if _complete(path):
        return path
    if path.exists():
        return None
    for candidate in (run_dir / f"{CHECKPOINT}.tmp", run_dir / f"{CHECKPOINT}.old"):
        if _complete(candidate):
            log.warning("%s: restoring the checkpoint from %s", run_dir, candidate.name)
            candidate.rename(path)
            return path
    return None


def _read_checkpoint_file(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, or one line naming the file when it cannot be read.

    A checkpoint file can be damaged in any way (truncated by a full disk, corrupted, edited):
    whatever the parser raises (``BadZipFile``, ``JSONDecodeError``, a protobuf ``DecodeError``,
    ``KeyError``...), the user needs to know which file, not the parser's exception alone.
    """
    try:
        return read(path)
    except Exception as err:
        raise ConfigError(
            f"checkpoint file {path} cannot be read ({error_line(err)}); the run cannot resume "
            "from it: start it again with --overwrite"
        ) from None


def _state_round(path: Path) -> int:
    return int(json.loads(path.read_text())["round"])


def checkpoint_round(run_dir: Path) -> int | None:
    """The round of the run's checkpoint (``None`` without one); reads only ``state.json``."""
    path = find_checkpoint(run_dir)
    if path is None:
        return None
    return _read_checkpoint_file(path / STATE_FILE, _state_round)


def check_resumable(run_dir: Path, cfg: RunConfig) -> int:
    """Refuse, before anything is written, a resume that cannot continue the run in
    ``run_dir`` with ``cfg``; return the checkpoint's round.

    Refused: a directory without config or checkpoint, any change of a key that decides what
    is trained or who holds which data (see :func:`fedwon.config.resume_conflicts`), and a
    ``num_rounds`` below the checkpoint's round.
    """
    stored = read_run_config(run_dir)
    conflicts = resume_conflicts(stored, cfg)
    if conflicts:
        raise ConfigError(
            f"cannot resume {run_dir}: {', '.join(conflicts)} would change what is trained or "
            f"who holds which data; only {', '.join(sorted(RESUMABLE_KEYS))} may change"
        )
    done = checkpoint_round(run_dir)
    if done is None:
        raise ConfigError(
            f"cannot resume {run_dir}: it holds no checkpoint (the run stopped before its first "
            "one); start it again with --overwrite"
        )
    if done > cfg.server.num_rounds:
        raise ConfigError(
            f"cannot resume {run_dir}: its checkpoint is at round {done}, beyond "
            f"num_rounds={cfg.server.num_rounds}; give num_rounds >= {done}"
        )
    return done


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the checkpoint: arrays, rows and (when captured) the clients' and server's states."""
    path = find_checkpoint(run_dir)
    if path is None:
        raise ConfigError(f"cannot resume: {run_dir / CHECKPOINT} holds no checkpoint")
    state = _read_checkpoint_file(path / STATE_FILE, lambda p: json.loads(p.read_text()))
    arrays = numpy_to_arrays(_read_checkpoint_file(path / "arrays.npz", _load_npz))
    states = _load_states(path / CLIENT_STATES) if (path / CLIENT_STATES).is_dir() else None
    server_state: dict[str, np.ndarray] = {}
    if (path / "server_state.npz").exists():
        server_state = _read_checkpoint_file(path / "server_state.npz", _load_npz)
    round_, rows = _read_checkpoint_file(
        path / STATE_FILE, lambda _: (int(state["round"]), list(state["rows"]))
    )
    privacy = state.get("privacy_history")
    history = None if privacy is None else [(float(z), float(q), int(n)) for z, q, n in privacy]
    return Checkpoint(round_, arrays, rows, states, server_state, history)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


class RunRecorder:
    """Writes a run directory as rounds complete. ``run_dir=None`` records in memory only."""

    def __init__(
        self,
        run_dir: str | Path | None,
        cfg: RunConfig,
        client_states: ClientStateHolder | None = None,
    ) -> None:
        self.run_dir = Path(run_dir) if run_dir else None
        self.cfg = cfg
        self.client_states = client_states
        self.server_state: Callable[[], dict[str, np.ndarray]] | None = None
        # user-level DP: the privacy ledger's history of rounds 1..r, saved with checkpoints
        self.privacy_history: Callable[[int], list[tuple[float, float, int]] | None] | None = None
        self.final_round = cfg.server.num_rounds  # always checkpointed (fewer under a DP budget)
        self.rows: list[Row] = []
        self.arrays: ArrayRecord | None = None
        self._t0 = time.perf_counter()
        self._started = False

    def _start(self) -> None:
        """A new run's first write: its config. Refuses to write over another run's files
        (callers check with :func:`fedwon.run_dir.check_new_run_dir` before anything runs;
        this is the last line of defence against mixing two runs)."""
        if self._started or self.run_dir is None:
            return
        for name in ("config.toml", "metrics.jsonl"):
            if (self.run_dir / name).exists():
                raise ConfigError(
                    f"{self.run_dir} already holds a run ({name}); resume it, overwrite it or "
                    "choose another directory"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.toml").write_text(self.cfg.to_toml())
        self._started = True

    def load_resume(self) -> Checkpoint:
        """The checkpoint a resumed run continues from, checked (:func:`check_resumable`);
        writes nothing, so whatever else the caller checks can still refuse the resume."""
        if self.run_dir is None:
            raise ConfigError("cannot resume a run that has no output directory")
        check_resumable(self.run_dir, self.cfg)
        return load_checkpoint(self.run_dir)

    def resume(self, ckpt: Checkpoint | None = None) -> Checkpoint:
        """Continue from the run directory's checkpoint (rows after it are discarded): the
        first write of a resumed run (its config, its metrics up to the checkpoint)."""
        if ckpt is None:
            ckpt = self.load_resume()
        assert self.run_dir is not None
        self.rows = list(ckpt.rows)
        self.arrays = ckpt.arrays
        _write_text_atomic(self.run_dir / "config.toml", self.cfg.to_toml())
        if self.client_states is not None:
            self.client_states.restore_states(ckpt.client_states or {})
        self._rewrite_metrics()
        self._started = True
        return ckpt

    def _rewrite_metrics(self) -> None:
        if self.run_dir:
            text = "".join(json.dumps(r) + "\n" for r in self.rows)
            _write_text_atomic(self.run_dir / "metrics.jsonl", text)

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
        if self.run_dir:
            self._start()
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            every = self.cfg.output.checkpoint_every
            if server_round == self.final_round or (every and server_round % every == 0):
                states = self.client_states.snapshot_states() if self.client_states else None
                server = self.server_state() if self.server_state else {}
                privacy = self.privacy_history(server_round) if self.privacy_history else None
                ckpt = Checkpoint(server_round, arrays, self.rows, states, server, privacy)
                save_checkpoint(self.run_dir, ckpt)
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
        if self.run_dir:
            self._start()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            with (self.run_dir / "per_domain.csv").open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["domain", "accuracy"])
                for domain, acc in summary["final"]["per_domain"].items():
                    writer.writerow([domain, acc])
                writer.writerow(["all", summary["final"]["accuracy"]])
            title = f"{self.cfg.server.strategy}: test accuracy per round"
            plot_accuracy(self.rows, self.run_dir / "accuracy.png", title=title)
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
