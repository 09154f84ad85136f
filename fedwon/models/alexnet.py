"""``alexnet``: FedBN's AlexNet for Office-Caltech-10 / DomainNet, with a selectable ``norm``.

As in med-air/FedBN ``nets/models.py``: five convs (11/5/3/3/3), three 3×3/2 max-pools,
a norm after every conv and hidden fc, ``AdaptiveAvgPool2d((6, 6))`` and a three-layer
classifier; same submodule names (``features.conv1`` … ``classifier.fc3``). FedBN feeds
256×256 images; the stride-4 stem and three max-pools need at least 63×63 (smaller
inputs are refused with a clear error instead of a shape error inside torch). With ``ws``
every conv is a WSConv2d (γ_ReLU, γ = 1 for conv1) and the classifier is plain linear.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fedwon.models.registry import NormModel, init_weights, layer_factories, register_model

__all__ = ["AlexNet"]

# conv1 (k11, s4, p2) -> pool -> conv2 -> pool -> conv3..5 -> pool: the last pool needs
# a 3x3 map, which first happens at 63x63 input.
MIN_INPUT_SIZE = 63


class AlexNet(NormModel):
    """FedBN's AlexNet; ``conv_widths``/``fc_width`` only shrink it for tests."""

    head_name = "classifier.fc3"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: str = "bn",
        conv_widths: Sequence[int] = (64, 192, 384, 256, 256),
        fc_width: int = 4096,
        conv_layer: Callable[..., nn.Conv2d] | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__(norm)
        # conv1 sees raw pixels, not a ReLU output: its WS gain γ is 1.
        conv, first_conv, norm_ = layer_factories(norm, "relu", conv_layer, norm_layer)
        c1, c2, c3, c4, c5 = conv_widths
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", first_conv(in_channels, c1, kernel_size=11, stride=4, padding=2)),
                    ("bn1", norm_(c1)),
                    ("relu1", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(kernel_size=3, stride=2)),
                    ("conv2", conv(c1, c2, kernel_size=5, padding=2)),
                    ("bn2", norm_(c2)),
                    ("relu2", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(kernel_size=3, stride=2)),
                    ("conv3", conv(c2, c3, kernel_size=3, padding=1)),
                    ("bn3", norm_(c3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", conv(c3, c4, kernel_size=3, padding=1)),
                    ("bn4", norm_(c4)),
                    ("relu4", nn.ReLU()),
                    ("conv5", conv(c4, c5, kernel_size=3, padding=1)),
                    ("bn5", norm_(c5)),
                    ("relu5", nn.ReLU()),
                    ("maxpool5", nn.MaxPool2d(kernel_size=3, stride=2)),
                ]
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(c5 * 6 * 6, fc_width)),
                    ("bn6", norm_(fc_width, dim=1)),
                    ("relu6", nn.ReLU()),
                    ("fc2", nn.Linear(fc_width, fc_width)),
                    ("bn7", norm_(fc_width, dim=1)),
                    ("relu7", nn.ReLU()),
                    ("fc3", nn.Linear(fc_width, num_classes)),
                ]
            )
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"alexnet expects (N, C, H, W) inputs with H, W >= {MIN_INPUT_SIZE} "
                f"(FedBN uses 256x256), got {tuple(x.shape)}"
            )
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("alexnet")
def alexnet(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> AlexNet:
    """FedBN's AlexNet (57,063,498 parameters with ``bn`` and 10 classes)."""
    return AlexNet(num_classes, in_channels, norm)


@register_model("alexnet-tiny")
def alexnet_tiny(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> AlexNet:
    """Same layers as ``alexnet`` with 8-24 conv channels and 64 fc units (inputs >= 63x63)."""
    return AlexNet(num_classes, in_channels, norm, conv_widths=(8, 16, 24, 16, 16), fc_width=64)
