"""Per-process cache of what every client of a run shares: model, optimizer, data, device.

A simulation worker (Ray actor or the in-process engine) plays many clients one after another.
Building the model and optimizer or touching the data set per message would dominate cross-device
rounds (batch size 1, one or two examples per client), so they are built once per process and
*reset* per message: every state-dict entry is overwritten (received arrays, the client's local
arrays, or the initial values) and the optimizer state is cleared, so nothing leaks between
clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from fedwon.config import RunConfig
from fedwon.datasets import DataSpec, Federation, load_federation
from fedwon.models import build_model


def data_spec(cfg: RunConfig, data_root: str | None = None) -> DataSpec:
    """The data set part of a run config (``0``/empty mean "the data set's default")."""
    return DataSpec(
        dataset=cfg.dataset,
        data_root=data_root or cfg.data_root or None,
        partition=cfg.partition,
        num_clients=cfg.num_clients,
        alpha=cfg.alpha,
        dirichlet_scope=cfg.dirichlet_scope,
        domains=cfg.domain_list,
        train_per_domain=cfg.train_per_domain or None,
        test_per_domain=cfg.test_per_domain or None,
        image_size=cfg.image_size or None,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` → the GPU this process was given (Ray sets CUDA_VISIBLE_DEVICES) or the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but this process sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def initial_model(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The run's initial model: the same seed gives the server and every client the same one."""
    torch.manual_seed(cfg.seed)
    return build_model(
        cfg.model, norm=cfg.resolved_norm, num_classes=num_classes, in_channels=in_channels
    )


@dataclass
class Workspace:
    federation: Federation
    model: nn.Module
    optimizer: torch.optim.SGD
    initial_state: dict[str, torch.Tensor]
    device: torch.device

    def reset(self, arrays: dict[str, torch.Tensor], local: dict[str, torch.Tensor] | None) -> None:
        """Load a client's full state: received arrays, then its local ones, else initial."""
        state = dict(self.initial_state)
        if local:
            state.update(local)
        state.update(arrays)
        self.model.load_state_dict(state, strict=True)
        self.optimizer.state.clear()


@lru_cache(maxsize=4)
def workspace(cfg: RunConfig, data_root: str | None = None) -> Workspace:
    """The cached workspace for a run config (one per process in practice).

    Torch's intra-op threads are set to the client's CPU share (``cpus_per_client``, what Ray
    also gives an actor): float results depend on the thread count, and pinning it makes the
    in-process engine, Ray actors and Flower's engine compute bit-identical updates.
    """
    torch.set_num_threads(max(1, int(cfg.cpus_per_client)))
    federation = load_federation(data_spec(cfg, data_root))
    device = resolve_device(cfg.device)
    model = initial_model(cfg, federation.num_classes, federation.in_channels).to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    return Workspace(federation, model, optimizer, initial, device)
