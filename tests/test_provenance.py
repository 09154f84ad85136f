"""The commit recorded beside generated results names this checkout's code (not ``unknown``)."""

from __future__ import annotations

import re
import subprocess

import pytest

from fedwon.run.provenance import REPO, code_commit


def test_the_commit_is_the_last_one_that_changed_the_code() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    expected = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", "fedwon", "sims", "pyproject.toml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    commit = code_commit()
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit), commit
    assert commit.removesuffix("+dirty") == expected
    assert (REPO / "pyproject.toml").is_file()  # REPO is the checkout, not the package
