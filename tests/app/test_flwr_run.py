"""``flwr run .`` runs a recipe through Flower's own CLI and SuperLink (slow: ~40 s)."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from fedwon.run.directory import RunDir
from fedwon.server_app import NODE_TIMEOUT_S, REPLY_POLL_S, RUN_KEYS

ROOT = Path(__file__).resolve().parents[2]


def kill_processes_with_env(entry: str) -> None:
    """Stop the processes started with this environment entry (and only those)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGTERM)
        except (OSError, ValueError):
            continue


@pytest.mark.slow
def test_flwr_run_writes_a_run_directory(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    out = tmp_path / "run"
    overrides = "model=cnn-tiny num_rounds=2 train_per_domain=100 test_per_domain=50 lr=0.1"
    cmd = [
        str(bin_dir / "flwr"),
        "run",
        ".",
        "--stream",
        "--federation-config",
        "num-supernodes=5",
        "--run-config",
        f"set='{overrides}' out='{out}'",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        # the local SuperLink `flwr run` starts keeps running in the background: stop it
        kill_processes_with_env(f"FLWR_HOME={tmp_path / 'flwr-home'}")
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    assert proc.returncode == 0, output[-3000:]
    rows = RunDir(out).metrics()
    assert [r["round"] for r in rows] == [1, 2]
    assert (out / "summary.json").exists()
    shutil.rmtree(tmp_path / "flwr-home", ignore_errors=True)


def test_the_app_declares_every_run_config_key_the_server_reads() -> None:
    """Flower only passes declared keys: `resume` used to be read but not declared."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == set(RUN_KEYS)  # exactly what the ServerApp reads
    assert (declared["resume"], declared["overwrite"], declared["out"]) == (False, False, "")
    assert declared["node_timeout"] == NODE_TIMEOUT_S
    assert declared["reply_poll"] == REPLY_POLL_S


def test_the_readme_flwr_command_puts_the_venv_on_path() -> None:
    """`flwr run` launches `flower-superlink` by name: without .venv/bin on PATH it fails."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("### Through Flower's CLI") :]
    assert block.index('export PATH="$PWD/.venv/bin:$PATH"') < block.index("flwr run .")
    assert "out='$PWD/" in block  # an absolute out: relative ones are refused under flwr run
