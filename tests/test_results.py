"""Run-directory pieces: metrics rows, checkpoints, summaries."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedwon.config import ConfigError, make_config
from fedwon.results import Checkpoint, RunRecorder, load_checkpoint, round_row, save_checkpoint


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
    local = ArrayRecord({"bn.weight": Array(np.array([0.5, 2.0], np.float32))})
    states = {3: RecordDict({"fedwon.local": local, "meta": ConfigRecord({"n": 7})})}
    save_checkpoint(tmp_path, Checkpoint(4, arrays, [{"round": 4}], states))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.round == 4 and ckpt.rows == [{"round": 4}]
    np.testing.assert_array_equal(ckpt.arrays["w"].numpy(), arrays["w"].numpy())
    assert ckpt.client_states is not None and list(ckpt.client_states) == [3]
    back = ckpt.client_states[3]
    np.testing.assert_array_equal(back["fedwon.local"]["bn.weight"].numpy(), [0.5, 2.0])
    assert back["meta"]["n"] == 7
    # a grid that cannot hand out states writes none, and resume can tell
    save_checkpoint(tmp_path, Checkpoint(5, arrays, []))
    assert load_checkpoint(tmp_path).client_states is None


def test_resume_refuses_a_missing_or_too_late_checkpoint(tmp_path: Path) -> None:
    cfg = make_config({"num_rounds": 2})
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        RunRecorder(tmp_path, cfg).resume()
    save_checkpoint(tmp_path, Checkpoint(5, ArrayRecord(), []))
    with pytest.raises(ConfigError, match="checkpoint is at round 5, beyond num_rounds=2"):
        RunRecorder(tmp_path, cfg).resume()


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
