"""A Flower SuperNode with fedwon's warm ClientApp worker and a shorter poll: what a node runs.

``python -m fedwon.deploy.supernode [--poll-interval S] [--no-worker] <flower-supernode flags>``
(or ``fedwon deploy supernode ...``) runs ``flower-supernode`` itself, in this process, with
two changes:

- **its poll interval.** Flower 1.39's SuperNode sleeps a hard-coded 3 s after every poll of the
  SuperLink that found no message (``flwr/supernode/start_client_internal.py``, the main loop),
  0.5 s between checks for its ClientApp's reply, and 1 s (doubling up to 10 s) before asking
  again for a message's arrays the SuperLink does not have yet (the ServerApp is still
  uploading them); no flag or environment variable sets any of them
  (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` is the SuperExec's). Here every one of these waits is
  scaled by ``poll_interval / 3`` (default 0.5 s: 0.5 s between polls, 0.08 s between checks,
  0.17-1.7 s of backoff). The patch replaces two names *as that one Flower module sees them*
  (its ``time`` module and its ``pull_objects`` function), in this process only; nothing in
  site-packages changes, and ``--poll-interval 3`` is Flower's own behaviour. A shorter
  interval means more polls of the SuperLink per node (an empty poll is one small gRPC call):
  with thousands of nodes keep Flower's 3 s.
- **a warm worker.** With ``--isolation process`` it also starts :mod:`fedwon.deploy.worker` on
  the SuperNode's Runtime API (``--host``/``--port``; HTTPS with ``--ssl-certfile``), which then
  runs every message in one long-lived process. The SuperNode starts (and joins the federation)
  once its worker is warm, so no round waits for a worker's start. The worker exits when the
  SuperNode does, and is started again should it die (a SuperNode whose worker keeps dying
  exits). ``--no-worker`` leaves starting one to you.

The node config (``--node-config``) is checked before anything starts: a bad fedwon key
(:class:`~fedwon.protocol.NodeSettings`) or a ``state-dir`` that cannot be written is one line
and exit status 2. Everything else is Flower's: its flags, its exit codes, its log.
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from logging import ERROR, INFO, WARNING
from pathlib import Path
from types import ModuleType
from typing import Any

import click
from flwr.common.config import parse_config_args
from flwr.common.constant import ISOLATION_MODE_PROCESS, ISOLATION_MODE_SUBPROCESS
from flwr.supercore import log
from flwr.supercore.constant import (
    PULL_BACKOFF_CAP,
    PULL_INITIAL_BACKOFF,
    SUPERNODE_UVICORN_DEFAULT_PORT,
    UVICORN_DEFAULT_HOST,
)
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.version import package_version

from fedwon.deploy.commands import SUPERNODE_POLL_S, address
from fedwon.deploy.errors import check_seconds
from fedwon.protocol import ProtocolError, read_node_settings

FLOWER_POLL_S = 3.0  # what Flower 1.39 sleeps after an empty poll
POLL_S = SUPERNODE_POLL_S
RESTARTS = 3  # worker deaths within RESTART_WINDOW_S before the SuperNode gives up
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 300.0  # for the worker's imports and warm-up, on a loaded machine
NAME = "fedwon supernode"


class LaunchError(Exception):
    """A bad setting of the node, said in one line before anything starts."""


class ScaledTime:
    """The ``time`` module with every ``sleep`` scaled: what the SuperNode loop sees."""

    def __init__(self, real: ModuleType, scale: float) -> None:
        self._real = real
        self.scale = scale

    def sleep(self, seconds: float) -> None:
        self._real.sleep(seconds * self.scale)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def set_poll_interval(seconds: float) -> None:
    """Make the SuperNode poll every ``seconds`` instead of every 3 s (see the module)."""
    from flwr.supernode import start_client_internal as loop

    if not package_version.startswith("1.39."):
        log(
            WARNING,
            "%s: --poll-interval is made for flwr 1.39, not %s: ignored",
            NAME,
            package_version,
        )
        return
    scale = seconds / FLOWER_POLL_S
    loop.time = ScaledTime(time, scale)  # type: ignore[assignment]
    loop.pull_objects = functools.partial(
        inflatable_utils.pull_objects,
        initial_backoff=PULL_INITIAL_BACKOFF * scale,
        backoff_cap=PULL_BACKOFF_CAP * scale,
    )


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, argparse.Namespace, list[str]]:
    """fedwon's own options, the flower-supernode flags it reads, and the flags to forward."""
    own = argparse.ArgumentParser(
        prog="python -m fedwon.deploy.supernode",
        description="flower-supernode with a shorter poll and, with --isolation process, "
        "fedwon's warm ClientApp worker; every other flag is flower-supernode's.",
    )
    own.add_argument(
        "--poll-interval",
        type=float,
        default=POLL_S,
        help=f"seconds between the SuperNode's polls for messages (Flower's: 3; default {POLL_S})",
    )
    own.add_argument(
        "--no-worker",
        action="store_true",
        help="with --isolation process, do not start fedwon's worker",
    )
    ours, forwarded = own.parse_known_args(argv)
    flower = argparse.ArgumentParser(add_help=False)
    flower.add_argument("--isolation", default=ISOLATION_MODE_SUBPROCESS)
    flower.add_argument("--host", default=UVICORN_DEFAULT_HOST)
    flower.add_argument("--port", default=str(SUPERNODE_UVICORN_DEFAULT_PORT))
    flower.add_argument("--ssl-certfile")
    flower.add_argument("--ssl-ca-certfile")
    flower.add_argument("--node-config")
    seen, _ = flower.parse_known_args(forwarded)
    return ours, seen, forwarded


def check(ours: argparse.Namespace, flower: argparse.Namespace) -> None:
    """Refuse bad settings before anything starts (:class:`LaunchError`)."""
    check_seconds("--poll-interval", ours.poll_interval, LaunchError)
    if flower.isolation not in (ISOLATION_MODE_SUBPROCESS, ISOLATION_MODE_PROCESS):
        return  # flower-supernode says what it accepts
    process = flower.isolation == ISOLATION_MODE_PROCESS
    if process and flower.ssl_certfile and not flower.ssl_ca_certfile:
        raise LaunchError(
            "--ssl-certfile needs --ssl-ca-certfile: the worker verifies the Runtime API with it"
        )
    try:
        settings = read_node_settings(
            parse_config_args([flower.node_config] if flower.node_config else None)
        )
    except (ProtocolError, ValueError, OSError, click.ClickException) as err:
        raise LaunchError(f"--node-config: {' '.join(str(err).split())}") from None
    if settings.state_dir:
        state = Path(settings.state_dir).expanduser()
        try:
            state.mkdir(parents=True, exist_ok=True)
            probe = state / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise LaunchError(
                f"node config state-dir {state} cannot be written: {err.strerror or err}"
            ) from None


def worker_argv(flower: argparse.Namespace) -> list[str]:
    """The worker for this SuperNode's Runtime API, ending with it."""
    host = "127.0.0.1" if flower.host in ("0.0.0.0", "") else flower.host
    argv = [
        sys.executable,
        "-m",
        "fedwon.deploy.worker",
        "--runtime-api-address",
        address(host.strip("[]"), int(flower.port)),
        "--parent-pid",
        str(os.getpid()),
    ]
    if flower.ssl_certfile:
        argv += ["--root-certificates", flower.ssl_ca_certfile]
    return argv


class WorkerKeeper:
    """Keeps one worker running beside this SuperNode; stops it when the SuperNode exits."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.stopping = False
        self.deaths: list[float] = []
        self.process = self._start(wait=True)
        threading.Thread(target=self._keep, name="worker-keeper", daemon=True).start()

    def _start(self, wait: bool = False) -> subprocess.Popen[bytes]:
        """Start a worker; with ``wait``, return once it is warm (:class:`LaunchError` if it
        exits first)."""
        env = dict(os.environ)
        here = str(Path(__file__).resolve().parents[2])  # the fedwon this launcher runs
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        ready, ready_w = os.pipe()
        try:
            process = subprocess.Popen(
                [*self.argv, "--ready-fd", str(ready_w)],
                stdin=subprocess.DEVNULL,
                env=env,
                pass_fds=(ready_w,),
            )
            os.close(ready_w)
            if wait and not select.select([ready], [], [], READY_TIMEOUT_S)[0]:
                process.kill()
                raise LaunchError(f"the ClientApp worker was not ready after {READY_TIMEOUT_S} s")
            if wait and not os.read(ready, 1):
                raise LaunchError(
                    f"the ClientApp worker exited before it was ready (status {process.wait()}); "
                    "its error is above"
                )
        finally:
            os.close(ready)
        return process

    def _keep(self) -> None:
        while True:
            code = self.process.wait()
            if self.stopping:
                return
            now = time.monotonic()
            self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
            if code == 2 or len(self.deaths) > RESTARTS:  # 2: it refused its settings
                log(
                    ERROR,
                    "%s: the ClientApp worker exited (status %d) %d time(s) in %.0f s: "
                    "stopping the SuperNode",
                    NAME,
                    code,
                    len(self.deaths),
                    RESTART_WINDOW_S,
                )
                os.kill(os.getpid(), signal.SIGTERM)  # Flower's handlers stop the SuperNode
                return
            log(
                WARNING,
                "%s: the ClientApp worker exited (status %d): starting a new one",
                NAME,
                code,
            )
            self.process = self._start()

    def stop(self) -> None:
        self.stopping = True
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: Sequence[str] | None = None) -> None:
    from flwr.supercore.exit import add_exit_handler
    from flwr.supernode.cli.flower_supernode import flower_supernode

    ours, flower, forwarded = parse(sys.argv[1:] if argv is None else argv)
    try:
        check(ours, flower)
    except LaunchError as err:
        print(f"{NAME}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    set_poll_interval(ours.poll_interval)
    if flower.isolation == ISOLATION_MODE_PROCESS and not ours.no_worker:
        try:
            keeper = WorkerKeeper(worker_argv(flower))
        except LaunchError as err:
            print(f"{NAME}: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        add_exit_handler(keeper.stop)
        log(INFO, "%s: warm ClientApp worker ready (pid %d)", NAME, keeper.process.pid)
    sys.argv = ["flower-supernode", *forwarded]
    flower_supernode()


if __name__ == "__main__":
    main()
