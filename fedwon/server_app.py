"""The Flower ServerApp (``fedwon.server_app:app``): builds model and strategy, runs the rounds.

:func:`run_server` is the whole server side and takes any Flower ``Grid``: Flower's simulation
engine, the fast engine (:mod:`fedwon.engine`) or a real SuperLink. It never loads client
data: classes and domains come from the data set's metadata. Under ``flwr run`` the module-level
``app`` reads its settings from the run config: ``recipe`` (a TOML file), ``set``
(space-separated ``key=value`` overrides), ``out`` (run directory; empty = none) and ``resume``.
On a SuperLink it pulls replies every ``reply_poll`` seconds (default 0.2; Flower's own: 3,
:mod:`fedwon.engine.replies`).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.superlink.grid.http_grid import HttpGrid

from fedwon.config import ConfigError, RunConfig, load_config, make_config
from fedwon.datasets import DataError, validate_spec
from fedwon.datasets.spec import IN_CHANNELS
from fedwon.engine.replies import PromptReplies
from fedwon.privacy.assembly import DPRun, PrivacyWrap, prior_history, prior_state
from fedwon.run.directory import lock_run_dir, resolve_out
from fedwon.run.preflight import check_first_round_budget, prepare_run, refused, wait_for_nodes
from fedwon.run.process_guard import start_guard
from fedwon.run.recorder import Checkpoint, ClientStateHolder, Row, RunRecorder
from fedwon.strategies import (
    METHODS,
    RoundCallback,
    RoundReport,
    RoundRules,
    build_strategy,
)
from fedwon.strategies.server_state import restore_server_state, snapshot_server_state

log = logging.getLogger(__name__)

RowCallback = Callable[[Row], None]
# Keys of Flower's run config that steer the run rather than configure it.
RUN_KEYS = ("recipe", "set", "out", "resume", "overwrite", "node_timeout", "reply_poll")
NODE_TIMEOUT_S = 120.0  # how long flwr run / a SuperLink waits for one SuperNode per client
REPLY_POLL_S = 0.2  # between a deployed ServerApp's pulls of replies (Flower's HttpGrid: 3 s)


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    rows: list[Row]
    arrays: ArrayRecord


def initial_arrays(cfg: RunConfig) -> ArrayRecord:
    """The arrays the server starts from: the initial model's state minus what the method keeps
    on clients (FedBN's normalization layers). Built from metadata only, no data loaded."""
    num_classes = validate_spec(cfg.data).info.num_classes
    model = cfg.model_spec.initial_model(num_classes, IN_CHANNELS, cfg.seed)
    return METHODS[cfg.server.strategy].shared_arrays(model)


def run_server(
    grid: Grid,
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_round: RowCallback | None = None,
    wrap: Callable[[Strategy], Strategy] | None = None,
) -> RunOutcome:
    """Run ``cfg.server.num_rounds`` rounds (or the rest of them after a checkpoint) on ``grid``.

    ``wrap`` puts any Flower strategy wrapper (e.g. Flower's DP wrappers) between fedwon's
    round rules and the aggregator (see :func:`fedwon.strategies.build_strategy`).
    """
    arrays = initial_arrays(cfg)
    holder = grid if isinstance(grid, ClientStateHolder) else None
    recorder = RunRecorder(out_dir, cfg, client_states=holder)
    with recorder:  # the trackers' runs end, as failed on an exception
        ckpt = recorder.load_resume() if resume else None
        if ckpt is None:
            check_first_round_budget(cfg)  # (prepare_run checks it too; run_server is public)
        start_round = ckpt.round if ckpt is not None else 0
        short_rounds = 0  # rounds that ran with fewer nodes than planned (dead or stalled ones)

        def record(report: RoundReport) -> None:
            nonlocal short_rounds
            short_rounds += report.missing_nodes
            row = recorder.record(
                report.round,
                report.arrays,
                report.train_metrics,
                report.evaluate_metrics,
                dropped=len(report.dropped),
            )
            if on_round is not None:
                on_round(row)

        # built (noise calibrated against the rounds already run) before the resume writes
        privacy = privacy_wrap(cfg, wrap, checkpoint=ckpt)
        strategy = run_strategy(cfg, round_offset=start_round, on_round=record, wrap=privacy)
        last = privacy.last_round(start_round)
        if ckpt is not None:
            recorder.resume(ckpt)
            arrays = ckpt.arrays
            restore_server_state(strategy, ckpt.server_state)
            if cfg.server.strategy == "fedbn" and (holder is None or ckpt.client_states is None):
                log.warning(
                    "resuming FedBN without the clients' local layers (this engine does not "
                    "checkpoint Context.state): clients restart them from the initial model, "
                    "except on SuperNodes that keep their state (node config state-dir); "
                    "use engine='fast' to resume exactly"
                )
        recorder.server_state = lambda: snapshot_server_state(strategy)
        recorder.privacy_history = privacy.history
        recorder.privacy_state = privacy.state
        strategy.num_rounds = recorder.final_round = last  # evaluate and checkpoint the last one
        client_record = cfg.client_config().to_record()
        if last > start_round:
            strategy.start(
                grid,
                arrays,
                num_rounds=last - start_round,
                timeout=cfg.server.reply_timeout,
                train_config=client_record,
                evaluate_config=ConfigRecord(dict(client_record)),
            )
        # rounds_with_missing_nodes: of the rounds this process ran (a resumed run counts its own)
        extra = {"rounds_with_missing_nodes": short_rounds, **privacy.summary(recorder.rows)}
        summary = recorder.finish(extra)
    return RunOutcome(summary=summary, rows=recorder.rows, arrays=recorder.arrays or arrays)


def run_strategy(
    cfg: RunConfig,
    *,
    round_offset: int = 0,
    on_round: RoundCallback | None = None,
    wrap: Callable[[Strategy], Strategy] | None = None,
) -> RoundRules:
    """:func:`~fedwon.strategies.build_strategy` for a run: its server section, with the
    number of clients and the seed the other sections give."""
    return build_strategy(
        cfg.server,
        num_clients=cfg.data.num_clients,
        seed=cfg.seed,
        client_lr=cfg.train.lr,
        round_offset=round_offset,
        on_round=on_round,
        wrap=wrap,
    )


def privacy_wrap(
    cfg: RunConfig,
    wrap: Callable[[Strategy], Strategy] | None = None,
    checkpoint: Checkpoint | None = None,
) -> PrivacyWrap:
    """The DP wrapper assembly for ``cfg`` (:class:`~fedwon.privacy.assembly.PrivacyWrap`),
    continuing the privacy ledger and the mechanism's state of a resumed run's ``checkpoint``."""
    run = DPRun(
        dp=cfg.dp,
        check=cfg.dp_check(),
        expected_clients=cfg.sampled_per_round,
        num_clients=cfg.data.num_clients,
        num_rounds=cfg.server.num_rounds,
        seed=cfg.seed,
        participation=cfg.participation,
    )
    if checkpoint is None:
        return PrivacyWrap(run, wrap)
    prior = prior_history(run, checkpoint.round, checkpoint.privacy)
    state = prior_state(run, checkpoint.round, checkpoint.privacy_state)
    return PrivacyWrap(run, wrap, prior, state)


@dataclass(frozen=True)
class RunSettings:
    """What a Flower run config asks of the ServerApp besides the run's own config."""

    cfg: RunConfig
    out: str = ""
    resume: bool = False
    overwrite: bool = False
    node_timeout: float = NODE_TIMEOUT_S
    reply_poll: float = REPLY_POLL_S


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
    poll = run_config.get("reply_poll", REPLY_POLL_S)
    if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0 < poll <= 60:
        raise ConfigError(f"reply_poll must be a number of seconds in (0, 60], got {poll!r}")
    overwrite = bool(run_config.get("overwrite", False))
    return RunSettings(cfg, out, resume, overwrite, float(timeout), float(poll))


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
    with ExitStack() as held:
        try:
            settings = settings_from_run_config(dict(context.run_config))
            if isinstance(grid, HttpGrid):  # a SuperLink's, which pulls replies every 3 s
                grid = PromptReplies(grid, settings.reply_poll)
            out_dir = resolve_out(settings.out, base=None)  # a relative out is refused
            start_guard()  # Ray, if this process starts it, ends with it (flwr stop)
            # one writer per run directory, held until the run has ended (fedwon.run.lock)
            held.enter_context(
                lock_run_dir(out_dir, resume=settings.resume, overwrite=settings.overwrite)
            )
            # the server never opens client data: metadata checks only (SuperNodes hold the data)
            prepare_run(
                settings.cfg,
                out_dir,
                resume=settings.resume,
                overwrite=settings.overwrite,
                load_data=False,
            )
            wait_for_nodes(grid, settings.cfg.data.num_clients, timeout_s=settings.node_timeout)
        except (ConfigError, DataError) as err:
            raise refused(err) from None  # one line, a failed run, no traceback
        outcome = run_server(grid, settings.cfg, out_dir, resume=settings.resume)
    log.info("final accuracy %s", outcome.summary["final"]["accuracy"])
