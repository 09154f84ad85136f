"""The committed report is what the committed records say: ``docs/results.{json,md}`` rebuilt
from ``docs/study/`` alone by the command that wrote them, with ``--records-only`` (nothing
trains; a run no record answers is an error), equal the committed files — what ``make report``
does on a fresh clone.

Only the code commit may differ: it names the code the report was last written with, and code
changes since then (which this test guards) must not change a single number."""

from __future__ import annotations

import itertools
import json
import shlex
from pathlib import Path

from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.study.markdown import image_name, results_markdown
from fedwon.study.plan import FULL

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_committed_report_is_rebuilt_from_the_committed_records(tmp_path: Path) -> None:
    committed = json.loads((DOCS / "results.json").read_text())
    words = shlex.split(committed["command"])
    assert words[:2] == ["fedwon", "study"] and "--quick" not in words, words
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        [
            *words[1:],
            "--records-only",
            "--records",
            str(DOCS / "study"),
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert " 0 trained, 0 resumed, " in result.output

    rebuilt = json.loads((out / "results.json").read_text())
    assert {**rebuilt, "commit": committed["commit"]} == committed
    assert not committed["missing_runs"]
    assert (DOCS / "results.md").read_text() == results_markdown(committed)
    parts = [w for before, w in itertools.pairwise(words) if before == "--part"]
    plan = FULL.only(parts) if parts else FULL
    assert committed["plan"] == plan.name
    assert sorted(p.name for p in (DOCS / "img").glob("study_*.png")) == sorted(
        image_name(p.name) for p in plan.parts
    )
