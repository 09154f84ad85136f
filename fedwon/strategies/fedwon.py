"""FedWon (Zhuang & Lyu, ICLR 2024): FedAvg of a normalization-free model.

The model has no normalization layer; every convolution uses scaled weight standardization
(:class:`fedwon.nn.WSConv2d`) and clients may clip gradients adaptively (``agc_clip``). Because
nothing depends on batch statistics, all parameters can be shared across domains and clients
can train with batch size 1.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedwon.nn import is_norm_layer
from fedwon.strategies.fedavg import FedAvg


def check_normalization_free(model: nn.Module) -> None:
    """Refuse a model that still normalizes: FedWon's aggregation assumes there is nothing local."""
    found = [name or type(m).__name__ for name, m in model.named_modules() if is_norm_layer(m)]
    if found:
        raise ValueError(
            f"FedWon needs a normalization-free model, but it has normalization layers "
            f"{found[:5]}{' ...' if len(found) > 5 else ''}; build it with norm='ws'"
        )


class FedWon(FedAvg):
    """FedAvg that checks, once, that the model it aggregates is normalization-free."""

    def __init__(self, *args: Any, model: nn.Module, **kwargs: Any) -> None:
        check_normalization_free(model)
        super().__init__(*args, **kwargs)
