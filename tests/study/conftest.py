"""The miniature study, run once per session and shared by the runner and report tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from mini_study import MINI

from fedwon.study.runner import StudyResults, run_study


@pytest.fixture(scope="session")
def mini_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache, records) of the miniature study."""
    root = tmp_path_factory.mktemp("study")
    return root / "cache", root / "records"


@pytest.fixture(scope="session")
def mini_results(mini_dirs: tuple[Path, Path]) -> StudyResults:
    cache, records = mini_dirs
    return run_study(MINI, cache, records=records, command="pytest mini study")
