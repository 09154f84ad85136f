"""Fixtures for the data tests: an isolated cache directory and a small embedded build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedwon.datasets import DomainArrays, clear_federation_cache
from fedwon.datasets.cache import CACHE_ENV
from fedwon.datasets.embedded_digits import cached_embedded_digits

SMALL_TRAIN = 120
SMALL_TEST = 60


@pytest.fixture(scope="session", autouse=True)
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every data test writes its cache under a temporary FEDWON_CACHE_DIR."""
    path = tmp_path_factory.mktemp("fedwon-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(path))
        yield path
    clear_federation_cache()


@pytest.fixture(scope="session")
def small_sizes() -> tuple[int, int]:
    """(train, test) images per domain of :func:`small_embedded`."""
    return SMALL_TRAIN, SMALL_TEST


@pytest.fixture(scope="session")
def small_embedded(data_cache_dir: Path) -> dict[str, DomainArrays]:
    """The five embedded domains at a small size, built once per session."""
    return cached_embedded_digits(SMALL_TRAIN, SMALL_TEST, seed=0)
