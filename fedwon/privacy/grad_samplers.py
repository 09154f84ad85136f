"""Opacus per-example gradients for :class:`fedwon.nn.WSConv2d` (registered on import).

Opacus picks a layer's grad sampler by *exact* type, so a WSConv2d (a Conv2d subclass) would
otherwise go through its generic functorch path, which is slower and fails on the empty
batches Poisson sampling produces. Per example n, with Ŵ the standardized kernel:

1. dL/dŴ_n from the unfolded input and the output gradient -- Opacus' own conv recipe;
2. dL/dW_n and dL/dgain_n by the chain rule through the standardization, using the same
   backward formulas as WSConv2d itself (``fedwon.nn.ws_conv._ws_backward``), applied to the
   N per-example gradients stacked as N * out_channels rows.

Convolutions with a padding mode other than zeros keep Opacus' functorch path.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.utils.tensor_utils import unfold2d
from torch import nn

from fedwon.nn import WSConv2d
from fedwon.nn.ws_conv import _ws_backward, _ws_forward


def standardized_kernel_grad_sample(
    layer: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor
) -> torch.Tensor:
    """Per-example gradient w.r.t. the kernel the conv applied, shape (n, *weight.shape)."""
    n = activations.shape[0]
    cols = unfold2d(
        activations.to(backprops.dtype),
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        stride=layer.stride,
        dilation=layer.dilation,
    )
    grads = backprops.reshape(n, -1, cols.shape[-1])
    g = layer.groups
    per_group = torch.einsum(
        "ngoq,ngpq->ngop",
        grads.reshape(n, g, -1, grads.shape[-1]),
        cols.reshape(n, g, -1, cols.shape[-1]),
    )
    return per_group.reshape(n, *layer.weight.shape)


@register_grad_sampler(WSConv2d)
def compute_ws_conv_grad_sample(
    layer: WSConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[torch.Tensor, torch.Tensor]:
    """Opacus grad sampler of WSConv2d: per-example grads of ``weight``, ``gain``, ``bias``."""
    if layer.padding_mode != "zeros":
        return ft_compute_per_sample_gradient(layer, activations, backprops)
    x = activations[0]
    n = x.shape[0]
    params = [
        p for p in (layer.weight, layer.gain, layer.bias) if p is not None and p.requires_grad
    ]
    if n == 0:  # an empty Poisson batch: one zero gradient, as Opacus' own samplers return
        return {p: torch.zeros_like(p).unsqueeze(0) for p in params}
    ret: dict[torch.Tensor, torch.Tensor] = {}
    if layer.weight.requires_grad or layer.gain.requires_grad:
        kernel_grads = standardized_kernel_grad_sample(layer, x, backprops)
        out_channels = layer.weight.shape[0]
        with torch.no_grad():
            _, centered, inv, scale = _ws_forward(layer.weight, layer.gain, layer.gamma, layer.eps)
        grad_w, grad_gain = _ws_backward(
            kernel_grads.reshape(n * out_channels, -1),
            centered.repeat(n, 1),
            inv.repeat(n, 1),
            scale.repeat(n, 1),
            layer.gamma,
            layer.eps,
            layer.weight.requires_grad,
            layer.gain.requires_grad,
        )
        if grad_w is not None:
            ret[layer.weight] = grad_w.reshape(n, *layer.weight.shape)
        if grad_gain is not None:
            ret[layer.gain] = grad_gain.reshape(n, *layer.gain.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.reshape(n, backprops.shape[1], -1).sum(dim=2)
    return ret
