"""Writing a run directory: metrics rows, checkpoints, resume checks, summaries."""

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedwon.config import ConfigError, RunConfig, make_config
from fedwon.run.checkpoint import Checkpoint, checkpoint_round, load_checkpoint, save_checkpoint
from fedwon.run.directory import RunDir
from fedwon.run.recorder import RunRecorder, round_row

TINY: dict[str, Any] = {"model": "cnn-tiny", "num_rounds": 4, "checkpoint_every": 2}


def test_round_row_keeps_per_domain_metrics_and_nulls_non_finite_values() -> None:
    train = MetricRecord({"train_loss": math.nan, "clients": 3, "num-examples": 30})
    evaluate = MetricRecord({"accuracy": 0.5, "accuracy/svhn": 0.25, "num-examples": 40})
    row = round_row(2, train, evaluate, elapsed=1.23456, dropped=1)
    assert row == {
        "round": 2,
        "train_loss": None,
        "accuracy": 0.5,
        "clients": 3,
        "accuracy/svhn": 0.25,
        "dropped": 1,
        "time_s": 1.2346,
    }
    json.dumps(row, allow_nan=False)  # valid JSON
    assert round_row(3, None, None, 0.0, 0)["accuracy"] is None


def test_checkpoint_round_trips_arrays_rows_and_client_states(tmp_path: Path) -> None:
    arrays = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    arrays["bn.num_batches_tracked"] = Array(np.array(9, np.int64))  # 0-d, as BN has it
    local = ArrayRecord({"bn.weight": Array(np.array([0.5, 2.0], np.float32))})
    states = {3: RecordDict({"fedwon.local": local, "meta": ConfigRecord({"n": 7})})}
    save_checkpoint(tmp_path, Checkpoint(4, arrays, [{"round": 4}], states))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.round == 4 and ckpt.rows == [{"round": 4}]
    np.testing.assert_array_equal(ckpt.arrays["w"].numpy(), arrays["w"].numpy())
    counter = ckpt.arrays["bn.num_batches_tracked"].numpy()
    assert (counter.dtype, counter.shape, counter.item()) == (np.int64, (), 9)
    assert ckpt.client_states is not None and list(ckpt.client_states) == [3]
    back = ckpt.client_states[3]
    np.testing.assert_array_equal(back["fedwon.local"]["bn.weight"].numpy(), [0.5, 2.0])
    assert back["meta"]["n"] == 7
    # a grid that cannot hand out states writes none, and resume can tell
    save_checkpoint(tmp_path, Checkpoint(5, arrays, []))
    assert load_checkpoint(tmp_path).client_states is None


def _checkpointed_run(run_dir: Path, cfg: RunConfig, at_round: int) -> bytes:
    """A run directory as a run of ``cfg`` leaves it at its checkpoint; returns config.toml."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    rows = [{"round": r, "accuracy": 0.5} for r in range(1, at_round + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_checkpoint(run_dir, Checkpoint(at_round, ArrayRecord(), rows))
    return (run_dir / "config.toml").read_bytes()


def test_resume_refuses_a_missing_or_too_late_checkpoint(tmp_path: Path) -> None:
    cfg = make_config({"num_rounds": 2})
    with pytest.raises(ConfigError, match=r"holds no config\.toml: is it a fedwon run directory"):
        RunRecorder(tmp_path, cfg).resume()
    (tmp_path / "config.toml").write_text(cfg.to_toml())
    with pytest.raises(ConfigError, match=r"holds no checkpoint .*start it again with --overwrite"):
        RunRecorder(tmp_path, cfg).resume()
    written = _checkpointed_run(tmp_path, make_config({"num_rounds": 10}), at_round=5)
    with pytest.raises(ConfigError, match=r"checkpoint is at round 5, beyond num_rounds=2; give"):
        RunRecorder(tmp_path, cfg).resume()
    assert (tmp_path / "config.toml").read_bytes() == written  # nothing written when refused


@pytest.mark.parametrize(
    "change",
    [
        {"model": "cnn"},
        {"norm": "gn"},
        {"strategy": "fedbn"},
        {"dataset": "digits5"},
        {"partition": "iid"},
        {"num_clients": 10},
        {"seed": 1},
        {"image_size": 32},
        {"train_per_domain": 100},
        {"domains": "mnist"},
        {"lr": 0.5},
        {"batch_size": 16},
        {"clients_per_round": 2},
    ],
    ids=lambda change: next(iter(change)),
)
def test_resume_refuses_changes_of_what_is_trained_naming_the_key(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    stored = make_config(TINY)
    written = _checkpointed_run(tmp_path, stored, at_round=2)
    key, value = next(iter(change.items()))
    with pytest.raises(ConfigError, match=rf"cannot resume .*: {key}=.*→{value!r} would change"):
        RunRecorder(tmp_path, stored.replace(**change)).resume()
    assert (tmp_path / "config.toml").read_bytes() == written
    assert len(RunDir(tmp_path).metrics()) == 2


def test_resume_accepts_changes_of_where_and_how_often(tmp_path: Path) -> None:
    stored = make_config({**TINY, "norm": "auto"})
    _checkpointed_run(tmp_path, stored, at_round=2)
    cfg = stored.replace(
        num_rounds=8,
        eval_every=2,
        checkpoint_every=1,
        engine="flower",
        num_workers=3,
        device="cpu",
        norm="bn",  # what "auto" resolves to for fedavg: the same model
    )
    assert RunDir(tmp_path).check_resumable(cfg) == 2
    assert RunRecorder(tmp_path, cfg).resume().round == 2
    assert "num_rounds = 8" in (tmp_path / "config.toml").read_text()  # written after the checks


def test_a_crash_between_the_checkpoint_renames_resumes_from_the_newer_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = {r: ArrayRecord({"w": Array(np.full(3, r, np.float32))}) for r in (2, 4)}
    save_checkpoint(tmp_path, Checkpoint(2, arrays[2], [{"round": 2}]))
    real_rename = Path.rename

    def crash_on_the_second_rename(self: Path, target: Any) -> Any:
        if self.name == "checkpoint.tmp":
            raise KeyboardInterrupt("killed")  # killed after checkpoint -> checkpoint.old
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt, match="killed"):
        save_checkpoint(tmp_path, Checkpoint(4, arrays[4], [{"round": 4}]))
    monkeypatch.undo()
    assert not (tmp_path / "checkpoint").exists()  # both copies complete, neither in place
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.round == 4 and ckpt.rows == [{"round": 4}]
    np.testing.assert_array_equal(ckpt.arrays["w"].numpy(), np.full(3, 4, np.float32))
    assert (tmp_path / "checkpoint" / "state.json").is_file()


def test_an_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, Checkpoint(2, ArrayRecord(), [{"round": 2}]))
    (tmp_path / "checkpoint.tmp").mkdir()  # killed while writing round 4: no state.json yet
    (tmp_path / "checkpoint.tmp" / "arrays.npz").write_bytes(b"half")
    assert load_checkpoint(tmp_path).round == 2


def test_a_damaged_checkpoint_is_named_in_one_line(tmp_path: Path) -> None:
    cfg = make_config(TINY)
    _checkpointed_run(tmp_path, cfg, at_round=2)
    arrays = tmp_path / "checkpoint" / "arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:10])  # truncated: numpy raises BadZipFile
    with pytest.raises(
        ConfigError, match=rf"checkpoint file {arrays} cannot be read \(BadZipFile: .*overwrite$"
    ):
        load_checkpoint(tmp_path)
    state = tmp_path / "checkpoint" / "state.json"
    state.write_text('{"round": 2, "ro')
    with pytest.raises(ConfigError, match=rf"checkpoint file {state} cannot be read \(JSONDecode"):
        checkpoint_round(tmp_path)


def test_a_new_recorder_writes_nothing_before_its_first_round_nor_over_another_run(
    tmp_path: Path,
) -> None:
    cfg = make_config({"num_rounds": 1, "checkpoint_every": 0})
    recorder = RunRecorder(tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()
    recorder.record(1, ArrayRecord(), None, None)
    assert (tmp_path / "run" / "config.toml").is_file()
    with pytest.raises(ConfigError, match=r"already holds a run \(config\.toml\)"):
        RunRecorder(tmp_path / "run", cfg).record(1, ArrayRecord(), None, None)
    assert len(RunDir(tmp_path / "run").metrics()) == 1


def test_finish_writes_summary_csv_and_plot(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, make_config({"num_rounds": 1, "checkpoint_every": 0}))
    rec.record(
        1,
        ArrayRecord(),
        MetricRecord({"train_loss": 1.0, "clients": 2}),
        MetricRecord({"accuracy": 0.75, "accuracy/a": 0.75, "num-examples": 4}),
    )
    summary = rec.finish()
    assert summary["final"] == {
        "round": 1,
        "accuracy": 0.75,
        "loss": None,
        "per_domain": {"a": 0.75},
    }
    assert (tmp_path / "per_domain.csv").read_text().splitlines() == [
        "domain,accuracy",
        "a,0.75",
        "all,0.75",
    ]
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["strategy"] == "fedavg"


def test_a_checkpoint_keeps_0d_arrays_0d(tmp_path: Path) -> None:
    """A BN counter restored as shape (1,) would not fit the clients' 0-d replies."""
    arrays = ArrayRecord({"n": Array(np.array(7, np.int64)), "w": Array(np.ones((2, 2), "f4"))})
    save_checkpoint(tmp_path, Checkpoint(1, arrays, [{"round": 1}]))
    back = load_checkpoint(tmp_path).arrays
    assert back["n"].numpy().shape == () and back["n"].numpy().dtype == np.int64
    assert back["w"].numpy().shape == (2, 2)
