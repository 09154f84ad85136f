"""Which code made a result: the commit recorded beside generated results (study, privacy curve).

The last commit that changed the code or recipes, not ``HEAD``: committing the generated docs
themselves must not change the commit they name.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["code_commit"]

REPO = Path(__file__).resolve().parents[2]  # the checkout: fedwon/run/provenance.py


def code_commit() -> str:
    """The last commit that changed the code or recipes (``unknown`` outside a git checkout),
    ``+dirty`` when they have uncommitted changes. Generated docs do not count, so committing
    the report does not change the commit it names."""
    paths = ["fedwon", "sims", "pyproject.toml"]
    try:
        sha = subprocess.run(
            ["git", "log", "-1", "--format=%H", "--", *paths],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")
