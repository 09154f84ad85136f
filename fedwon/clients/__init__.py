"""Client side: the train section, the local training loop, per-client persistent state and
the per-process cache."""

from fedwon.clients.local_state import ContextStateStore, local_arrays
from fedwon.clients.spec import TrainSpec
from fedwon.clients.train import EvalStats, TrainStats, evaluate, train_epochs
from fedwon.clients.workspace import Workspace, resolve_device, workspace

__all__ = [
    "ContextStateStore",
    "EvalStats",
    "TrainSpec",
    "TrainStats",
    "Workspace",
    "evaluate",
    "local_arrays",
    "resolve_device",
    "train_epochs",
    "workspace",
]
