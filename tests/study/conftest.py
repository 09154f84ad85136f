"""The miniature study, run once per session and shared by the runner and report tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from mini_study import MINI

from fedwon.study.runner import StudyResults, run_study


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("study-cache")


@pytest.fixture(scope="session")
def mini_results(mini_cache: Path) -> StudyResults:
    return run_study(MINI, mini_cache, command="pytest mini study")
