"""Privacy tests build Flower messages outside Flower's runtime: give them a task identity."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedwon.engine.worker import task_identity


def pytest_configure(config: pytest.Config) -> None:
    # Opacus' RDP conversion notes when the best order is at the end of its range (tiny or huge
    # epsilons in property tests); that is expected here, not a problem to report.
    config.addinivalue_line("filterwarnings", "ignore:Optimal order is the:UserWarning")


@pytest.fixture(autouse=True)
def _flower_task_identity() -> Iterator[None]:
    """Messages can only be created inside a (run, node, task) identity."""
    with task_identity(run_id=1, node_id=0):
        yield
