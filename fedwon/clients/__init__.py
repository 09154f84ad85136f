"""Client side: the local training loop, per-client persistent state and the per-process cache."""

from fedwon.clients.local_state import ContextStateStore, DiskStateStore, local_store
from fedwon.clients.train import EvalStats, TrainStats, evaluate, train_epochs
from fedwon.clients.workspace import Workspace, data_spec, initial_model, resolve_device, workspace

__all__ = [
    "ContextStateStore",
    "DiskStateStore",
    "EvalStats",
    "TrainStats",
    "Workspace",
    "data_spec",
    "evaluate",
    "initial_model",
    "local_store",
    "resolve_device",
    "train_epochs",
    "workspace",
]
