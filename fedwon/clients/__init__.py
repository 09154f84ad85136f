"""Client side: the local training loop, per-client persistent state and the per-process cache."""

from fedwon.clients.local_state import ContextStateStore
from fedwon.clients.train import EvalStats, TrainStats, evaluate, train_epochs
from fedwon.clients.workspace import (
    Workspace,
    data_spec,
    initial_model,
    partition_of,
    resolve_device,
    workspace,
)

__all__ = [
    "ContextStateStore",
    "EvalStats",
    "TrainStats",
    "Workspace",
    "data_spec",
    "evaluate",
    "initial_model",
    "partition_of",
    "resolve_device",
    "train_epochs",
    "workspace",
]
