"""Under ``flwr run``, input fedwon refuses (a bad override, too few SuperNodes) fails the run
with fedwon's one line and Flower's "raised an exception" line, without a traceback under it;
any other exception keeps Flower's traceback."""

import io
import logging
from collections.abc import Iterator
from logging import ERROR

import pytest
from flwr.app import Context, RecordDict
from flwr.common.logger import log as flwr_log

from fedwon.config import ConfigError
from fedwon.server_app import main


@pytest.fixture
def flower_log() -> Iterator[io.StringIO]:
    """What Flower's logger prints, tracebacks included (the default formatter adds them)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_a_refused_run_fails_without_a_traceback(flower_log: io.StringIO) -> None:
    context = Context(0, 0, {}, RecordDict(), {"recipe": "sims/cross_silo.toml", "set": "lrr=1"})
    with pytest.raises(ConfigError, match="unknown config key 'lrr'") as raised:
        main(None, context)  # type: ignore[arg-type]  # refused before the grid is used
    # what Flower's runtimes do with an exception from main (flwr/simulation/app.py et al.)
    flwr_log(ERROR, "ServerApp raised an exception", exc_info=raised.value)
    assert "ServerApp raised an exception" in flower_log.getvalue()
    assert "Traceback" not in flower_log.getvalue()


def test_other_exceptions_keep_flower_s_traceback(flower_log: io.StringIO) -> None:
    try:
        raise RuntimeError("a bug")
    except RuntimeError as err:
        flwr_log(ERROR, "ServerApp raised an exception", exc_info=err)
    assert "Traceback" in flower_log.getvalue() and "RuntimeError: a bug" in flower_log.getvalue()
