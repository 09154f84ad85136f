"""A whole federation on this machine: a SuperLink and N SuperNodes on loopback, one run.

``fedwon deploy local`` is the one-machine trial of a real deployment: the same processes,
flags, certificates and keys as on real machines (see docs/deployment.md), with free ports so
two trials can run side by side. Layout of the run directory ``DIR``:

- the results the ServerApp writes (``summary.json``, ``metrics.jsonl``, ... as ``fedwon run``);
- ``logs/``: one log per process (``superlink.log``, ``supernode-<i>.log``, ``flwr-run.log`` with
  the ServerApp's output, ``register-node-<i>.log``);
- ``deploy/``: what the processes read: ``certs/``, ``keys/``, ``nodes/node-<i>.toml`` (node
  configs), ``nodes/node-<i>-state/`` (each node's copy of its client's state,
  :mod:`fedwon.clients.node_state`), ``recipe.toml`` (the resolved run config),
  ``run-config.toml``, each process's ``FLWR_HOME`` under ``home/``.

Each SuperNode runs through :mod:`fedwon.deploy.supernode`: with ``isolation="process"`` (the
default) one warm worker per node runs every message (:mod:`fedwon.deploy.worker`); with
``"subprocess"`` Flower starts a ``flwr-clientapp`` process per message. Every process is
stopped when the run ends, fails, times out or is interrupted.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from fedwon.config import RunConfig, load_config
from fedwon.deploy import commands, diagnose
from fedwon.deploy.certs import Certificates, make_certificates
from fedwon.deploy.commands import SUPERNODE_POLL_S
from fedwon.deploy.errors import DeployError, check_seconds
from fedwon.deploy.keys import NodeKey, make_node_keys
from fedwon.deploy.network import LOOPBACK, free_ports, wait_listening
from fedwon.deploy.plan import Scalar, fit_to_nodes, node_config
from fedwon.deploy.processes import Process, ProcessSet
from fedwon.protocol import NODE_STATE_DIR
from fedwon.run.directory import LOCK_FILE, Row, RunDir
from fedwon.run.lock import lock_dir
from fedwon.run.preflight import prepare_run

APP_DIR = Path(__file__).resolve().parents[2]  # the checkout: pyproject.toml declares the app
DEFAULT_RECIPE = APP_DIR / "sims" / "cross_silo.toml"
CONNECTION = "fedwon-local"
POLL_S = 0.5
ISOLATIONS = ("process", "subprocess")  # fedwon's warm worker | a process per message (Flower's)

Event = Callable[[str], None]


@dataclass
class Node:
    """A started SuperNode; ``required``: the run cannot start without it. Once it has joined,
    its exit is reported once and the rounds go on with the others (the server samples the
    connected nodes, see ``round_timeout``); the run stops only if the server then waits for
    nodes that will not come."""

    name: str
    process: Process
    required: bool = True
    warned: bool = False


@dataclass
class LocalResult:
    """A finished local deployment: where it wrote, what it measured."""

    out: Path
    summary: dict[str, Any]
    rows: list[Row]
    wall_s: float  # from starting the SuperLink until the run finished (start-up included)
    run_s: float  # `flwr run` alone: building the app bundle, the ServerApp, all rounds
    ports: list[int] = field(default_factory=list)  # all freed again when this is returned
    changes: dict[str, Any] = field(default_factory=dict)  # what was set to fit N nodes

    @property
    def round_s(self) -> list[float]:
        """Seconds per round as the ServerApp measured them."""
        return [float(r["time_s"]) for r in self.rows if "time_s" in r]


class LocalFederation:
    """A SuperLink and SuperNodes on loopback; a context manager that always stops them."""

    def __init__(
        self,
        root: Path,
        *,
        tls: bool = False,
        auth: bool = False,
        grace: float = 5.0,
        isolation: str = "process",
        poll_interval: float = SUPERNODE_POLL_S,
        app_dir: Path = APP_DIR,
    ) -> None:
        check_security(tls, auth)
        check_isolation(isolation, poll_interval)
        self.isolation, self.poll_interval = isolation, poll_interval
        self.node_env = {"PYTHONPATH": python_path(app_dir)}
        self.root = root
        self.logs = root / "logs"
        self.work = root / "deploy"
        self.tls, self.auth = tls, auth
        self.host = LOOPBACK
        self.processes = ProcessSet(grace=grace)
        self.api_port, self.fleet_port = free_ports(2, self.host)
        self.ports = [self.api_port, self.fleet_port]  # every port a process here listens on
        self.certificates: Certificates | None = (
            make_certificates(self.work / "certs") if tls else None
        )
        self.superlink: Process | None = None
        self.flwr_run: Process | None = None
        self.nodes: list[Node] = []
        self.cli_env = commands.flower_env(self.work / "home" / "cli")
        commands.write_connection(
            self.work / "home" / "cli",
            CONNECTION,
            commands.address(self.host, self.api_port),
            self.certificates.ca_cert if self.certificates else None,
        )

    # ---- starting -------------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until both its APIs accept connections."""
        log = self.logs / "superlink.log"
        argv = commands.superlink_argv(
            self.host,
            self.api_port,
            self.fleet_port,
            self.certificates,
            database=self.work / "superlink.db" if self.auth else None,
            supernode_auth=self.auth,
        )
        env = commands.flower_env(self.work / "home" / "superlink")
        superlink = self.superlink = self.processes.start("superlink", argv, log, env=env)
        deadline = time.monotonic() + timeout
        for port in (self.api_port, self.fleet_port):
            alive = lambda: superlink.exit_code is None  # noqa: E731
            if not wait_listening(port, deadline - time.monotonic(), alive, self.host):
                state = (
                    f"it exited ({diagnose.exit_reason(superlink.exit_code)})"
                    if superlink.exit_code is not None
                    else f"nothing listens on port {port} after {timeout:.0f} s"
                )
                raise DeployError(
                    f"the SuperLink did not start: {state}: "
                    f"{diagnose.last_error(superlink.log_text())}; see {log}"
                )

    def register(self, key: NodeKey, timeout: float = 60.0) -> None:
        """Register a SuperNode's public key (authentication on): only these nodes may join."""
        log = self.logs / f"register-{key.name}.log"
        argv = commands.register_argv(key.public_key, CONNECTION, key.name)
        code = self.processes.run(f"register-{key.name}", argv, log, timeout, env=self.cli_env)
        if code != 0:
            text = log.read_text(errors="replace")
            raise DeployError(
                f"registering {key.name} failed ({diagnose.exit_reason(code)}): "
                f"{diagnose.last_error(text)}; see {log}"
            )

    def start_node(
        self,
        index: int,
        values: Mapping[str, Scalar],
        *,
        key: NodeKey | None = None,
        required: bool = True,
        root_certificates: Path | None = None,
        insecure: bool = False,
    ) -> Node:
        """Start SuperNode ``index`` with node config ``values`` and auth key ``key``.

        Its state directory is ``deploy/nodes/node-<index>-state`` unless ``values`` names one.
        It trusts the federation's CA unless given other ``root_certificates``, or dials without
        TLS if ``insecure`` (to try a misconfiguration); a node that is not ``required`` may
        exit without failing the run (a node expected to be refused, or crashing).
        """
        name = f"supernode-{index}"
        state_dir = self.work / "nodes" / f"node-{index}-state"
        values = {NODE_STATE_DIR: str(state_dir), **values}
        config_file = commands.write_toml(self.work / "nodes" / f"node-{index}.toml", values)
        port = free_ports(1, self.host)[0]
        self.ports.append(port)
        if root_certificates is None and self.certificates is not None and not insecure:
            root_certificates = self.certificates.ca_cert
        argv = commands.supernode_argv(
            commands.address(self.host, self.fleet_port),
            port,
            config_file,
            root_certificates=root_certificates,
            private_key=key.private_key if key else None,
            host=self.host,
            isolation=self.isolation,
        )
        argv = commands.launcher_argv(argv, self.poll_interval)
        env = {**commands.flower_env(self.work / "home" / name), **self.node_env}
        process = self.processes.start(name, argv, self.logs / f"{name}.log", env=env)
        node = Node(name, process, required)
        self.nodes.append(node)
        return node

    # ---- running --------------------------------------------------------------------------------
    def server_log(self) -> str:
        return self.flwr_run.log_text() if self.flwr_run else ""

    def check(self, on_event: Event | None = None) -> None:
        """Raise :class:`DeployError` once the federation can no longer finish the run."""
        if self.superlink is not None and self.superlink.exit_code is not None:
            raise DeployError(
                f"the SuperLink exited ({diagnose.exit_reason(self.superlink.exit_code)}); "
                f"see {self.superlink.log}"
            )
        for node in self.nodes:
            code, log, text = node.process.exit_code, node.process.log, node.process.log_text()
            if code is None:
                retries = diagnose.connection_retries(text)
                if node.required and retries >= diagnose.RETRIES_BEFORE_FAILING:
                    raise DeployError(diagnose.retrying(node.name, log, retries, self.tls))
            elif node.required and not diagnose.joined(text):
                raise DeployError(diagnose.supernode_exit(node.name, code, log, text))
            elif not node.warned:
                if on_event is not None:
                    on_event(diagnose.supernode_exit(node.name, code, log, text))
                node.warned = True
        # Nodes that had joined and are gone: the server will wait for them in vain. (A node
        # refused at the door never joined, and the server never counted on it.)
        dead = [
            n
            for n in self.nodes
            if n.process.exit_code is not None and diagnose.joined(n.process.log_text())
        ]
        waiting = diagnose.waiting_for_nodes(self.server_log())
        if dead and waiting is not None:
            gone = "; ".join(
                diagnose.supernode_exit(
                    n.name, n.process.exit_code or 0, n.process.log, n.process.log_text()
                )
                for n in dead
            )
            raise DeployError(
                f"the server waits for {waiting[1]} nodes but {waiting[0]} are connected: {gone}"
            )

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, Scalar],
        timeout: float,
        on_event: Event | None = None,
    ) -> float:
        """``flwr run`` the app on this federation until it ends; its duration in seconds."""
        config_file = commands.write_toml(self.work / "run-config.toml", run_config)
        argv = commands.flwr_run_argv(app_dir, CONNECTION, config_file)
        log = self.logs / "flwr-run.log"
        start = time.monotonic()
        flwr = self.flwr_run = self.processes.start("flwr-run", argv, log, env=self.cli_env)
        reported: tuple[int, int] | None = None
        while (code := flwr.exit_code) is None:
            self.check(on_event)
            now = diagnose.current_round(self.server_log())
            if now != reported and now is not None and on_event is not None:
                on_event(f"round {now[0]}/{now[1]}")
            reported = now or reported
            if time.monotonic() - start > timeout:
                where = f" in round {reported[0]} of {reported[1]}" if reported else ""
                raise DeployError(f"the run timed out after {timeout:.0f} s{where}; see {log}")
            time.sleep(POLL_S)
        text = flwr.log_text()
        if code != 0:
            raise DeployError(
                f"flwr run failed ({diagnose.exit_reason(code)}): "
                f"{diagnose.last_error(text)}; see {log}"
            )
        server_code = diagnose.logged_exit_code(text)
        if server_code is not None and server_code >= 100:  # Flower's codes < 100 are not errors
            raise DeployError(
                f"the ServerApp failed ({diagnose.exit_reason(server_code)}): "
                f"{diagnose.last_error(text)}; see {log} and the SuperNode logs beside it"
            )
        return time.monotonic() - start

    def stop(self) -> None:
        self.processes.stop()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def check_security(tls: bool, auth: bool) -> None:
    if auth and not tls:
        raise DeployError("--auth needs --tls: Flower authenticates SuperNodes only over TLS")


def check_isolation(isolation: str, poll_interval: float) -> None:
    if isolation not in ISOLATIONS:
        raise DeployError(f"--isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    check_seconds("--poll-interval", poll_interval)


def python_path(app_dir: Path) -> str:
    """The ``PYTHONPATH`` of a node: the app directory first, as ``flwr-clientapp`` puts the
    installed app bundle first (so the warm worker imports the code the bundle holds), then
    the fedwon running here, then the caller's."""
    here = str(Path(__file__).resolve().parents[2])
    parts = [str(app_dir), here, os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


def check_timeout(timeout: float) -> None:
    """Refuse, before any process starts, a timeout the run could never meet (0 or negative:
    every process would start only to be stopped) or that means nothing (NaN compares false
    with everything, so it would silently never time out). ``inf`` asks for no limit."""
    if math.isnan(timeout) or timeout <= 0:
        raise DeployError(
            f"--timeout must be a number of seconds > 0 (inf: no limit), got {timeout:g}"
        )


def check_out_dir(out: Path) -> Path:
    """The absolute run directory (the ServerApp runs elsewhere), refused if it holds files:
    the results writer appends to ``metrics.jsonl`` and would mix two runs."""
    out = out.expanduser().resolve()
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise DeployError(f"--out {out} is not empty; choose a new directory")
    return out


def check_app_dir(app_dir: Path) -> Path:
    """The directory ``flwr run`` bundles: it must declare the Flower app in pyproject.toml."""
    pyproject = app_dir / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise DeployError(
            f"{app_dir} holds no Flower app (pyproject.toml with [tool.flwr.app]): run from a "
            "checkout of fedwon or pass --app-dir"
        )
    return app_dir.resolve()


def default_out(recipe: Path, strategy: str) -> Path:
    """Where a deployment without ``--out`` writes: beside ``fedwon run``'s default runs, named
    so that a second trial never meets the first one's files."""
    return Path("runs") / f"deploy-{recipe.stem}-{strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


def deploy_local(
    out: Path | None,
    nodes: int,
    rounds: int | None = None,
    *,
    recipe: Path = DEFAULT_RECIPE,
    overrides: Sequence[str] = (),
    tls: bool = False,
    auth: bool = False,
    timeout: float = 900.0,
    app_dir: Path = APP_DIR,
    on_event: Event | None = None,
    isolation: str = "process",
    poll_interval: float = SUPERNODE_POLL_S,
    reply_poll: float | None = None,
) -> LocalResult:
    """Run ``recipe`` on a SuperLink and ``nodes`` SuperNodes on this machine; see the module.

    ``isolation``: ``process`` (a warm worker per node) or ``subprocess`` (Flower's default, a
    process per message); ``poll_interval``: seconds between a SuperNode's polls (Flower's: 3);
    ``reply_poll``: the ServerApp's run config ``reply_poll`` (default 0.2 s; Flower's: 3).
    Bad input (recipe, overrides, data, directories, flags) is refused before anything starts.
    """
    say: Event = on_event or (lambda _: None)
    check_timeout(timeout)
    check_security(tls, auth)
    check_isolation(isolation, poll_interval)
    if reply_poll is not None:
        check_seconds("reply_poll", reply_poll)
    app_dir = check_app_dir(app_dir)
    cfg, changes = fit_to_nodes(load_config(recipe, list(overrides)), nodes, rounds)
    prepare_run(cfg, None)  # fedwon run's checks (data, model input): fail here, not in N nodes
    out = check_out_dir(out or default_out(recipe, cfg.server.strategy))
    if set(changes) - {"num_clients", "num_rounds"}:
        say("fitted to the nodes: " + " ".join(f"{k}={v}" for k, v in changes.items()))
    # One launcher per directory: its own lock in deploy/ (the run directory's lock is the
    # ServerApp's, a process this one cannot hand a lock to), held until every process stopped.
    with lock_dir(out / "deploy", "deployment directory"):
        federation = LocalFederation(
            out,
            tls=tls,
            auth=auth,
            isolation=isolation,
            poll_interval=poll_interval,
            app_dir=app_dir,
        )
        extra = {} if reply_poll is None else {"reply_poll": reply_poll}
        return _deploy(federation, cfg, changes, nodes, timeout, app_dir, say, extra)


def _deploy(
    federation: LocalFederation,
    cfg: RunConfig,
    changes: dict[str, Any],
    nodes: int,
    timeout: float,
    app_dir: Path,
    say: Event,
    run_settings: Mapping[str, Scalar],
) -> LocalResult:
    """:func:`deploy_local` once its input is checked and ``out`` is locked."""
    out, tls, auth = federation.root, federation.tls, federation.auth
    resolved = commands.write_toml(out / "deploy" / "recipe.toml", cfg.to_flat())
    start = time.monotonic()
    with federation:
        federation.start_superlink()
        say(
            f"SuperLink up{' with TLS' if tls else ''}: Fleet API "
            f"{federation.host}:{federation.fleet_port}, HTTP API "
            f"{federation.host}:{federation.api_port}"
        )
        keys: list[NodeKey | None] = [None] * nodes
        if auth:
            keys = list(make_node_keys(out / "deploy" / "keys", nodes))
            for key in keys:
                assert key is not None
                federation.register(key)
            say(f"registered {nodes} SuperNode keys")
        for i in range(nodes):
            federation.start_node(i, node_config(cfg, i, nodes), key=keys[i])
        how = "a warm worker each" if federation.isolation == "process" else "a process per message"
        say(
            f"started {nodes} SuperNodes ({how}); {cfg.server.num_rounds} rounds of "
            f"{cfg.server.strategy}"
        )
        run_config = {"recipe": str(resolved), "set": "", "out": str(out), **run_settings}
        remaining = timeout - (time.monotonic() - start)
        run_s = federation.run(app_dir, run_config, remaining, say)
        wall_s = time.monotonic() - start
    run = RunDir(out)
    summary = run.summary()  # an unreadable one is a run that did not finish, as a missing one
    if summary is None:
        raise DeployError(
            f"the run ended without writing {run.summary_file}: the ServerApp failed; see "
            f"{out / 'logs' / 'flwr-run.log'} and the SuperNode logs beside it"
        )
    return LocalResult(
        out=out,
        summary=summary,
        rows=run.metrics(),
        wall_s=wall_s,
        run_s=run_s,
        ports=federation.ports,
        changes=changes,
    )
