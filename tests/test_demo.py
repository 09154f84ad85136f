"""``make demo`` runs: its command, one round, through the same entry point the Makefile calls.

The demo itself takes minutes (8 rounds of three methods); its command-line overrides, which
the Makefile never passes, shrink it to one round on a little data so the default suite can
run it end to end: the recipe, the three methods' settings, the runs and the table.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["num_rounds=1", "train_per_domain=100", "test_per_domain=50"]


def test_the_makefile_demo_is_python_m_fedwon_demo() -> None:
    recipe = re.search(r"^demo:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe is not None and recipe.group(1) == "$(BIN)/python -m fedwon.demo"


def test_make_demo_runs_one_round_of_each_method(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fedwon.demo", *SMOKE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for method in ("fedavg", "fedbn", "fedwon"):
        assert f"{method}: 1 rounds, 5 clients" in done.stdout
        row = re.search(rf"│ {method} +│(.*)│$", done.stdout, re.MULTILINE)
        assert row is not None, done.stdout
        assert len(row.group(1).split("│")) == 6  # five domains and "all"
        summary = json.loads((tmp_path / "runs" / "demo" / method / "summary.json").read_text())
        assert summary["strategy"] == method
        assert 0.15 < summary["final"]["accuracy"] <= 1.0  # seeded 0.204-0.208, chance 0.1
    assert "compare again with: fedwon report runs/demo/*" in done.stdout
