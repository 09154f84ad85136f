"""Scaled weight-standardized convolution (``WSConv2d``), FedWon's replacement for conv + BN.

FedWon (Zhuang & Lyu, ICLR 2024) removes every normalization layer and reparameterizes
each convolution with *scaled weight standardization* (Brock et al., NF-ResNets 2021):
per output channel i, with fan-in N = in_channels/groups · kh · kw,

    Ŵ_i = gain_i · γ · (W_i − mean(W_i)) / sqrt(max(N · var(W_i), eps))

(biased variance, eps = 1e-4 as in DeepMind's NFNets code). Because the statistics come
from the *weights*, not the batch, the layer behaves identically at batch size 1 and on
every client's data distribution — the property multi-domain and cross-device FL need.

Implementation: the standardization is a few vectorized passes over the weight tensor per
forward and backward (a custom autograd Function, see ``_StandardizeWeight``), so its
cost is independent of the batch size; ``benchmarks/layer_bench.py`` measures it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.common_types import _size_2_t

__all__ = ["WSConv2d", "standardize_weight"]


def standardize_weight(
    weight: Tensor, gain: Tensor | float = 1.0, gamma: float = 1.0, eps: float = 1e-4
) -> Tensor:
    """Reference implementation: the scaled-standardized copy of a conv ``weight``.

    Plain autograd ops that spell out the formula; tests check the fast path against
    it. ``max(N·var, eps)`` rather than ``N·var + eps``: the clamp only matters for
    (near-)constant filters and then keeps Ŵ finite, exactly as in the NFNets code.
    """
    fan_in = weight[0].numel()
    var, mean = torch.var_mean(weight, dim=tuple(range(1, weight.ndim)), keepdim=True, correction=0)
    scale = torch.rsqrt(torch.clamp(var * fan_in, min=eps)) * (gain * gamma)
    return (weight - mean) * scale


class _StandardizeWeight(torch.autograd.Function):
    """Fused scaled weight standardization with a hand-written backward.

    Why not plain autograd of :func:`standardize_weight`: on CPU ``torch.var_mean`` is
    ~50x slower than ``mean`` (a Welford loop) and autograd's generic backward of
    mean → sub → var → clamp → mul takes ~30 ops and ~10 passes over the weight. Here
    ‖W_i − μ_i‖ = sqrt(N·var_i) comes from one ``vector_norm`` and the backward is two
    reductions and three elementwise passes (≈5x faster on ResNet-18's weights):

        x = W − μ,  r = 1 / max(‖x‖, √eps),  s = gain·γ,  Ŵ = s·r·x
        ∂L/∂gain = γ·r·Σ G·x
        ∂L/∂W    = s·r·(G − mean(G)) − s·r³·(Σ G·x)·x      (last term 0 where clamped)

    Every op is vmap-able (``generate_vmap_rule``), so torch.func / Opacus' functorch
    per-sample gradients work; double backward is not supported (nothing here needs it).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        weight: Tensor, gain: Tensor, gamma: float, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w = weight.reshape(weight.shape[0], -1)
        centered = w - w.mean(dim=1, keepdim=True)
        # ‖x‖ = sqrt(N·var), so max(‖x‖, √eps) = sqrt(max(N·var, eps)).
        inv = torch.linalg.vector_norm(centered, dim=1, keepdim=True)
        inv = inv.clamp_(min=eps**0.5).reciprocal_()
        scale = gain.reshape(-1, 1) * inv
        if gamma != 1.0:
            scale = scale.mul_(gamma)
        # The statistics are returned (as non-differentiable outputs) rather than stored
        # on ctx so forward() stays ctx-free, as torch.func's generated vmap rule needs.
        return (centered * scale).reshape(weight.shape), centered, inv, scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        _, _, gamma, eps = inputs
        _, centered, inv, scale = output
        ctx.mark_non_differentiable(centered, inv, scale)
        ctx.set_materialize_grads(False)  # no zero grads for the statistics outputs
        ctx.save_for_backward(centered, inv, scale)
        ctx.gamma, ctx.eps = gamma, eps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor | None, *_stats_grads: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        if grad_out is None:
            return None, None, None, None
        centered, inv, scale = ctx.saved_tensors
        g = grad_out.reshape(centered.shape)
        sum_gx = (g * centered).sum(dim=1, keepdim=True)
        grad_gain = None
        if ctx.needs_input_grad[1]:
            grad_gain = sum_gx * inv
            if ctx.gamma != 1.0:
                grad_gain = grad_gain.mul_(ctx.gamma)
            grad_gain = grad_gain.reshape(-1, 1, 1, 1)
        grad_weight = None
        if ctx.needs_input_grad[0]:
            # ∂r/∂W only where max(‖x‖, √eps) picked ‖x‖, i.e. r < 1/√eps.
            coef = (scale * inv).mul_(inv).mul_(sum_gx).mul_(inv < ctx.eps**-0.5)
            grad_weight = g - g.mean(dim=1, keepdim=True)
            grad_weight = grad_weight.mul_(scale).addcmul_(centered, coef, value=-1.0)
            grad_weight = grad_weight.reshape(grad_out.shape)
        return grad_weight, grad_gain, None, None


class WSConv2d(nn.Conv2d):
    """Drop-in ``nn.Conv2d`` whose weight is scaled-standardized on every forward.

    Args:
        gamma: fixed scale, the gain of the activation that *precedes* this conv (see
            :data:`fedwon.nn.ACTIVATION_GAINS`); it keeps the signal at unit variance
            without normalization layers.
        eps: lower bound on ``fan_in · var``; guards filters whose weights are all equal.

    The learnable per-output-channel ``gain`` (shape ``(out_channels, 1, 1, 1)``, init 1)
    restores the expressiveness that standardizing the weight took away, playing the role
    of BN's affine scale. ``gamma`` and ``eps`` are constructor constants, so the state
    dict holds exactly ``weight``, ``bias`` (if any) and ``gain``.
    """

    gain: nn.Parameter

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
        gamma: float = 1.0,
        eps: float = 1e-4,
        padding_mode: str = "zeros",
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
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.gain = nn.Parameter(
            torch.ones(out_channels, 1, 1, 1, device=self.weight.device, dtype=self.weight.dtype)
        )

    def reset_parameters(self) -> None:
        """Reset weight/bias like ``nn.Conv2d`` and the gain to 1 (identity scaling)."""
        super().reset_parameters()
        # nn.Conv2d.__init__ calls this before ``gain`` exists.
        if "gain" in self._parameters:
            nn.init.ones_(self.gain)

    def standardized_weight(self) -> Tensor:
        """The effective kernel Ŵ used by :meth:`forward` (differentiable)."""
        weight: Tensor = _StandardizeWeight.apply(self.weight, self.gain, self.gamma, self.eps)[0]
        return weight

    def forward(self, input: Tensor) -> Tensor:
        weight = self.standardized_weight()
        if self.padding_mode == "zeros":
            return F.conv2d(input, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._conv_forward(input, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma:.4g}, eps={self.eps:g}"
