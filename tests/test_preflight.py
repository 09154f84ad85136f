"""Checks before a run starts: run directory, data, model against image size, enough nodes."""

import time
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.run import Run

from fedwon.config import ConfigError, make_config
from fedwon.datasets import DataError
from fedwon.engine.executors import InProcessExecutor
from fedwon.engine.grid import FastGrid
from fedwon.run.preflight import prepare_run, wait_for_nodes

TINY: dict[str, Any] = {"model": "cnn-tiny", "train_per_domain": 20, "test_per_domain": 10}


def test_an_image_size_the_model_cannot_take_is_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"model 'cnn-tiny' cannot take the 8x8 images of image_size=8: cnn "
    ):
        prepare_run(make_config({**TINY, "image_size": 8}), None)
    prepare_run(make_config({**TINY, "image_size": 28}), None)  # its size is fine


def test_the_run_directory_is_checked_before_the_data_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    bad_data = make_config({**TINY, "dataset": "digits5"})  # needs a data_root it lacks
    with pytest.raises(ConfigError, match="is not empty"):
        prepare_run(bad_data, tmp_path)
    with pytest.raises(DataError, match="needs data_root"):
        prepare_run(bad_data, tmp_path, overwrite=True)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 1}\n'  # refused: untouched


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give only one"):
        prepare_run(make_config(TINY), tmp_path, resume=True, overwrite=True)
    with pytest.raises(ConfigError, match="no output directory"):
        prepare_run(make_config(TINY), None, resume=True)


def _grid(nodes: int) -> FastGrid:
    return FastGrid(InProcessExecutor("fedwon.client_app:app"), nodes, run=Run.create_empty(1))


def test_too_few_nodes_fail_after_the_timeout_instead_of_waiting_forever() -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"only 3 of the 5 nodes .* num-supernodes=5"):
        wait_for_nodes(_grid(3), 5, timeout_s=0.3, poll_s=0.1)
    assert time.monotonic() - start < 2
    wait_for_nodes(_grid(5), 5, timeout_s=0)


def test_the_server_app_reads_its_flwr_run_settings() -> None:
    from fedwon.server_app import settings_from_run_config

    settings = settings_from_run_config(
        {
            "recipe": "sims/cross_silo.toml",
            "set": "model=cnn-tiny num_rounds=2",
            "out": "/x",
            "resume": False,
            "overwrite": True,
            "node_timeout": 5,
            "reply_poll": 1.5,
        }
    )
    assert (settings.cfg.model.model, settings.cfg.server.num_rounds) == ("cnn-tiny", 2)
    assert (settings.out, settings.overwrite, settings.node_timeout) == ("/x", True, 5.0)
    assert settings.reply_poll == 1.5
    flat = settings_from_run_config({"model": "cnn-tiny", "overwrite": False, "out": ""})
    assert flat.cfg.model.model == "cnn-tiny" and not flat.overwrite
    with pytest.raises(ConfigError, match="node_timeout must be a number of seconds > 0"):
        settings_from_run_config({"recipe": "sims/cross_silo.toml", "node_timeout": 0})
    with pytest.raises(ConfigError, match="reply_poll must be a number of seconds in"):
        settings_from_run_config({"recipe": "sims/cross_silo.toml", "reply_poll": 0})


def test_a_server_facing_supernodes_checks_metadata_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedwon.run.preflight as preflight

    def refuse(*args: object) -> None:
        raise AssertionError("the server opened client data")

    monkeypatch.setattr(preflight, "load_federation", refuse)
    prepare_run(make_config(TINY), tmp_path / "run", load_data=False)
    assert (tmp_path / "run").is_dir()
    with pytest.raises(ConfigError, match="cannot take the 8x8 images"):
        prepare_run(make_config({**TINY, "image_size": 8}), None, load_data=False)
