"""Scaled weight-standardized convolution (``WSConv2d``), FedWon's replacement for conv + BN.

FedWon (Zhuang & Lyu, ICLR 2024) removes every normalization layer and reparameterizes
each convolution with *scaled weight standardization* (Brock et al., NF-ResNets 2021):
per output channel i, with fan-in N = in_channels/groups · kh · kw,

    Ŵ_i = gain_i · γ · (W_i − mean(W_i)) / sqrt(max(N · var(W_i), eps))

(biased variance, eps = 1e-4 as in DeepMind's NFNets code). Because the statistics come
from the *weights*, not the batch, the layer behaves identically at batch size 1 and on
every client's data distribution — the property multi-domain and cross-device FL need.

Speed. Ŵ is recomputed every forward, a cost independent of the batch size that matters
when the convs themselves are cheap (batch 1, depthwise convs). Plain autograd of the
formula (:func:`standardize_weight`) is slow — ``torch.var_mean`` is a scalar Welford
loop on CPU and its backward is ~30 small ops — so ``WSConv2d`` uses custom autograd
Functions with the same values and gradients:

* ``_StandardizeWeightBN`` (CPU): standardization *is* batch norm of the weight viewed as
  a (1, out_channels, N) batch (the trick timm's ``ScaledStdConv2d`` uses): ATen's fused
  BN backward kernel, and its forward kernel for small weights. BN's ``var + eps`` is not
  ``max(N·var, eps)``, so it runs with eps 0 and, if any filter is (near-)constant,
  falls back to the explicit formulas.
* ``_StandardizeWeight``: explicit formulas, sync-free and vmap-able; used on GPUs (the
  clamp check above would synchronize) and under torch.func transforms (Opacus'
  per-sample gradients), where an eager data-dependent branch is not allowed.

``benchmarks/layer_bench.py`` measures what is left.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.common_types import _size_2_t

__all__ = ["WSConv2d", "standardize_weight"]


def standardize_weight(
    weight: Tensor, gain: Tensor | float = 1.0, gamma: float = 1.0, eps: float = 1e-4
) -> Tensor:
    """Reference implementation: the scaled-standardized copy of a conv ``weight``.

    Plain autograd ops that spell out the formula; tests check the fast paths against
    it. ``max(N·var, eps)`` rather than ``N·var + eps``: the clamp only matters for
    (near-)constant filters and then keeps Ŵ finite, exactly as in the NFNets code.
    """
    fan_in = weight[0].numel()
    var, mean = torch.var_mean(weight, dim=tuple(range(1, weight.ndim)), keepdim=True, correction=0)
    scale = torch.rsqrt(torch.clamp(var * fan_in, min=eps)) * (gain * gamma)
    return (weight - mean) * scale


# -- explicit formulas ------------------------------------------------------------------
#   x = W − μ,  r = 1 / max(‖x‖, √eps)   (‖x‖ = sqrt(N·var)),  s = gain·γ,  Ŵ = s·r·x
#   ∂L/∂gain = γ·r·Σ G·x
#   ∂L/∂W    = s·r·(G − mean(G)) − s·r³·(Σ G·x)·x      (last term 0 where clamped)


def _ws_forward(
    weight: Tensor, gain: Tensor, gamma: float, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ŵ plus the statistics the backward needs: (Ŵ, x, r, s·r) with x, r, s·r as rows."""
    w = weight.reshape(weight.shape[0], -1)
    centered = w - w.mean(dim=1, keepdim=True)
    inv = torch.linalg.vector_norm(centered, dim=1, keepdim=True).clamp(min=eps**0.5).reciprocal()
    scale = gain.reshape(-1, 1) * inv if gamma == 1.0 else gain.reshape(-1, 1) * inv * gamma
    return (centered * scale).reshape(weight.shape), centered, inv, scale


# Out-of-place ops only: under vmap the incoming gradient may be batched while the saved
# statistics are not, and in-place ops on the unbatched side are then illegal.


def _ws_backward(
    grad_out: Tensor,
    centered: Tensor,
    inv: Tensor,
    scale: Tensor,
    gamma: float,
    eps: float,
    needs_weight: bool,
    needs_gain: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients w.r.t. weight and gain for :func:`_ws_forward` (formulas above)."""
    g = grad_out.reshape(centered.shape)
    sum_gx = (g * centered).sum(dim=1, keepdim=True)
    grad_gain = None
    if needs_gain:
        grad_gain = (sum_gx * inv if gamma == 1.0 else sum_gx * inv * gamma).reshape(-1, 1, 1, 1)
    grad_weight = None
    if needs_weight:
        # ∂r/∂W only where max(‖x‖, √eps) picked ‖x‖, i.e. r < 1/√eps.
        coef = scale * inv * inv * sum_gx * (inv < eps**-0.5)
        grad_weight = (g - g.mean(dim=1, keepdim=True)) * scale - centered * coef
        grad_weight = grad_weight.reshape(grad_out.shape)
    return grad_weight, grad_gain


class _StandardizeWeight(torch.autograd.Function):
    """Explicit-formula path: sync-free, vmap-able (``generate_vmap_rule``).

    Forward returns the statistics as extra, non-differentiable outputs instead of
    stashing them on ctx because torch.func's generated vmap rule needs a ctx-free
    forward. Double backward is not supported (nothing here needs it).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        weight: Tensor, gain: Tensor, gamma: float, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return _ws_forward(weight, gain, gamma, eps)

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
    def backward(
        ctx: Any, grad_out: Tensor | None, *_stats_grads: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        if grad_out is None:
            return None, None, None, None
        centered, inv, scale = ctx.saved_tensors
        needs_weight, needs_gain = ctx.needs_input_grad[:2]
        grad_weight, grad_gain = _ws_backward(
            grad_out, centered, inv, scale, ctx.gamma, ctx.eps, needs_weight, needs_gain
        )
        return grad_weight, grad_gain, None, None


class _StandardizeWeightBN(torch.autograd.Function):
    """CPU path: the weight rows as batch-norm channels; ATen's fused BN backward.

    Viewing W as a batch of one with out_channels channels of N values, BN with
    ``bn_weight = gain·γ/√N`` and eps 0 gives gain·γ·(W − μ)/sqrt(N·var) — the formula
    wherever N·var >= eps — and ``native_batch_norm_backward`` computes both gradients
    in one kernel (2-3x faster than the explicit backward). Forward: the BN kernel for
    small weights (fewest ops; per-op overhead dominates), explicit mean/norm passes for
    large ones (ATen's CPU BN statistics are a scalar Welford loop, ~4x slower there).
    If a filter is below the clamp (1/sqrt(var) huge or inf), the whole call switches to
    the explicit formulas. Old-style ``forward(ctx, ...)``: about half the Python
    overhead of setup_context, which matters with ~50 small convs per step.
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, gain: Tensor, gamma: float, eps: float) -> Tensor:
        out_channels, fan_in = weight.shape[0], weight[0].numel()
        ctx.gamma, ctx.eps = gamma, eps
        ctx.factor = gamma / math.sqrt(fan_in)
        w3 = weight.reshape(1, out_channels, fan_in)
        bn_weight = gain.reshape(out_channels) * ctx.factor
        if weight.numel() <= _BN_FORWARD_MAX_NUMEL:
            out, mean, invstd = torch.native_batch_norm(
                w3, bn_weight, None, None, None, True, 0.0, 0.0
            )
        else:
            w2 = weight.reshape(out_channels, fan_in)
            mean = w2.mean(dim=1)
            centered = w2 - mean.unsqueeze(1)
            # 1/sqrt(var) = √N / ‖x‖ (inf for a constant filter: caught just below)
            invstd = torch.linalg.vector_norm(centered, dim=1).reciprocal_().mul_(math.sqrt(fan_in))
            out = centered.mul_((bn_weight * invstd).unsqueeze(1))
        # clamped where N·var < eps  <=>  1/sqrt(var) > sqrt(N/eps)
        ctx.explicit = bool((invstd > math.sqrt(fan_in / eps)).any())
        if ctx.explicit:
            out, centered, inv, scale = _ws_forward(weight, gain, gamma, eps)
            ctx.save_for_backward(centered, inv, scale)
            return out
        ctx.save_for_backward(w3, bn_weight, mean, invstd)
        return out.reshape(weight.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        needs_weight, needs_gain = ctx.needs_input_grad[:2]
        if ctx.explicit:
            centered, inv, scale = ctx.saved_tensors
            grad_weight, grad_gain = _ws_backward(
                grad_out, centered, inv, scale, ctx.gamma, ctx.eps, needs_weight, needs_gain
            )
            return grad_weight, grad_gain, None, None
        w3, bn_weight, mean, invstd = ctx.saved_tensors
        grad_in, grad_bn_weight, _ = torch.ops.aten.native_batch_norm_backward(
            grad_out.reshape(w3.shape),
            w3,
            bn_weight,
            None,
            None,
            mean,
            invstd,
            True,
            0.0,
            [needs_weight, needs_gain, False],
        )
        grad_weight = grad_in.reshape(grad_out.shape) if needs_weight else None
        grad_gain = (grad_bn_weight * ctx.factor).reshape(-1, 1, 1, 1) if needs_gain else None
        return grad_weight, grad_gain, None, None


_BN_FORWARD_MAX_NUMEL = 8192
"""Weights up to this size use ATen's BN forward (measured crossover ~10k elements)."""


def _functorch_active() -> bool:
    """Whether a torch.func transform (vmap/grad) is running: eager branches not allowed."""
    probe = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if probe is None else bool(probe())


def standardized_weight_fast(weight: Tensor, gain: Tensor, gamma: float, eps: float) -> Tensor:
    """Same value and gradient as :func:`standardize_weight`, by the fastest valid path."""
    if weight.device.type == "cpu" and not _functorch_active():
        out: Tensor = _StandardizeWeightBN.apply(weight, gain, gamma, eps)
        return out
    out = _StandardizeWeight.apply(weight, gain, gamma, eps)[0]
    return out


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
        return standardized_weight_fast(self.weight, self.gain, self.gamma, self.eps)

    def forward(self, input: Tensor) -> Tensor:
        weight = self.standardized_weight()
        if self.padding_mode == "zeros":
            return F.conv2d(
                input, weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        return self._conv_forward(input, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma:.4g}, eps={self.eps:g}"
