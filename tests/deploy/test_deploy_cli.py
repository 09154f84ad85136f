"""``fedwon deploy``: files for real machines, and bad input refused before anything starts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import SMALL, leftovers
from typer.testing import CliRunner

from fedwon.cli import cli

runner = CliRunner()


def test_certs_then_refusing_to_overwrite_them(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["deploy", "certs", str(tmp_path), "--host", "10.1.2.3"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {"ca.crt", "ca.key", "server.pem", "server.key"}
    assert "--ssl-certfile" in result.output and "--root-certificates" in result.output
    again = runner.invoke(cli, ["deploy", "certs", str(tmp_path)])
    assert again.exit_code == 2
    assert "already exist; choose an empty directory" in again.output
    assert len(again.output.strip().splitlines()) == 1


def test_keys_print_how_to_register_them(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["deploy", "keys", str(tmp_path), "--nodes", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "node-0",
        "node-0.pub",
        "node-1",
        "node-1.pub",
        "node-2",
        "node-2.pub",
    ]
    assert f"flwr supernode register {tmp_path / 'node-2.pub'}" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth"], "--auth needs --tls"),
        (["--nodes", "7"], "--nodes 7 does not fit partition 'domain' over the 5 domains"),
        (["--set", "lrr=0.1"], "unknown config key 'lrr'"),
        (["--rounds", "0"], "--rounds must be >= 1, got 0"),
        (["--recipe", "nope.toml"], "nope.toml"),
        (["--app-dir", "/"], "holds no Flower app"),
        (["--isolation", "thread"], "--isolation must be one of process, subprocess, got 'thread'"),
        (["--poll-interval", "0"], "--poll-interval must be a number of seconds in (0, 60], got 0"),
        (["--timeout", "0"], "--timeout must be a number of seconds > 0 (inf: no limit), got 0"),
        (["--timeout", "-5"], "--timeout must be a number of seconds > 0 (inf: no limit), got -5"),
        (
            ["--timeout", "nan"],
            "--timeout must be a number of seconds > 0 (inf: no limit), got nan",
        ),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(cli, ["deploy", "local", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_used_run_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    result = runner.invoke(cli, ["deploy", "local", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is not empty; choose a new directory" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_mid_run_stops_every_process(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "fedwon.cli", "deploy", "local", "--out", str(out)]
    for kv in SMALL:
        argv += ["--set", kv]
    # 30 rounds: with warm workers a tiny round takes ~1-3 s, and a run that ends before the
    # signal arrives (a loaded machine) would test nothing; the signal ends it in round 1 or 2
    proc = subprocess.Popen(
        [*argv, "--rounds", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"},
        # a terminal's Ctrl-C: SIGINT at its default even where this test runs in a background
        # job, whose shell made SIGINT ignored for it and so for its children (CI ran 30 rounds)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # wait until the ServerApp runs its first round
        lines.append(line)
        if "round 1/30" in line:
            break
    else:
        pytest.fail("".join(lines))
    assert leftovers(out)  # SuperLink, SuperNodes, ServerApp, ClientApps... are running
    os.kill(proc.pid, sig)
    rest, _ = proc.communicate(timeout=180)  # each process gets a grace period; a loaded CI
    said = "".join(lines) + rest
    assert proc.returncode == 130, said
    assert "interrupted: every process of the deployment was stopped" in rest, said
    deadline = time.monotonic() + 30
    while leftovers(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(out) == [], said
