"""Per-process cache of what every client of a run shares: model, optimizer, data, device.

A simulation worker (Ray actor or the in-process engine) plays many clients one after another.
Building the model and optimizer or touching the data set per message would dominate cross-device
rounds (batch size 1, one or two examples per client), so they are built once per process and
*reset* per message: every state-dict entry is overwritten (received arrays, the client's local
arrays, or the initial values) and the optimizer state is cleared, so nothing leaks between
clients. The cache key is the message's :class:`~fedwon.protocol.ClientConfig` and the node's
own :class:`~fedwon.protocol.NodeSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
from torch import nn

from fedwon.datasets import DataSpec, Federation, load_federation
from fedwon.models import build_model
from fedwon.protocol import ClientConfig, NodeSettings, ProtocolError

IN_CHANNELS = 3  # every fedwon data set yields RGB images (grey domains are replicated)


def data_spec(cfg: ClientConfig, node: NodeSettings | None = None) -> DataSpec:
    """The data a client reads: the run's data settings, overridden by the node's own.

    A node naming a ``domain`` holds only that domain, split into ``num-partitions`` parts.
    """
    node = node or NodeSettings()
    domains = tuple(d.strip() for d in cfg.domains.split(",") if d.strip()) or None
    num_clients = cfg.num_clients
    if node.domain:
        domains, num_clients = (node.domain,), node.num_partitions or 1
    return DataSpec(
        dataset=node.dataset or cfg.dataset,
        data_root=node.data_root or cfg.data_root or None,
        partition=cfg.partition,
        num_clients=num_clients,
        alpha=cfg.alpha,
        dirichlet_scope=cfg.dirichlet_scope,
        domains=domains,
        train_per_domain=cfg.train_per_domain or None,
        test_per_domain=cfg.test_per_domain or None,
        image_size=cfg.image_size or None,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )


def partition_of(node: NodeSettings, federation: Federation) -> int:
    """This node's partition of ``federation``, checked against what the node config says."""
    if node.domain:
        pid = node.partition_id or 0
    elif node.partition_id is None:
        raise ProtocolError("node config lacks 'partition-id' (or a 'domain' the node holds)")
    else:
        pid = node.partition_id
        if node.num_partitions is not None and node.num_partitions != federation.num_clients:
            raise ProtocolError(
                f"node config num-partitions={node.num_partitions} but the run has "
                f"num_clients={federation.num_clients}"
            )
    if not 0 <= pid < federation.num_clients:
        raise ProtocolError(
            f"node config partition-id={pid} is out of range for {federation.num_clients} clients"
        )
    return pid


def resolve_device(name: str) -> torch.device:
    """``auto`` → the GPU this process was given (Ray sets CUDA_VISIBLE_DEVICES) or the CPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was requested but this process sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def initial_model(cfg: ClientConfig, num_classes: int, in_channels: int = IN_CHANNELS) -> nn.Module:
    """The run's initial model: the same seed gives the server and every client the same one."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, norm=cfg.norm, num_classes=num_classes, in_channels=in_channels)


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


def workspace(cfg: ClientConfig, node: NodeSettings) -> Workspace:
    """The cached workspace of this run on this process: model, optimizer and data built once,
    shared by every client the process plays (the node's partition is not part of the key)."""
    return _workspace(cfg, replace(node, partition_id=None))


@lru_cache(maxsize=4)
def _workspace(cfg: ClientConfig, node: NodeSettings) -> Workspace:
    """Build a workspace. ``node.threads`` pins torch's intra-op threads: float results depend
    on the thread count (the fast engine sets it to the client's CPU share, as Ray does for
    Flower's actors through ``OMP_NUM_THREADS``)."""
    if node.threads:
        torch.set_num_threads(node.threads)
    federation = load_federation(data_spec(cfg, node))
    device = resolve_device(node.device or cfg.device)
    model = initial_model(cfg, federation.num_classes).to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    return Workspace(federation, model, optimizer, initial, device)
