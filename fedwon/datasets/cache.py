"""On-disk cache of built arrays (the embedded digits) under the user cache directory.

Location: ``$FEDWON_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("fedwon")``. Each entry
is an uncompressed ``.npz`` whose file name is a hash of the builder name, its version and its
parameters, so a change of any of them builds a new entry. Entries are written to a temporary file
in the same directory and moved into place with :func:`os.replace`, so concurrent processes (Ray
actors) never see a half-written file; the worst case is that two of them build the same entry.
Entries are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import platformdirs

CACHE_ENV = "FEDWON_CACHE_DIR"


def cache_dir() -> Path:
    """The directory holding cache entries (not created here)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("fedwon"))


def cache_path(name: str, params: Mapping[str, object]) -> Path:
    """Path of the entry for builder ``name`` with ``params`` (JSON-serializable values)."""
    blob = json.dumps({"name": name, **params}, sort_keys=True).encode("utf-8")
    digest = hashlib.sha256(blob).hexdigest()[:20]
    return cache_dir() / f"{name}-{digest}.npz"


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
    except OSError:
        return  # an unwritable cache only costs a rebuild next time
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def load_or_build(
    name: str,
    params: Mapping[str, object],
    build: Callable[[], dict[str, np.ndarray]],
    valid: Callable[[dict[str, np.ndarray]], bool] = lambda _: True,
) -> dict[str, np.ndarray]:
    """Return the cached arrays for ``(name, params)``, building and storing them on a miss.

    A cache file that cannot be read, or whose arrays ``valid`` rejects (missing arrays,
    lengths that do not match: a file edited or written by another build), is a miss too:
    rebuilt and replaced, never handed to a loader that would fail on it with ``IndexError``.
    """
    path = cache_path(name, params)
    if path.is_file():
        cached = _read(path)
        if cached is not None and valid(cached):
            return cached
    arrays = build()
    _write_atomic(path, arrays)
    return arrays
