"""Stopping a deployment's processes: groups, detached descendants, and stubborn ones."""

import os
import sys
import time
from pathlib import Path

from fedwon.deploy.processes import ProcessSet, marked_pids

# A child that detaches into its own session (as Flower's SuperLink does with its SuperExec)
# and ignores SIGTERM: only the marker finds it, only SIGKILL stops it.
DETACHED = """
import os, signal, subprocess, sys, time
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
print("started", flush=True)
time.sleep(600)
"""


def wait_for(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_detached_and_sigterm_ignoring_descendants(tmp_path: Path) -> None:
    with ProcessSet(grace=1.0) as processes:
        parent = processes.start("parent", [sys.executable, "-c", DETACHED], tmp_path / "p.log")
        assert wait_for(lambda: len(marked_pids(processes.id)) == 2)
        child = next(p for p in marked_pids(processes.id) if p != parent.pid)
        assert os.getsid(child) != os.getsid(parent.pid)  # out of the parent's group
    assert marked_pids(processes.id) == []
    assert parent.exit_code is not None
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text()
    assert "started" in parent.log_text()
    assert parent.log_text().startswith("$ ")  # the command line heads its log


def test_run_returns_the_exit_code_and_kills_on_timeout(tmp_path: Path) -> None:
    with ProcessSet(grace=0.5) as processes:
        code = processes.run("ok", [sys.executable, "-c", "exit(7)"], tmp_path / "a.log", 30)
        assert code == 7
        start = time.monotonic()
        code = processes.run(
            "slow", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log", 1
        )
        assert code == -9 and time.monotonic() - start < 10
        assert marked_pids(processes.id) == []


def test_environment_carries_the_marker_and_extra_entries(tmp_path: Path) -> None:
    with ProcessSet() as processes:
        show = "import os; print(os.environ['FEDWON_DEPLOY_ID'], os.environ['EXTRA'])"
        processes.run(
            "env", [sys.executable, "-c", show], tmp_path / "e.log", 30, env={"EXTRA": "x"}
        )
        assert f"{processes.id} x" in (tmp_path / "e.log").read_text()
