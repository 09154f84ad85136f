"""Running a simulation: client resources from the machine, and the engine that delivers messages.

Two engines run the same ServerApp/ClientApp:
- ``flower``: Flower's own simulation engine (``flwr.simulation.run_simulation``, Ray actors);
- ``fast``: :mod:`fedwon.engine`, a Grid that hands each round's messages straight to
  long-lived workers (see docs/scaling.md).

Resources: with G GPUs each client actor gets ``gpus_per_client`` of one (default a whole GPU, so
each client trains on its own GPU); without GPUs it asks for none. Asking Ray for a GPU that does
not exist leaves Flower waiting forever ("ActorPool is empty"), so it is never done.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from flwr.app.user_config import UserConfig

from fedwon.clients.workspace import data_spec
from fedwon.config import ConfigError, RunConfig
from fedwon.datasets import load_federation
from fedwon.protocol import NODE_NUM_PARTITIONS, NODE_PARTITION, NODE_THREADS
from fedwon.results import Row
from fedwon.server_app import BoundServerApp, RunOutcome

log = logging.getLogger(__name__)

CLIENT_APP = "fedwon.client_app:app"


@dataclass(frozen=True)
class Resources:
    num_cpus: float  # per client actor
    num_gpus: float  # per client actor; 0 without GPUs
    num_actors: int  # concurrent clients the machine fits

    def as_flower(self) -> dict[str, int | float]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def visible_gpus() -> int:
    """GPUs this process can use (0 when torch has no CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def client_resources(
    cfg: RunConfig, num_gpus: int | None = None, num_cpus: int | None = None
) -> Resources:
    """Per-client resources and how many clients run at once, from the machine and the config.

    ``num_gpus``/``num_cpus`` default to what this machine has; tests pass fake counts.
    """
    if cfg.ray_address and num_gpus is None:
        # A cluster's GPUs are not this machine's: trust the config, Ray enforces it (the
        # fast engine refuses a GPU request the cluster cannot satisfy instead of hanging).
        gpus_each = cfg.gpus_per_client if cfg.device == "cuda" else 0.0
        return Resources(num_cpus=cfg.cpus_per_client, num_gpus=gpus_each, num_actors=2**31)
    gpus = visible_gpus() if num_gpus is None else num_gpus
    cpus = (os.cpu_count() or 1) if num_cpus is None else num_cpus
    if cfg.device == "cuda" and gpus == 0:
        raise ConfigError("device='cuda' but no GPU is visible; use device='auto' or 'cpu'")
    cpu_share = min(cfg.cpus_per_client, float(cpus))
    cpu_slots = max(1, int(cpus // cpu_share))
    if cfg.device == "cpu" or gpus == 0:
        return Resources(num_cpus=cpu_share, num_gpus=0.0, num_actors=cpu_slots)
    if not 0 < cfg.gpus_per_client <= gpus:
        raise ConfigError(
            f"gpus_per_client={cfg.gpus_per_client} must be in (0, {gpus}] on this machine "
            f"({gpus} GPU{'s' if gpus != 1 else ''})"
        )
    gpu_slots = int(gpus // cfg.gpus_per_client)
    return Resources(
        num_cpus=cpu_share, num_gpus=cfg.gpus_per_client, num_actors=min(cpu_slots, gpu_slots)
    )


class NodeConfigs(Sequence[UserConfig]):
    """Node ``i``'s config, made on demand (constant memory for any population): its partition
    and the torch threads of its CPU share — what a real SuperNode sets in ``--node-config``."""

    def __init__(self, num_nodes: int, threads: int) -> None:
        self.num_nodes, self.threads = num_nodes, threads

    def __len__(self) -> int:
        return self.num_nodes

    @overload
    def __getitem__(self, i: int) -> UserConfig: ...
    @overload
    def __getitem__(self, i: slice) -> list[UserConfig]: ...
    def __getitem__(self, i: int | slice) -> UserConfig | list[UserConfig]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.num_nodes))]
        if not 0 <= i < self.num_nodes:
            raise IndexError(i)
        return {NODE_PARTITION: i, NODE_NUM_PARTITIONS: self.num_nodes, NODE_THREADS: self.threads}


def _quiet_flower(verbose: bool) -> None:
    """Flower logs every round at INFO and warns that ``run_simulation`` is deprecated (we
    use it deliberately); keep only its errors unless asked. Our own warnings still show."""
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\..*")


def run_simulation(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_round: Callable[[Row], None] | None = None,
    verbose: bool = False,
) -> RunOutcome:
    """Run ``cfg`` on this machine with the engine it names; return the run's outcome."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    _quiet_flower(verbose)
    resources = client_resources(cfg)
    # Bad data settings fail here, before any engine starts (the server never loads data).
    load_federation(data_spec(cfg.client_config()))
    server_app = BoundServerApp(cfg, out_dir, resume=resume, on_round=on_round)
    if cfg.engine == "fast":
        from fedwon.engine import run_fast

        # -1: let the engine choose (in-process unless GPUs or >= 4 actor slots make Ray pay)
        workers = None if cfg.num_workers < 0 else min(cfg.num_workers, resources.num_actors)
        run_fast(
            server_app,
            CLIENT_APP,
            cfg.num_clients,
            node_configs=NodeConfigs(cfg.num_clients, max(1, int(resources.num_cpus))),
            num_workers=workers,
            cpus_per_client=resources.num_cpus,
            gpus_per_client=resources.num_gpus,
            ray_init_args={"address": cfg.ray_address} if cfg.ray_address else None,
            state_budget_bytes=int(cfg.client_state_budget_mb * 2**20) or None,
        )
    else:
        from flwr.clientapp import ClientApp
        from flwr.simulation import run_simulation as flower_run_simulation

        from fedwon.client_app import app as client_app

        assert isinstance(client_app, ClientApp)
        flower_run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.num_clients,
            backend_config={
                "client_resources": dict(resources.as_flower()),
                "init_args": {
                    "include_dashboard": False,
                    "log_to_driver": verbose,
                    **({"address": cfg.ray_address} if cfg.ray_address else {}),
                },
            },
            verbose_logging=verbose,
        )
    if server_app.outcome is None:
        raise RuntimeError("the simulation ended without a result; see the log above")
    return server_app.outcome
