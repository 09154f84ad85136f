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

__all__ = ["num_validation", "validation_split"]


def num_validation(n: int, fraction: float) -> int:
    """How many of ``n`` examples go to validation: ``fraction·n`` rounded half up, < ``n``."""
    if n <= 1 or fraction <= 0:
        return 0
    return min(n - 1, math.floor(fraction * n + 0.5))


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
    per_class = largest_remainder(counts.astype(np.float64), n_val)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, per_class, strict=True)
        if k > 0
    ]
    val = np.sort(np.concatenate(picked)).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return np.flatnonzero(keep).astype(np.int64), val
