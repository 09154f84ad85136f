"""One writer per directory: a second process is refused by name, a killed holder frees it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from flwr.app import Context
from lock_holder import holder
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.config import ConfigError, load_config
from fedwon.run.directory import LOCK_FILE, RunDir, lock_run_dir
from fedwon.run.lock import holder_pid, lock_dir
from fedwon.simulation import run_simulation

SIMS = Path(__file__).resolve().parents[1] / "sims"
TINY = [
    "model=cnn-tiny",
    "num_rounds=1",
    "train_per_domain=20",
    "test_per_domain=10",
    "domains=mnist,usps",
    "num_clients=2",
    "engine=fast",
    "num_workers=0",
]


def test_a_second_process_is_refused_by_pid_until_the_holder_is_killed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with holder(run) as proc:
        assert holder_pid(run) == proc.pid
        with (
            pytest.raises(ConfigError, match=rf"run directory {run} is in use .*PID {proc.pid}\)"),
            lock_run_dir(run, resume=True),
        ):
            pass
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: only the kernel releases the lock
        proc.wait(timeout=30)
        assert (run / LOCK_FILE).exists()  # stale file, no lock
        with lock_run_dir(run, resume=True):
            assert holder_pid(run) == os.getpid()
    assert not (run / LOCK_FILE).exists()  # released: the file goes with the lock


def test_within_one_process_a_second_writer_is_refused_too(tmp_path: Path) -> None:
    with (
        lock_dir(tmp_path, "study cache"),
        pytest.raises(ConfigError, match=rf"study cache {tmp_path} is in use .*PID {os.getpid()}"),
        lock_dir(tmp_path, "study cache"),
    ):
        pass


def test_the_lock_file_alone_leaves_a_directory_empty(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("12345\n")  # left by a holder killed outright
    RunDir(tmp_path).check_new()  # no "not empty"
    with pytest.raises(ConfigError, match=r"run directory .*file is a file, not a directory"):
        (tmp_path / "file").write_text("x")
        with lock_run_dir(tmp_path / "file"):
            pass
    with (
        pytest.raises(ConfigError, match=r"cannot resume .*nothing: no such directory"),
        lock_run_dir(tmp_path / "nothing", resume=True),
    ):
        pass
    assert not (tmp_path / "nothing").exists()


def test_resume_while_another_process_writes_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    cfg = load_config(SIMS / "cross_silo.toml", [*TINY, "checkpoint_every=1"])
    run_simulation(cfg, run)
    before = (run / "metrics.jsonl").read_text()
    with holder(run) as proc:
        with pytest.raises(
            ConfigError, match=rf"in use by another fedwon process \(PID {proc.pid}"
        ):
            run_simulation(cfg.replace(num_rounds=2), run, resume=True)
        result = CliRunner().invoke(cli, ["run", "--resume", str(run), "--set", "num_rounds=2"])
        assert result.exit_code == 2, result.output
        error = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and f"(PID {proc.pid})" in error[0]
        # a new run into it (--overwrite) is refused by the lock too, before deleting anything
        with pytest.raises(ConfigError, match=rf"PID {proc.pid}"):
            run_simulation(cfg, run, overwrite=True)
        assert (run / "metrics.jsonl").read_text() == before
    run_simulation(cfg.replace(num_rounds=2), run, resume=True)  # the holder is gone
    assert [r["round"] for r in RunDir(run).metrics()] == [1, 2]


def test_the_server_app_under_flwr_run_takes_the_lock(tmp_path: Path) -> None:
    from fedwon.server_app import main

    run = tmp_path / "run"
    config = {"recipe": str(SIMS / "cross_silo.toml"), "set": " ".join(TINY), "out": str(run)}
    context = Context(run_id=1, node_id=0, node_config={}, state=None, run_config=config)  # type: ignore[arg-type]
    with holder(run) as proc, pytest.raises(ConfigError, match=rf"PID {proc.pid}"):
        main(None, context)  # type: ignore[arg-type]  # refused before it needs the grid
