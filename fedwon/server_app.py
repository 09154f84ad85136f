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
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedwon.clients.workspace import data_spec, initial_model
from fedwon.config import ConfigError, RunConfig, load_config, make_config
from fedwon.datasets import DataError, validate_spec
from fedwon.preflight import check_first_round_budget, prepare_run, refused, wait_for_nodes
from fedwon.privacy import CentralDP, ClientEpsilons
from fedwon.process_guard import start_guard
from fedwon.results import Checkpoint, ClientStateHolder, Row, RunRecorder
from fedwon.run_dir import lock_run_dir, resolve_out
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
    ckpt = recorder.load_resume() if resume else None
    if ckpt is None:
        check_first_round_budget(cfg)  # (prepare_run checks it too; run_server is public API)
    start_round = ckpt.round if ckpt is not None else 0

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

    # built (noise calibrated against the rounds already run) before the resume writes
    privacy = PrivacyWrap(cfg, wrap, checkpoint=ckpt)
    strategy = build_strategy(cfg, round_offset=start_round, on_round=record, wrap=privacy)
    last = privacy.last_round(start_round)
    if ckpt is not None:
        recorder.resume(ckpt)
        arrays = ckpt.arrays
        restore_server_state(strategy, ckpt.server_state)
        if cfg.strategy == "fedbn" and (holder is None or ckpt.client_states is None):
            log.warning(
                "resuming FedBN without the clients' local layers (this engine does not "
                "checkpoint Context.state): clients restart them from the initial model; "
                "use engine='fast' to resume exactly"
            )
    recorder.server_state = lambda: snapshot_server_state(strategy)
    recorder.privacy_history = privacy.history
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
    DP-SGD) -- so the round rules stay outermost and DP sees only the replies they kept.

    A resumed user-level run continues the privacy ledger of its ``checkpoint``: the rounds
    already run keep the noise they used, and epsilon (reported, capped by ``dp.max_epsilon``,
    targeted by ``dp.target_epsilon``) is always that of every round of the run composed.
    """

    def __init__(
        self,
        cfg: RunConfig,
        wrap: Callable[[Strategy], Strategy] | None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.cfg, self.wrap = cfg, wrap
        self.dp: CentralDP | None = None
        self.sample_dp: ClientEpsilons | None = None
        self.check = cfg.dp_check()
        self.prior = prior_privacy_history(cfg, checkpoint)
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
        try:
            self.dp = CentralDP.from_config(
                inner,
                dp,
                expected_clients=self.cfg.sampled_per_round,
                population=self.check.population,
                num_rounds=self.cfg.num_rounds,
                seed=self.cfg.seed,
                prior=self.prior,
            )
        except ValueError as err:  # a budget out of reach: the user's settings
            raise ConfigError(str(err)) from None
        return self.dp

    def history(self, rounds: int) -> list[tuple[float, float, int]] | None:
        """The privacy ledger's ``(z, q, rounds)`` segments of rounds 1..``rounds`` (None
        without user-level DP): what a checkpoint keeps."""
        return None if self.dp is None else self.dp.ledger.history(rounds)

    def last_round(self, start_round: int = 0) -> int:
        """The last round the run may take: ``num_rounds``, or fewer under ``dp.max_epsilon``
        (``start_round`` when a resumed run has spent its budget already)."""
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
        """The ``privacy`` block of summary.json (empty without DP). Epsilon is that of the
        rounds recorded in the run directory (all of them, over every process that ran
        some), never only of the rounds run by this process."""
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
        ledger = self.dp.ledger
        done = max((int(r["round"]) for r in rows), default=0)
        last = self.dp.rounds_within_budget(self.cfg.num_rounds)
        return {
            "privacy": {
                "level": "user",
                "epsilon": ledger.epsilon(done),
                "delta": ledger.delta,
                "noise_multiplier": ledger.noise_multiplier,
                "noise_history": [
                    {"noise_multiplier": z, "sample_rate": q, "rounds": n}
                    for z, q, n in ledger.history(done)
                ],
                "sample_rate": ledger.sample_rate,
                "target_epsilon": self.cfg.dp.target_epsilon or None,
                "max_epsilon": self.cfg.dp.max_epsilon or None,
                "accountant": ledger.accountant,
                "clip_norm": self.dp.clip_norm,
                "clipping": self.dp.clipping,
                "placement": self.dp.placement,
                **population_statement(self.check.population, self.cfg.num_clients),
                "rounds_within_budget": last,
                "stopped_by_budget": last < self.cfg.num_rounds,
            }
        }


def prior_privacy_history(
    cfg: RunConfig, checkpoint: Checkpoint | None
) -> list[tuple[float, float, int]]:
    """The noise history of the rounds a resumed user-level DP run has already run.

    A checkpoint without one (written by an older fedwon, which did not record the noise of
    each round) is refused: its rounds' noise cannot be known, and a guessed one could state
    an epsilon below the truth."""
    if checkpoint is None or checkpoint.round == 0:
        return []
    if not (cfg.dp.enabled and cfg.dp.level == "user"):
        return []
    history = checkpoint.privacy
    if history is None:
        raise ConfigError(
            "cannot resume this DP run: its checkpoint holds no privacy ledger (it was written "
            "by an older fedwon that did not record each round's noise), so the epsilon of its "
            f"{checkpoint.round} rounds cannot be verified; start the run again"
        )
    covered = sum(n for _, _, n in history)
    if covered != checkpoint.round:
        raise ConfigError(
            f"cannot resume this DP run: its checkpoint's privacy ledger covers {covered} "
            f"rounds, but the checkpoint is at round {checkpoint.round}"
        )
    return list(history)


def population_statement(population: int, simulated: int) -> dict[str, Any]:
    """What an epsilon is stated for: the population sampled from, and whether that is the
    simulated clients or an extrapolation to a larger population (q = m / N with N beyond
    the clients that exist in the simulation)."""
    extrapolated = population > simulated
    statement = (
        f"epsilon stated for a population of {population} (simulated: {simulated} clients)"
        if extrapolated
        else f"epsilon for the {simulated} simulated clients"
    )
    return {
        "population": population,
        "simulated_clients": simulated,
        "population_extrapolated": extrapolated,
        "statement": statement,
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
    with ExitStack() as held:
        try:
            settings = settings_from_run_config(dict(context.run_config))
            out_dir = resolve_out(settings.out, base=None)  # a relative out is refused
            start_guard()  # Ray, if this process starts it, ends with it (flwr stop)
            # one writer per run directory, held until the run has ended (fedwon.run_lock)
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
            wait_for_nodes(grid, settings.cfg.num_clients, timeout_s=settings.node_timeout)
        except (ConfigError, DataError) as err:
            raise refused(err) from None  # one line, a failed run, no traceback
        outcome = run_server(grid, settings.cfg, out_dir, resume=settings.resume)
    log.info("final accuracy %s", outcome.summary["final"]["accuracy"])
