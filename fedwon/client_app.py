"""The Flower ClientApp (``fedwon.client_app:app``): one client's train and evaluate steps.

The same app serves Flower's simulation, the fast engine, ``flwr run`` and real SuperNodes.
A message carries the arrays to start from and, in its ``config`` record, the
:class:`~fedwon.protocol.ClientConfig` (plus whatever Flower's strategies add: FedProx's
``proximal-mu`` is honoured, keys this client does not know are ignored). The node's own config
says which data it holds and what it runs on (:class:`~fedwon.protocol.NodeSettings`). Arrays the
server did not send (FedBN's normalization layers) stay in the client's ``Context.state``; a
node with a ``state-dir`` also keeps that state on its disk, so a restarted SuperNode or a resumed
run continues from it (:mod:`fedwon.clients.node_state`).
With ``dp.level = "sample"`` the client trains with DP-SGD (Opacus) and reports its own
epsilon, composed over every step it has taken in the run (kept in ``Context.state`` too).

``make_client_app(mods=[...])`` builds the same app with Flower mods, e.g. Flower's
``fixedclipping_mod`` for client-side DP clipping.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from fedwon.clients import ContextStateStore, TrainStats, Workspace, evaluate, train_epochs
from fedwon.clients import workspace as cached_workspace
from fedwon.clients.node_state import NodeStateDir
from fedwon.privacy.client_clipping import dp_clipping_mod
from fedwon.protocol import (
    ACCURACY,
    ARRAYS,
    CLIENT,
    CONFIG,
    DOMAIN_KEY,
    EPSILON_METRIC,
    LOSS,
    METRICS,
    PARTITION_KEY,
    PROXIMAL_MU_KEY,
    ROUND_KEY,
    RUN_OUT_KEY,
    TRAIN_LOSS,
    WEIGHT_KEY,
    ClientConfig,
    NodeSettings,
    ProtocolError,
    node_partition,
    read_client_config,
    read_node_settings,
)

log = logging.getLogger(__name__)


@dataclass
class ClientJob:
    """One message's work: the run's settings, this process's workspace loaded with this
    client's full model state, and where the client's local arrays live."""

    cfg: ClientConfig
    ws: Workspace
    partition_id: int
    received: dict[str, torch.Tensor]
    store: ContextStateStore
    config: ConfigRecord
    server_round: int
    saved: NodeStateDir | None  # the node's copy of the client's state (node config state-dir)

    def identity(self) -> ConfigRecord:
        """Who replied: the server aggregates in partition order and reports per domain."""
        domain = self.ws.federation.client_domain(self.partition_id)
        return ConfigRecord({PARTITION_KEY: self.partition_id, DOMAIN_KEY: domain})


def prepare(msg: Message, context: Context, *, training: bool) -> ClientJob:
    """Load this client's full model state (received + its local layers) into the workspace."""
    config = msg.content.config_records[CONFIG]
    cfg = read_client_config(config)
    node = read_node_settings(context.node_config)
    ws = cached_workspace(
        cfg.node_data(node),
        cfg.model,
        cfg.train,
        cfg.seed,
        threads=node.threads,
        device=node.device,
    )
    received = dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
    unknown = sorted(set(received) - set(ws.initial_state))
    if unknown:
        raise ProtocolError(f"received arrays this model does not have: {unknown[:5]}")
    partition = node_partition(node, ws.federation.num_clients)
    server_round = int(_number(config, ROUND_KEY, 0))
    saved = saved_states(node, context, cfg, partition) if server_round else None
    if saved is not None and len(context.state) == 0:
        # a fresh Context (a restarted SuperNode, a resumed run): continue from the node's copy
        found = saved.load(before=server_round if training else server_round + 1)
        if found is not None:
            for key, record in found[1].items():
                context.state[key] = record
            log.info("client %d continues from its state of round %d", partition, found[0])
    store = ContextStateStore(context, cfg.fingerprint())
    ws.reset(received, store.load())
    return ClientJob(cfg, ws, partition, received, store, config, server_round, saved)


def saved_states(
    node: NodeSettings, context: Context, cfg: ClientConfig, partition: int
) -> NodeStateDir | None:
    """Where this node keeps the client's state for this run, if it keeps one: the run is the
    server's run directory (the same when resumed), else Flower's run id."""
    if not node.state_dir:
        return None
    run = str(context.run_config.get(RUN_OUT_KEY, "")) or f"flower-run-{context.run_id}"
    return NodeStateDir(node.state_dir, run, partition, cfg.fingerprint())


def client_seed(cfg: ClientConfig, server_round: int, partition_id: int) -> int:
    """A seed per (run, round, client): runs are reproducible and resume where they left off."""
    return (cfg.seed * 1_000_003 + server_round) * 1_000_003 + partition_id


def _number(config: ConfigRecord, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"message config key {key!r} should be a number, got {value!r}")
    return float(value)


def train(msg: Message, context: Context) -> Message:
    """Train the received model on this client's partition; reply with the keys received."""
    job = prepare(msg, context, training=True)
    cfg, ws = job.cfg, job.ws
    seed = client_seed(cfg, job.server_round, job.partition_id)
    ws.seed(seed)
    x, y = ws.federation.train_data(job.partition_id)
    x, y = x.to(ws.device), y.to(ws.device)
    epsilon: float | None = None
    if cfg.dp.enabled and cfg.dp.level == "sample":
        stats, epsilon = train_dp_sgd(job, x, y, seed, context)
    else:
        stats = train_epochs(
            ws.model,
            ws.optimizer,
            x,
            y,
            epochs=cfg.train.local_epochs,
            batch_size=cfg.train.batch_size,
            agc_clip=cfg.train.agc_clip,
            agc_rule=cfg.train.agc_rule,
            generator=torch.Generator().manual_seed(seed),
            proximal_mu=_number(job.config, PROXIMAL_MU_KEY, 0.0),
            anchor=job.received,
        )
    state = ws.targets  # the trained tensors themselves; ArrayRecord snapshots what it sends
    local = {k: v for k, v in state.items() if k not in job.received}
    if local:
        job.store.save(local)
    if job.saved is not None and len(context.state):
        job.saved.save(context.state, job.server_round)
    arrays = ArrayRecord({k: state[k].detach().cpu() for k in job.received})
    metrics = MetricRecord({TRAIN_LOSS: stats.loss, WEIGHT_KEY: stats.num_examples})
    if epsilon is not None:
        metrics[EPSILON_METRIC] = epsilon
    return Message(
        RecordDict({ARRAYS: arrays, METRICS: metrics, CLIENT: job.identity()}), reply_to=msg
    )


def train_dp_sgd(
    job: ClientJob, x: torch.Tensor, y: torch.Tensor, seed: int, context: Context
) -> tuple[TrainStats, float]:
    """Local DP-SGD (``dp.level = "sample"``): the same loop on Opacus' Poisson batches and
    clipped, noised steps; returns the stats and this client's epsilon over all the steps it
    has taken in the run (its history lives in ``Context.state``)."""
    from fedwon.privacy.dp_sgd import StepHistory, dp_sgd_noise_multiplier, private_training

    cfg, ws = job.cfg, job.ws
    dp = cfg.dp
    history = StepHistory.load(context.state)
    z = dp_sgd_noise_multiplier(
        dp,
        num_examples=len(y),
        batch_size=cfg.train.batch_size,
        local_epochs=cfg.train.local_epochs,
        num_rounds=cfg.num_rounds,
        server_round=int(_number(job.config, ROUND_KEY, 1)),
        history=history.entries,
    )
    with private_training(
        ws.model,
        ws.optimizer,
        x,
        y,
        batch_size=cfg.train.batch_size,
        noise_multiplier=z,
        clip_norm=dp.clip_norm,
        clipping=dp.clipping,
        split=dp.split,
        accountant=dp.accountant,
        generator=torch.Generator(ws.device).manual_seed(seed),
        secure_rng=dp.secure_rng,
    ) as private:
        stats = train_epochs(
            ws.model,
            private.optimizer,
            x,
            y,
            epochs=cfg.train.local_epochs,
            batch_size=cfg.train.batch_size,
            agc_clip=0.0,  # refused with DP-SGD (check_dp_run)
            generator=torch.Generator(),
            batches=lambda: private.loader,
        )
        history.extend(private.history())
    history.save(context.state)
    return stats, history.epsilon(dp.delta, dp.accountant)


def evaluate_step(msg: Message, context: Context) -> Message:
    """Evaluate the received model (with this client's local layers) on its test share."""
    job = prepare(msg, context, training=False)
    x, y = job.ws.federation.test_data(job.partition_id)
    stats = evaluate(job.ws.model, x.to(job.ws.device), y.to(job.ws.device))
    metrics = MetricRecord(
        {ACCURACY: stats.accuracy, LOSS: stats.loss, WEIGHT_KEY: stats.num_examples}
    )
    return Message(RecordDict({METRICS: metrics, CLIENT: job.identity()}), reply_to=msg)


def make_client_app(mods: Sequence[Mod] = (), train_mods: Sequence[Mod] = ()) -> ClientApp:
    """fedwon's ClientApp with Flower mods: ``mods`` wrap every message, ``train_mods`` only
    train messages (e.g. ``fixedclipping_mod``, which needs the clipping norm that DP wrappers
    send with training instructions only)."""
    client_app = ClientApp(mods=list(mods))
    client_app.train(mods=list(train_mods))(train)
    client_app.evaluate()(evaluate_step)
    return client_app


# dp_clipping_mod clips an update on the client when the server's CentralDP asks for it
# (dp.placement="client"), so an unclipped update never leaves a real client; a no-op otherwise.
app = make_client_app(train_mods=[dp_clipping_mod])
