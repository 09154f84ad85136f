"""WSConv2d against the scaled weight standardization formula, computed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedwon.nn import ACTIVATION_GAINS, WSConv2d, standardize_weight
from fedwon.nn.ws_conv import _StandardizeWeight, _StandardizeWeightBN, standardized_weight_fast


def hand_weight(w: torch.Tensor, gain: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    """The formula with explicit per-channel loops: nothing shared with the implementation."""
    out = torch.empty_like(w)
    n = w[0].numel()
    for i in range(w.shape[0]):
        row = w[i]
        mean = row.sum() / n
        var = ((row - mean) ** 2).sum() / n  # biased
        out[i] = gain[i] * gamma * (row - mean) / torch.sqrt(torch.clamp(n * var, min=eps))
    return out


def make_conv(**kwargs: object) -> WSConv2d:
    torch.manual_seed(0)
    conv = WSConv2d(**kwargs).double()  # type: ignore[arg-type]
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)
    return conv


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 3, "out_channels": 5, "kernel_size": 3, "padding": 1, "gamma": 1.7},
        {"in_channels": 4, "out_channels": 6, "kernel_size": 1, "stride": 2, "bias": False},
        {"in_channels": 4, "out_channels": 8, "kernel_size": 3, "groups": 2, "dilation": 2},
        {"in_channels": 6, "out_channels": 6, "kernel_size": 3, "groups": 6, "gamma": 1.7},
        {"in_channels": 2, "out_channels": 3, "kernel_size": (3, 5), "padding": "same"},
    ],
)
def test_output_matches_conv2d_with_hand_standardized_weight(kwargs: dict[str, object]) -> None:
    conv = make_conv(**kwargs)
    x = torch.randn(2, conv.in_channels, 9, 9, dtype=torch.float64)
    w_hat = hand_weight(conv.weight.detach(), conv.gain.detach(), conv.gamma, conv.eps)
    expected = F.conv2d(x, w_hat, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(conv(x), expected, rtol=1e-10, atol=1e-10)
    # Each standardized filter has zero mean and squared norm (gain·γ)².
    flat = conv.standardized_weight().detach().flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(conv.out_channels, dtype=flat.dtype))
    norms = flat.norm(dim=1)
    torch.testing.assert_close(norms, conv.gain.detach().flatten() * conv.gamma)


def test_gain_is_learnable_per_channel_and_initialised_to_one() -> None:
    conv = WSConv2d(3, 4, 3)
    assert isinstance(conv.gain, nn.Parameter) and conv.gain.requires_grad
    assert conv.gain.shape == (4, 1, 1, 1)
    assert torch.equal(conv.gain.detach(), torch.ones(4, 1, 1, 1))
    x = torch.randn(2, 3, 5, 5)
    conv(x).square().sum().backward()
    assert conv.gain.grad is not None and conv.gain.grad.abs().sum() > 0
    # Doubling one channel's gain doubles exactly that output channel (bias aside).
    conv_b = copy.deepcopy(conv)
    with torch.no_grad():
        conv_b.gain[2] = 2.0
    y, y_b = conv(x) - conv.bias.view(1, -1, 1, 1), conv_b(x) - conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y_b[:, 2], 2 * y[:, 2])
    torch.testing.assert_close(y_b[:, [0, 1, 3]], y[:, [0, 1, 3]])


def test_gamma_scales_output_and_weight_scale_is_irrelevant() -> None:
    torch.manual_seed(0)
    base = WSConv2d(3, 4, 3, bias=False)
    scaled = WSConv2d(3, 4, 3, bias=False, gamma=ACTIVATION_GAINS["relu"])
    scaled.load_state_dict(base.state_dict())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(scaled(x), ACTIVATION_GAINS["relu"] * base(x))
    # Standardization removes the weight's scale and offset per filter.
    with torch.no_grad():
        scaled.weight.mul_(7.0).add_(3.0)
    torch.testing.assert_close(scaled(x), ACTIVATION_GAINS["relu"] * base(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_eps_clamp_on_constant_and_near_constant_filters(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    conv = WSConv2d(2, 3, 3, bias=False, eps=1e-4).to(dtype)
    n = 2 * 3 * 3
    with torch.no_grad():
        conv.weight[0].fill_(0.3)  # var = 0: Ŵ must be 0, not NaN
        conv.weight[1] = 0.3 + 1e-4 * torch.randn(2, 3, 3, dtype=dtype)  # n·var << eps
    row = conv.weight[1].detach()
    assert n * row.var(correction=0) < 1e-4
    w_hat = conv.standardized_weight()
    w_hat.sum().backward()
    assert torch.isfinite(conv.weight.grad).all() and torch.isfinite(conv.gain.grad).all()
    w_hat = w_hat.detach()
    # (mean rounding of 0.3 leaves ~1e-8 per entry, divided by sqrt(eps))
    torch.testing.assert_close(w_hat[0], torch.zeros_like(w_hat[0]), rtol=0, atol=1e-5)
    # clamped: divided by sqrt(eps) = 1e-2, not by its own tiny std (norm would be 1)
    torch.testing.assert_close(w_hat[1], (row - row.mean()) / 1e-2)
    assert w_hat[1].norm() < 0.1
    torch.testing.assert_close(w_hat[2].norm(), torch.tensor(1.0, dtype=dtype))
    torch.testing.assert_close(
        w_hat, hand_weight(conv.weight.detach(), conv.gain.detach(), 1.0, 1e-4)
    )


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (40, 32, 3, 3)])  # BN / explicit forward
@pytest.mark.parametrize("clamped", [False, True])
@pytest.mark.parametrize("gamma", [1.0, 1.7139588594436646])
def test_fast_paths_match_reference_values_and_gradients(
    shape: tuple[int, int, int, int], clamped: bool, gamma: float
) -> None:
    torch.manual_seed(1)
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    gain = torch.rand(shape[0], 1, 1, 1, dtype=torch.float64, requires_grad=True)
    if clamped:
        with torch.no_grad():
            w[0] = 0.5
            w[1] = 0.5 + 1e-5 * torch.randn(shape[1:], dtype=torch.float64)
    grad_out = torch.randn(shape, dtype=torch.float64)
    ref = standardize_weight(w, gain, gamma, 1e-4)
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), (w, gain))
    paths = {
        "bn": lambda a, b: _StandardizeWeightBN.apply(a, b, gamma, 1e-4),
        "explicit": lambda a, b: _StandardizeWeight.apply(a, b, gamma, 1e-4)[0],
    }
    for name, fn in paths.items():
        out = fn(w, gain)
        torch.testing.assert_close(out, ref, msg=name)
        grads = torch.autograd.grad((out * grad_out).sum(), (w, gain))
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=name)
        if w.numel() < 1000:
            assert torch.autograd.gradcheck(fn, (w, gain)), name


@settings(max_examples=25, deadline=None)
@given(
    out_ch=st.integers(1, 6),
    in_ch=st.integers(1, 4),
    k=st.integers(1, 3),
    scale=st.floats(1e-3, 1e3),
    gamma=st.floats(0.5, 2.0),
)
def test_standardization_property(
    out_ch: int, in_ch: int, k: int, scale: float, gamma: float
) -> None:
    """Any shape and weight scale: zero-mean filters of norm gain·γ (unless clamped)."""
    w = scale * torch.randn(out_ch, in_ch, k, k, dtype=torch.float64)
    gain = torch.rand(out_ch, 1, 1, 1, dtype=torch.float64) + 0.5
    out = standardized_weight_fast(w, gain, gamma, 1e-4)
    torch.testing.assert_close(out, hand_weight(w, gain, gamma, 1e-4))
    n = in_ch * k * k
    unclamped = n * w.flatten(1).var(1, correction=0) >= 1e-4
    norms = out.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[unclamped], (gain.flatten() * gamma)[unclamped])


def test_drop_in_state_dict_and_repr() -> None:
    conv = WSConv2d(3, 4, 3, bias=True, gamma=1.7)
    assert isinstance(conv, nn.Conv2d)
    assert list(conv.state_dict()) == ["weight", "bias", "gain"]
    assert list(WSConv2d(3, 4, 3, bias=False).state_dict()) == ["weight", "gain"]
    fresh = WSConv2d(3, 4, 3, gamma=1.7)
    fresh.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(fresh(x), conv(x))
    assert "gamma=1.7" in repr(conv)
    conv.reset_parameters()
    assert torch.equal(conv.gain.detach(), torch.ones(4, 1, 1, 1))


def test_depthwise_and_padding_mode() -> None:
    conv = WSConv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect")
    x = torch.randn(1, 4, 6, 6)
    expected = F.conv2d(
        F.pad(x, (1, 1, 1, 1), mode="reflect"), conv.standardized_weight(), conv.bias, groups=4
    )
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_per_sample_gradients_under_torch_func_and_opacus() -> None:
    """Opacus dispatches by exact class; WSConv2d goes through its functorch path."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = nn.Sequential(
        WSConv2d(3, 4, 3, padding=1, gamma=1.7), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    )
    ref = copy.deepcopy(model)
    x, y = torch.randn(3, 3, 5, 5), torch.tensor([0, 2, 1])
    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    for i in range(3):
        loss = F.cross_entropy(ref(x[i : i + 1]), y[i : i + 1], reduction="sum")
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        for g, p in zip(grads, model.parameters(), strict=True):
            torch.testing.assert_close(p.grad_sample[i], g, rtol=1e-4, atol=1e-5)  # type: ignore[attr-defined]


def test_works_at_batch_size_one_identically() -> None:
    """No batch statistics: sample i's output does not depend on the rest of the batch."""
    conv = WSConv2d(3, 4, 3)
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(conv(x)[1:2], conv(x[1:2]))
