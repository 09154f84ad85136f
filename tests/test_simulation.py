"""run_simulation's edges: checks before any engine starts, Ray stopped however the run ends,
client tracebacks kept out of the default output."""

import logging
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedwon.config import ConfigError, make_config
from fedwon.simulation import (
    ClientTracebacksToDebug,
    check_ray_address,
    ray_owned_by_this_run,
    run_simulation,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_ray_address_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match=rf"ray_address='{address}': cannot reach .*running"):
        run_simulation(make_config({"ray_address": address, "num_workers": 2}), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    check_ray_address("auto")  # left to Ray, which knows where to look


def test_ray_is_shut_down_when_a_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"initialized": False, "shutdowns": 0}
    fake_ray = SimpleNamespace(
        is_initialized=lambda: state["initialized"],
        shutdown=lambda: state.update(initialized=False, shutdowns=state["shutdowns"] + 1),
    )
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    with pytest.raises(RuntimeError, match="round failed"), ray_owned_by_this_run(make_config({})):
        state["initialized"] = True  # the engine started Ray
        raise RuntimeError("round failed")
    assert state == {"initialized": False, "shutdowns": 1}


def test_a_ray_started_before_the_run_is_left_running(monkeypatch: pytest.MonkeyPatch) -> None:
    shutdowns: list[bool] = []
    fake_ray = SimpleNamespace(is_initialized=lambda: True, shutdown=lambda: shutdowns.append(True))
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    with ray_owned_by_this_run(make_config({"engine": "flower"})):
        pass
    assert shutdowns == []


def test_flower_s_client_tracebacks_go_to_debug_level() -> None:
    record = logging.LogRecord("flwr", logging.ERROR, "/x/vce_api.py", 1, "Traceback", None, None)
    assert ClientTracebacksToDebug().filter(record) and record.levelno == logging.DEBUG
    other = logging.LogRecord("flwr", logging.ERROR, "/x/app.py", 1, "boom", None, None)
    assert ClientTracebacksToDebug().filter(other) and other.levelno == logging.ERROR
