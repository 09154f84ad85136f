"""Privacy tests build Flower messages outside Flower's runtime: give them a task identity."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedwon.engine.worker import task_identity


@pytest.fixture(autouse=True)
def _flower_task_identity() -> Iterator[None]:
    """Messages can only be created inside a (run, node, task) identity."""
    with task_identity(run_id=1, node_id=0):
        yield
