"""Model families with a selectable normalization: ``build_model(name, norm=...)``.

``MODELS`` maps names to factories: ``cnn`` (FedBN's DigitModel), ``alexnet`` (FedBN's
AlexNet), ``resnet18`` (ImageNet stem), ``resnet18-cifar`` (CIFAR stem), ``mobilenetv2``,
and a ``-tiny`` variant of each family for fast tests. ``norm="ws"`` gives FedWon's
normalization-free model (WSConv2d everywhere, no normalization layer); ``norm="ws_gn"`` the
WS+GN baseline (plain weight-standardized StdConv2d everywhere, each followed by GroupNorm).
"""

# Importing the family modules registers their models in MODELS.
from fedwon.models import alexnet, cnn, mobilenetv2, resnet
from fedwon.models.alexnet import AlexNet
from fedwon.models.cnn import DigitCNN
from fedwon.models.mobilenetv2 import MobileNetV2
from fedwon.models.registry import MODELS, NormModel, build_model, init_weights, register_model
from fedwon.models.resnet import ResNet
from fedwon.models.spec import AUTO_NORM, ModelSpec

__all__ = [
    "AUTO_NORM",
    "MODELS",
    "AlexNet",
    "DigitCNN",
    "MobileNetV2",
    "ModelSpec",
    "NormModel",
    "ResNet",
    "alexnet",
    "build_model",
    "cnn",
    "init_weights",
    "mobilenetv2",
    "register_model",
    "resnet",
]
