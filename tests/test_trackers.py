"""Experiment trackers (``track``): each tool reads back what a run sent it, compared with
metrics.jsonl, and a resume continues the same tracker runs without a step twice."""

from __future__ import annotations

import json
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.config import TRACKER_NAMES, ConfigError, load_config, make_config
from fedwon.run.directory import RunDir
from fedwon.run.recorder import Row
from fedwon.run.trackers import MLFLOW_DIR, TRACKERS, check_trackers, row_metrics
from fedwon.simulation import run_simulation

SIMS = Path(__file__).resolve().parents[1] / "sims"
TINY = [
    "model=cnn-tiny",
    "train_per_domain=20",
    "test_per_domain=10",
    "domains=[mnist,usps]",
    "num_clients=2",
    "num_workers=0",
    "lr=0.05",
]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _local_trackers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults under test: no tracking server, W&B offline by fedwon's choice."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)


# ---- the key and the registry ---------------------------------------------------------------


def test_track_is_a_comma_separated_list_of_known_trackers() -> None:
    cfg = make_config({"track": " TensorBoard, mlflow,tensorboard"})
    assert cfg.output.track == ("tensorboard", "mlflow")
    assert cfg.to_flat()["track"] == "tensorboard,mlflow"  # config.toml's form
    assert make_config({"track": ["wandb"]}).output.track == ("wandb",)
    assert "track" not in make_config({}).to_flat()  # untracked runs' config.toml unchanged
    with pytest.raises(ConfigError, match=r"unknown tracker 'tb' \(valid trackers: tensorboard"):
        make_config({"track": "tb,mlflow"})


def test_the_registry_implements_every_name_the_config_accepts() -> None:
    assert tuple(TRACKERS) == TRACKER_NAMES


def test_a_tracker_receives_every_number_of_the_row_but_the_round() -> None:
    row: Row = {"round": 3, "train_loss": 0.5, "accuracy": None, "clients": 4, "dropped": 0}
    row |= {"epsilon": 1.5, "clipped_fraction": 0.25, "accuracy/mnist": 0.9, "time_s": 1.25}
    assert row_metrics(row) == {
        "train_loss": 0.5,
        "clients": 4.0,
        "dropped": 0.0,
        "epsilon": 1.5,
        "clipped_fraction": 0.25,
        "accuracy/mnist": 0.9,
        "time_s": 1.25,
    }


def test_tracking_needs_a_run_directory() -> None:
    with pytest.raises(ConfigError, match=r"track=mlflow needs a run directory; give --out"):
        check_trackers(make_config({"track": "mlflow"}), None)


def test_a_tracker_that_is_not_installed_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    out = tmp_path / "run"
    args = ["run", str(SIMS / "cross_silo.toml"), "--out", str(out), "--track", "wandb"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "error: tracker 'wandb' needs the wandb package, which is not installed: "
        "pip install 'fedwon[track]'"
    ]
    assert not out.exists()
    unknown = runner.invoke(cli, [*args[:4], "--track", "tensorbord"])
    assert unknown.exit_code == 2
    assert re.search(
        r"unknown tracker 'tensorbord' \(valid trackers: tensorboard, mlflow, wandb\)",
        unknown.stderr,
    ), unknown.stderr


# ---- each tool reads back what the run sent ---------------------------------------------------


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's own reader (it applies the purge a resumed run's event file asks for)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def mlflow_run(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, str]:
    """``mlflow.search_runs``'s row of the run and a client on the store beside it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{run_dir.parent.resolve() / MLFLOW_DIR / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    found = mlflow.search_runs(experiment_names=["fedwon"])
    assert len(found) == 1
    return found.iloc[0], MlflowClient(uri), str(found.iloc[0]["run_id"])


def mlflow_metrics(client: Any, run_id: str, keys: set[str]) -> dict[str, list[tuple[int, float]]]:
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }


def wandb_records(run_dir: Path) -> Iterator[Any]:
    """The records of W&B's offline run files (``run-<id>.wandb``), oldest first: wandb's own
    protobuf records in its LevelDB-style log (0.31 ships no Python reader of the framing:
    a 7-byte file header, then 32 KiB blocks of records, each with a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    block = 32768
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, parts = 7, b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header: padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind in (1, 2):  # full, first
                parts = chunk
            elif kind in (3, 4):  # middle, last
                parts += chunk
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(parts)
                yield record


def wandb_history(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], set[str]]:
    """History rows (``_step`` and our keys), the latest config, and the run ids used."""
    history, config, ids = [], {}, set()
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            item = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            history.append({k: v for k, v in item.items() if k == "_step" or k[0] != "_"})
        elif kind == "run":
            ids.add(record.run.run_id)
            config |= {u.key: json.loads(u.value_json) for u in record.run.config.update}
    return history, config, ids


def by_key(rows: list[Row]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row_metrics(row).items():
            series.setdefault(key, []).append((row["round"], value))
    return series


def needs_trackers() -> None:
    """The read-back tests need the extra (``make setup`` installs it; CI does)."""
    for module in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(module, reason="pip install 'fedwon[track]'")


def test_a_tracked_run_is_read_back_by_each_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs_trackers()
    out = tmp_path / "run"
    args = ["run", str(SIMS / "cross_silo.toml"), "--out", str(out)]
    args += ["--track", "tensorboard,mlflow,wandb"]
    for kv in [*TINY, "num_rounds=2"]:
        args += ["--set", kv]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = RunDir(out).metrics()
    expected = by_key(rows)
    assert {"train_loss", "loss", "accuracy", "accuracy/mnist", "accuracy/usps"} <= set(expected)
    assert {"clients", "dropped", "time_s"} <= set(expected)
    cfg = RunDir(out).config()

    scalars = tensorboard_scalars(out)
    assert set(scalars) == set(expected)
    for key, series in expected.items():  # TensorBoard keeps float32
        assert scalars[key] == [(s, pytest.approx(v, rel=1e-6)) for s, v in series], key

    found, client, run_id = mlflow_run(out, monkeypatch)
    assert found["status"] == "FINISHED"
    assert found["tags.fedwon.run_dir"] == str(out.resolve())
    assert (
        found["params.lr"] == str(cfg.train.lr)
        and found["params.track"] == "tensorboard,mlflow,wandb"
    )
    assert found["metrics.accuracy"] == rows[-1]["accuracy"]
    assert mlflow_metrics(client, run_id, set(expected)) == expected

    history, config, ids = wandb_history(out)
    assert len(ids) == 1
    assert config["run_dir"] == str(out.resolve()) and config["lr"] == cfg.train.lr
    assert [{"_step": r["round"], **row_metrics(r)} for r in rows] == history


def test_a_resume_continues_the_same_tracker_runs_without_a_step_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt stops after round 3, its checkpoint at round 2: TensorBoard hides its
    round 3 behind the resumed one, MLflow and W&B keep theirs and are not sent it again; W&B,
    added on resume, first receives the checkpoint's rounds."""
    needs_trackers()
    out = tmp_path / "run"
    first = ["track=tensorboard,mlflow", "num_rounds=4", "checkpoint_every=2"]
    cfg = load_config(SIMS / "cross_silo.toml", [*TINY, *first])

    def stop_after_round_3(row: Row) -> None:
        if row["round"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, out, on_round=stop_after_round_3)
    assert RunDir(out).checkpoint_round() == 2 and len(RunDir(out).metrics()) == 3
    lost_round_3 = RunDir(out).metrics()[2]
    found, _, first_id = mlflow_run(out, monkeypatch)
    assert found["status"] == "FAILED"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    resumed = cfg.replace(track="tensorboard,mlflow,wandb")
    run_simulation(resumed, out, resume=True)
    rows = RunDir(out).metrics()
    assert [r["round"] for r in rows] == [1, 2, 3, 4]

    scalars = tensorboard_scalars(out)
    for key, series in by_key(rows).items():  # each step once, the resumed run's values
        assert scalars[key] == [(s, pytest.approx(v, rel=1e-6)) for s, v in series], key

    found, client, run_id = mlflow_run(out, monkeypatch)
    assert run_id == first_id and found["status"] == "FINISHED"
    assert found["tags.fedwon.resumed.track"] == "tensorboard,mlflow,wandb"
    kept = [*rows[:2], lost_round_3, rows[3]]  # round 3 as the first attempt sent it
    expected = by_key(kept)
    assert mlflow_metrics(client, run_id, set(expected)) == expected

    history, _, ids = wandb_history(out)
    assert len(ids) == 1
    assert history == [{"_step": r["round"], **row_metrics(r)} for r in rows]
