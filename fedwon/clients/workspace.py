"""Per-process cache of what every client of a run shares: model, optimizer, data, device.

A simulation worker (Ray actor or the in-process engine) plays many clients one after another.
Building the model and optimizer or touching the data set per message would dominate cross-device
rounds (batch size 1, one or two examples per client), so they are built once per process and
*reset* per message: every state-dict entry is overwritten (received arrays, the client's local
arrays, or the initial values) and the optimizer state is cleared, so nothing leaks between
clients. The cache key is the run's data (as the node holds it), model and train sections, its
seed, and the node's threads and device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from fedwon.clients.spec import TrainSpec
from fedwon.datasets import DataSpec, Federation, load_federation
from fedwon.models import ModelSpec


def resolve_device(name: str) -> torch.device:
    """``auto`` → the GPU this process was given (Ray sets CUDA_VISIBLE_DEVICES) or the CPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was requested but this process sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class Workspace:
    federation: Federation
    model: nn.Module
    optimizer: torch.optim.SGD
    initial_state: dict[str, torch.Tensor]
    device: torch.device
    targets: dict[str, torch.Tensor] = field(init=False, repr=False)
    """The model's state-dict tensors (detached views of its parameters and buffers): reset
    writes into them in place and the reply reads them, without building a state dict."""

    def __post_init__(self) -> None:
        self.targets = {k: v.detach() for k, v in self.model.state_dict(keep_vars=True).items()}

    def reset(self, arrays: dict[str, torch.Tensor], local: dict[str, torch.Tensor] | None) -> None:
        """Load a client's full state: received arrays, then its local ones, else initial."""
        state = dict(self.initial_state)
        if local:
            state.update(local)
        state.update(arrays)
        load_in_place(self.model, self.targets, state)
        self.optimizer.state.clear()

    def seed(self, seed: int) -> None:
        """Seed the global generators a client's training may draw from (dropout, augmentation).

        Not ``torch.manual_seed``: it also seeds every accelerator backend through a dynamo-
        disable wrapper, 0.1-0.4 ms per call, more than the engine's whole per-client cost on
        cross-device rounds. The CPU generator gets the same seed, so results do not change."""
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
        elif self.device.type == "mps":
            torch.mps.manual_seed(seed)


def _has_load_hooks(model: nn.Module) -> bool:
    return any(
        m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks for m in model.modules()
    )


def load_in_place(
    model: nn.Module, targets: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> None:
    """``model.load_state_dict(state, strict=True)`` as one fused in-place copy.

    ``load_state_dict`` walks every module in Python (~0.2-0.7 ms per client for a small CNN);
    a full state with matching shapes is just ``copy_`` into every tensor, which is what it
    does in the end. Anything else — missing or unknown keys, another shape, load hooks — goes
    through ``load_state_dict`` for its checks and error messages."""
    if state.keys() != targets.keys() or _has_load_hooks(model):
        model.load_state_dict(state, strict=True)
        return
    sources = [state[k] for k in targets]
    if any(s.shape != t.shape for s, t in zip(sources, targets.values(), strict=True)):
        model.load_state_dict(state, strict=True)
        return
    with torch.no_grad():
        torch._foreach_copy_(list(targets.values()), sources)


def workspace(
    data: DataSpec,
    model: ModelSpec,
    train: TrainSpec,
    seed: int,
    *,
    threads: int = 0,
    device: str = "",
) -> Workspace:
    """The cached workspace of this run on this process: model, optimizer and data built once,
    shared by every client the process plays (a client's partition is not part of the key).

    ``threads`` pins torch's intra-op threads on every call, not only when the workspace is
    built: float results depend on the thread count (the fast engine sets it to the client's
    CPU share, as Ray does for Flower's actors through ``OMP_NUM_THREADS``), and something
    else in the process may have changed it since. ``device`` is the node's own choice, else
    ``train.device``."""
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return _workspace(data, model, train, seed, device)


@lru_cache(maxsize=4)
def _workspace(
    data: DataSpec, model: ModelSpec, train: TrainSpec, seed: int, device: str
) -> Workspace:
    federation = load_federation(data)
    where = resolve_device(device or train.device)
    net = model.initial_model(federation.num_classes, federation.in_channels, seed).to(where)
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(
        net.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
    )
    return Workspace(federation, net, optimizer, initial, where)
