"""Which directory a new run may write to, what --overwrite deletes, where a relative out goes."""

import os
from pathlib import Path

import pytest

from fedwon.config import ConfigError
from fedwon.run_dir import (
    check_new_run_dir,
    discard_unstarted_run,
    prepare_run_dir,
    resolve_out,
)


def test_a_new_or_empty_directory_is_fine(tmp_path: Path) -> None:
    check_new_run_dir(tmp_path / "new" / "nested")
    (tmp_path / "empty").mkdir()
    check_new_run_dir(tmp_path / "empty")
    prepare_run_dir(tmp_path / "new" / "nested")
    assert (tmp_path / "new" / "nested").is_dir()


def test_a_non_empty_directory_is_refused_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"is not empty \(it holds metrics.jsonl\): resume it"):
        check_new_run_dir(tmp_path)
    (tmp_path / ".hidden").write_text("")  # any file counts
    (tmp_path / "metrics.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"not empty \(it holds \.hidden\)"):
        check_new_run_dir(tmp_path)


def test_overwrite_deletes_only_a_previous_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint.old").mkdir()
    (run / "checkpoint.old" / "arrays.npz").write_bytes(b"an older checkpoint")
    for name in ("config.toml", "metrics.jsonl", "summary.json", "accuracy.png"):
        (run / name).write_text("old")
    check_new_run_dir(run, overwrite=True)
    prepare_run_dir(run, overwrite=True)
    assert run.is_dir() and not any(run.iterdir())


def test_what_fedwon_deploy_prepared_counts_as_empty_and_is_kept(tmp_path: Path) -> None:
    for name in ("logs", "deploy"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "superlink.log").write_text("...")
    check_new_run_dir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    check_new_run_dir(tmp_path, overwrite=True)
    prepare_run_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy", "logs"]


def test_overwrite_refuses_a_directory_holding_other_files(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"refusing to overwrite .*\(notes\.txt\)"):
        check_new_run_dir(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_files_and_unwritable_places_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ConfigError, match=r"run directory .*file is a file, not a directory"):
        check_new_run_dir(file)
    with pytest.raises(ConfigError, match=r"cannot be created: .*file is a file"):
        check_new_run_dir(file / "run")
    # tests may run as root, for whom every directory is writable: ask os.access what it says
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'run'} is not writable: .*{tmp_path}"):
        check_new_run_dir(tmp_path / "run")


def test_relative_out(tmp_path: Path) -> None:
    assert resolve_out("", None) is None
    assert resolve_out(str(tmp_path / "r"), None) == tmp_path / "r"
    assert resolve_out("runs/r", tmp_path) == tmp_path / "runs" / "r"
    with pytest.raises(ConfigError, match=r"out='runs/r' is a relative path.*absolute path"):
        resolve_out("runs/r", None)


def test_a_run_that_failed_before_its_first_round_leaves_nothing(tmp_path: Path) -> None:
    new = tmp_path / "new"
    prepare_run_dir(new)
    (new / "checkpoint.tmp").mkdir()  # a checkpoint the failed round began to write
    discard_unstarted_run(new, created=True)
    assert not new.exists()
    (tmp_path / "mine").mkdir()
    prepare_run_dir(tmp_path / "mine")
    discard_unstarted_run(tmp_path / "mine", created=False)
    assert (tmp_path / "mine").is_dir()  # the user's empty directory stays
    (new / "checkpoint").mkdir(parents=True)
    (new / "metrics.jsonl").write_text('{"round": 1}\n')
    discard_unstarted_run(new, created=True)
    assert (new / "metrics.jsonl").is_file()  # it recorded a round: kept to inspect or resume
