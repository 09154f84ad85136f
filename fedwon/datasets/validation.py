"""Each client's validation split: the held-back share of its training data used to choose
hyper-parameters, so that test accuracy is never looked at before it is reported.

``DataSpec.val_fraction`` of every client's training share is set aside (class-stratified:
each class keeps its proportion on both sides, up to rounding), the rest is what the client
trains on. The split is a pure function of the client's labels and an rng derived from the seed
and the partition id, so it is reproducible and does not change when other clients change.
A client always keeps at least one training example; a client too small for ``fraction`` of its
data to round to one example gets no validation data (its validation accuracy is undefined and
it is left out of the average rather than counted as zero).
"""

from __future__ import annotations

import math

import numpy as np

from fedwon.datasets.partition import largest_remainder

__all__ = ["num_validation", "val_counts", "validation_split"]


def num_validation(n: int, fraction: float) -> int:
    """How many of ``n`` examples go to validation: ``fraction·n`` rounded half up, < ``n``."""
    if n <= 1 or fraction <= 0:
        return 0
    return min(n - 1, math.floor(fraction * n + 0.5))


def val_counts(counts: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """Validation examples per class: ``n_val`` in proportion to ``counts`` (largest
    remainder), classes tied for the last units drawn at random.

    Without the draw, ties went to the lowest class: a client holding one example of each of
    ten classes gave its class-0 example to validation, so with ``val_fraction=0.1`` no client
    of a cross-device federation ever trained on a 0. ``rng`` is used only when there is such
    a tie, so every other split is what it was."""
    per_class = largest_remainder(counts.astype(np.float64), n_val)
    exact = counts / counts.sum() * n_val
    floors = np.floor(exact).astype(np.int64)
    extra = per_class > floors
    if extra.any():
        remainder = exact - floors
        last = remainder[extra].min()
        tied = np.flatnonzero(remainder == last)
        if not extra[tied].all():  # some of the tied classes got a unit, some did not
            units = int(extra[tied].sum())
            per_class[tied] = floors[tied]
            per_class[rng.choice(tied, size=units, replace=False)] += 1
    return per_class


def validation_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, val)``: sorted positions into ``labels`` for training and for validation.

    The validation count is spread over the classes in proportion to their counts (largest
    remainder), and each class's validation members are drawn at random without replacement.
    ``fraction == 0`` returns every position as ``fit`` and draws nothing from ``rng``.
    """
    n = len(labels)
    n_val = num_validation(n, fraction)
    if n_val == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = val_counts(counts, n_val, rng)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, per_class, strict=True)
        if k > 0
    ]
    val = np.sort(np.concatenate(picked)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep).astype(np.int64), val
