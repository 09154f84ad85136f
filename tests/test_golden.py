"""Golden results: refactoring must not change what a run computes.

A fixed 2-round run per method x aggregator, and one user-level DP run, are pinned in
``tests/golden/golden.json``: every final array and every metric. On the machine kind that
recorded them (same CPU model, torch and numpy) the arrays must match **bit for bit** (a
SHA-256 over their bytes); elsewhere the last bits may move with the CPU's kernels, so the
array statistics and metrics are compared to 1e-5 instead.

Regenerate deliberately (after a change that is *meant* to change results) with
``python -m tests.test_golden``, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedwon.config import make_config
from fedwon.simulation import run_simulation
from fedwon.strategies import AGGREGATORS, METHODS

GOLDEN = Path(__file__).parent / "golden" / "golden.json"
TINY: dict[str, Any] = {
    "model": "cnn-tiny",
    "train_per_domain": 24,
    "test_per_domain": 16,
    "num_clients": 5,
    "clients_per_round": 3,
    "min_clients": 3,
    "batch_size": 8,
    "num_rounds": 2,
    "num_workers": 0,
    "checkpoint_every": 0,
}
AGGREGATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.9},
    "fedprox": {"proximal_mu": 0.1},
    "fedadam": {"server_lr": 0.01},
    "fedyogi": {"server_lr": 0.01},
    "fedadagrad": {"server_lr": 0.01},
    "lamb": {"server_lr": 0.01},
}
DP_RUN: dict[str, Any] = {
    **TINY,
    "strategy": "fedwon",
    "lr": 0.1,
    "aggregator": "lamb",
    "server_lr": 0.01,
    "dp.enabled": True,
    "dp.noise_multiplier": 0.8,
    "dp.clip_norm": 1.0,
}


def cases() -> dict[str, dict[str, Any]]:
    """Every pinned run, by name."""
    runs = {
        f"{method}-{aggregator}": {
            **TINY,
            "strategy": method,
            "lr": 0.1 if method == "fedwon" else 0.05,
            "aggregator": aggregator,
            **settings,
        }
        for method in sorted(METHODS)
        for aggregator, settings in AGGREGATOR_SETTINGS.items()
    }
    runs["dp-fedwon-lamb"] = DP_RUN
    return runs


def machine() -> str:
    """What decides the last bits: CPU model, torch and numpy builds."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} | torch {torch.__version__} | numpy {np.__version__} | {platform.machine()}"


def fingerprint(values: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The run's final arrays (hash and statistics) and its metrics rows (without times)."""
    outcome = run_simulation(make_config(values), tmp)
    arrays = {k: v.numpy() for k, v in sorted(outcome.arrays.items())}
    digest = hashlib.sha256()
    for key, array in arrays.items():
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    stats = {
        k: [float(np.sum(a, dtype=np.float64)), float(np.sum(np.abs(a), dtype=np.float64))]
        for k, a in arrays.items()
    }
    rows = [{k: v for k, v in r.items() if k != "time_s"} for r in outcome.rows]
    return {"sha256": digest.hexdigest(), "stats": stats, "rows": rows}


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_every_aggregator_is_pinned() -> None:
    """A new aggregator gets its golden run (and settings) when it is registered."""
    assert set(AGGREGATOR_SETTINGS) == set(AGGREGATORS)


@pytest.mark.parametrize("name", sorted(cases()))
def test_results_are_pinned(name: str, tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    got = fingerprint(cases()[name], tmp_path / "run")
    want = golden["runs"][name]
    if golden["machine"] == machine():
        assert got["rows"] == want["rows"], f"{name}: metrics changed"
        assert got["sha256"] == want["sha256"], f"{name}: final arrays changed (bitwise)"
    else:
        assert _close(got["rows"], want["rows"]), f"{name}: metrics changed"
        assert _close(got["stats"], want["stats"]), f"{name}: final arrays changed"


def record() -> None:
    """Write tests/golden/golden.json from the current code."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: fingerprint(v, Path(tmp) / name) for name, v in sorted(cases().items())}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({len(runs)} runs) on {machine()}", file=sys.stderr)


if __name__ == "__main__":
    record()
