"""Docs and docstrings point only at files that exist: a moved or deleted module must not
leave a newcomer following a dead path."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATH = re.compile(
    r"(?<![\w/.])((?:fedwon|tests|benchmarks|sims|docs)/[\w./-]+\.(?:py|md|toml|json))"
)


def referenced_paths() -> dict[str, list[str]]:
    """Repository paths named in the package's sources, the docs and the README."""
    sources = [*ROOT.glob("fedwon/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    found: dict[str, list[str]] = {}
    for source in sources:
        for match in PATH.finditer(source.read_text()):
            found.setdefault(match.group(1), []).append(str(source.relative_to(ROOT)))
    return found


def test_every_path_named_in_docs_and_code_exists() -> None:
    found = referenced_paths()
    assert "fedwon/config.py" in found  # the pattern finds what it should
    missing = {path: where for path, where in found.items() if not (ROOT / path).exists()}
    assert not missing, f"paths named but not in the repository: {missing}"
