"""make_norm for every kind and dim, conv_layer_for, norm-layer detection, activation gains."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from fedwon.nn import (
    ACTIVATION_GAINS,
    NORM_KINDS,
    NORM_LAYER_TYPES,
    StdConv2d,
    WSConv2d,
    activation_gain,
    conv_layer_for,
    gn_groups,
    has_norm_layers,
    is_norm_layer,
    make_norm,
)

EXPECTED = {
    ("bn", 2): nn.BatchNorm2d,
    ("bn", 1): nn.BatchNorm1d,
    ("gn", 2): nn.GroupNorm,
    ("gn", 1): nn.GroupNorm,
    ("ln", 2): nn.GroupNorm,
    ("ln", 1): nn.LayerNorm,
    ("in", 2): nn.InstanceNorm2d,
    ("in", 1): nn.LayerNorm,
    ("none", 2): nn.Identity,
    ("none", 1): nn.Identity,
    ("ws", 2): nn.Identity,
    ("ws", 1): nn.Identity,
    ("ws_gn", 2): nn.GroupNorm,
    ("ws_gn", 1): nn.GroupNorm,
}


def test_norm_kinds() -> None:
    assert NORM_KINDS == ("bn", "gn", "ln", "in", "none", "ws", "ws_gn")


@pytest.mark.parametrize(("kind", "dim"), list(EXPECTED))
def test_make_norm_every_kind_and_dim(kind: str, dim: int) -> None:
    layer = make_norm(kind, 64, dim=dim)
    assert type(layer) is EXPECTED[(kind, dim)]
    assert is_norm_layer(layer) == (kind not in ("none", "ws"))
    x = torch.randn(3, 64, 5, 5) if dim == 2 else torch.randn(3, 64)
    y = layer.train()(x)
    assert y.shape == x.shape
    if kind in ("bn", "gn", "ln", "in", "ws_gn"):
        assert sum(p.numel() for p in layer.parameters()) == 2 * 64  # affine scale + shift


def test_group_and_layer_norm_details() -> None:
    gn = make_norm("gn", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    ln = make_norm("ln", 16)
    assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1  # LayerNorm over C, H, W
    ws_gn = make_norm("ws_gn", 64)  # the WS+GN baseline's norm is exactly the gn one
    assert isinstance(ws_gn, nn.GroupNorm) and ws_gn.num_groups == 32
    inorm = make_norm("in", 8)
    assert isinstance(inorm, nn.InstanceNorm2d) and inorm.affine
    assert [gn_groups(c) for c in (64, 32, 48, 24, 8, 6, 7, 1, 96)] == [
        32,
        32,
        24,
        24,
        8,
        6,
        7,
        1,
        32,
    ]
    assert [gn_groups(c, min_group_size=8) for c in (2048, 512, 64, 32, 12, 4)] == [
        32,
        32,
        8,
        4,
        1,
        1,
    ]
    # fc features: a one-feature group would normalize to a constant
    fc = make_norm("gn", 32, dim=1)
    assert isinstance(fc, nn.GroupNorm) and fc.num_groups == 4
    assert make_norm("gn", 32, dim=1).train()(torch.randn(1, 32)).std() > 0.5
    with pytest.raises(ValueError, match=r"channels must be >= 1, got 0"):
        gn_groups(0)


def test_make_norm_errors_name_valid_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown norm 'batch'.*bn, gn, ln, in, none, ws, ws_gn"):
        make_norm("batch", 8)
    with pytest.raises(ValueError, match="dim"):
        make_norm("bn", 8, dim=3)


def test_conv_layer_for() -> None:
    assert conv_layer_for("bn") is nn.Conv2d
    assert conv_layer_for("none") is nn.Conv2d
    assert conv_layer_for("ws_gn") is StdConv2d  # plain WS, whatever the activation
    factory = conv_layer_for("ws", "relu")
    assert isinstance(factory, functools.partial)
    conv = factory(3, 4, 3)
    assert isinstance(conv, WSConv2d) and conv.gamma == ACTIVATION_GAINS["relu"]
    assert factory(3, 4, 1).gamma == pytest.approx(1.7139588594436646)
    assert conv_layer_for("ws", "gelu")(3, 4, 3).gamma == ACTIVATION_GAINS["gelu"]
    with pytest.raises(ValueError, match="unknown norm"):
        conv_layer_for("batchnorm")
    with pytest.raises(ValueError, match="unknown activation"):
        conv_layer_for("ws", "tanhh")


def test_norm_layer_types_by_type_not_name() -> None:
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm):
        assert cls in NORM_LAYER_TYPES
    for layer in (
        nn.BatchNorm2d(4),
        nn.InstanceNorm1d(4),
        nn.LayerNorm(4),
        nn.GroupNorm(2, 4),
        nn.LocalResponseNorm(2),
        nn.LazyBatchNorm2d(),
    ):
        assert is_norm_layer(layer), layer
    not_norms = (nn.Conv2d(1, 1, 1), WSConv2d(1, 1, 1), StdConv2d(1, 1, 3), nn.Identity())
    for layer in (*not_norms, nn.Linear(2, 2)):
        assert not is_norm_layer(layer), layer

    class Sneaky(nn.Module):  # named like a norm, is not one
        def __init__(self) -> None:
            super().__init__()
            self.bn1 = nn.Conv2d(1, 1, 1)

    assert not has_norm_layers(Sneaky())
    assert has_norm_layers(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Sequential(nn.GroupNorm(1, 2))))
    assert has_norm_layers(nn.BatchNorm1d(3))


def test_activation_gains_match_their_definition() -> None:
    """γ = 1/std(act(z)), z ~ N(0, 1): the published constants within Monte-Carlo error."""
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    acts = {"relu": torch.relu, "gelu": nn.functional.gelu, "silu": nn.functional.silu}
    for name, fn in acts.items():
        assert ACTIVATION_GAINS[name] == pytest.approx(1 / fn(z).std().item(), rel=5e-3), name
    assert ACTIVATION_GAINS["relu"] == 1.7139588594436646
    assert ACTIVATION_GAINS["gelu"] == 1.7015043497085571
    assert ACTIVATION_GAINS["silu"] == 1.7881293296813965
    assert ACTIVATION_GAINS["relu6"] == ACTIVATION_GAINS["relu"]
    assert ACTIVATION_GAINS["identity"] == ACTIVATION_GAINS["linear"] == 1.0
    assert activation_gain("ReLU") == ACTIVATION_GAINS["relu"]
    with pytest.raises(ValueError, match="valid activations"):
        activation_gain("tanhh")
