"""Bounding a client's influence: L2 clipping of a model update, flat or per layer.

User-level DP needs every client's contribution to the aggregate bounded by a known norm C
(the *sensitivity*); the Gaussian noise is then calibrated to C. Two ways to spend the bound:

* ``flat``: the whole update, as one vector, is scaled down to norm C if it is longer.
* ``per_layer`` (Apple, "Enabling DP FL for speech recognition"): layer h is clipped to its own
  bound C_h with sum_h C_h^2 = C^2, so the whole update still has norm <= C and the same
  noise std z*C applies. Deep models train better this way: one layer with a huge update no
  longer shrinks every other layer's update to nothing.
  ``split="uniform"``: C_h = C / sqrt(H);  ``split="dim"``: C_h = C * sqrt(d_h / sum_k d_k)
  (d_h = number of entries of layer h: big layers get a bigger share).

What a "layer" is: **one tensor is one layer** -- each entry of the list or dict passed in
(a conv's weight and its bias are two layers). For a Flower ``ArrayRecord`` that is one
state-dict key. FedBN's local tensors never reach this function: the server only ever sends,
receives and aggregates the shared arrays.

A layer (flat: the whole update) already within its bound is returned untouched (the same
values, bit for bit); a clipped one is scaled by bound / norm, whose float rounding may leave
its norm above the bound by a relative ~1e-7.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Literal, TypeVar, cast

import numpy as np
import torch

ClipMode = Literal["flat", "per_layer"]
Split = Literal["uniform", "dim"]
CLIP_MODES: tuple[str, ...] = ("flat", "per_layer")
# A bound beyond this clips nothing a float32 update can hold meaningfully, and its noise
# (z * C per coordinate) would overflow float32 long before it protected anyone.
MAX_CLIP_NORM = 1e6
SPLITS: tuple[str, ...] = ("uniform", "dim")

Tensorish = np.ndarray | torch.Tensor
U = TypeVar("U", bound=Sequence[Tensorish] | Mapping[str, Tensorish])


class NonFiniteUpdateError(ValueError):
    """An update with NaN or Inf values: it has no norm to clip to."""


def check_clip_settings(clip_norm: float, mode: str, split: str) -> None:
    """One-line errors for a bad clipping setting (shared by every entry point)."""
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be a positive finite number, got {clip_norm}")
    if mode not in CLIP_MODES:
        raise ValueError(f"unknown clipping mode {mode!r}; choose one of {list(CLIP_MODES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown per-layer split {split!r}; choose one of {list(SPLITS)}")


def layer_bounds(sizes: Sequence[int], clip_norm: float, split: str = "uniform") -> np.ndarray:
    """Per-layer bounds C_h (float64) for layers of ``sizes`` entries; sum_h C_h^2 = C^2.

    ``uniform``: C/sqrt(H). ``dim``: C*sqrt(d_h / sum d) (all-empty layers fall back to
    uniform, since there is nothing to weigh by).
    """
    return _layer_bounds(tuple(int(d) for d in sizes), float(clip_norm), split).copy()


@lru_cache(maxsize=256)
def _layer_bounds(sizes: tuple[int, ...], clip_norm: float, split: str) -> np.ndarray:
    """Cached: the DP aggregation asks for the same bounds for every reply of every round."""
    check_clip_settings(clip_norm, "per_layer", split)
    count = len(sizes)
    if count == 0:
        return np.zeros(0)
    d = np.asarray(sizes, dtype=np.float64)
    if (d < 0).any():
        raise ValueError(f"layer sizes must be >= 0, got {list(sizes)}")
    if split == "dim" and d.sum() > 0:
        return clip_norm * np.sqrt(d / d.sum())
    return np.full(count, clip_norm / math.sqrt(count))


def _as_tensor(value: Tensorish, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        raise TypeError(
            f"clip_update needs floating-point arrays; layer {name!r} has dtype {tensor.dtype}"
        )
    return tensor


def clip_factors(
    tensors: Sequence[torch.Tensor], clip_norm: float, mode: str = "flat", split: str = "uniform"
) -> np.ndarray:
    """The scale each layer gets (1.0 = untouched), as a float64 vector of length H.

    One fused kernel computes every layer's norm (``torch._foreach_norm``, in the layers'
    own precision: float32 sums are accurate to ~1e-6 relative, far below what matters here).
    """
    check_clip_settings(clip_norm, mode, split)
    if not tensors:
        return np.ones(0)
    norms = torch.stack(torch._foreach_norm(list(tensors))).to("cpu", torch.float64).numpy()
    if not np.isfinite(norms).all():
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(norms))[:5]]
        raise NonFiniteUpdateError(f"the update has NaN/Inf values in layers {bad}")
    if mode == "flat":
        total = math.sqrt(float(np.dot(norms, norms)))
        return np.full(len(norms), min(1.0, clip_norm / total) if total > 0 else 1.0)
    bounds = _layer_bounds(tuple(t.numel() for t in tensors), float(clip_norm), split)
    with np.errstate(divide="ignore"):  # a zero norm is within any bound: factor 1
        return np.where(norms > bounds, bounds / norms, 1.0)


def clip_tensors_(
    tensors: Sequence[torch.Tensor], clip_norm: float, mode: str = "flat", split: str = "uniform"
) -> np.ndarray:
    """Clip ``tensors`` in place (what the client-side mod uses); returns the factors."""
    factors = clip_factors(tensors, clip_norm, mode, split)
    for tensor, factor in zip(tensors, factors.tolist(), strict=True):
        if factor < 1.0:
            tensor.mul_(factor)
    return factors


def clip_update(update: U, clip_norm: float, mode: str = "flat", split: str = "uniform") -> U:
    """``update`` (a client's new minus global weights) clipped to L2 norm ``clip_norm``.

    Args:
        update: a list or dict of numpy arrays or torch tensors, one entry per layer.
        clip_norm: the total bound C.
        mode: ``"flat"`` (whole update) or ``"per_layer"`` (layer h to C_h).
        split: per-layer bounds, ``"uniform"`` or ``"dim"`` (see the module docstring).

    Returns the same structure (list or dict with the same keys, in order) with the same
    types, dtypes, devices and shapes. Entries within their bound are the input objects
    themselves; clipped entries are new arrays/tensors (the input is never modified).
    """
    items: list[tuple[str, Tensorish]]
    if isinstance(update, Mapping):
        items = [(str(k), v) for k, v in update.items()]
    elif isinstance(update, list | tuple):  # a tuple comes back as a tuple
        items = [(str(i), v) for i, v in enumerate(update)]
    else:
        raise TypeError(f"update must be a list or dict of arrays/tensors, got {type(update)}")
    tensors = [_as_tensor(value, name) for name, value in items]
    factors = clip_factors(tensors, clip_norm, mode, split).tolist()
    out: list[Tensorish] = []
    for (_, value), tensor, factor in zip(items, tensors, factors, strict=True):
        if factor >= 1.0:
            out.append(value)
        elif isinstance(value, torch.Tensor):
            out.append(value * factor)
        else:
            out.append((tensor * factor).numpy())
    if isinstance(update, Mapping):
        return cast(U, dict(zip(update.keys(), out, strict=True)))
    return cast(U, tuple(out) if isinstance(update, tuple) else out)


def update_norms(update: Sequence[Tensorish] | Mapping[str, Tensorish]) -> np.ndarray:
    """L2 norm of each layer (float64), e.g. to check an update respects its bounds."""
    values = list(update.values()) if isinstance(update, Mapping) else list(update)
    return np.array(
        [float(torch.linalg.vector_norm(torch.as_tensor(v), dtype=torch.float64)) for v in values]
    )
