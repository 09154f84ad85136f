"""The Flower ServerApp (``fedwon.server_app:app``): builds model and strategy, runs the rounds.

:func:`run_server` is the whole server side and takes any Flower ``Grid``: Flower's simulation
engine, the fast engine (:mod:`fedwon.engine`) or a real SuperLink. Under ``flwr run`` the
module-level ``app`` reads its settings from the run config: ``recipe`` (a TOML file), ``set``
(space-separated ``key=value`` overrides) and ``out`` (run directory; empty = none).
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

from fedwon.clients.workspace import data_spec, initial_model
from fedwon.config import ConfigError, RunConfig, load_config, make_config
from fedwon.datasets import load_federation
from fedwon.results import Row, RunRecorder
from fedwon.strategies import build_strategy

log = logging.getLogger(__name__)

RoundCallback = Callable[[Row], None]
# Keys of Flower's run config that steer the run rather than configure it.
RUN_KEYS = ("recipe", "set", "out", "resume")


@dataclass
class RunOutcome:
    summary: dict[str, Any]
    rows: list[Row]
    arrays: ArrayRecord


def client_config_record(cfg: RunConfig, state_dir: str) -> ConfigRecord:
    """What each message carries: the validated settings (clients re-validate once, cached)."""
    return ConfigRecord({**cfg.to_flat(), "state-dir": state_dir})


def run_server(
    grid: Grid,
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
) -> RunOutcome:
    """Run ``cfg.num_rounds`` rounds (or the rest of them after a checkpoint) on ``grid``."""
    federation = load_federation(data_spec(cfg))
    model = initial_model(cfg, federation.num_classes, federation.in_channels)
    recorder = RunRecorder(out_dir, cfg, federation.domains)
    arrays = ArrayRecord(model.state_dict())
    start_round = 0
    if resume:
        start_round = recorder.resume().round
        arrays = recorder.arrays or arrays
    strategy = build_strategy(cfg, model, federation.domains, round_offset=start_round)
    record = client_config_record(cfg, recorder.client_state_dir)

    def after_round(server_round: int, current: ArrayRecord) -> None:
        if server_round == 0:
            return
        r = server_round + start_round
        row = recorder.record(
            r,
            current,
            strategy.train_metrics.get(r),
            strategy.evaluate_metrics.get(r),
            dropped=len(strategy.dropped.get(r, [])),
        )
        if on_round is not None:
            on_round(row)

    if cfg.num_rounds > start_round:
        strategy.start(
            grid,
            arrays,
            num_rounds=cfg.num_rounds - start_round,
            train_config=record,
            evaluate_config=ConfigRecord(dict(record)),
            evaluate_fn=after_round,
        )
    summary = recorder.finish()
    return RunOutcome(summary=summary, rows=recorder.rows, arrays=recorder.arrays or arrays)


def settings_from_run_config(run_config: dict[str, Any]) -> tuple[RunConfig, str, bool]:
    """Flower run config → (config, out dir, resume). Either a recipe + overrides, or flat keys."""
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
    return cfg, out, resume


def make_server_app(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    on_round: RoundCallback | None = None,
    outcome: list[RunOutcome] | None = None,
) -> ServerApp:
    """A ServerApp bound to an already validated config (what ``fedwon run`` uses)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        result = run_server(grid, cfg, out_dir, resume=resume, on_round=on_round)
        if outcome is not None:
            outcome.append(result)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run`` and deployment."""
    try:
        cfg, out, resume = settings_from_run_config(dict(context.run_config))
    except ConfigError as err:
        log.error("%s", err)
        raise
    outcome = run_server(grid, cfg, out or None, resume=resume)
    log.info("final accuracy %s", outcome.summary["final"]["accuracy"])
