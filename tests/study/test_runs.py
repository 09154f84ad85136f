"""The study's run cache: one directory per config, reused when finished, resumed when
interrupted, failures kept as results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedwon.run.directory import RunDir
from fedwon.simulation import run_simulation
from fedwon.study.plan import Candidate, Part
from fedwon.study.runs import RunSpec, execute, refusal, run_config, run_dir, study_file

PART = Part(
    name="mini",
    title="mini",
    recipe="cross_silo.toml",
    settings={
        "model": "cnn-tiny",
        "train_per_domain": 30,
        "test_per_domain": 10,
        "domains": "mnist,usps",
        "num_clients": 2,
        "num_rounds": 2,
        "checkpoint_every": 1,
    },
    methods=("fedbn",),
    seeds=(1,),
)


def spec(lr: float = 0.05, seed: int = 1, heldout: str = "") -> RunSpec:
    return RunSpec("mini", "fedbn", Candidate(lr), seed, "tune", heldout)


def test_config_and_directory_follow_the_spec(tmp_path: Path) -> None:
    cfg = run_config(PART, spec(heldout="usps"))
    assert (cfg.server.strategy, cfg.model.norm, cfg.train.lr, cfg.seed) == ("fedbn", "bn", 0.05, 1)
    assert (cfg.data.domains, cfg.data.num_clients) == (("mnist",), 1)  # the other domain only
    path = run_dir(tmp_path, spec(heldout="usps"), cfg)
    assert path.parent == tmp_path / "mini"
    assert path.name.startswith("fedbn-lr0.05-seed1-holdout_usps-")
    other = run_config(PART, spec(lr=0.01))
    assert run_dir(tmp_path, spec(lr=0.01), other).name.startswith("fedbn-lr0.01-seed1-")
    assert run_dir(tmp_path, spec(), run_config(PART, spec())) != path


def test_finished_runs_are_reused_and_interrupted_ones_resumed(tmp_path: Path) -> None:
    first = execute(PART, spec(), tmp_path)
    assert first.status == "trained" and first.ok and first.val is not None
    assert [r for r, _ in first.curve] == [1, 2]
    again = execute(PART, spec(), tmp_path)
    assert again.status == "cached" and again.seconds == 0.0
    assert again.test == first.test and again.val == first.val
    assert json.loads(study_file(Path(first.path)).read_text())["commit"]
    assert not (Path(first.path) / "study.json").exists()  # the run directory holds a run only

    # interrupted after round 1: the directory holds a round-1 checkpoint and no final round
    cfg = run_config(PART, spec(seed=2))
    path = run_dir(tmp_path, spec(seed=2), cfg)
    run_simulation(cfg.replace(num_rounds=1), path)
    resumed = execute(PART, spec(seed=2), tmp_path)
    assert resumed.status == "resumed" and [r["round"] for r in RunDir(path).metrics()] == [1, 2]
    fresh = execute(PART, spec(seed=2), tmp_path / "uninterrupted")
    assert fresh.status == "trained" and resumed.test == fresh.test  # resume == uninterrupted


def test_a_failed_run_is_a_result_and_is_retried_next_time_its_directory_set_aside(
    tmp_path: Path,
) -> None:
    record = execute(PART, spec(lr=1e12), tmp_path)  # every client diverges to inf/NaN
    assert record.status == "failed" and not record.ok
    assert record.error.startswith("RoundFailedError: round 1 ")
    assert "0 of 2 clients returned usable results" in record.error
    again = execute(PART, spec(lr=1e12), tmp_path)  # tried again: diverges again
    assert again.status == "failed" and again.error == record.error
    aside = Path(record.path).with_name(Path(record.path).name + ".failed-1")
    assert json.loads(study_file(aside).read_text())["failed"] == record.error  # kept


def test_a_damaged_checkpoint_is_named_then_the_run_is_trained_again(tmp_path: Path) -> None:
    cfg = run_config(PART, spec())
    path = run_dir(tmp_path, spec(), cfg)
    run_simulation(cfg.replace(num_rounds=1), path)  # interrupted after its round-1 checkpoint
    arrays = path / "checkpoint" / "arrays.npz"
    arrays.write_bytes(b"PK\x03\x04 not a zip")
    failed = execute(PART, spec(), tmp_path)
    assert failed.status == "failed"
    assert failed.error.startswith(f"checkpoint file {arrays} cannot be read (BadZipFile")
    retried = execute(PART, spec(), tmp_path)
    assert retried.status == "trained" and retried.ok
    assert [r["round"] for r in RunDir(path).metrics()] == [1, 2]
    aside = path.with_name(path.name + ".failed-1")
    assert (aside / "checkpoint" / "arrays.npz").read_bytes() == b"PK\x03\x04 not a zip"
    assert "BadZipFile" in json.loads(study_file(aside).read_text())["failed"]
    assert execute(PART, spec(), tmp_path).status == "cached"


def test_a_truncated_record_or_summary_is_a_run_not_finished(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = execute(PART, spec(), tmp_path)
    path = Path(first.path)
    summary = path / "summary.json"
    summary.write_text(summary.read_text()[:20])
    again = execute(PART, spec(), tmp_path)  # not "cached": finished from its last checkpoint
    assert again.status == "resumed" and again.test == first.test
    assert json.loads(summary.read_text())["strategy"] == "fedbn"
    record = study_file(path)
    record.write_text(record.read_text()[:15])
    third = execute(PART, spec(), tmp_path)
    assert f"{record} cannot be read (JSONDecodeError" in caplog.text
    assert third.status == "trained" and third.test == first.test  # trained again, set aside
    assert json.loads(record.read_text())["commit"] == first.commit
    assert path.with_name(path.name + ".failed-1").is_dir()


def test_refusal_is_the_configs_one_line_error() -> None:
    device = Part("d", "d", "cross_device.toml", {}, ("fedwon",), (1,))
    message = refusal(device, "fedavg")
    assert message.startswith("invalid config:") and "batch_size=1" in message
    assert "\n" not in message
    assert refusal(device, "fedwon") == ""
    with pytest.raises(KeyError, match="fedprox"):
        refusal(device, "fedprox")
