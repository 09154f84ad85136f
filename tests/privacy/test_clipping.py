"""clip_update: bounds per layer and in total, untouched small layers, structure kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwon.privacy import clip_update, layer_bounds, update_norms

REL = 1e-6  # float32 scaling may leave a clipped norm this far above its bound

shapes = st.lists(
    st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=6
)


@st.composite
def updates(draw: st.DrawFn) -> list[np.ndarray]:
    """A list of float32 layers with norms from tiny to huge."""
    layers = []
    for shape in draw(shapes):
        seed = draw(st.integers(0, 2**31 - 1))
        scale = draw(st.sampled_from([1e-4, 0.1, 1.0, 10.0, 1e3]))
        layers.append((np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32))
    return layers


@settings(max_examples=60, deadline=None)
@given(update=updates(), clip=st.floats(0.01, 100), split=st.sampled_from(["uniform", "dim"]))
def test_per_layer_norms_are_within_their_bounds_and_the_total_within_c(
    update: list[np.ndarray], clip: float, split: str
) -> None:
    out = clip_update(update, clip, mode="per_layer", split=split)
    bounds = layer_bounds([u.size for u in update], clip, split)
    norms = update_norms(out)
    assert (norms <= bounds * (1 + REL)).all()
    assert math.sqrt((norms**2).sum()) <= clip * (1 + REL)
    before = update_norms(update)
    for original, clipped, norm, bound in zip(update, out, before, bounds, strict=True):
        if norm <= bound:
            assert clipped is original  # untouched: the very same array
        else:
            np.testing.assert_allclose(np.linalg.norm(clipped), bound, rtol=1e-5)
            # clipping only rescales: the direction is kept
            np.testing.assert_allclose(clipped * (norm / bound), original, rtol=1e-4, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(update=updates(), clip=st.floats(0.01, 100))
def test_flat_clipping_bounds_the_whole_vector_and_keeps_small_updates(
    update: list[np.ndarray], clip: float
) -> None:
    out = clip_update(update, clip, mode="flat")
    total_before = math.sqrt((update_norms(update) ** 2).sum())
    total_after = math.sqrt((update_norms(out) ** 2).sum())
    if total_before <= clip:
        assert all(a is b for a, b in zip(out, update, strict=True))
    else:
        assert total_after == pytest.approx(clip, rel=1e-5)
        factor = clip / total_before  # one factor for every layer
        for a, b in zip(out, update, strict=True):
            np.testing.assert_allclose(a, b * factor, rtol=1e-5, atol=1e-9)


@given(
    sizes=st.lists(st.integers(0, 10_000), min_size=1, max_size=20),
    clip=st.floats(1e-3, 1e3),
)
def test_bounds_follow_the_formulas_and_their_squares_sum_to_c_squared(
    sizes: list[int], clip: float
) -> None:
    uniform = layer_bounds(sizes, clip, "uniform")
    np.testing.assert_allclose(uniform, clip / math.sqrt(len(sizes)))
    dim = layer_bounds(sizes, clip, "dim")
    if sum(sizes):
        np.testing.assert_allclose(dim, [clip * math.sqrt(d / sum(sizes)) for d in sizes])
    for bounds in (uniform, dim):
        assert (bounds**2).sum() == pytest.approx(clip**2, rel=1e-9)


def test_dim_split_gives_big_layers_big_bounds() -> None:
    update = [np.full(100, 1.0, np.float32), np.full(1, 1.0, np.float32)]  # norms 10 and 1
    out = clip_update(update, 2.0, mode="per_layer", split="dim")
    # C_h = 2*sqrt(100/101) ~ 1.99 and 2*sqrt(1/101) ~ 0.199
    np.testing.assert_allclose(update_norms(out), [2 * math.sqrt(100 / 101), 2 / math.sqrt(101)])
    out = clip_update(update, 2.0, mode="per_layer", split="uniform")
    np.testing.assert_allclose(update_norms(out), [math.sqrt(2), 1.0])  # sqrt(2) bound each


def test_structure_types_and_devices_are_kept() -> None:
    arrays = {"w": np.ones((3, 4), np.float32) * 10, "b": np.zeros(4, np.float64)}
    out = clip_update(arrays, 1.0, mode="per_layer")
    assert list(out) == ["w", "b"] and isinstance(out["w"], np.ndarray)
    assert out["w"].dtype == np.float32 and out["w"].shape == (3, 4)
    assert out["b"] is arrays["b"]
    tensors = [torch.ones(2, 2, dtype=torch.float64) * 5, torch.ones(3)]
    out_t = clip_update(tensors, 1.0, mode="flat")
    assert isinstance(out_t, list) and all(isinstance(t, torch.Tensor) for t in out_t)
    assert out_t[0].dtype == torch.float64 and out_t[0].shape == (2, 2)
    assert isinstance(clip_update(tuple(tensors), 1.0), tuple)
    assert tensors[0].max() == 5  # the input is never modified


def test_bad_arguments_get_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown clipping mode 'layer'; choose one of"):
        clip_update([np.ones(2)], 1.0, mode="layer")
    with pytest.raises(ValueError, match=r"unknown per-layer split 'size'"):
        clip_update([np.ones(2)], 1.0, mode="per_layer", split="size")
    with pytest.raises(ValueError, match="clip_norm must be a positive"):
        clip_update([np.ones(2)], 0.0)
    with pytest.raises(TypeError, match=r"layer 'n' has dtype torch.int64"):
        clip_update({"n": np.array([3])}, 1.0)
