"""The one place that turns the server section into a strategy: round rules (outermost)
around Flower's aggregator for ``server.aggregator``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from fedwon.strategies.aggregation import per_domain_metrics
from fedwon.strategies.aggregators import AGGREGATORS
from fedwon.strategies.round_rules import RoundCallback, RoundRules
from fedwon.strategies.spec import ServerSpec


def build_strategy(
    cfg: ServerSpec,
    *,
    num_clients: int,
    seed: int,
    client_lr: float,
    round_offset: int = 0,
    on_round: RoundCallback | None = None,
    wrap: Callable[[Strategy], Strategy] | None = None,
) -> RoundRules:
    """``RoundRules(wrap(aggregator))`` for the server section ``cfg`` of a run with
    ``num_clients`` clients; ``round_offset`` continues a resumed run.

    ``wrap`` adds wrappers between the round rules and the aggregator, e.g. Flower's
    ``lambda s: DifferentialPrivacyServerSideFixedClipping(s, 1.0, 0.5, 10)``: they see only
    the replies the round rules kept (finite, from clients that did not fail).

    The method (``cfg.strategy``) is not part of the strategy: it decides which arrays the
    server starts from (:meth:`fedwon.strategies.methods.Method.shared_arrays`).
    """
    aggregator = build_aggregator(
        cfg,
        num_clients=num_clients,
        client_lr=client_lr,
        evaluate_metrics_aggr_fn=per_domain_metrics,
    )
    inner: Strategy = aggregator if wrap is None else wrap(aggregator)
    lr = "default" if cfg.server_lr is None else f"{cfg.server_lr:g}"
    return RoundRules(
        inner,
        num_rounds=cfg.num_rounds,
        seed=seed,
        min_clients=cfg.min_clients,
        eval_every=cfg.eval_every,
        round_offset=round_offset,
        on_round=on_round,
        participation=cfg.schedule(num_clients),
        sampler=aggregator,  # its sample sizes shrink to the connected nodes (deployments)
        # named in errors only where the aggregator steps on its own (a server learning rate)
        server_step=(
            f"aggregator={cfg.aggregator} server_lr={lr}"
            if AGGREGATORS[cfg.aggregator].has_server_step
            else ""
        ),
    )


def build_aggregator(
    cfg: ServerSpec,
    *,
    num_clients: int,
    client_lr: float,
    evaluate_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord],
) -> FedAvg:
    """Flower's strategy for ``cfg.aggregator``, sampling exactly ``cfg.sampled(num_clients)``
    clients a round (``client_lr`` is only logged, as Flower's FedOpt ``eta_l``).

    ``min_train_nodes`` pins the sample size: Flower samples max(int(n · fraction), minimum).
    ``min_available_nodes`` makes Flower wait for that many connected nodes; the round rules
    lower all three for a round with fewer connected nodes (a dead SuperNode), so the round
    runs with those that are there.
    """
    sampled = cfg.sampled(num_clients)
    agg = AGGREGATORS[cfg.aggregator]
    kwargs: dict[str, Any] = {
        arg: getattr(cfg, key) for key, arg in agg.params.items() if getattr(cfg, key) is not None
    }
    if issubclass(agg.cls, FedOpt):
        kwargs["eta_l"] = client_lr  # logged by Flower only; clients use their own lr
    n = num_clients
    return agg.cls(
        fraction_train=sampled / n,
        min_train_nodes=sampled,
        fraction_evaluate=cfg.fraction_evaluate,
        min_evaluate_nodes=max(1, int(n * cfg.fraction_evaluate)),
        min_available_nodes=sampled,
        evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
        **kwargs,
    )
