"""Adaptive gradient clipping: unit-wise bound, untouched small grads, timm-style units."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedwon.nn import WSConv2d, adaptive_clip_grad, unitwise_norm


def unit_norms(x: torch.Tensor) -> torch.Tensor:
    """Per-unit norms by loops (independent of the implementation)."""
    if x.ndim <= 1:
        return x.norm().reshape(1)
    return torch.stack([x[i].norm() for i in range(x.shape[0])])


def test_unitwise_norm_units() -> None:
    w = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(unitwise_norm(w).flatten(), unit_norms(w))
    assert unitwise_norm(w).shape == (4, 1, 1, 1)
    b = torch.randn(5)
    torch.testing.assert_close(unitwise_norm(b), b.norm())  # a bias is one unit


@pytest.mark.parametrize("clip", [0.01, 0.1])
def test_every_unit_is_bounded_and_small_units_are_untouched(clip: float) -> None:
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, 3, 3, 3))
    grad = torch.randn(6, 3, 3, 3) * clip * 0.5  # some units above the bound, some below
    grad[0] *= 100.0  # certainly clipped
    grad[1] *= 1e-3  # certainly untouched
    p.grad = grad.clone()
    adaptive_clip_grad([p], clip_factor=clip)
    bound = clip * unit_norms(p.detach()).clamp(min=1e-3)
    g_norms = unit_norms(p.grad)
    assert (g_norms <= bound * (1 + 1e-5)).all()
    small = unit_norms(grad) <= bound
    assert small[1] and not small[0]
    assert torch.equal(p.grad[small], grad[small])  # bit-for-bit
    # clipped units keep their direction and land on the bound
    big = ~small
    torch.testing.assert_close(g_norms[big], bound[big])
    cos = nn.functional.cosine_similarity(p.grad[big].flatten(1), grad[big].flatten(1))
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_bias_is_one_unit_and_eps_protects_zero_weights() -> None:
    b = nn.Parameter(torch.zeros(4))  # zero weights: bound uses eps = 1e-3
    b.grad = torch.full((4,), 1.0)
    adaptive_clip_grad(b, clip_factor=0.5, eps=1e-3)
    torch.testing.assert_close(b.grad.norm(), torch.tensor(0.5e-3))
    torch.testing.assert_close(b.grad, torch.full((4,), 0.25e-3))  # uniform: one unit


def test_skips_parameters_without_grad_and_validates_clip_factor() -> None:
    a, b = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(3, 2))
    a.grad = torch.randn(3, 2) * 100
    adaptive_clip_grad([a, b], clip_factor=0.01)
    assert b.grad is None
    with pytest.raises(ValueError, match="clip_factor"):
        adaptive_clip_grad([a], clip_factor=0.0)


def test_large_clip_factor_is_an_exact_no_op_on_a_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(WSConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    adaptive_clip_grad(model.parameters(), clip_factor=1e6)
    after = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 5),
    cols=st.integers(1, 6),
    clip=st.floats(1e-3, 1.0),
    grad_scale=st.floats(1e-4, 1e3),
    seed=st.integers(0, 2**16),
)
def test_agc_property(rows: int, cols: int, clip: float, grad_scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    p = nn.Parameter(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    grad = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * grad_scale
    p.grad = grad.clone()
    adaptive_clip_grad([p], clip_factor=clip)
    bound = clip * unit_norms(p.detach()).clamp(min=1e-3)
    assert (unit_norms(p.grad) <= bound * (1 + 1e-9)).all()
    keep = unit_norms(grad) <= bound
    assert torch.equal(p.grad[keep], grad[keep])
