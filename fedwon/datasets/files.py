"""Helpers shared by the loaders of user-downloaded data (paths, pickled pairs, caps).

The loaders read files under ``DataSpec.data_root``; every missing piece is reported as one
:class:`DataError` naming the file and the layout the loader expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedwon.datasets.base import rng_for
from fedwon.datasets.errors import DataError
from fedwon.datasets.partition import balanced_subset
from fedwon.datasets.safe_pickle import load_pickle_file


def require_root(data_root: str | None, dataset: str, layout: str) -> Path:
    """The data root as a directory, or an error saying what to pass and what it must hold."""
    if not data_root:
        raise DataError(f"dataset {dataset!r} needs data_root; expected layout: {layout}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data_root {root} is not a directory; expected layout: {layout}")
    return root


def require_file(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing file {path}; expected layout: {layout}")
    return path


def unpack_pair(obj: Any, source: str) -> tuple[Any, Any]:
    """``(first, second)`` from a pickled 2-tuple/list or a 2-element object array."""
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == (2,):
        return obj[0], obj[1]
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    kind = type(obj).__name__ + (f" of shape {obj.shape}" if isinstance(obj, np.ndarray) else "")
    raise DataError(f"{source}: expected a pickled (images, labels) pair, got {kind}")


def read_pair(path: Path) -> tuple[Any, Any]:
    """Load a pickled ``(a, b)`` pair safely (see :mod:`fedwon.datasets.safe_pickle`)."""
    return unpack_pair(load_pickle_file(path), str(path))


def cap_indices(
    labels: np.ndarray, n: int | None, seed: int, domain: str, split: str
) -> np.ndarray | None:
    """Indices of a class-balanced, seeded subset of size ``n`` (``None``: keep everything)."""
    if n is None or n >= len(labels):
        return None
    return balanced_subset(labels, n, rng_for(seed, "cap", domain, split))
