"""``mobilenetv2`` (Sandler et al. 2018) with a selectable ``norm``, including FedWon's ``ws``.

Standard inverted residuals (1×1 expand → 3×3 depthwise → 1×1 linear projection, ReLU6,
identity shortcut when stride 1 and channels match), torchvision's layer table and
classifier (dropout 0.2 + linear).

Norm-free models (``ws``, ``none``) follow the NF-ResNet signal-propagation recipe also
used in ``resnet.py``: each block sees its input divided by β = sqrt(Var[x]) (tracked
analytically), residual blocks add α·f(x/β) with α = 0.2, and blocks without a shortcut
reset the variance to 1. For ``ws`` each conv gets the γ of what feeds it: γ_ReLU (ReLU6
behaves like ReLU at unit variance) after an activation, 1 for the stem (raw pixels) and
for the expand conv (fed by the previous linear bottleneck). Conv biases are on only when
there is no norm layer to supply the shift.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from fedwon.models.registry import NormModel, init_weights, layer_factories, register_model
from fedwon.models.resnet import NF_ALPHA

__all__ = ["InvertedResidual", "MobileNetV2"]

# (expansion t, output channels c, repeats n, first stride s) — Sandler et al., Table 2.
MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

ConvFactory = Callable[..., nn.Conv2d]


def _conv_norm_act(
    conv: ConvFactory,
    norm_layer: Callable[..., nn.Module],
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    act: bool = True,
) -> nn.Sequential:
    """conv → norm → ReLU6 (or no activation for the linear bottleneck)."""
    layers: list[nn.Module] = [
        conv(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=bias),
        norm_layer(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block; NF-scaled (``alpha`` set) when the model has no norm layers."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        expand_ratio: int,
        conv_after_act: ConvFactory,
        conv_linear_in: ConvFactory,
        norm_layer: Callable[..., nn.Module],
        alpha: float | None = None,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        bias = alpha is not None
        hidden = in_ch * expand_ratio
        self.use_shortcut = stride == 1 and in_ch == out_ch
        self.alpha = alpha
        self.beta = beta
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_norm_act(conv_linear_in, norm_layer, in_ch, hidden, 1, bias=bias))
        # The depthwise conv follows ReLU6 (or, for t = 1, the stem's ReLU6).
        layers.append(
            _conv_norm_act(conv_after_act, norm_layer, hidden, hidden, 3, stride, hidden, bias)
        )
        layers.append(
            _conv_norm_act(conv_after_act, norm_layer, hidden, out_ch, 1, bias=bias, act=False)
        )
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.alpha is None:
            return x + self.conv(x) if self.use_shortcut else self.conv(x)
        out = self.conv(x * (1.0 / self.beta))
        return x + out * self.alpha if self.use_shortcut else out


class MobileNetV2(NormModel):
    """MobileNetV2; ``settings``/``stem_width``/``last_width`` shrink it for tests."""

    head_name = "classifier.1"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: str = "bn",
        settings: Sequence[tuple[int, int, int, int]] = MOBILENETV2_SETTINGS,
        stem_width: int = 32,
        last_width: int = 1280,
        dropout: float = 0.2,
        conv_layer: ConvFactory | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        alpha: float = NF_ALPHA,
    ) -> None:
        super().__init__(norm)
        conv_after_act, conv_linear_in, norm_ = layer_factories(
            norm, "relu6", conv_layer, norm_layer
        )
        bias = self.norm_free
        nf_alpha = alpha if self.norm_free else None

        features: list[nn.Module] = [
            _conv_norm_act(conv_linear_in, norm_, in_channels, stem_width, 3, 2, bias=bias)
        ]
        in_ch = stem_width
        expected_var = 1.0
        for t, c, n, s in settings:
            for i in range(n):
                block = InvertedResidual(
                    in_ch,
                    c,
                    s if i == 0 else 1,
                    t,
                    conv_after_act,
                    conv_linear_in,
                    norm_,
                    nf_alpha,
                    beta=math.sqrt(expected_var),
                )
                # A block without shortcut outputs f(x/β) alone: unit variance again.
                expected_var = expected_var + alpha**2 if block.use_shortcut else 1.0
                features.append(block)
                in_ch = c
        # The last 1x1 conv reads the linear bottleneck output (γ = 1).
        features.append(_conv_norm_act(conv_linear_in, norm_, in_ch, last_width, 1, bias=bias))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_width, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


@register_model("mobilenetv2")
def mobilenetv2(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    """MobileNetV2 (width 1.0) as in torchvision."""
    return MobileNetV2(num_classes, in_channels, norm)


@register_model("mobilenetv2-tiny")
def mobilenetv2_tiny(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    """Four stages of narrow inverted residuals (two with identity shortcuts), for tests."""
    settings = ((1, 8, 1, 1), (2, 8, 2, 2), (2, 16, 2, 2), (2, 24, 1, 1))
    return MobileNetV2(
        num_classes, in_channels, norm, settings=settings, stem_width=8, last_width=32
    )
