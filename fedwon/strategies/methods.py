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

from fedwon.nn import NORM_KINDS, is_norm_layer


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
    """A federated method: which of a model's state-dict keys never leave the clients, and
    which normalizations it can train (``norm = "auto"`` means ``default_norm``)."""

    name: str
    local_keys: Callable[[nn.Module], list[str]]  # raises ValueError for an unsuitable model
    description: str
    default_norm: str
    allowed_norms: frozenset[str]
    norm_advice: str  # what to use instead, said when a norm is refused

    def shared_arrays(self, model: nn.Module) -> ArrayRecord:
        """The arrays the server holds and sends: the model's state minus the local keys."""
        local = set(self.local_keys(model))
        return ArrayRecord({k: v for k, v in model.state_dict().items() if k not in local})

    def resolve_norm(self, norm: str) -> str:
        """``norm`` (``auto``: this method's default), refused in one line when this method
        cannot train it."""
        resolved = self.default_norm if norm == "auto" else norm
        if resolved not in self.allowed_norms:
            raise ValueError(f"strategy {self.name!r} {self.norm_advice}; got norm={resolved!r}")
        return resolved


_WITH_NORM_LAYERS = frozenset({"bn", "gn", "ln", "in", "ws_gn"})
METHODS: dict[str, Method] = {
    "fedavg": Method(
        "fedavg",
        _no_local_keys,
        "every parameter and buffer is shared",
        default_norm="bn",
        allowed_norms=frozenset(NORM_KINDS),
        norm_advice="trains any norm",
    ),
    "fedbn": Method(
        "fedbn",
        _fedbn_local_keys,
        "normalization layers stay on each client",
        default_norm="bn",
        allowed_norms=_WITH_NORM_LAYERS,
        norm_advice=(
            "keeps normalization layers local, so the model needs some: use norm='bn' "
            "(or gn/ln/in/ws_gn), or strategy 'fedwon'"
        ),
    ),
    "fedwon": Method(
        "fedwon",
        _fedwon_local_keys,
        "a normalization-free model, all shared",
        default_norm="ws",
        allowed_norms=frozenset({"ws", "none"}),
        norm_advice=(
            "trains a normalization-free model: use norm='ws' (scaled weight "
            "standardization) or 'none'"
        ),
    ),
}
