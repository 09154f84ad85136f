"""A run's checkpoint: what ``--resume`` continues from, written so that a crash never loses it.

Layout, inside the run directory::

    checkpoint/arrays.npz         shared arrays
    checkpoint/server_state.npz   the server optimizer's moments (when it has any)
    checkpoint/client_states/     every client's ``Context.state`` (fast engine), one .pb each
    checkpoint/privacy_state.npz  the DP mechanism state's arrays (BandMF's noise history)
    checkpoint/state.json         round, rows, the DP ledger and DP mechanism state; written last

A copy holding ``state.json`` is complete; :func:`save_checkpoint` swaps a new copy in with two
renames and :func:`find_checkpoint` repairs a swap a crash interrupted. A damaged file is one
line naming it (:class:`~fedwon.config.ConfigError`), never a parser's traceback. Which
directory holds a checkpoint, and whether a run may resume from it, is
:class:`fedwon.run.directory.RunDir`'s business.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedwon.common.errors import error_line
from fedwon.config import ConfigError

__all__ = [
    "CHECKPOINT",
    "Checkpoint",
    "arrays_to_numpy",
    "checkpoint_round",
    "find_checkpoint",
    "load_checkpoint",
    "numpy_to_arrays",
    "save_checkpoint",
    "write_text_atomic",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
CHECKPOINT = "checkpoint"
CLIENT_STATES = "client_states"  # in the checkpoint: one <partition>.pb per client
STATE_FILE = "state.json"  # written last: a checkpoint copy holding it is complete
PRIVACY_ARRAYS = "privacy_state.npz"  # the arrays of the DP mechanism's state


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def numpy_to_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    # np.asarray keeps 0-d arrays 0-d (np.ascontiguousarray would make BN counters (1,))
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


@dataclass
class Checkpoint:
    """What a run continues from: the shared arrays and rows of rounds 1..``round``, and the
    states that live outside the model (clients' local layers, server optimizer, DP ledger)."""

    round: int
    arrays: ArrayRecord
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows 1..round
    client_states: dict[int, RecordDict] | None = None  # None: not captured by this grid
    server_state: dict[str, np.ndarray] = field(default_factory=dict)  # optimizer moments
    # user-level DP: the (noise multiplier, sample rate, rounds) of rounds 1..round, so a
    # resumed run accounts every round at the noise it actually used (None: no DP ledger)
    privacy: list[tuple[float, float, int]] | None = None
    # user-level DP: the mechanism's own state after round ``round`` (JSON-able values, e.g.
    # the adaptive clipping bound, and numpy arrays, e.g. BandMF's noise history, which go to
    # privacy_state.npz), so a resumed run continues it exactly (None: stateless)
    privacy_state: dict[str, Any] | None = None


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a ``.part`` file, so a reader never sees half of it."""
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
    if ckpt.privacy_state is not None:
        arrays = {k: v for k, v in ckpt.privacy_state.items() if isinstance(v, np.ndarray)}
        if arrays:
            np.savez(tmp / PRIVACY_ARRAYS, **arrays)  # type: ignore[arg-type]
            state["privacy_arrays"] = sorted(arrays)
        state["privacy_state"] = {k: v for k, v in ckpt.privacy_state.items() if k not in arrays}
    write_text_atomic(tmp / STATE_FILE, json.dumps(state))
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
    mechanism = state.get("privacy_state")
    if mechanism is not None and state.get("privacy_arrays"):
        stored = _read_checkpoint_file(path / PRIVACY_ARRAYS, _load_npz)
        missing = sorted(set(state["privacy_arrays"]) - set(stored))
        if missing:
            raise ConfigError(
                f"cannot resume: {path / PRIVACY_ARRAYS} lacks {', '.join(missing)}; "
                "start the run again"
            )
        mechanism = {**mechanism, **stored}
    return Checkpoint(round_, arrays, rows, states, server_state, history, mechanism)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}
