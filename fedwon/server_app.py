"""The Flower ServerApp (``fedwon.server_app:app``): builds model and strategy, runs the rounds.

:func:`run_server` is the whole server side and takes any Flower ``Grid``: Flower's simulation
engine, the fast engine (:mod:`fedwon.engine`) or a real SuperLink. It never loads client
data: classes and domains come from the data set's metadata. Under ``flwr run`` the module-level
``app`` reads its settings from the run config: ``recipe`` (a TOML file), ``set``
(space-separated ``key=value`` overrides), ``out`` (run directory; empty = none) and ``resume``.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedwon.clients.workspace import data_spec, initial_model
from fedwon.config import ConfigError, RunConfig, load_config, make_config
from fedwon.datasets import DataError, validate_spec
from fedwon.preflight import prepare_run, refused, wait_for_nodes
from fedwon.privacy import CentralDP, ClientEpsilons
from fedwon.process_guard import start_guard
from fedwon.results import ClientStateHolder, Row, RunRecorder
from fedwon.run_dir import resolve_out
from fedwon.strategies import METHODS, RoundReport, build_strategy
from fedwon.strategies.server_state import restore_server_state, snapshot_server_state

log = logging.getLogger(__name__)

RowCallback = Callable[[Row], None]
# Keys of Flower's run config that steer the run rather than configure it.
RUN_KEYS = ("recipe", "set", "out", "resume", "overwrite", "node_timeout")
NODE_TIMEOUT_S = 120.0  # how long flwr run / a SuperLink waits for one SuperNode per client


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    rows: list[Row]
    arrays: ArrayRecord


def initial_arrays(cfg: RunConfig) -> ArrayRecord:
    """The arrays the server starts from: the initial model's state minus what the method keeps
    on clients (FedBN's normalization layers). Built from metadata only, no data loaded."""
    client_cfg = cfg.client_config()
    num_classes = validate_spec(data_spec(client_cfg)).info.num_classes
    return METHODS[cfg.strategy].shared_arrays(initial_model(client_cfg, num_classes))


def run_server(
    grid: Grid,
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_round: RowCallback | None = None,
    wrap: Callable[[Strategy], Strategy] | None = None,
) -> RunOutcome:
    """Run ``cfg.num_rounds`` rounds (or the rest of them after a checkpoint) on ``grid``.

    ``wrap`` puts any Flower strategy wrapper (e.g. Flower's DP wrappers) between fedwon's
    round rules and the aggregator (see :func:`fedwon.strategies.build_strategy`).
    """
    arrays = initial_arrays(cfg)
    holder = grid if isinstance(grid, ClientStateHolder) else None
    recorder = RunRecorder(out_dir, cfg, client_states=holder)
    start_round, server_state = 0, {}
    if resume:
        ckpt = recorder.resume()
        start_round, arrays, server_state = ckpt.round, ckpt.arrays, ckpt.server_state
        if cfg.strategy == "fedbn" and (holder is None or ckpt.client_states is None):
            log.warning(
                "resuming FedBN without the clients' local layers (this engine does not "
                "checkpoint Context.state): clients restart them from the initial model; "
                "use engine='fast' to resume exactly"
            )

    def record(report: RoundReport) -> None:
        row = recorder.record(
            report.round,
            report.arrays,
            report.train_metrics,
            report.evaluate_metrics,
            dropped=len(report.dropped),
        )
        if on_round is not None:
            on_round(row)

    privacy = PrivacyWrap(cfg, wrap)
    strategy = build_strategy(cfg, round_offset=start_round, on_round=record, wrap=privacy)
    restore_server_state(strategy, server_state)
    recorder.server_state = lambda: snapshot_server_state(strategy)
    last = privacy.last_round()
    strategy.num_rounds = recorder.final_round = last  # evaluate and checkpoint the last one
    client_record = cfg.client_config().to_record()
    if last > start_round:
        strategy.start(
            grid,
            arrays,
            num_rounds=last - start_round,
            train_config=client_record,
            evaluate_config=ConfigRecord(dict(client_record)),
        )
    summary = recorder.finish(privacy.summary(recorder.rows))
    return RunOutcome(summary=summary, rows=recorder.rows, arrays=recorder.arrays or arrays)


class PrivacyWrap:
    """The ``wrap`` that :func:`build_strategy` applies: the caller's wrapper, then (with
    ``dp.enabled``) fedwon's DP wrapper around it -- :class:`~fedwon.privacy.CentralDP` at
    user level, :class:`~fedwon.privacy.ClientEpsilons` at sample level (the clients run
    DP-SGD) -- so the round rules stay outermost and DP sees only the replies they kept."""

    def __init__(self, cfg: RunConfig, wrap: Callable[[Strategy], Strategy] | None) -> None:
        self.cfg, self.wrap = cfg, wrap
        self.dp: CentralDP | None = None
        self.sample_dp: ClientEpsilons | None = None
        self.check = cfg.dp_check()
        for warning in self.check.warnings:
            log.warning("%s", warning)

    def __call__(self, strategy: Strategy) -> Strategy:
        inner = self.wrap(strategy) if self.wrap is not None else strategy
        dp = self.cfg.dp
        if not dp.enabled:
            return inner
        if dp.level == "sample":
            self.sample_dp = ClientEpsilons(inner)
            return self.sample_dp
        self.dp = CentralDP.from_config(
            inner,
            dp,
            expected_clients=self.cfg.sampled_per_round,
            population=self.check.population,
            num_rounds=self.cfg.num_rounds,
            seed=self.cfg.seed,
        )
        return self.dp

    def last_round(self) -> int:
        """The last round the run may take: ``num_rounds``, or fewer under ``dp.max_epsilon``."""
        if self.dp is None:
            return self.cfg.num_rounds
        last = self.dp.rounds_within_budget(self.cfg.num_rounds)
        if last < self.cfg.num_rounds:
            log.warning(
                "dp.max_epsilon=%g allows %d of the %d rounds (epsilon %.3f after round %d): "
                "the run stops after round %d",
                self.cfg.dp.max_epsilon,
                last,
                self.cfg.num_rounds,
                self.dp.ledger.epsilon(last),
                last,
                last,
            )
        return last

    def summary(self, rows: list[Row]) -> dict[str, Any]:
        """The ``privacy`` block of summary.json (empty without DP)."""
        if self.sample_dp is not None:
            dp = self.cfg.dp
            epsilons = [r["epsilon"] for r in rows if r.get("epsilon") is not None]
            return {
                "privacy": {
                    "level": "sample",
                    "epsilon": max(epsilons, default=0.0),  # the worst client's, over the run
                    "delta": dp.delta,
                    "noise_multiplier": dp.noise_multiplier or None,  # None: per client
                    "target_epsilon": dp.target_epsilon or None,
                    "accountant": dp.accountant,
                    "clip_norm": dp.clip_norm,
                    "clipping": dp.clipping,
                }
            }
        if self.dp is None:
            return {}
        ledger, last = self.dp.ledger, self.last_round()
        return {
            "privacy": {
                "level": "user",
                "epsilon": self.dp.epsilon_spent,
                "delta": ledger.delta,
                "noise_multiplier": ledger.noise_multiplier,
                "sample_rate": ledger.sample_rate,
                "accountant": ledger.accountant,
                "clip_norm": self.dp.clip_norm,
                "clipping": self.dp.clipping,
                "placement": self.dp.placement,
                "rounds_within_budget": last,
                "stopped_by_budget": last < self.cfg.num_rounds,
            }
        }


@dataclass(frozen=True)
class RunSettings:
    """What a Flower run config asks of the ServerApp besides the run's own config."""

    cfg: RunConfig
    out: str = ""
    resume: bool = False
    overwrite: bool = False
    node_timeout: float = NODE_TIMEOUT_S


def settings_from_run_config(run_config: dict[str, Any]) -> RunSettings:
    """Flower run config → :class:`RunSettings`. Either a recipe + overrides, or flat keys."""
    out = str(run_config.get("out", ""))
    resume = bool(run_config.get("resume", False))
    recipe = str(run_config.get("recipe", ""))
    if recipe:
        path = Path(recipe)
        if not path.is_absolute() and not path.exists():
            path = Path(__file__).resolve().parent.parent / recipe
        cfg = load_config(path, shlex.split(str(run_config.get("set", ""))))
    else:
        cfg = make_config({k: v for k, v in run_config.items() if k not in RUN_KEYS})
    timeout = run_config.get("node_timeout", NODE_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"node_timeout must be a number of seconds > 0, got {timeout!r}")
    return RunSettings(cfg, out, resume, bool(run_config.get("overwrite", False)), float(timeout))


class BoundServerApp(ServerApp):
    """A ServerApp bound to an already validated config (what ``fedwon run`` uses); the run's
    outcome is in ``outcome`` once it has finished."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path | None = None,
        *,
        resume: bool = False,
        on_round: RowCallback | None = None,
    ) -> None:
        super().__init__()
        self.outcome: RunOutcome | None = None

        @self.main()
        def _main(grid: Grid, context: Context) -> None:
            self.outcome = run_server(grid, cfg, out_dir, resume=resume, on_round=on_round)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run`` and deployment: the same checks as ``fedwon run`` before
    anything is written, then one SuperNode per client (or a one-line error after
    ``node_timeout`` seconds instead of Flower's endless wait)."""
    try:
        settings = settings_from_run_config(dict(context.run_config))
        out_dir = resolve_out(settings.out, base=None)  # a relative out is refused
        start_guard()  # Ray, if this process starts it, ends with it (flwr stop)
        # the server never opens client data: metadata checks only (SuperNodes hold the data)
        prepare_run(
            settings.cfg,
            out_dir,
            resume=settings.resume,
            overwrite=settings.overwrite,
            load_data=False,
        )
        wait_for_nodes(grid, settings.cfg.num_clients, timeout_s=settings.node_timeout)
    except (ConfigError, DataError) as err:
        raise refused(err) from None  # one line, a failed run, no traceback
    outcome = run_server(grid, settings.cfg, out_dir, resume=settings.resume)
    log.info("final accuracy %s", outcome.summary["final"]["accuracy"])
