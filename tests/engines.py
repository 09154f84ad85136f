"""Run any ServerApp + ClientApp on either engine with the settings the tests share: the fast
engine in-process with one torch thread per node, or Flower's simulation engine (Ray) with one
CPU per actor, no dashboard."""

from __future__ import annotations

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedwon.engine import run_fast
from fedwon.simulation import NodeConfigs


def run_apps(engine: str, server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
    if engine == "fast":
        run_fast(
            server_app, client_app, num_nodes, num_workers=0, node_configs=NodeConfigs(num_nodes, 1)
        )
        return
    from flwr.simulation import run_simulation

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0},
            "init_args": {"include_dashboard": False, "log_to_driver": False},
        },
    )
