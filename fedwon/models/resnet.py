"""``resnet18`` (BasicBlock ResNet-18) with a selectable ``norm``, including FedWon's ``ws``.

With a normalization layer (``bn``/``gn``/``ln``/``in``) the blocks are the classic
post-activation blocks of He et al. (torchvision layout). Without one (``ws``, FedWon, and
the ``none`` baseline) nothing resets the activation variance after each residual sum, so
it would grow with depth; these models use the signal-propagation scheme of NF-ResNets
(Brock et al. 2021a), the work FedWon's scaled weight standardization comes from:

    x_{l+1} = x_l + α · f_l(x_l / β_l),   β_l = sqrt(Var[x_l]),   Var[x_{l+1}] = Var[x_l] + α²

with pre-activation residual branches, α = 0.2, β computed analytically at construction,
the variance reset to 1 after every transition block (its shortcut is a conv on the
normalized input), no activation after the stem and a final ReLU before pooling. Every
conv after a ReLU is a WSConv2d with γ_ReLU for ``ws`` (so f_l preserves variance; the
stem conv, fed raw pixels, has γ = 1), a plain conv for ``none``. Both keep conv biases,
since no norm layer provides a shift. Giving ``none`` the same α/β scaling means ``none``
vs ``ws`` isolates the effect of weight standardization (without it, an unnormalized
post-activation ResNet-18's block outputs grew from variance ~1 to ~23 over the 8 blocks
at init here, and its loss jumped 2.3 → 25 on the first SGD step at lr 0.01). Measured
at init: every ``ws`` block output has variance ≈ 1 (tests/models/test_models.py).

Stems: ``resnet18`` has the ImageNet stem (7×7/2 conv + 3×3/2 max-pool; Office-Caltech /
DomainNet 256×256 images); ``resnet18-cifar`` a 3×3/1 conv and no max-pool (32×32 images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from fedwon.models.registry import NormModel, init_weights, layer_factories, register_model

__all__ = ["NF_ALPHA", "BasicBlock", "ResNet"]

NF_ALPHA = 0.2
"""Residual branch scale of norm-free models (NF-ResNets' default)."""


class BasicBlock(nn.Module):
    """Two 3×3 convs with a shortcut; post-activation, or NF pre-activation when ``alpha``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        conv_layer: Callable[..., nn.Conv2d],
        norm_layer: Callable[..., nn.Module],
        alpha: float | None = None,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        bias = alpha is not None  # norm-free: no norm layer supplies the shift
        self.alpha = alpha
        self.beta = beta
        self.conv1 = conv_layer(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.bn1 = norm_layer(out_channels)
        self.conv2 = conv_layer(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.bn2 = norm_layer(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv_layer(in_channels, out_channels, 1, stride, 0, bias=bias),
                norm_layer(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.alpha is None:
            shortcut = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + shortcut)
        # NF pre-activation: ReLU is positively homogeneous, so relu(x)/β = relu(x/β).
        out = self.relu(x) * (1.0 / self.beta)
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        return shortcut + out * self.alpha


class ResNet(NormModel):
    """BasicBlock ResNet; ResNet-18 by default (``widths``/``depths`` shrink it for tests)."""

    head_name = "fc"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: str = "bn",
        widths: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        cifar_stem: bool = False,
        conv_layer: Callable[..., nn.Conv2d] | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        alpha: float = NF_ALPHA,
    ) -> None:
        super().__init__(norm)
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"ResNet has 4 stages; got widths={widths}, depths={depths}")
        # The stem sees raw pixels, not a ReLU output: γ = 1 there.
        conv, stem_conv, norm_ = layer_factories(norm, "relu", conv_layer, norm_layer)
        nf_alpha = alpha if self.norm_free else None
        stem_bias = self.norm_free
        if cifar_stem:
            self.conv1 = stem_conv(in_channels, widths[0], 3, 1, 1, bias=stem_bias)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = stem_conv(in_channels, widths[0], 7, 2, 3, bias=stem_bias)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = norm_(widths[0])
        # NF models pre-activate inside each block, so their stem has no activation.
        self.relu: nn.Module = nn.Identity() if self.norm_free else nn.ReLU()

        stages: list[nn.Sequential] = []
        in_ch = widths[0]
        expected_var = 1.0  # the stem's WS conv outputs ~unit variance
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                block = BasicBlock(
                    in_ch, width, stride, conv, norm_, nf_alpha, beta=math.sqrt(expected_var)
                )
                if block.downsample is not None:
                    expected_var = 1.0  # shortcut = conv(normalized input): unit variance
                expected_var += alpha**2
                blocks.append(block)
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # Post-activation blocks end in ReLU; NF blocks end in a residual sum.
        self.final_act: nn.Module = nn.ReLU() if self.norm_free else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(self.final_act(x)).flatten(1)
        return self.fc(x)


@register_model("resnet18")
def resnet18(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 with the ImageNet stem (for 224-256 px images, e.g. Office/DomainNet)."""
    return ResNet(num_classes, in_channels, norm)


@register_model("resnet18-cifar")
def resnet18_cifar(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 with a CIFAR stem (3×3/1 conv, no max-pool) for 32×32 images."""
    return ResNet(num_classes, in_channels, norm, cifar_stem=True)


@register_model("resnet18-tiny")
def resnet18_tiny(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """Four stages of one BasicBlock, 8-64 channels, CIFAR stem: fast tests, same structure."""
    return ResNet(
        num_classes, in_channels, norm, widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), cifar_stem=True
    )
