"""Running a simulation: client resources from the machine, and the engine that delivers messages.

Two engines run the same ServerApp/ClientApp:
- ``flower``: Flower's own simulation engine (``flwr.simulation.run_simulation``, Ray actors);
- ``fast``: :mod:`fedwon.engine`, a Grid that hands each round's messages straight to
  long-lived workers (see docs/scaling.md).

Resources: with G GPUs each client actor gets ``gpus_per_client`` of one (default a whole GPU, so
each client trains on its own GPU); without GPUs it asks for none. Asking Ray for a GPU that does
not exist leaves Flower waiting forever ("ActorPool is empty"), so it is never done.

The run directory is locked for the whole run (:mod:`fedwon.run.lock`): a second writer is
refused. Everything a run needs is checked before an engine starts
(:func:`fedwon.run.preflight.prepare_run`, and a reachable ``ray_address``). A run that may start
Ray also starts a process guard (:mod:`fedwon.run.process_guard`) and shuts Ray down when it ends,
however it ends.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from flwr.app.user_config import UserConfig
from flwr.serverapp import ServerApp

from fedwon.common.records import NODE_NUM_PARTITIONS, NODE_PARTITION, NODE_THREADS
from fedwon.config import ConfigError, RunConfig
from fedwon.run.directory import RunDir, lock_run_dir
from fedwon.run.preflight import prepare_run
from fedwon.run.process_guard import ending_started_processes, start_guard
from fedwon.run.recorder import Row
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
    if cfg.engine.ray_address and num_gpus is None:
        # A cluster's GPUs are not this machine's: trust the config, Ray enforces it (the
        # fast engine refuses a GPU request the cluster cannot satisfy instead of hanging).
        gpus_each = cfg.engine.gpus_per_client if cfg.train.device == "cuda" else 0.0
        return Resources(num_cpus=cfg.engine.cpus_per_client, num_gpus=gpus_each, num_actors=2**31)
    gpus = visible_gpus() if num_gpus is None else num_gpus
    cpus = (os.cpu_count() or 1) if num_cpus is None else num_cpus
    if cfg.train.device == "cuda" and gpus == 0:
        raise ConfigError("device='cuda' but no GPU is visible; use device='auto' or 'cpu'")
    cpu_share = min(cfg.engine.cpus_per_client, float(cpus))
    cpu_slots = max(1, int(cpus // cpu_share))
    if cfg.train.device == "cpu" or gpus == 0:
        return Resources(num_cpus=cpu_share, num_gpus=0.0, num_actors=cpu_slots)
    if not 0 < cfg.engine.gpus_per_client <= gpus:
        raise ConfigError(
            f"gpus_per_client={cfg.engine.gpus_per_client} must be in (0, {gpus}] on this machine "
            f"({gpus} GPU{'s' if gpus != 1 else ''})"
        )
    gpu_slots = int(gpus // cfg.engine.gpus_per_client)
    return Resources(
        num_cpus=cpu_share,
        num_gpus=cfg.engine.gpus_per_client,
        num_actors=min(cpu_slots, gpu_slots),
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


class ClientTracebacksToDebug(logging.Filter):
    """Flower's simulation engine logs every failing client's exception and whole traceback
    at ERROR, every round; the round rules already log one line per failure. Those records
    are lowered to DEBUG: shown with ``-v`` (or any DEBUG handler), not otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.module == "vce_api" and record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _quiet_flower(verbose: bool) -> None:
    """Flower logs every round at INFO and warns that ``run_simulation`` is deprecated (we
    use it deliberately); keep only its errors unless asked. Our own warnings still show."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not any(isinstance(f, ClientTracebacksToDebug) for f in flwr_logger.filters):
        flwr_logger.addFilter(ClientTracebacksToDebug())
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\..*")


def check_ray_address(address: str, timeout_s: float = 3.0) -> None:
    """A ``host:port`` / ``ray://host:port`` cluster address answers, or one line saying so
    (rather than Ray's own retries and a traceback). ``auto`` is checked by Ray itself."""
    if address in ("", "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"ray_address={address!r}: cannot reach {host}:{port} ({err.strerror or err}); "
            "is the Ray cluster running there?"
        ) from None


def may_start_ray(cfg: RunConfig) -> bool:
    """Flower's engine always runs on Ray; the fast engine unless told to run in-process."""
    return cfg.engine.engine == "flower" or cfg.engine.num_workers != 0


@contextmanager
def ray_owned_by_this_run(cfg: RunConfig) -> Iterator[None]:
    """Whatever Ray this run starts, it stops: ``ray.shutdown`` when the run ends (error or
    not), and a process guard for when this process is killed. A Ray the process had already
    started (or a cluster it joined before) is left alone."""
    ray = sys.modules.get("ray")
    if not may_start_ray(cfg) or (ray is not None and ray.is_initialized()):
        yield
        return

    def shutdown() -> None:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()

    start_guard()
    try:
        with ending_started_processes(shutdown):
            yield
    except ConnectionError as err:  # ray.init could not reach ray_address (or 'auto')
        if not cfg.engine.ray_address:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"ray_address={cfg.engine.ray_address!r}: {first}") from None


def run_simulation(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_round: Callable[[Row], None] | None = None,
    verbose: bool = False,
) -> RunOutcome:
    """Run ``cfg`` on this machine with the engine it names; return the run's outcome.

    ``out_dir`` must be new or empty, unless ``resume`` (continue the run there from its
    checkpoint) or ``overwrite`` (delete the previous run's files first); see
    :mod:`fedwon.run.directory`. Bad input raises :class:`ConfigError` or ``DataError`` before
    anything is written.
    """
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    _quiet_flower(verbose)
    resources = client_resources(cfg)
    if may_start_ray(cfg):
        check_ray_address(cfg.engine.ray_address)
    out_path = Path(out_dir) if out_dir is not None else None
    created = out_path is not None and not out_path.exists()
    with lock_run_dir(out_path, resume=resume, overwrite=overwrite):  # one writer, until the end
        prepare_run(cfg, out_path, resume=resume, overwrite=overwrite)
        server_app = BoundServerApp(cfg, out_dir, resume=resume, on_round=on_round)
        try:
            with ray_owned_by_this_run(cfg):
                _run_engine(cfg, resources, server_app, verbose)
        except BaseException:
            if out_path is not None and not resume:
                RunDir(out_path).discard_unstarted(created=created)
            raise
    if server_app.outcome is None:
        raise RuntimeError("the simulation ended without a result; see the log above")
    return server_app.outcome


def _run_engine(cfg: RunConfig, resources: Resources, server_app: ServerApp, verbose: bool) -> None:
    """Hand ``server_app`` to the engine ``cfg`` names."""
    if cfg.engine.engine == "fast":
        from fedwon.engine import run_fast

        # -1: let the engine choose (in-process unless GPUs or >= 4 actor slots make Ray pay)
        workers = (
            None
            if cfg.engine.num_workers < 0
            else min(cfg.engine.num_workers, resources.num_actors)
        )
        run_fast(
            server_app,
            CLIENT_APP,
            cfg.data.num_clients,
            node_configs=NodeConfigs(cfg.data.num_clients, max(1, int(resources.num_cpus))),
            num_workers=workers,
            cpus_per_client=resources.num_cpus,
            gpus_per_client=resources.num_gpus,
            ray_init_args={"address": cfg.engine.ray_address} if cfg.engine.ray_address else None,
            state_budget_bytes=int(cfg.engine.client_state_budget_mb * 2**20) or None,
        )
    else:
        from flwr.clientapp import ClientApp
        from flwr.simulation import run_simulation as flower_run_simulation

        from fedwon.client_app import app as client_app

        assert isinstance(client_app, ClientApp)
        flower_run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.data.num_clients,
            backend_config={
                "client_resources": dict(resources.as_flower()),
                "init_args": {
                    "include_dashboard": False,
                    "log_to_driver": verbose,
                    **({"address": cfg.engine.ray_address} if cfg.engine.ray_address else {}),
                },
            },
            verbose_logging=verbose,
        )
