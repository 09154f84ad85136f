"""What a deployment of N SuperNodes runs: the run config sized to N nodes, and each node's config.

In simulation the engine creates ``num_clients`` virtual clients; in a deployment the clients are
whatever SuperNodes connect, and Flower's strategy waits until ``min_available_nodes`` of them are
there. So the run config must say exactly N clients (else the server waits forever for nodes that
never come, or samples partitions no node holds), and node ``i`` must hold partition ``i``.
"""

from __future__ import annotations

from typing import Any

from fedwon.config import RunConfig
from fedwon.datasets import spec_info
from fedwon.deploy.errors import DeployError
from fedwon.strategies import ServerSpec

SERVER_KEYS = frozenset(ServerSpec.model_fields)

Scalar = bool | int | float | str


def _per_domain(cfg: RunConfig) -> bool:
    """Whether the partition puts a whole number of clients in every domain."""
    return cfg.data.partition in ("domain", "natural_id") or (
        cfg.data.partition == "dirichlet" and cfg.data.dirichlet_scope == "domain"
    )


def fit_to_nodes(
    cfg: RunConfig, nodes: int, rounds: int | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """``cfg`` with ``num_clients == nodes`` (and ``num_rounds == rounds``), plus what changed.

    Also keeps the config valid for N clients: a per-domain partition with fewer nodes than
    domains uses the first N domains; ``clients_per_round`` and ``min_clients`` are capped at N.
    """
    if nodes < 1:
        raise DeployError(f"--nodes must be >= 1, got {nodes}")
    changes: dict[str, Any] = {"num_clients": nodes}
    if rounds is not None:
        if rounds < 1:
            raise DeployError(f"--rounds must be >= 1, got {rounds}")
        changes["num_rounds"] = rounds
    if _per_domain(cfg):
        domains = cfg.data.domains or spec_info(cfg.data).domains
        if nodes % len(domains):
            if nodes > len(domains) or cfg.data.domains:
                raise DeployError(
                    f"--nodes {nodes} does not fit partition {cfg.data.partition!r} over the "
                    f"{len(domains)} domains {list(domains)}: use a multiple of {len(domains)}, "
                    "choose domains with --set domains=a,b, or --set partition=iid"
                )
            changes["domains"] = ",".join(domains[:nodes])
    if cfg.server.clients_per_round > nodes:
        changes["clients_per_round"] = nodes
    server = cfg.server.model_copy(update={k: v for k, v in changes.items() if k in SERVER_KEYS})
    sampled = server.sampled(nodes)  # not validated yet: on purpose (min_clients may exceed it)
    if cfg.server.min_clients > sampled:
        changes["min_clients"] = sampled
    return cfg.replace(**changes), changes


def node_config(cfg: RunConfig, index: int, nodes: int) -> dict[str, Scalar]:
    """The ``--node-config`` of SuperNode ``index``: which partition it holds and how it runs.

    Only node-side facts: a real client names its own data root, thread count and device here;
    everything about the method arrives from the server in each message.
    """
    values: dict[str, Scalar] = {
        "partition-id": index,
        "num-partitions": nodes,
        "dataset": cfg.data.dataset,
        "threads": max(1, int(cfg.engine.cpus_per_client)),
        "device": cfg.train.device,
    }
    if cfg.data.data_root:
        values["data-root"] = cfg.data.data_root
    return values
