"""One run directory: its status, summary, metrics and reuse answer; which directory a new run
may write to, what --overwrite deletes, where a relative out goes."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord

from fedwon.config import ConfigError, RunConfig, make_config
from fedwon.run.checkpoint import Checkpoint, save_checkpoint
from fedwon.run.directory import RunDir, RunStatus, resolve_out

TINY: dict[str, Any] = {"model": "cnn-tiny", "num_rounds": 4, "checkpoint_every": 2}


def test_a_new_or_empty_directory_is_fine(tmp_path: Path) -> None:
    RunDir(tmp_path / "new" / "nested").check_new()
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").check_new()
    RunDir(tmp_path / "new" / "nested").prepare()
    assert (tmp_path / "new" / "nested").is_dir()


def test_a_non_empty_directory_is_refused_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"is not empty \(it holds metrics.jsonl\): resume it"):
        RunDir(tmp_path).check_new()
    (tmp_path / ".hidden").write_text("")  # any file counts
    (tmp_path / "metrics.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"not empty \(it holds \.hidden\)"):
        RunDir(tmp_path).check_new()


def test_overwrite_deletes_only_a_previous_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint.old").mkdir()
    (run / "checkpoint.old" / "arrays.npz").write_bytes(b"an older checkpoint")
    for name in ("config.toml", "metrics.jsonl", "summary.json", "accuracy.png"):
        (run / name).write_text("old")
    RunDir(run).check_new(overwrite=True)
    RunDir(run).prepare(overwrite=True)
    assert run.is_dir() and not any(run.iterdir())


def test_what_fedwon_deploy_prepared_counts_as_empty_and_is_kept(tmp_path: Path) -> None:
    for name in ("logs", "deploy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "superlink.log").write_text("...")
    RunDir(tmp_path).check_new()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    RunDir(tmp_path).check_new(overwrite=True)
    RunDir(tmp_path).prepare(overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy", "logs"]


def test_overwrite_refuses_a_directory_holding_other_files(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"refusing to overwrite .*\(notes\.txt\)"):
        RunDir(tmp_path).check_new(overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_files_and_unwritable_places_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigError, match=r"run directory .*file is a file, not a directory"):
        RunDir(file).check_new()
    with pytest.raises(ConfigError, match=r"cannot be created: .*file is a file"):
        RunDir(file / "run").check_new()
    # tests may run as root, for whom every directory is writable: ask os.access what it says
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'run'} is not writable: .*{tmp_path}"):
        RunDir(tmp_path / "run").check_new()


def test_relative_out(tmp_path: Path) -> None:
    assert resolve_out("", None) is None
    assert resolve_out(str(tmp_path / "r"), None) == tmp_path / "r"
    assert resolve_out("runs/r", tmp_path) == tmp_path / "runs" / "r"
    with pytest.raises(ConfigError, match=r"out='runs/r' is a relative path.*absolute path"):
        resolve_out("runs/r", None)


def test_a_run_that_failed_before_its_first_round_leaves_nothing(tmp_path: Path) -> None:
    new = tmp_path / "new"
    RunDir(new).prepare()
    (new / "checkpoint.tmp").mkdir()  # a checkpoint the failed round began to write
    RunDir(new).discard_unstarted(created=True)
    assert not new.exists()
    (tmp_path / "mine").mkdir()
    RunDir(tmp_path / "mine").prepare()
    RunDir(tmp_path / "mine").discard_unstarted(created=False)
    assert (tmp_path / "mine").is_dir()  # the user's empty directory stays
    (new / "checkpoint").mkdir(parents=True)
    (new / "metrics.jsonl").write_text('{"round": 1}\n')
    RunDir(new).discard_unstarted(created=True)
    assert (new / "metrics.jsonl").is_file()  # it recorded a round: kept to inspect or resume


def _checkpointed_run(run_dir: Path, cfg: RunConfig, at_round: int) -> None:
    """A run directory as a run of ``cfg`` leaves it at its checkpoint of ``at_round``."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    rows = [{"round": r, "accuracy": 0.5} for r in range(1, at_round + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_checkpoint(run_dir, Checkpoint(at_round, ArrayRecord(), rows))


def test_metrics_skip_a_truncated_last_line_and_name_a_broken_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n{"round": 2, "acc')
    assert RunDir(tmp_path).metrics() == [{"round": 1, "accuracy": 0.5}]
    assert "incomplete last line" in caplog.text
    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(ConfigError, match=r"metrics\.jsonl line 2 is not valid JSON"):
        RunDir(tmp_path).metrics()
    with pytest.raises(FileNotFoundError, match=r"metrics\.jsonl not found: is .* a fedwon run"):
        RunDir(tmp_path / "missing").metrics()


def test_status_new_unfinished_budget_stopped_finished_or_broken_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = RunDir(tmp_path)
    assert run.status() is RunStatus.NEW and RunDir(tmp_path / "missing").status() is RunStatus.NEW
    _checkpointed_run(tmp_path, make_config(TINY), at_round=2)
    assert run.summary() is None
    assert run.status() is RunStatus.UNFINISHED
    assert run.read().note() == "unfinished: round 2 of 4"
    stopped = {"strategy": "fedwon", "privacy": {"epsilon": 3.9, "stopped_by_budget": True}}
    run.summary_file.write_text(json.dumps(stopped))
    assert run.summary() == stopped
    assert run.status() is RunStatus.BUDGET_STOPPED
    assert run.read().note() == "stopped at the privacy budget after round 2 of 4"
    _checkpointed_run(tmp_path, make_config(TINY), at_round=4)
    run.summary_file.write_text('{"strategy": "fedw')  # truncated
    assert run.summary() is None
    assert f"{run.summary_file} cannot be read (JSONDecodeError" in caplog.text
    assert run.status() is RunStatus.UNFINISHED  # a broken summary: not finished
    assert run.read().note() == "unfinished: round 4 of 4, summary.json unreadable"
    run.summary_file.unlink()
    assert run.status() is RunStatus.UNFINISHED  # every round, but no summary yet
    run.summary_file.write_text(json.dumps({"strategy": "fedwon"}))
    assert run.status() is RunStatus.FINISHED and run.read().note() == ""
    (tmp_path / "config.toml").unlink()
    assert run.read().note() == "unfinished: round 4 of ?"  # no config: rounds unknown


def test_reuse_is_the_one_answer_cached_resume_or_new(tmp_path: Path) -> None:
    cfg = make_config(TINY)
    run = RunDir(tmp_path / "run")
    assert run.reuse(cfg) == "new"  # nothing there
    _checkpointed_run(run.path, cfg, at_round=2)
    assert run.reuse(cfg) == "resume"
    assert run.reuse(cfg.replace(num_rounds=6)) == "resume"  # more rounds: continue it
    assert run.reuse(cfg.replace(num_rounds=1)) == "new"  # its checkpoint is beyond them
    assert run.reuse(cfg.replace(model="cnn")) == "new"
    _checkpointed_run(run.path, cfg, at_round=4)
    assert run.reuse(cfg) == "resume"  # every round but no summary: finish it from round 4
    run.summary_file.write_text(json.dumps({"strategy": "fedwon"}))
    assert run.reuse(cfg) == "cached"
    assert run.reuse(cfg.replace(num_rounds=6)) == "resume"  # finished, but for fewer rounds
    run.summary_file.write_text("{")
    assert run.reuse(cfg) == "resume"  # a broken summary is not finished
    (run.path / "checkpoint" / "state.json").write_text("{")
    with pytest.raises(ConfigError, match=r"checkpoint file .*state\.json cannot be read"):
        run.reuse(cfg)
