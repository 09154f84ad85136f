"""``cnn``: FedBN's DigitModel (Digits-5, 3×28×28 inputs), with a selectable ``norm``.

Layer for layer as in med-air/FedBN ``nets/models.py`` — three 5×5 convs, two max-pools,
three fc layers, a norm after every conv and hidden fc — and with the same attribute
names (conv1, bn1, …, fc3) so FedBN-format checkpoints map one to one. ``bn*`` hold
whatever ``norm`` selects (Identity for ``ws``/``none``). Conv biases stay on, as in the
reference, so the ``bn`` model's parameter count equals DigitModel's exactly. With ``ws``
conv2/conv3 are WSConv2d with γ_ReLU and conv1 (fed raw pixels) has γ = 1; the fc layers
stay plain ``nn.Linear`` as in FedWon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from fedwon.models.registry import NormModel, init_weights, layer_factories, register_model

__all__ = ["DigitCNN"]


class DigitCNN(NormModel):
    """FedBN's DigitModel; ``conv_widths``/``fc_widths`` only shrink it for tests."""

    head_name = "fc3"
    input_size = 28

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: str = "bn",
        conv_widths: Sequence[int] = (64, 64, 128),
        fc_widths: Sequence[int] = (2048, 512),
        conv_layer: Callable[..., nn.Conv2d] | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__(norm)
        # conv1 sees raw pixels, not a ReLU output: its WS gain γ is 1.
        conv, first_conv, norm_ = layer_factories(norm, "relu", conv_layer, norm_layer)
        c1, c2, c3 = conv_widths
        f1, f2 = fc_widths
        self.in_channels = in_channels
        self.conv1 = first_conv(in_channels, c1, 5, 1, 2)
        self.bn1 = norm_(c1)
        self.conv2 = conv(c1, c2, 5, 1, 2)
        self.bn2 = norm_(c2)
        self.conv3 = conv(c2, c3, 5, 1, 2)
        self.bn3 = norm_(c3)
        # two 2x max-pools: 28 -> 14 -> 7
        self.fc1 = nn.Linear(c3 * 7 * 7, f1)
        self.bn4 = norm_(f1, dim=1)
        self.fc2 = nn.Linear(f1, f2)
        self.bn5 = norm_(f2, dim=1)
        self.fc3 = nn.Linear(f2, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"cnn expects {'x'.join(map(str, expected))} inputs (N, C, H, W), "
                f"got {tuple(x.shape)}; resize digits to 28x28 as FedBN does"
            )
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = x.flatten(1)
        x = F.relu(self.bn4(self.fc1(x)))
        x = F.relu(self.bn5(self.fc2(x)))
        return self.fc3(x)


@register_model("cnn")
def cnn(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> DigitCNN:
    """FedBN's DigitModel (14,219,210 parameters with ``bn`` and 10 classes)."""
    return DigitCNN(num_classes, in_channels, norm)


@register_model("cnn-tiny")
def cnn_tiny(norm: str = "bn", num_classes: int = 10, in_channels: int = 3) -> DigitCNN:
    """Same layers as ``cnn`` with 8/8/16 conv and 64/32 fc channels, for fast tests."""
    return DigitCNN(num_classes, in_channels, norm, conv_widths=(8, 8, 16), fc_widths=(64, 32))
