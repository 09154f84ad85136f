"""StdConv2d (plain weight standardization, Qiao et al.) against its formula, by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedwon.nn import StdConv2d, plain_standardize_weight


def hand_weight(w: torch.Tensor, eps: float) -> torch.Tensor:
    """(W_i − mean) / (unbiased std + eps), one filter at a time: nothing shared with the code."""
    out = torch.empty_like(w)
    n = w[0].numel()
    for i in range(w.shape[0]):
        row = w[i]
        mean = row.sum() / n
        std = math.sqrt(float(((row - mean) ** 2).sum()) / (n - 1))  # unbiased, as Qiao et al.
        out[i] = (row - mean) / (std + eps)
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "padding": 1},
        {"in_channels": 4, "out_channels": 6, "kernel_size": 1, "stride": 2, "bias": False},
        {"in_channels": 4, "out_channels": 8, "kernel_size": 3, "groups": 2, "dilation": 2},
        {"in_channels": 6, "out_channels": 6, "kernel_size": 3, "groups": 6},
        {"in_channels": 2, "out_channels": 3, "kernel_size": (3, 5), "padding": "same"},
    ],
)
def test_output_matches_conv2d_with_hand_standardized_weight(kwargs: dict[str, object]) -> None:
    torch.manual_seed(0)
    conv = StdConv2d(**kwargs).double()  # type: ignore[arg-type]
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.7)  # an offset and scale for the standardization to remove
    x = torch.randn(2, conv.in_channels, 9, 9, dtype=torch.float64)
    w_hat = hand_weight(conv.weight.detach(), conv.eps)
    expected = F.conv2d(x, w_hat, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(conv(x), expected, rtol=1e-10, atol=1e-10)
    # Qiao et al.'s reference code, verbatim in spirit: mean over dims, torch.std (unbiased)
    w = conv.weight.detach()
    centered = w - w.mean(dim=(1, 2, 3), keepdim=True)
    ref = centered / (centered.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
    torch.testing.assert_close(conv.standardized_weight().detach(), ref, rtol=1e-12, atol=1e-12)


def test_no_gain_no_gamma_and_scale_offset_invariant() -> None:
    torch.manual_seed(0)
    conv = StdConv2d(3, 4, 3, bias=False).double()
    assert set(conv.state_dict()) == {"weight"}  # nothing beyond nn.Conv2d's own state
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    before = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(3.0)
    # a 7x larger std shrinks eps's relative share: equal up to eps / std ~ 1e-5
    torch.testing.assert_close(conv(x), before, rtol=1e-4, atol=1e-4)
    flat = conv.standardized_weight().detach().flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4, dtype=flat.dtype))
    torch.testing.assert_close(flat.std(1), torch.ones(4, dtype=flat.dtype), rtol=1e-4, atol=0)


def test_gradients_match_autograd_of_the_reference_formula() -> None:
    torch.manual_seed(1)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn_like(w)
    got = torch.autograd.grad((plain_standardize_weight(w) * grad_out).sum(), w)[0]

    def reference(weight: torch.Tensor) -> torch.Tensor:
        centered = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
        return centered / (centered.flatten(1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)

    want = torch.autograd.grad((reference(w) * grad_out).sum(), w)[0]
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(plain_standardize_weight, (w.detach().requires_grad_(),))


def test_constant_filter_is_finite_and_one_weight_filters_are_refused() -> None:
    conv = StdConv2d(2, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight[0].fill_(0.5)  # std 0: eps keeps Ŵ = 0 instead of NaN
    w_hat = conv.standardized_weight()
    w_hat.sum().backward()
    assert torch.equal(w_hat[0].detach(), torch.zeros_like(w_hat[0]))
    assert torch.isfinite(conv.weight.grad).all()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs >= 2 weights per filter.*got 1"):
        StdConv2d(4, 4, 1, groups=4)


def test_drop_in_for_conv2d_state_dict_and_batch_one() -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 4, 3, padding=1)
    std = StdConv2d(3, 4, 3, padding=1)
    std.load_state_dict(plain.state_dict())  # same keys, same shapes
    assert isinstance(std, nn.Conv2d) and "eps=1e-05" in repr(std)
    x = torch.randn(5, 3, 8, 8)
    batch = std(x)
    singles = torch.cat([std(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(singles, batch)  # no batch statistics anywhere


def test_per_sample_gradients_under_torch_func() -> None:
    """Opacus' functorch path: vmap over examples of grad through the standardization."""
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    conv = StdConv2d(2, 3, 3)
    params = {k: v.detach() for k, v in conv.named_parameters()}
    x = torch.randn(4, 2, 5, 5)

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(conv, p, (xi.unsqueeze(0),)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    total = torch.autograd.grad(conv(x).square().sum(), conv.weight)[0]
    torch.testing.assert_close(per_sample["weight"].sum(0), total, rtol=1e-4, atol=1e-5)
