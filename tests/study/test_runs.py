"""The study's runs: one directory per run key, resumed from rung to rung, recorded after each
stop; a record answers without training; failures kept as results or retried."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from fedwon.run.directory import RunDir
from fedwon.simulation import run_simulation
from fedwon.study.part import Candidate, Part
from fedwon.study.records import MissingRecord, RecordStore, key_values
from fedwon.study.runs import (
    RunSpec,
    drop_checkpoint,
    execute,
    refusal,
    run_config,
    run_key,
    study_file,
)

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
        "eval_every": 2,
        "checkpoint_every": 1,
    },
    methods=("fedbn",),
    seeds=(1,),
)


def spec(lr: float = 0.03, seed: int = 1, heldout: str = "") -> RunSpec:
    return RunSpec("mini", "fedbn", Candidate(lr), seed, "tune", heldout)


def rows(path: Path) -> list[dict[str, object]]:
    """A run's metrics rows without wall-clock seconds (the only field allowed to differ)."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in RunDir(path).metrics()]


def test_config_and_key_follow_the_spec_but_not_the_rounds() -> None:
    cfg = run_config(PART, spec(heldout="usps"))
    assert (cfg.server.strategy, cfg.model.norm, cfg.train.lr, cfg.seed) == ("fedbn", "bn", 0.03, 1)
    assert (cfg.data.domains, cfg.data.num_clients) == (("mnist",), 1)  # the other domain only
    key = run_key(spec(heldout="usps"), cfg)
    assert key.startswith("mini/fedbn-lr0.03-seed1-holdout_usps-")
    one = run_config(PART, spec(), rounds=1)
    assert one.server.num_rounds == 1
    assert run_key(spec(), one) == run_key(
        spec(), run_config(PART, spec())
    )  # same run, rung to rung
    assert run_key(spec(), one) != run_key(spec(lr=0.1), run_config(PART, spec(lr=0.1)))
    assert run_key(spec(), one) != run_key(spec(), one.replace(eval_every=1))  # another record
    assert run_key(spec(), one) == run_key(spec(), one.replace(num_workers=0))  # where it ran


def test_a_run_is_resumed_rung_to_rung_recorded_and_then_answered_by_its_record(
    tmp_path: Path,
) -> None:
    """Rung 1, then rung 2 resumed from rung 1's checkpoint: the same training as a straight
    run to 2 (resuming with a raised num_rounds is bit-identical), validated at each stop,
    recorded; asked again, the record answers and nothing trains."""
    store = RecordStore(tmp_path / "records")
    first = execute(PART, spec(), tmp_path / "cache", store, (1,))
    assert first.status == "trained" and first.ok and set(first.val) == {1}
    second = execute(PART, spec(), tmp_path / "cache", store, (2,))
    assert second.status == "resumed" and set(second.val) == {1, 2}
    assert second.key == first.key
    straight = execute(PART, spec(), tmp_path / "straight", RecordStore(tmp_path / "r2"), (2,))
    assert straight.status == "trained"
    path = tmp_path / "cache" / first.key
    assert rows(path)[-1] == rows(tmp_path / "straight" / straight.key)[-1]
    assert second.test == straight.test and second.val[2] == straight.val[2]
    record = store.path(first.key)
    assert sorted(p.name for p in record.iterdir()) == [
        "config.toml",
        "metrics.jsonl",
        "study.json",
        "summary.json",
    ]  # no checkpoint in a record
    info = json.loads((record / "study.json").read_text())
    assert info["rounds"] == 2 and set(info["val"]) == {"1", "2"} and info["commit"]
    again = execute(PART, spec(), tmp_path / "cache", store, (1,))
    assert again.status == "recorded" and again.seconds == 0.0 and again.val == second.val
    # what the rung asked for shows, not the record's last round
    assert again.test == first.test and again.curve == first.curve
    assert [r for r, _ in first.curve] == [1] and [r for r, _ in second.curve] == [1, 2]


def test_a_record_without_its_checkpoint_is_trained_again_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A study cut short on another machine: the records reached rung 1, no cache here. Rung 2
    trains from scratch (said in a warning) and gives what a straight run gives."""
    store = RecordStore(tmp_path / "records")
    execute(PART, spec(), tmp_path / "elsewhere", store, (1,))
    with caplog.at_level(logging.WARNING):
        later = execute(PART, spec(), tmp_path / "fresh", store, (2,))
    assert later.status == "trained" and set(later.val) == {1, 2}
    assert "recorded up to round 1" in caplog.text and "from the start to round 2" in caplog.text
    straight = execute(PART, spec(), tmp_path / "s", RecordStore(tmp_path / "r2"), (2,))
    assert later.test == straight.test


def test_records_only_answers_from_records_and_names_a_run_they_do_not_answer(
    tmp_path: Path,
) -> None:
    """``--records-only``: what the records hold is read back; a rung beyond them, or a run
    without one, is an error naming the run and why, and nothing trains or is written."""
    store = RecordStore(tmp_path / "records")
    first = execute(PART, spec(), tmp_path / "elsewhere", store, (1,))
    only = RecordStore(tmp_path / "records", train=False)
    again = execute(PART, spec(), tmp_path / "fresh", only, (1,))
    assert again.status == "recorded" and again.test == first.test
    with pytest.raises(
        MissingRecord,
        match=rf"run {first.key} is needed at round 2, but its "
        "record reaches round 1 under .*records; run the study without",
    ):
        execute(PART, spec(), tmp_path / "fresh", only, (1, 2))
    with pytest.raises(MissingRecord, match="is needed at round 1, but there is no record"):
        execute(PART, spec(lr=0.2), tmp_path / "fresh", only, (1,))
    assert not (tmp_path / "fresh").exists()
    kept = store.load(first.key)
    assert kept is not None and kept.rounds == 1  # the record untouched


def test_a_run_whose_checkpoint_was_dropped_is_trained_again_when_its_record_is_gone(
    tmp_path: Path,
) -> None:
    """A done part's checkpoints are dropped; if its record then cannot answer (deleted here),
    the finished-looking run directory cannot be evaluated: it is trained again, not a crash."""
    store = RecordStore(tmp_path / "records")
    first = execute(PART, spec(), tmp_path / "cache", store, (2,))
    drop_checkpoint(tmp_path / "cache", first.key)
    assert not (tmp_path / "cache" / first.key / "checkpoint").exists()
    shutil.rmtree(store.path(first.key))
    again = execute(PART, spec(), tmp_path / "cache", store, (2,))
    assert again.status == "trained" and again.ok and again.test == first.test


def test_a_diverged_run_is_a_recorded_result_never_retried(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records")
    record = execute(PART, spec(lr=1e12), tmp_path, store, (1,))  # every client diverges
    assert record.status == "failed" and not record.ok and record.val_at(1) is None
    assert record.error.startswith("RoundFailedError: round 1 ")
    assert "0 of 2 clients returned usable results" in record.error
    again = execute(PART, spec(lr=1e12), tmp_path, store, (1,))
    assert again.status == "failed" and again.error == record.error and again.seconds == 0.0
    assert record.diverged and again.diverged  # a result: the report shows it in its grid
    info = json.loads((store.path(record.key) / "study.json").read_text())
    assert info["failed"] == {"rounds": 1, "error": record.error}


def test_a_damaged_checkpoint_is_named_then_the_run_is_trained_again(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records")
    cfg = run_config(PART, spec())
    path = tmp_path / run_key(spec(), cfg)
    run_simulation(cfg.replace(num_rounds=1), path)  # interrupted after its round-1 checkpoint
    arrays = path / "checkpoint" / "arrays.npz"
    arrays.write_bytes(b"PK\x03\x04 not a zip")
    failed = execute(PART, spec(), tmp_path, store, (2,))
    assert failed.status == "failed" and not failed.diverged
    assert failed.error.startswith(f"checkpoint file {arrays} cannot be read (BadZipFile")
    assert not store.path(failed.key).exists()  # an accident, not a result: not recorded
    retried = execute(PART, spec(), tmp_path, store, (2,))
    assert retried.status == "trained" and retried.ok
    assert [r["round"] for r in RunDir(path).metrics()] == [1, 2]
    aside = path.with_name(path.name + ".failed-1")
    assert (aside / "checkpoint" / "arrays.npz").read_bytes() == b"PK\x03\x04 not a zip"
    assert "BadZipFile" in json.loads(study_file(aside).read_text())["failed"]
    assert execute(PART, spec(), tmp_path, store, (2,)).status == "recorded"


def test_a_record_written_before_a_key_existed_still_answers(tmp_path: Path) -> None:
    """A key added to fedwon later (here: its config line deleted from a record, as an older
    fedwon wrote it) leaves the run key and the record's answer alone while the new key sits at
    its default; set away from its default, the run is another one."""
    store = RecordStore(tmp_path / "records")
    first = execute(PART, spec(), tmp_path / "cache", store, (2,))
    assert "participation" not in key_values(run_config(PART, spec()))  # at its default
    config = store.path(first.key) / "config.toml"
    lines = config.read_text().splitlines(keepends=True)
    config.write_text("".join(line for line in lines if not line.startswith("participation")))
    shutil.rmtree(tmp_path / "cache")  # only the record can answer
    again = execute(PART, spec(), tmp_path / "cache", store, (2,))
    assert again.status == "recorded" and again.key == first.key and again.test == first.test
    cyclic = run_config(PART, spec()).replace(participation="cyclic")
    assert run_key(spec(), cyclic) != first.key


def test_a_damaged_record_is_one_warning_and_the_run_is_recorded_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path / "records")
    first = execute(PART, spec(), tmp_path / "cache", store, (2,))
    info = store.path(first.key) / "study.json"
    info.write_text(info.read_text()[:15])
    again = execute(PART, spec(), tmp_path / "cache", store, (2,))
    assert f"record {store.path(first.key)} cannot be read (JSONDecodeError" in caplog.text
    assert again.status == "cached" and again.test == first.test  # the cache still had it
    assert json.loads(info.read_text())["rounds"] == 2


def test_refusal_is_the_configs_one_line_error() -> None:
    device = Part("d", "d", "cross_device.toml", {"num_rounds": 2}, ("fedwon",), (1,))
    message = refusal(device, "fedavg")
    assert message.startswith("invalid config:") and "batch_size=1" in message
    assert "\n" not in message
    assert refusal(device, "fedwon") == ""
    with pytest.raises(KeyError, match="fedprox"):
        refusal(device, "fedprox")
