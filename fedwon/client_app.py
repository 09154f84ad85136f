"""The Flower ClientApp (``fedwon.client_app:app``): one client's train and evaluate steps.

The same app serves Flower's simulation, the fast engine, ``flwr run`` and real SuperNodes.
Everything it needs arrives in the message: the arrays to start from and, in the ConfigRecord,
the run's validated settings (see :func:`fedwon.server_app.client_config_record`). The node's
``partition-id`` (and optionally ``data-root``) come from its node config.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedwon.clients import evaluate, local_store, train_epochs, workspace
from fedwon.clients.local_state import LocalStore
from fedwon.clients.workspace import Workspace
from fedwon.config import RunConfig, make_config
from fedwon.strategies.aggregation import DOMAIN_KEY, PARTITION_KEY, WEIGHT_KEY, as_number

app = ClientApp()

RUN_ONLY_KEYS = ("server-round", "state-dir")


@lru_cache(maxsize=8)
def _config(items: frozenset[tuple[str, object]]) -> RunConfig:
    return make_config({k: v for k, v in items if k not in RUN_ONLY_KEYS})


def run_config_of(record: ConfigRecord) -> RunConfig:
    """The run's settings carried by a message (validated once per process and cached)."""
    return _config(frozenset(record.items()))


def _client_seed(cfg: RunConfig, server_round: int, partition_id: int) -> int:
    """A seed per (run, round, client): runs are reproducible and resume where they left off."""
    return (cfg.seed * 1_000_003 + server_round) * 1_000_003 + partition_id


def _prepare(
    msg: Message, context: Context
) -> tuple[RunConfig, Workspace, int, dict[str, torch.Tensor], LocalStore]:
    """Load this client's full model state (received + its local layers) into the workspace."""
    record = msg.content.config_records["config"]
    cfg = run_config_of(record)
    partition_id = int(as_number(context.node_config["partition-id"]))
    data_root = str(context.node_config.get("data-root", "")) or None
    ws = workspace(cfg, data_root)
    if not 0 <= partition_id < ws.federation.num_clients:
        raise ValueError(
            f"partition-id {partition_id} is out of range for num_clients={cfg.num_clients}"
        )
    received = dict(msg.content.array_records["arrays"].to_torch_state_dict())
    store = local_store(context, partition_id, str(record.get("state-dir", "")))
    ws.reset(received, store.load())
    return cfg, ws, partition_id, received, store


def _identity(partition_id: int) -> ConfigRecord:
    """Who replied: lets the server aggregate in partition order, whatever the node ids."""
    return ConfigRecord({PARTITION_KEY: partition_id})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on this client's partition; reply with the same keys."""
    cfg, ws, pid, received, store = _prepare(msg, context)
    server_round = int(as_number(msg.content.config_records["config"]["server-round"]))
    seed = _client_seed(cfg, server_round, pid)
    torch.manual_seed(seed)
    x, y = ws.federation.train_data(pid)
    stats = train_epochs(
        ws.model,
        ws.optimizer,
        x.to(ws.device),
        y.to(ws.device),
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        agc_clip=cfg.agc_clip,
        generator=torch.Generator().manual_seed(seed),
    )
    state = ws.model.state_dict()
    local = {k: v for k, v in state.items() if k not in received}
    if local:
        store.save(local)
    arrays = ArrayRecord({k: state[k].detach().cpu() for k in received})
    metrics = MetricRecord({"train_loss": stats.loss, WEIGHT_KEY: stats.num_examples})
    content = RecordDict({"arrays": arrays, "metrics": metrics, "client": _identity(pid)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_step(msg: Message, context: Context) -> Message:
    """Evaluate the received model (with this client's local layers) on its test share."""
    _, ws, pid, _, _ = _prepare(msg, context)
    x, y = ws.federation.test_data(pid)
    stats = evaluate(ws.model, x.to(ws.device), y.to(ws.device))
    domain_index = ws.federation.domains.index(ws.federation.client_domain(pid))
    metrics = MetricRecord(
        {
            "accuracy": stats.accuracy,
            "loss": stats.loss,
            WEIGHT_KEY: stats.num_examples,
            DOMAIN_KEY: domain_index,
        }
    )
    return Message(RecordDict({"metrics": metrics, "client": _identity(pid)}), reply_to=msg)
