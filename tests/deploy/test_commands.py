"""Flower command lines and the files they read, checked against Flower's own parsers."""

import subprocess
import sys
from pathlib import Path

import pytest
from flwr.cli.flower_config import read_superlink_connection

from fedwon.deploy import commands
from fedwon.deploy.certs import Certificates, make_certificates
from fedwon.deploy.errors import DeployError


def test_superlink_is_insecure_only_without_certificates(tmp_path: Path) -> None:
    plain = commands.superlink_argv("127.0.0.1", 8000, 9092)
    assert "--insecure" in plain and "--disable-runtime-dependency-installation" in plain
    assert plain[plain.index("--fleet-api-address") + 1] == "127.0.0.1:9092"
    certs = Certificates.in_directory(tmp_path)
    tls = commands.superlink_argv(
        "127.0.0.1", 8000, 9092, certs, database=tmp_path / "db", supernode_auth=True
    )
    assert "--insecure" not in tls
    for flag, path in [
        ("--ssl-ca-certfile", certs.ca_cert),
        ("--ssl-certfile", certs.server_cert),
        ("--ssl-keyfile", certs.server_key),
        ("--database", tmp_path / "db"),
    ]:
        assert tls[tls.index(flag) + 1] == str(path)
    assert "--enable-supernode-auth" in tls


def test_authentication_without_tls_is_refused() -> None:
    with pytest.raises(DeployError, match="SuperNode authentication needs TLS"):
        commands.superlink_argv("127.0.0.1", 8000, 9092, supernode_auth=True)


def test_supernode_trusts_the_ca_and_signs_with_its_key(tmp_path: Path) -> None:
    plain = commands.supernode_argv("[::1]:9092", 9094, tmp_path / "n.toml")
    assert "--insecure" in plain and plain[plain.index("--superlink") + 1] == "[::1]:9092"
    secure = commands.supernode_argv(
        "127.0.0.1:9092", 9094, tmp_path / "n.toml", tmp_path / "ca.crt", tmp_path / "node-0"
    )
    assert "--insecure" not in secure
    assert secure[secure.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert secure[secure.index("--auth-supernode-private-key") + 1] == str(tmp_path / "node-0")
    assert commands.address("::1", 9092) == "[::1]:9092"


def test_supernodes_run_through_fedwons_launcher(tmp_path: Path) -> None:
    flower = commands.supernode_argv("h:2", 3, tmp_path / "n", isolation="process")
    assert flower[flower.index("--isolation") + 1] == "process"
    argv = commands.launcher_argv(flower, 0.25)
    assert argv[:5] == [sys.executable, "-m", "fedwon.deploy.supernode", "--poll-interval", "0.25"]
    assert argv[5:] == flower[1:]  # flower-supernode's own flags, unchanged


@pytest.mark.parametrize("tls", [False, True])
def test_the_connection_file_is_what_flwr_reads(
    tmp_path: Path, tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = make_certificates(tmp_path / "certs").ca_cert if tls else None
    home = tmp_path / "home"
    commands.write_connection(home, "fedwon-local", "127.0.0.1:8123", ca)
    monkeypatch.setenv("FLWR_HOME", str(home))
    connection = read_superlink_connection()  # the default one
    assert connection.name == "fedwon-local"
    assert connection.address == "127.0.0.1:8123"
    assert connection.insecure is (not tls)
    assert connection.root_certificates == (str(ca) if tls else None)


def test_flower_env_keeps_flower_out_of_the_users_home(tmp_path: Path) -> None:
    env = commands.flower_env(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path)
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["PATH"].split(":")[0] == str(Path(commands.flower_bin("flwr")).parent)


@pytest.mark.slow
def test_every_flag_used_is_in_the_pinned_binaries_help(tmp_path: Path) -> None:
    certs = Certificates.in_directory(tmp_path)
    argvs = [
        commands.superlink_argv("h", 1, 2, certs, tmp_path / "db", supernode_auth=True),
        commands.superlink_argv("h", 1, 2),
        commands.supernode_argv("h:2", 3, tmp_path / "n", tmp_path / "ca", tmp_path / "k"),
        commands.supernode_argv("h:2", 3, tmp_path / "n"),
        commands.flwr_run_argv(tmp_path, "c", tmp_path / "r.toml"),
        commands.register_argv(tmp_path / "k.pub", "c", "n"),
    ]
    helps: dict[tuple[str, ...], str] = {}
    for argv in argvs:
        words = [w for w in argv[1:3] if not w.startswith("-") and not w.startswith("/")]
        program = (argv[0], *(w for w in words if w in ("run", "supernode", "register")))
        if program not in helps:
            helps[program] = subprocess.run(
                [*program, "--help"], capture_output=True, text=True, timeout=60
            ).stdout
        for flag in (w for w in argv if w.startswith("--")):
            assert flag in helps[program], f"{flag} not in `{' '.join(program)} --help`"
