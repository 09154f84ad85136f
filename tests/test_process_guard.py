"""Processes a run starts end with it: at the end of a block, and when the run is SIGKILLed."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedwon.run.process_guard import descendants, ending_started_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ROOT = Path(__file__).resolve().parents[1]
# a child that ignores SIGTERM and has a child of its own, like Ray's agents
STUBBORN = ["bash", "-c", "trap '' TERM; sleep 300 & wait"]


def _alive(pids: list[int]) -> list[int]:
    def running(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat[stat.rindex(")") + 2] != "Z"

    return [p for p in pids if running(p)]


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def test_processes_started_in_the_block_end_with_it() -> None:
    running_before = subprocess.Popen(["sleep", "60"])
    stopped: list[bool] = []
    try:
        before = set(descendants(os.getpid()))  # e.g. a guard an earlier test started
        with ending_started_processes(lambda: stopped.append(True)):
            subprocess.Popen(["bash", "-c", "sleep 300 & wait"])
            time.sleep(0.3)
            started = [p for p in descendants(os.getpid()) if p not in before]
            assert len(started) == 2
        assert stopped == [True]
        assert _alive(started) == []  # ended before the block returned
        assert set(_alive(list(before))) == before  # not ours to end
    finally:
        running_before.kill()
        running_before.wait()


def test_the_guard_ends_a_killed_process_s_children() -> None:
    script = (
        "import os, signal, subprocess, time\n"
        "from fedwon.run.process_guard import descendants, start_guard\n"
        "start_guard()\n"
        f"subprocess.Popen({STUBBORN!r}, stdout=subprocess.DEVNULL)\n"
        "subprocess.Popen(['sleep', '301'], start_new_session=True, stdout=subprocess.DEVNULL)\n"
        "time.sleep(1.5)\n"
        "print(' '.join(map(str, descendants(os.getpid()))), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    pids = [int(p) for p in proc.stdout.split()]
    assert proc.returncode == -9 and len(pids) == 4, proc.stderr  # guard, bash, 2 sleeps
    assert _wait_gone(pids, 15.0) == []


@pytest.mark.ray
def test_the_guard_ends_ray_s_processes_after_a_sigkill() -> None:
    """Ray's DashboardAgent and RuntimeEnvAgent otherwise outlive a killed driver for a
    minute or more."""
    script = (
        "import os, signal\n"
        "import ray\n"
        "from fedwon.run.process_guard import descendants, start_guard\n"
        "start_guard()\n"
        "ray.init(num_cpus=1, include_dashboard=False, logging_level='ERROR')\n"
        "ray.get(ray.remote(lambda: 1).remote())\n"
        "print(' '.join(map(str, descendants(os.getpid()))), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    pids = [int(p) for p in proc.stdout.split()]
    assert proc.returncode == -9 and len(pids) >= 5, proc.stderr  # gcs, raylet, agents, ...
    assert _wait_gone(pids, 20.0) == []
