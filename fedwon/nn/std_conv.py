"""Plain weight-standardized convolution (``StdConv2d``), the conv of the ``ws_gn`` baseline.

Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization" (2019), standardize every filter and let a batch-independent GroupNorm follow
the conv; that pairing (WS+GN) is the strongest micro-batch baseline the FedWon paper compares
against. Per output channel i, over its fan-in::

    Ŵ_i = (W_i − mean(W_i)) / (std(W_i) + eps)

with the *unbiased* standard deviation and ``eps = 1e-5``, exactly as in the authors' reference
code (``weight.view(out, -1).std(dim=1) + 1e-5``). Unlike :class:`fedwon.nn.WSConv2d` (FedWon's
*scaled* WS) there is no learnable gain, no activation gain γ and no 1/sqrt(fan-in) factor: the
GroupNorm after the conv supplies the scale, so the conv only removes each filter's offset and
scale. The statistics come from the weights, so the layer is as batch-size independent as
WSConv2d; the model around it is not normalization-free (it has GroupNorm layers, which FedBN
keeps local).

The std is computed as ``‖W − mean‖ / sqrt(N − 1)`` (plain ops, no ``torch.std``): the same
value, faster on CPU and usable under torch.func transforms (Opacus' per-sample gradients).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.common_types import _size_2_t

__all__ = ["StdConv2d", "plain_standardize_weight"]

STD_CONV_EPS = 1e-5
"""Qiao et al.'s constant, added to the standard deviation (not the variance)."""


def plain_standardize_weight(weight: Tensor, eps: float = STD_CONV_EPS) -> Tensor:
    """``(W − mean) / (std + eps)`` per output channel; std unbiased (fan-in − 1 denominator).

    Differentiable. Needs a fan-in of at least 2 (the unbiased std of one value is undefined).
    """
    fan_in = weight[0].numel()
    if fan_in < 2:
        raise ValueError(
            f"plain weight standardization needs >= 2 weights per filter, got fan-in {fan_in}"
        )
    rows = weight.reshape(weight.shape[0], -1)
    centered = rows - rows.mean(dim=1, keepdim=True)
    std = centered.norm(dim=1, keepdim=True) / math.sqrt(fan_in - 1)
    return (centered / (std + eps)).reshape(weight.shape)


class StdConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` whose weight is plainly standardized on every forward.

    Same constructor as ``nn.Conv2d`` plus ``eps``; the state dict holds exactly ``weight``
    and ``bias`` (if any), so a ``gn`` checkpoint loads into a ``ws_gn`` model and back.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: _size_2_t | str = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,
        eps: float = STD_CONV_EPS,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        if self.weight[0].numel() < 2:
            raise ValueError(
                "StdConv2d needs >= 2 weights per filter (in_channels/groups · kh · kw), got "
                f"{self.weight[0].numel()}; use nn.Conv2d for a 1-weight filter"
            )
        self.eps = float(eps)

    def standardized_weight(self) -> Tensor:
        """The effective kernel Ŵ used by :meth:`forward` (differentiable)."""
        return plain_standardize_weight(self.weight, self.eps)

    def forward(self, input: Tensor) -> Tensor:
        weight = self.standardized_weight()
        if self.padding_mode == "zeros":
            return F.conv2d(
                input, weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        return self._conv_forward(input, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}"
