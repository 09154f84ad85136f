"""The Flower 1.39 command lines a deployment runs, and the small files they read.

Each function returns an ``argv`` list (no shell, so paths with spaces are safe); the flags were
checked with ``--help`` on the pinned binaries. What goes where:

- ``flower-superlink``: Fleet API (``--fleet-api-address``, SuperNodes dial it over gRPC) and the
  HTTP API (``--host``/``--port``, used by the ``flwr`` CLI and the ServerApp);
- ``flower-supernode``: dials the Fleet API, serves its own Runtime API on ``--port`` (its
  ClientApps talk to it), reads its ``--node-config`` from a TOML file; ``--isolation
  subprocess`` starts one ClientApp process per message, ``process`` leaves that to fedwon's
  warm worker. :func:`launcher_argv` runs it through :mod:`fedwon.deploy.supernode`, which adds
  the worker and sets the poll interval;
- ``flwr run APP CONNECTION``: the connection is a ``[superlink.<name>]`` table in
  ``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import tomli_w

from fedwon.deploy.certs import Certificates
from fedwon.deploy.errors import DeployError

Scalar = bool | int | float | str
SUPERNODE_POLL_S = 0.5  # fedwon's SuperNode poll interval (Flower's own: 3 s; deploy.supernode)


def flower_bin(name: str) -> str:
    """The Flower executable installed next to this Python (the pinned one), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeployError(f"{name} not found next to {sys.executable} or on PATH; install flwr")
    return found


def address(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals bracketed as gRPC and the CLI expect."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def superlink_argv(
    host: str,
    api_port: int,
    fleet_port: int,
    certificates: Certificates | None = None,
    database: Path | None = None,
    supernode_auth: bool = False,
) -> list[str]:
    """A SuperLink with runtime dependency installation off (no network at run time).

    Authentication needs TLS (Flower refuses it otherwise) and, here, a database file so the
    registered keys live as long as the SuperLink does.
    """
    if supernode_auth and certificates is None:
        raise DeployError("SuperNode authentication needs TLS: add --tls to --auth")
    argv = [
        flower_bin("flower-superlink"),
        "--disable-runtime-dependency-installation",
        "--fleet-api-address",
        address(host, fleet_port),
        "--host",
        host,
        "--port",
        str(api_port),
    ]
    if certificates is None:
        argv.append("--insecure")
    else:
        argv += [
            "--ssl-ca-certfile",
            str(certificates.ca_cert),
            "--ssl-certfile",
            str(certificates.server_cert),
            "--ssl-keyfile",
            str(certificates.server_key),
        ]
    if database is not None:
        argv += ["--database", str(database)]
    if supernode_auth:
        argv.append("--enable-supernode-auth")
    return argv


def supernode_argv(
    superlink: str,
    runtime_port: int,
    node_config: Path,
    root_certificates: Path | None = None,
    private_key: Path | None = None,
    host: str = "127.0.0.1",
    isolation: str = "subprocess",
) -> list[str]:
    """A SuperNode dialling ``superlink`` (Fleet API ``host:port``) with its node config file."""
    argv = [
        flower_bin("flower-supernode"),
        "--superlink",
        superlink,
        "--node-config",
        str(node_config),
        "--host",
        host,
        "--port",
        str(runtime_port),
        "--isolation",
        isolation,
    ]
    argv += (
        ["--insecure"]
        if root_certificates is None
        else ["--root-certificates", str(root_certificates)]
    )
    if private_key is not None:
        argv += ["--auth-supernode-private-key", str(private_key)]
    return argv


def launcher_argv(supernode: list[str], poll_interval: float) -> list[str]:
    """``supernode`` (:func:`supernode_argv`) run by :mod:`fedwon.deploy.supernode`: in this
    Python, polling every ``poll_interval`` seconds, with a warm worker if ``--isolation
    process``."""
    return [
        sys.executable,
        "-m",
        "fedwon.deploy.supernode",
        "--poll-interval",
        f"{poll_interval:g}",
        *supernode[1:],
    ]


def flwr_run_argv(app_dir: Path, connection: str, run_config: Path) -> list[str]:
    """``flwr run`` streaming the ServerApp's log; run config overrides from a TOML file.

    The CLI has no flag to disable runtime dependency installation: the environment variable
    ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` does it (see :func:`flower_env`).
    """
    return [
        flower_bin("flwr"),
        "run",
        str(app_dir),
        connection,
        "--stream",
        "--run-config",
        str(run_config),
    ]


def register_argv(public_key: Path, connection: str, name: str) -> list[str]:
    """Register a SuperNode's public key with a running SuperLink (authentication on)."""
    return [
        flower_bin("flwr"),
        "supernode",
        "register",
        str(public_key),
        connection,
        "--name",
        name,
    ]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment entries every Flower process of a deployment gets: its own home (never the
    user's ``~/.flwr``), no ``uv sync`` of app dependencies over the network, and the directory
    of the Flower binaries first on PATH (the SuperLink and SuperNodes start ``flower-superexec``,
    ``flwr-serverapp`` and ``flwr-clientapp`` by name)."""
    bin_dir = str(Path(flower_bin("flower-superlink")).parent)
    return {
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
    }


def write_connection(
    flwr_home: Path, name: str, superlink_api: str, root_certificates: Path | None = None
) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one default connection ``name``."""
    connection: dict[str, Scalar] = {"address": superlink_api}
    if root_certificates is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(root_certificates)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: connection}}))
    return path


def write_toml(path: Path, values: Mapping[str, Scalar]) -> Path:
    """A flat TOML file: how node configs and run configs are handed to Flower's binaries
    (safer than ``k=v`` strings, whose values may not contain quotes or spaces)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(dict(values)))
    return path
