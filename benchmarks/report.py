"""Writing benchmark results into docs/benchmarks.md, shared by every benchmark.

Each benchmark owns one section between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
markers; writing a section re-reads the file and replaces only that section, so benchmarks
run separately (or by different people) never erase each other's numbers.
"""

from __future__ import annotations

import platform
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """CPU model name (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_between(text: str, bounds: tuple[str, str], body: str) -> str:
    """``text`` with the content between ``bounds`` replaced (both appended if absent)."""
    start, end = bounds
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return f"{head}{start}{body}{end}{tail}"
    sep = "" if text.endswith("\n") else "\n"
    return f"{text}{sep}\n{start}{body}{end}\n"


def write_section(name: str, body: str, path: Path = DOC) -> None:
    """Replace section ``name`` of ``path`` with ``body`` (creating the file if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(replace_between(text, markers(name), body))
