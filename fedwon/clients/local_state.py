"""Where a client keeps the arrays the server never sees (FedBN's normalization layers).

Two stores with one interface:
- :class:`ContextStateStore` keeps them in Flower's ``Context.state`` — what a real SuperNode uses;
  it persists across rounds of a run.
- :class:`DiskStateStore` keeps one small file per client in a directory — used in simulation, so
  that memory does not grow with the number of clients (thousands in cross-device runs) and so
  a checkpoint can snapshot every client's layers for ``--resume``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from flwr.app import ArrayRecord, Context

STATE_KEY = "fedwon.local"


class LocalStore(Protocol):
    def load(self) -> dict[str, torch.Tensor] | None: ...
    def save(self, arrays: dict[str, torch.Tensor]) -> None: ...


class ContextStateStore:
    """Local arrays in ``context.state[STATE_KEY]`` as an ArrayRecord."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def load(self) -> dict[str, torch.Tensor] | None:
        if STATE_KEY not in self.context.state.array_records:
            return None
        return dict(self.context.state.array_records[STATE_KEY].to_torch_state_dict())

    def save(self, arrays: dict[str, torch.Tensor]) -> None:
        cpu = {k: v.detach().cpu() for k, v in arrays.items()}
        self.context.state[STATE_KEY] = ArrayRecord(cpu)


class DiskStateStore:
    """Local arrays in ``<directory>/client_<pid>.pt``, written atomically."""

    def __init__(self, directory: str | Path, partition_id: int) -> None:
        self.path = Path(directory) / f"client_{partition_id}.pt"

    def load(self) -> dict[str, torch.Tensor] | None:
        if not self.path.exists():
            return None
        loaded: dict[str, torch.Tensor] = torch.load(self.path, weights_only=True)
        return loaded

    def save(self, arrays: dict[str, torch.Tensor]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({k: v.detach().cpu().clone() for k, v in arrays.items()}, tmp)
        tmp.replace(self.path)


def local_store(context: Context, partition_id: int, state_dir: str) -> LocalStore:
    """The disk store when the run names a directory, else Flower's Context.state."""
    return DiskStateStore(state_dir, partition_id) if state_dir else ContextStateStore(context)
