"""``make gpu-check`` (benchmarks/gpu_check.py): the no-GPU path says it was skipped in one line
and exits 0; the closeness check, the table and one run's plumbing are checked on the CPU."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import Variant, closeness, to_markdown, variants

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_prints_one_line_writes_nothing_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}  # no GPU anywhere
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith(f"{gpu_check.SKIPPED}: ")
    assert "CUDA" in lines[0]  # the reason: no CUDA build, or no CUDA device visible
    assert done.stderr == ""
    assert not out.exists()


def test_skip_reason_names_the_build_or_the_hidden_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    assert gpu_check.skip_reason() == f"torch {torch.__version__} is built without CUDA"
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    reason = gpu_check.skip_reason()
    assert reason is not None and "no CUDA GPU visible" in reason and "''" in reason


def test_variants_pack_one_then_two_actors_per_gpu() -> None:
    plan = {v.name: v for v in variants(4)}
    assert plan["cpu"].device == "cpu" and plan["cpu"].num_workers == 0
    assert (plan["cuda-seq"].device, plan["cuda-seq"].num_workers) == ("cuda", 0)
    assert (plan["cuda-1"].num_workers, plan["cuda-1"].gpus_per_client) == (4, 1.0)
    assert (plan["cuda-0.5"].num_workers, plan["cuda-0.5"].gpus_per_client) == (8, 0.5)
    keys = plan["cuda-0.5"].overrides(rounds=6, cpus=16)
    assert keys["num_rounds"] == keys["eval_every"] == 6 and keys["cpus_per_client"] == 1
    assert plan["cpu"].overrides(rounds=6, cpus=16)["cpus_per_client"] == 16


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "fc.bias": torch.randn(10, generator=g),
        "steps": torch.tensor(7),  # an integer buffer: must be equal
    }


def test_closeness_is_relative_to_how_far_training_moved_the_weights() -> None:
    initial = _weights(0)
    cpu = {k: v + 1.0 if v.is_floating_point() else v for k, v in initial.items()}
    same = closeness(cpu, cpu, initial, 0.9, 0.9)
    assert same == gpu_check.Closeness(0.0, 0.0, 0.0, True)

    moved = math.sqrt(sum(v.numel() for v in cpu.values() if v.is_floating_point()))
    nudge = {k: v + 1e-3 if v.is_floating_point() else v for k, v in cpu.items()}
    near = closeness(nudge, cpu, initial, 0.905, 0.9)
    assert near.close
    assert near.weight_distance == pytest.approx(1e-3, rel=1e-3)  # every weight off by 1e-3
    assert near.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert near.accuracy_delta_pts == pytest.approx(0.5)
    assert moved > 0

    far = {k: v + 0.1 if v.is_floating_point() else v for k, v in cpu.items()}
    assert not closeness(far, cpu, initial, 0.9, 0.9).close  # 10% of the distance travelled
    assert closeness(far, cpu, initial, 0.9, 0.9, weight_tol=0.2).close


def test_closeness_fails_on_accuracy_integer_arrays_nan_and_other_names() -> None:
    initial, cpu = _weights(0), _weights(1)
    assert not closeness(cpu, cpu, initial, 0.88, 0.9).close  # 2 points off, tolerance 1
    assert closeness(cpu, cpu, initial, 0.88, 0.9, accuracy_tol_pts=2.5).close
    assert not closeness(cpu, cpu, initial, math.nan, 0.9).close
    other_steps = {**cpu, "steps": torch.tensor(8)}
    assert not closeness(other_steps, cpu, initial, 0.9, 0.9).close
    nan = {**cpu, "fc.bias": torch.full((10,), math.nan)}
    assert not closeness(nan, cpu, initial, 0.9, 0.9).close
    with pytest.raises(ValueError, match="names"):
        closeness({"fc.bias": cpu["fc.bias"]}, cpu, initial, 0.9, 0.9)


def _row(name: str, device: str, actors: int, gpus: float, s: float, **more: object) -> dict:
    return {
        "name": name,
        "label": {v.name: v.label for v in variants(1)}[name],
        "device": device,
        "actors": actors,
        "gpus_per_client": gpus,
        "s_per_round": s,
        "rounds_per_s": 1 / s,
        "vs_sequential": 0.5 / s,
        "accuracy": 0.8125,
        **more,
    }


def test_table_reads_reference_baseline_speedup_and_closeness() -> None:
    rows = [
        _row("cpu", "cpu", 0, 0.0, 2.0),
        _row(
            "cuda-seq",
            "cuda",
            0,
            1.0,
            0.5,
            accuracy_delta_pts=0.1,
            weight_distance=1e-3,
            close=True,
        ),
        _row(
            "cuda-1", "cuda", 1, 1.0, 0.5, accuracy_delta_pts=0.0, weight_distance=2e-3, close=True
        ),
        _row(
            "cuda-0.5",
            "cuda",
            2,
            0.5,
            0.25,
            accuracy_delta_pts=-1.5,
            weight_distance=0.3,
            close=False,
        ),
    ]
    lines = to_markdown(rows).splitlines()
    assert lines[0].startswith("| run | device | Ray actors | `gpus_per_client` |")
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    cpu, seq, one, two = lines[2:]
    assert "| CPU, sequential (reference) | cpu | 0 (in-process) | — | 2.000 | 0.50 | 0.25x" in cpu
    assert cpu.endswith("| 81.25% | — | — | reference |")
    assert "| 1 GPU, sequential (baseline) | cuda | 0 (in-process) | 1 |" in seq
    assert "| 1.00x |" in seq and seq.endswith("| +0.10 | 1.00e-03 | yes |")
    assert "| 1 Ray actor per GPU | cuda | 1 | 1 |" in one
    assert "| 2 Ray actors per GPU | cuda | 2 | 0.5 | 0.250 | 4.00 | 2.00x |" in two
    assert two.endswith("| -1.50 | 3.00e-01 | **no** |")


def test_one_run_on_the_cpu_returns_its_numbers_and_weights(tmp_path: Path) -> None:
    """The plumbing a GPU run goes through (config, run, weights, accuracy), on a tiny CPU run."""
    tiny = {"model": "cnn-tiny", "train_per_domain": 40, "test_per_domain": 20}
    variant = Variant("cpu", "CPU", "cpu", 0, 0.0)
    row = gpu_check.child(variant, 3, tmp_path / "w.pt", extra=tiny)
    assert row["rounds"] == 3 and len(row["round_times_s"]) == 3
    assert row["s_per_round"] == row["round_times_s"][1] > 0
    assert 0.0 <= row["accuracy"] <= 1.0
    saved = torch.load(tmp_path / "w.pt")
    c = closeness(
        saved["final"], saved["final"], saved["initial"], row["accuracy"], row["accuracy"]
    )
    assert c.close and c.weight_distance == 0.0
    trained = closeness(saved["initial"], saved["final"], saved["initial"], 0.5, 0.5)
    assert trained.weight_distance == pytest.approx(1.0)  # training moved the weights


def test_the_whole_check_on_cpu_stand_ins_writes_the_table_and_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main`` as on a one-GPU machine, each run replaced by a tiny in-process CPU run (same
    seed, so every "CUDA" run is close to the reference): the comparison, the baseline, the
    files and the exit status."""
    tiny = {"model": "cnn-tiny", "train_per_domain": 40, "test_per_domain": 20}

    def on_cpu(variant: Variant, rounds: int, weights_path: Path) -> dict:
        stand_in = dataclasses.replace(variant, device="cpu", num_workers=0, gpus_per_client=0)
        return gpu_check.child(stand_in, rounds, weights_path, extra=tiny)

    monkeypatch.setattr(gpu_check, "skip_reason", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(gpu_check, "run_variant", on_cpu)
    monkeypatch.setattr(gpu_check, "machine", lambda: "a test machine")
    out = tmp_path / "gpu-check"
    assert gpu_check.main(["--out", str(out), "--rounds", "3"]) == 0
    text = (out / "gpu-check.md").read_text()
    printed = capsys.readouterr().out
    assert text in printed and f"wrote {out / 'gpu-check.md'}" in printed
    assert "Machine: a test machine." in text and "at most 1 percentage points from" in text
    rows = json.loads((out / "gpu-check.json").read_text())
    assert [r["name"] for r in rows] == ["cpu", "cuda-seq", "cuda-1", "cuda-0.5"]
    assert rows[1]["vs_sequential"] == 1.0
    for row in rows[1:]:
        assert row["close"] and row["weight_distance"] < 1e-5 and row["accuracy_delta_pts"] == 0
    assert text.count("| yes |") == 3
