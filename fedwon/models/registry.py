"""Model registry (``MODELS``, ``build_model``) and what every model shares.

Model families live one per module (cnn, alexnet, resnet, mobilenetv2) and register
their named variants here with :func:`register_model`; ``fedwon.models`` imports them
all, so ``MODELS`` is complete whenever the package is imported.

Every model derives from :class:`NormModel`, which records the ``norm`` kind, names
the classifier head (AGC leaves it unclipped), and refuses — with an actionable
message — to *train* a BatchNorm model on a batch of one, where torch would fail deep
inside ``BatchNorm1d`` ("Expected more than 1 value per channel") or, worse, silently
normalize each channel of a single image by its own statistics.

Conventions shared by the families: the norm choice arrives as callables (``conv_layer``,
``norm_layer``), never as copies of a model; activations are not in-place, because
Opacus' per-sample-gradient hooks forbid in-place ops on a hooked module's output (with
``ws`` the Identity norm slot hands the conv output straight to the activation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from fedwon.nn import NORM_FREE_KINDS, check_norm_kind, conv_layer_for, make_norm

__all__ = ["MODELS", "NormModel", "build_model", "init_weights", "register_model"]

ModelFactory = Callable[..., nn.Module]
"""``factory(norm=..., num_classes=..., in_channels=...) -> nn.Module``."""

MODELS: dict[str, ModelFactory] = {}
"""Model name -> factory; filled by :func:`register_model` in the family modules."""

_F = TypeVar("_F", bound=ModelFactory)


def register_model(name: str) -> Callable[[_F], _F]:
    """Decorator adding a factory to :data:`MODELS` under ``name`` (unique)."""

    def decorator(factory: _F) -> _F:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorator


def _refuse_bn_batch_of_one(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: batch statistics of a single example are undefined."""
    if module.training and args and hasattr(args[0], "shape") and args[0].shape[0] == 1:
        raise ValueError(
            "norm='bn' cannot train with batch size 1: batch statistics are undefined; "
            "use norm='ws' (FedWon), 'gn', 'ln' or 'in', or a batch size >= 2"
        )


class NormModel(nn.Module):
    """Base class of fedwon models: one ``norm`` kind, a named head, the BN batch-1 guard.

    Attributes:
        norm: the normalization kind the model was built with (see ``NORM_KINDS``).
        norm_free: True for ``none``/``ws`` — no normalization layer anywhere.
        head_name: qualified name of the final classifier ``nn.Linear``
            (``model.get_submodule(model.head_name)``), which AGC conventionally skips.
    """

    head_name: str = "fc"

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.norm = check_norm_kind(norm)
        self.norm_free = norm in NORM_FREE_KINDS
        if norm == "bn":
            # A module-level function, so models stay picklable / deep-copyable.
            self.register_forward_pre_hook(_refuse_bn_batch_of_one)


def layer_factories(
    norm: str,
    activation: str,
    conv_layer: Callable[..., nn.Conv2d] | None = None,
    norm_layer: Callable[..., nn.Module] | None = None,
) -> tuple[Callable[..., nn.Conv2d], Callable[..., nn.Conv2d], Callable[..., nn.Module]]:
    """(conv after ``activation``, conv on raw inputs, norm layer) for a model's ``norm``.

    The norm choice flows through these callables, never through copies of a model. A conv
    that sees raw pixels (or a linear bottleneck) gets WS gain γ = 1; one after an activation
    gets that activation's γ. Explicit ``conv_layer``/``norm_layer`` override both.
    """
    conv = conv_layer or conv_layer_for(norm, activation)
    first_conv = conv_layer or conv_layer_for(norm, "identity")
    norm_ = norm_layer or functools.partial(make_norm, norm)
    return conv, first_conv, norm_


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU) conv weights and zero conv biases.

    Fan-in mode keeps the forward signal variance for the norm-free ``none`` baseline;
    for WSConv2d the scale is irrelevant (the weight is standardized), for norm layers BN
    re-scales. Linear and norm layers keep PyTorch's defaults, as in FedBN's reference.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_model(
    name: str, norm: str = "bn", num_classes: int = 10, in_channels: int = 3
) -> nn.Module:
    """Build model ``name`` (see :data:`MODELS`) with normalization kind ``norm``.

    ``norm="ws"`` gives FedWon's model: every conv a WSConv2d, no normalization layer.
    Raises ValueError naming the valid choices for an unknown ``name`` or ``norm``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    check_norm_kind(norm)
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}"
        )
    return MODELS[name](norm=norm, num_classes=num_classes, in_channels=in_channels)
