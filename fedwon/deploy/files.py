"""Writing deployment secrets: private files readable by their owner only, never overwritten."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fedwon.deploy.errors import DeployError


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file created with mode 0600 (never world-readable, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def refuse_existing(paths: Iterable[Path]) -> None:
    """Refuse to overwrite keys: a regenerated CA or node key silently locks out deployed nodes."""
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise DeployError(
            f"{', '.join(existing)} already exist; choose an empty directory or delete them first"
        )
