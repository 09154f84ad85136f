"""Normalization choices: which norm layer and which conv a ``norm`` kind implies.

One string, ``norm``, selects a model's normalization scheme everywhere (config, CLI,
``build_model``):

* ``bn``   BatchNorm (FedAvg / FedBN baselines; FedBN keeps these layers local),
* ``gn``   GroupNorm with up to 32 groups (the FedWon paper's GN baseline; on fc features
           at least 8 features per group),
* ``ln``   LayerNorm (GroupNorm(1, C) on feature maps = LayerNorm over C, H, W),
* ``in``   InstanceNorm (affine),
* ``none`` no normalization, plain convolutions,
* ``ws``   FedWon: no normalization, every conv is a scaled weight-standardized WSConv2d,
* ``ws_gn`` the micro-batch baseline of Qiao et al. (2019): every conv a plainly
           weight-standardized StdConv2d, followed by the same GroupNorm as ``gn``.

It also owns the *type-based* definition of "a normalization layer" (``NORM_LAYER_TYPES``),
which FedBN (keep those layers local) and FedWon (refuse models that have any) rely on:
selecting by module type, never by parameter-name substrings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from fedwon.nn.activations import activation_gain
from fedwon.nn.std_conv import StdConv2d
from fedwon.nn.ws_conv import WSConv2d

__all__ = [
    "NORM_FREE_KINDS",
    "NORM_KINDS",
    "NORM_LAYER_TYPES",
    "check_norm_kind",
    "conv_layer_for",
    "gn_groups",
    "has_norm_layers",
    "is_norm_layer",
    "make_norm",
]

NORM_KINDS: tuple[str, ...] = ("bn", "gn", "ln", "in", "none", "ws", "ws_gn")
"""Valid values of ``norm``."""

NORM_FREE_KINDS: tuple[str, ...] = ("none", "ws")
"""Kinds whose models contain no normalization layer at all."""

_rms_norm: tuple[type[nn.Module], ...] = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()

NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    # _NormBase covers every BatchNorm*/SyncBatchNorm/InstanceNorm* (lazy variants too);
    # the explicit classes below it are listed for readers and grep.
    _NormBase,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    *_rms_norm,
)
"""Module classes that count as normalization layers (checked with ``isinstance``)."""


def check_norm_kind(kind: str) -> str:
    """Return ``kind`` if valid, else raise a ValueError that lists the valid kinds."""
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm {kind!r}; valid norms: {', '.join(NORM_KINDS)}")
    return kind


def gn_groups(channels: int, max_groups: int = 32, min_group_size: int = 1) -> int:
    """Largest divisor of ``channels`` <= ``max_groups`` leaving >= ``min_group_size`` per group.

    The FedWon paper's GN baseline uses 32 groups; narrow (tiny) layers cannot have 32,
    so we take the closest valid count rather than failing. ``min_group_size`` matters for
    fc features, which have no spatial extent: a group of one feature normalizes to 0.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    limit = max(1, min(max_groups, channels // max(min_group_size, 1)))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


_FC_MIN_GROUP_SIZE = 8
"""GroupNorm on fc features: at least this many features per group (2048 -> 32 groups)."""


def make_norm(kind: str, channels: int, dim: int = 2) -> nn.Module:
    """Build the normalization layer for ``channels`` features.

    Args:
        kind: one of :data:`NORM_KINDS`.
        channels: number of channels (conv) or features (fc).
        dim: 2 for conv feature maps (N, C, H, W), 1 for fc features (N, C).

    ``none`` and ``ws`` give ``nn.Identity`` so models can call their norm slot
    unconditionally. ``ws_gn`` gives the same GroupNorm as ``gn`` (its convs differ, see
    :func:`conv_layer_for`). For fc features ``in`` has no spatial extent to normalize over
    (one value per channel), so it falls back to ``nn.LayerNorm`` — the per-sample
    normalization closest in spirit, and like IN independent of the batch.
    """
    check_norm_kind(kind)
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 (fc features) or 2 (conv feature maps), got {dim}")
    if kind in NORM_FREE_KINDS:
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels) if dim == 2 else nn.BatchNorm1d(channels)
    if kind in ("gn", "ws_gn"):
        min_size = 1 if dim == 2 else _FC_MIN_GROUP_SIZE
        return nn.GroupNorm(gn_groups(channels, min_group_size=min_size), channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels) if dim == 2 else nn.LayerNorm(channels)
    # kind == "in"
    return nn.InstanceNorm2d(channels, affine=True) if dim == 2 else nn.LayerNorm(channels)


def conv_layer_for(norm: str, activation: str = "relu") -> Callable[..., nn.Conv2d]:
    """Conv constructor implied by ``norm``: WSConv2d with the activation's γ for "ws",
    StdConv2d (plain WS, no gain: the GroupNorm after it scales) for "ws_gn".

    Every other kind uses plain ``nn.Conv2d`` (its normalization layer, if any, handles
    the scale).
    """
    check_norm_kind(norm)
    if norm == "ws":
        return functools.partial(WSConv2d, gamma=activation_gain(activation))
    if norm == "ws_gn":
        return StdConv2d
    return nn.Conv2d


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (by type, see NORM_LAYER_TYPES)."""
    return isinstance(module, NORM_LAYER_TYPES)


def has_norm_layers(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` (or the model itself) is a normalization layer."""
    return any(is_norm_layer(m) for m in model.modules())
