"""What is checked before a run starts, so that bad input fails in a second with one line
naming it, not minutes later inside an engine with a traceback, and leaves nothing behind.

:func:`prepare_run` is the whole list for one process (the CLI's simulations and the ServerApp
under ``flwr run`` call it): the run directory may be written (new, ``--overwrite`` or resume),
the trackers asked for are installed, the data loads, the model accepts the data's images;
only then is the run directory created.
:func:`wait_for_nodes` is the one check that needs the Grid: enough SuperNodes to serve every
partition, instead of Flower's sampling waiting for them forever. :func:`refused` turns what
either check raises inside a ServerApp into one logged line and a failed run, without the
traceback Flower would print under it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from flwr.serverapp import Grid

from fedwon.config import ConfigError, RunConfig
from fedwon.datasets import load_federation, validate_spec
from fedwon.datasets.spec import IN_CHANNELS
from fedwon.models import build_model
from fedwon.privacy.accounting import PrivacyLedger
from fedwon.privacy.central_dp import planned_noise
from fedwon.run.directory import RunDir
from fedwon.run.trackers import check_trackers

log = logging.getLogger(__name__)
REFUSED = "_fedwon_refused"  # marks an error already logged as one line


class _NoTracebackForRefused(logging.Filter):
    """Drops the traceback from Flower's own log of an error fedwon already explained."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and getattr(record.exc_info[1], REFUSED, False):
            record.exc_info, record.exc_text = None, None
        return True


_QUIET = _NoTracebackForRefused()


def refused(err: Exception) -> Exception:
    """``err`` logged as one line and marked, to be raised from a ServerApp's ``main``.

    Raising keeps the run failed (Flower records it as FAILED and the SuperExec exits non-zero);
    Flower then logs "ServerApp raised an exception" with the traceback of an input error that
    fedwon checked on purpose (40 lines under the one that matters). A filter on Flower's logger
    keeps Flower's line and drops that traceback, for these marked errors only.
    """
    log.error("%s", err)
    setattr(err, REFUSED, True)
    flwr_logger = logging.getLogger("flwr")
    if _QUIET not in flwr_logger.filters:
        flwr_logger.addFilter(_QUIET)
    return err


def check_model_input(cfg: RunConfig, num_classes: int, in_channels: int, size: int) -> None:
    """The model takes the data's images (e.g. ``cnn`` needs 28x28: ``image_size=2`` is
    refused here, not by a shape error in every client)."""
    model = build_model(
        cfg.model.model, norm=cfg.resolved_norm, num_classes=num_classes, in_channels=in_channels
    ).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, size, size))
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model {cfg.model.model!r} cannot take the {size}x{size} images of image_size="
            f"{cfg.data.image_size or size}: {first}"
        ) from None
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(
            f"model {cfg.model.model!r} returns shape {tuple(out.shape)[1:]} per image, not "
            f"({num_classes},) class scores"
        )


def prepare_run(
    cfg: RunConfig,
    out_dir: Path | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    load_data: bool = True,
) -> None:
    """Check everything a run needs before it starts, then create its directory.

    Order matters: every check only reads, so a refused run leaves the directory as it was
    (a resume refused for ``--set model=...`` can still be resumed without it).
    ``load_data=False`` (a ServerApp facing real SuperNodes, which hold the data) checks the
    data set's metadata only: names, domains, classes and image size, never its files.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give only one")
    if resume:
        if out_dir is None:
            raise ConfigError("cannot resume a run that has no output directory")
        RunDir(out_dir).check_resumable(cfg)
    elif out_dir is not None:
        RunDir(out_dir).check_new(overwrite=overwrite)
    check_trackers(cfg, out_dir)  # installed, and a directory to link
    spec = cfg.data
    if load_data:
        fed = load_federation(spec)
        check_model_input(cfg, fed.num_classes, fed.in_channels, fed.image_size)
    else:
        resolved = validate_spec(spec)
        check_model_input(cfg, resolved.info.num_classes, IN_CHANNELS, resolved.image_size)
    if not resume:
        check_first_round_budget(cfg)
    if out_dir is not None and not resume:
        RunDir(out_dir).prepare(overwrite=overwrite)


def check_first_round_budget(cfg: RunConfig) -> None:
    """Refuse a user-level DP run whose noise its mechanism cannot reach (a calibrated
    ``dp.target_epsilon`` needs more noise than adaptive clipping's count allows) or whose
    ``dp.max_epsilon`` is below a single round's epsilon: it would stop before its first
    round, with an empty run directory and exit status 0."""
    dp = cfg.dp
    if not (dp.enabled and dp.level == "user" and (dp.max_epsilon or dp.target_epsilon)):
        return
    try:
        z, q = planned_noise(
            dp,
            expected_clients=cfg.sampled_per_round,
            population=cfg.dp_check().population,
            num_rounds=cfg.server.num_rounds,
            participation=cfg.participation,
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not dp.max_epsilon:
        return
    first = PrivacyLedger(z, q, dp.delta, dp.accountant).epsilon(1)
    if first > dp.max_epsilon:
        raise ConfigError(
            f"dp.max_epsilon={dp.max_epsilon:g} is below the epsilon of a single round "
            f"({first:.4g} at delta {dp.delta:g}, noise multiplier {z:.4g}): no round can run; "
            "raise dp.max_epsilon or the noise"
        )


def wait_for_nodes(grid: Grid, needed: int, timeout_s: float, poll_s: float = 0.5) -> None:
    """Wait until ``needed`` nodes are connected, or fail after ``timeout_s`` with one line.

    Client ``i`` serves partition ``i``, so a run needs one node per client; with fewer,
    Flower's sampling would wait for the missing ones forever (and the run would outlive the
    ``flwr`` command that started it).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        connected = len(list(grid.get_node_ids()))
        if connected >= needed:
            return
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"only {connected} of the {needed} nodes this run needs (num_clients={needed}) "
                f"connected within {timeout_s:g} s; start one SuperNode per client (flwr run: "
                f"num-supernodes={needed} in the federation config)"
            )
        time.sleep(poll_s)
