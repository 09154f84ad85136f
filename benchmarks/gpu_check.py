"""``make gpu-check``: cross-silo on CUDA, one Ray actor per GPU and two per GPU, against CPU.

On a machine with CUDA GPUs (G of them) it runs ``sims/cross_silo.toml`` for a few rounds
(``--rounds``, default 6; one evaluation, at the end) with the same seed as:

* ``cpu``: the reference, on the CPU, clients one after another in one process;
* ``cuda, sequential``: clients one after another on one GPU in one process (``num_workers=0``):
  the throughput baseline;
* ``cuda, 1 actor per GPU``: G Ray actors, ``gpus_per_client=1``;
* ``cuda, 2 actors per GPU``: 2G Ray actors, ``gpus_per_client=0.5``.

Each run is a fresh subprocess (its own torch threads, Ray and CUDA context). Each CUDA run's
final accuracy and global weights are compared with the CPU run's (:func:`closeness`), and its
steady rounds/s (median over the rounds between the first, start-up, and the last, evaluation)
with the sequential CUDA run's. The markdown table is printed and written, with the raw numbers,
to ``--out`` (``gpu-check.md``, ``gpu-check.json``), ready for docs/scaling.md. Exit status 1
when a CUDA run is not close to the CPU run.

Not bitwise: the batches and seeds are the same on both devices (batch order comes from a CPU
generator), but CUDA kernels add in other orders than the CPU's (cuDNN's convolution
algorithms, GEMM tiling, atomics in some backward kernels), and PyTorch lets cuDNN convolutions
use TF32 (10-bit mantissa) on Ampere and newer by default. Float addition is not associative, so
the sums differ in the last bits, and training carries the differences forward from step to step.

Without a CUDA GPU it prints one line saying it was skipped, and why, and exits 0.

    python -m benchmarks.gpu_check [--out runs/gpu-check] [--rounds 6]
        [--accuracy-tol 1.0] [--weight-tol 0.02]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "sims" / "cross_silo.toml"
DEFAULT_OUT = Path("runs/gpu-check")
SKIPPED = "gpu-check: skipped, no CUDA GPU"
ACCURACY_TOL_PTS = 1.0  # percentage points of test accuracy (2,000 test images: 20 of them)
WEIGHT_TOL = 0.02  # ||w_cuda - w_cpu|| / ||w_cpu - w_initial||

Row = dict[str, Any]


@dataclass(frozen=True)
class Variant:
    """One run of the check: where the clients train and how many at once."""

    name: str
    label: str
    device: str
    num_workers: int  # 0 = in-process, one client after another
    gpus_per_client: float

    def overrides(self, rounds: int, cpus: int) -> dict[str, Any]:
        """Keys over the recipe's (flat, as ``--set`` takes them)."""
        return {
            "num_rounds": rounds,
            "eval_every": rounds,
            "checkpoint_every": 0,
            "engine": "fast",
            "device": self.device,
            "num_workers": self.num_workers,
            "gpus_per_client": self.gpus_per_client,
            # the CPU reference trains on every core; a GPU client needs one core
            "cpus_per_client": cpus if self.device == "cpu" else 1,
        }


def variants(num_gpus: int) -> list[Variant]:
    """The CPU reference, the sequential GPU baseline, then one and two actors per GPU."""
    return [
        Variant("cpu", "CPU, sequential (reference)", "cpu", 0, 0.0),
        Variant("cuda-seq", "1 GPU, sequential (baseline)", "cuda", 0, 1.0),
        Variant("cuda-1", "1 Ray actor per GPU", "cuda", num_gpus, 1.0),
        Variant("cuda-0.5", "2 Ray actors per GPU", "cuda", 2 * num_gpus, 0.5),
    ]


def skip_reason() -> str | None:
    """Why this machine cannot run the check (no CUDA GPU), or ``None`` when it can."""
    import torch

    with warnings.catch_warnings():  # a CUDA build without a driver warns on the first query
        warnings.simplefilter("ignore")
        available = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if available:
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return f"no CUDA GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda}{where})"


@dataclass(frozen=True)
class Closeness:
    """How far one run's results are from the reference run's."""

    accuracy_delta_pts: float  # (accuracy - reference accuracy) in percentage points
    weight_distance: float  # ||w - w_ref|| / ||w_ref - w_initial|| over every float array
    max_abs_diff: float  # largest |w - w_ref| of any single weight
    close: bool


def closeness(
    weights: dict[str, Any],
    reference: dict[str, Any],
    initial: dict[str, Any],
    accuracy: float,
    reference_accuracy: float,
    *,
    accuracy_tol_pts: float = ACCURACY_TOL_PTS,
    weight_tol: float = WEIGHT_TOL,
) -> Closeness:
    """Compare final weights (name -> tensor) and accuracies (fractions) with the reference's.

    The weight distance is relative to how far training moved the reference from the initial
    weights, so it reads the same for any model size or learning rate: 0.02 means the two
    devices disagree by 2% of what training changed. Integer arrays must be equal.
    """
    import torch

    if set(weights) != set(reference) or set(reference) != set(initial):
        missing = sorted(set(reference) ^ set(weights)) or sorted(set(reference) ^ set(initial))
        raise ValueError(f"the runs' arrays differ in names: {missing[:5]}")
    diff_sq = moved_sq = 0.0
    max_abs = 0.0
    exact = True
    for name in sorted(reference):
        w, ref, init = (
            torch.as_tensor(t).detach().cpu()
            for t in (weights[name], reference[name], initial[name])
        )
        if w.shape != ref.shape:
            raise ValueError(f"{name}: shape {tuple(w.shape)} against {tuple(ref.shape)}")
        if not ref.is_floating_point():
            exact = exact and bool(torch.equal(w, ref))
            continue
        d = w.double() - ref.double()
        diff_sq += float(d.square().sum())
        moved_sq += float((ref.double() - init.double()).square().sum())
        if d.numel():
            max_abs = max(max_abs, float(d.abs().max()))
    diff, moved = math.sqrt(diff_sq), math.sqrt(moved_sq)
    distance = diff / moved if moved > 0 else (0.0 if diff == 0 else math.inf)
    delta = 100.0 * (accuracy - reference_accuracy)
    ok = (
        exact
        and math.isfinite(accuracy)
        and abs(delta) <= accuracy_tol_pts
        and distance <= weight_tol
    )
    return Closeness(delta, distance, max_abs, ok)


def steady_s_per_round(times: list[float]) -> float:
    """Median seconds per round without the first (start-up) and the last (it evaluates)."""
    middle = times[1:-1] or times[-1:]
    return statistics.median(middle)


def to_markdown(rows: list[Row]) -> str:
    """The check's table; the CPU row is the reference, the sequential GPU row the baseline."""
    lines = [
        "| run | device | Ray actors | `gpus_per_client` | s/round (steady) | rounds/s "
        "| × 1 GPU sequential | final accuracy | Δ accuracy vs CPU (pts) "
        "| weight distance vs CPU | close to CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        actors = str(r["actors"]) if r["actors"] else "0 (in-process)"
        gpus = f"{r['gpus_per_client']:g}" if r["device"] == "cuda" else "—"
        if r["name"] == "cpu":
            delta, dist, close = "—", "—", "reference"
        else:
            delta = f"{r['accuracy_delta_pts']:+.2f}"
            dist = f"{r['weight_distance']:.2e}"
            close = "yes" if r["close"] else "**no**"
        lines.append(
            f"| {r['label']} | {r['device']} | {actors} | {gpus} | {r['s_per_round']:.3f} "
            f"| {r['rounds_per_s']:.2f} | {r['vs_sequential']:.2f}x "
            f"| {100 * r['accuracy']:.2f}% | {delta} | {dist} | {close} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """GPUs, CPU cores and library versions, for the record."""
    import flwr
    import ray
    import torch

    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    gpus = ", ".join(f"{names.count(n)}x {n}" for n in dict.fromkeys(names)) or "no GPU"
    tf32 = "on" if torch.backends.cudnn.allow_tf32 else "off"
    return (
        f"{gpus}; {os.cpu_count()} CPU cores; Python {platform.python_version()}, torch "
        f"{torch.__version__} (CUDA {torch.version.cuda}), flwr {flwr.__version__}, ray "
        f"{ray.__version__}; TF32 in cuDNN convolutions: {tf32}"
    )


def report(rows: list[Row], command: str, rounds: int, acc_tol: float, weight_tol: float) -> str:
    """The markdown written to ``--out``: what ran, the table, the tolerance."""
    return (
        f"Machine: {machine()}.\nCommand: `{command}`.\n\n"
        f"Workload: `sims/cross_silo.toml` (FedWon, `cnn`, 5 clients, one per digit domain), "
        f"{rounds} rounds, the same seed everywhere, evaluated after the last round. s/round: "
        "median of the rounds between the first (start-up) and the last (evaluation). Close: "
        f"final accuracy at most {acc_tol:g} percentage points from the CPU run's, weight "
        f"distance (‖w_cuda − w_cpu‖ / ‖w_cpu − w_initial‖) at most {weight_tol:g}.\n\n"
        f"{to_markdown(rows)}\n"
    )


def child(
    variant: Variant, rounds: int, weights_path: Path, extra: dict[str, Any] | None = None
) -> Row:
    """Run one variant in this (fresh) process; save its final weights, return its numbers.

    ``extra``: more keys over the recipe's (tests shrink the model and data with it)."""
    import logging

    import torch

    from fedwon.config import load_config
    from fedwon.server_app import initial_arrays
    from fedwon.simulation import run_simulation

    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(RECIPE, {**variant.overrides(rounds, os.cpu_count() or 1), **(extra or {})})
    t0 = time.perf_counter()
    outcome = run_simulation(cfg, None)
    wall = time.perf_counter() - t0
    times = [float(r["time_s"]) for r in outcome.rows]
    torch.save(
        {
            "final": outcome.arrays.to_torch_state_dict(),
            "initial": initial_arrays(cfg).to_torch_state_dict(),
        },
        weights_path,
    )
    s_per_round = steady_s_per_round(times)
    return {
        "name": variant.name,
        "label": variant.label,
        "device": variant.device,
        "actors": variant.num_workers,
        "gpus_per_client": variant.gpus_per_client,
        "rounds": len(times),
        "round_times_s": times,
        "wall_s": wall,
        "s_per_round": s_per_round,
        "rounds_per_s": 1.0 / s_per_round,
        "accuracy": float(outcome.summary["final"]["accuracy"]),
    }


def run_variant(variant: Variant, rounds: int, weights_path: Path) -> Row:
    """One variant in a fresh subprocess (its own threads, Ray and CUDA context)."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--child", variant.name]
    cmd += ["--rounds", str(rounds), "--weights", str(weights_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"{variant.label} failed (exit {done.returncode}):\n{tail}")
    row: Row = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def run(rounds: int, acc_tol: float, weight_tol: float, num_gpus: int) -> list[Row]:
    """Every variant, then their comparison with the CPU run and the sequential GPU run."""
    import torch

    plan = variants(num_gpus)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for variant in plan:
            print(f"gpu-check: {variant.label} ...", flush=True)
            row = run_variant(variant, rounds, Path(tmp) / f"{variant.name}.pt")
            print(
                f"gpu-check:   {row['s_per_round']:.3f} s/round, accuracy "
                f"{100 * row['accuracy']:.2f}% ({row['wall_s']:.0f} s in all)",
                flush=True,
            )
            rows.append(row)
        ref = torch.load(Path(tmp) / "cpu.pt")
        for row in rows[1:]:
            mine = torch.load(Path(tmp) / f"{row['name']}.pt")
            c = closeness(
                mine["final"],
                ref["final"],
                ref["initial"],
                row["accuracy"],
                rows[0]["accuracy"],
                accuracy_tol_pts=acc_tol,
                weight_tol=weight_tol,
            )
            row.update(
                accuracy_delta_pts=c.accuracy_delta_pts,
                weight_distance=c.weight_distance,
                max_abs_diff=c.max_abs_diff,
                close=c.close,
            )
    baseline = next(r for r in rows if r["name"] == "cuda-seq")["s_per_round"]
    for row in rows:
        row["vs_sequential"] = baseline / row["s_per_round"]  # > 1: faster than the baseline
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the table")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (at least 3)")
    parser.add_argument(
        "--accuracy-tol", type=float, default=ACCURACY_TOL_PTS, help="points of accuracy"
    )
    parser.add_argument(
        "--weight-tol", type=float, default=WEIGHT_TOL, help="relative weight distance"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (start-up, steady rounds, evaluation)")
    reason = skip_reason()
    if reason is not None:
        print(f"{SKIPPED}: {reason}")
        return 0
    import torch

    num_gpus = torch.cuda.device_count()
    if args.child is not None:
        variant = next(v for v in variants(num_gpus) if v.name == args.child)
        print(json.dumps(child(variant, args.rounds, args.weights)))
        return 0
    command = " ".join(["python -m benchmarks.gpu_check", *(argv or sys.argv[1:])]).strip()
    t0 = time.perf_counter()
    rows = run(args.rounds, args.accuracy_tol, args.weight_tol, num_gpus)
    text = report(rows, command, args.rounds, args.accuracy_tol, args.weight_tol)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.md").write_text(text)
    (args.out / "gpu-check.json").write_text(json.dumps(rows, indent=2))
    print(text)
    print(f"wrote {args.out / 'gpu-check.md'} ({time.perf_counter() - t0:.0f} s)")
    far = [r["label"] for r in rows[1:] if not r["close"]]
    if far:
        print(f"gpu-check: FAILED: not close to the CPU run: {', '.join(far)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
