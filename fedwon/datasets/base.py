"""Types shared by the loaders and the federation builder, and the seeding convention.

A loader turns a :class:`~fedwon.datasets.spec.DataSpec` into one :class:`DomainArrays` per
requested domain: ``uint8`` images ``(N, 3, S, S)`` and ``int64`` labels for train and test.
Random choices (subsets, partitions, augmentation) draw from :func:`rng_for`, which derives an
independent generator from the spec's seed and string/integer keys, so that e.g. the subset taken
from one domain does not change when another domain is added or removed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedwon.datasets.spec import DataSpec


@dataclass(frozen=True)
class DomainArrays:
    """One domain's data in the internal layout (``uint8`` NCHW images, ``int64`` labels)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def select(self, train_idx: np.ndarray | None, test_idx: np.ndarray | None) -> DomainArrays:
        """Restricted to the given train/test indices (``None`` keeps a split whole)."""
        keep_train = slice(None) if train_idx is None else train_idx
        keep_test = slice(None) if test_idx is None else test_idx
        return DomainArrays(
            self.train_x[keep_train],
            self.train_y[keep_train],
            self.test_x[keep_test],
            self.test_y[keep_test],
        )


Loader = Callable[["DataSpec", tuple[str, ...], int], dict[str, DomainArrays]]
"""``loader(spec, domains, image_size) -> {domain: DomainArrays}`` (caps already applied)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one data set in :data:`fedwon.datasets.DATASETS`."""

    name: str
    domains: tuple[str, ...]
    num_classes: int
    default_image_size: int
    needs_root: bool
    loader: Loader
    layout: str
    """One line describing the files expected under ``data_root`` (used in error messages)."""
    resolve: Callable[[DataSpec], DatasetInfo] | None = None
    """For a data set whose domains, classes and image size are read from the user's files
    (``hf``): the facts for one spec, read from its ``data_root``. ``None``: the entry is static."""


def _key_int(key: str | int) -> int:
    return key if isinstance(key, int) else zlib.crc32(key.encode("utf-8"))


def rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent, reproducible generator for ``(seed, *keys)``."""
    return np.random.default_rng([seed, *(_key_int(k) for k in keys)])
