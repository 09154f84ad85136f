"""FedBN (Li et al., 2021): normalization layers never leave the client.

The server holds and averages only the shared arrays; the keys of normalization layers (chosen
by module type, see :func:`fedwon.nn.is_norm_layer`) are removed from every message it sends.
A client merges what it receives with the layers it keeps in its own state
(:mod:`fedwon.clients.local_state`) and replies with exactly the keys it received, so the local
layers, running statistics included, are never sent and never averaged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import nn

from fedwon.nn import is_norm_layer
from fedwon.strategies.aggregation import without_keys
from fedwon.strategies.fedavg import FedAvg


def norm_state_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every normalization layer: weights, biases and running statistics."""
    keys = []
    for prefix, module in model.named_modules():
        if is_norm_layer(module):
            keys += [f"{prefix}.{name}" if prefix else name for name in module.state_dict()]
    return keys


class FedBN(FedAvg):
    """FedAvg over the shared arrays; normalization layers stay local to each client."""

    def __init__(self, *args: Any, local_keys: Iterable[str], **kwargs: Any) -> None:
        self.local_keys = sorted(set(local_keys))
        if not self.local_keys:
            raise ValueError(
                "FedBN keeps normalization layers local, but the model has none; "
                "build it with norm='bn' (or gn/ln/in), or use strategy 'fedwon'"
            )
        super().__init__(*args, **kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(
            server_round, without_keys(arrays, self.local_keys), config, grid
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(
            server_round, without_keys(arrays, self.local_keys), config, grid
        )
