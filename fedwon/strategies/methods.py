"""The paper's methods, as what they share: ``fedavg`` (everything), ``fedbn`` (all but the
normalization layers), ``fedwon`` (everything, of a normalization-free model).

A method is not a strategy class: it decides, once, which arrays the server holds. FedBN's
local keys are removed from the initial arrays, so every aggregator (Flower's FedAvg, FedProx,
FedAdam, ...) and every wrapper (DP, round rules) sees only shared arrays, with no per-round
override. Clients keep whatever they did not receive in their ``Context.state``
(:mod:`fedwon.clients.local_state`) and reply with exactly the keys they received.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord
from torch import nn

from fedwon.nn import is_norm_layer


def norm_state_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every normalization layer (chosen by module type, never by name):
    weights, biases and running statistics — what FedBN keeps on each client."""
    keys = []
    for prefix, module in model.named_modules():
        if is_norm_layer(module):
            keys += [f"{prefix}.{name}" if prefix else name for name in module.state_dict()]
    return keys


def check_normalization_free(model: nn.Module) -> None:
    """Refuse a model that still normalizes: FedWon shares everything, so nothing may depend on
    a client's batch statistics."""
    found = [name or type(m).__name__ for name, m in model.named_modules() if is_norm_layer(m)]
    if found:
        raise ValueError(
            f"FedWon needs a normalization-free model, but it has normalization layers "
            f"{found[:5]}{' ...' if len(found) > 5 else ''}; build it with norm='ws'"
        )


def _no_local_keys(model: nn.Module) -> list[str]:
    return []


def _fedbn_local_keys(model: nn.Module) -> list[str]:
    keys = norm_state_keys(model)
    if not keys:
        raise ValueError(
            "FedBN keeps normalization layers local, but the model has none; "
            "build it with norm='bn' (or gn/ln/in), or use strategy 'fedwon'"
        )
    return keys


def _fedwon_local_keys(model: nn.Module) -> list[str]:
    check_normalization_free(model)
    return []


@dataclass(frozen=True)
class Method:
    """A federated method: which of a model's state-dict keys never leave the clients."""

    name: str
    local_keys: Callable[[nn.Module], list[str]]  # raises ValueError for an unsuitable model
    description: str

    def shared_arrays(self, model: nn.Module) -> ArrayRecord:
        """The arrays the server holds and sends: the model's state minus the local keys."""
        local = set(self.local_keys(model))
        return ArrayRecord({k: v for k, v in model.state_dict().items() if k not in local})


METHODS: dict[str, Method] = {
    "fedavg": Method("fedavg", _no_local_keys, "every parameter and buffer is shared"),
    "fedbn": Method("fedbn", _fedbn_local_keys, "normalization layers stay on each client"),
    "fedwon": Method("fedwon", _fedwon_local_keys, "a normalization-free model, all shared"),
}
