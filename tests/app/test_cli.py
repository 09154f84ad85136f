"""The ``fedwon`` command: refusing bad input before anything starts, run, report."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.run.directory import RunDir

SIMS = Path(__file__).resolve().parents[2] / "sims"
runner = CliRunner()


def test_bad_override_key_is_refused_before_running(tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        ["run", str(SIMS / "cross_silo.toml"), "--set", "lrr=0.1", "--out", str(tmp_path / "x")],
    )
    assert result.exit_code == 2
    assert "unknown config key 'lrr'" in result.output
    assert not (tmp_path / "x").exists()


def test_bad_recipe_value_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('strategy = "fedswap"\n')
    result = runner.invoke(cli, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "strategy: unknown strategy 'fedswap'; choose one of ['fedavg', 'fedbn', 'fedwon']" in (
        result.output
    )
    recipe.write_text('strategy = "fedprox"\n')
    result = runner.invoke(cli, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "'fedprox' is an aggregator, not a method: set aggregator='fedprox'" in result.output


def test_run_then_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", str(SIMS / "cross_silo.toml"), "--out", str(out)]
    for kv in (
        "model=cnn-tiny",
        "num_rounds=1",
        "train_per_domain=100",
        "test_per_domain=50",
        "engine=fast",
        "num_workers=0",
        "lr=0.1",
    ):
        args += ["--set", kv]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "usps" in result.output and "fedwon" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == "fedwon" and summary["rounds"] == 1
    assert set(summary["final"]["per_domain"]) == {"mnist", "mnist_m", "svhn", "usps", "synth"}
    report = runner.invoke(cli, ["report", str(out), "--plot", str(tmp_path / "cmp.png")])
    assert report.exit_code == 0, report.output
    assert "fedwon" in report.output and (tmp_path / "cmp.png").stat().st_size > 0


def test_report_on_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "metrics.jsonl not found" in result.output


# ---- reliability: a run directory is never mixed, resume refuses what it cannot honour, every
# ---- user error is one line (exit 2, no traceback)

TINY = [
    "model=cnn-tiny",
    "num_rounds=1",
    "train_per_domain=20",
    "test_per_domain=10",
    "num_workers=0",
    "lr=0.05",
]


def fedwon(*args: object) -> Result:
    return runner.invoke(cli, [str(a) for a in args])


def run_args(out: Path, *overrides: str, strategy: str = "fedbn") -> list[object]:
    args: list[object] = ["run", SIMS / "cross_silo.toml", "--out", out]
    for kv in [*TINY, f"strategy={strategy}", *overrides]:
        args += ["--set", kv]
    return args


def rounds(run_dir: Path) -> list[int]:
    return [r["round"] for r in RunDir(run_dir).metrics()]


def assert_one_line_error(result: Result, message: str, exit_code: int = 2) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_a_second_run_into_the_same_directory_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = fedwon(*run_args(out))
    assert first.exit_code == 0, first.output
    assert "round 1/1  train_loss" in first.stdout  # a line per round when not on a terminal
    accuracy = RunDir(out).metrics()[0]["accuracy"]

    again = fedwon(*run_args(out))
    assert_one_line_error(again, r"run/? is not empty \(it holds .*config.toml.*\): resume it")
    assert rounds(out) == [1]  # not 1, 1

    replaced = fedwon(*run_args(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert rounds(out) == [1]
    # the old run's FedBN layers were deleted, not loaded: the same result as a fresh directory
    assert RunDir(out).metrics()[0]["accuracy"] == accuracy

    (out / "notes.txt").write_text("mine")
    kept = fedwon(*run_args(out), "--overwrite")
    assert_one_line_error(kept, r"refusing to overwrite .*\(notes.txt\)")
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_refuses_what_it_cannot_honour_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert fedwon(*run_args(out, "num_rounds=2", "checkpoint_every=1")).exit_code == 0
    config = (out / "config.toml").read_bytes()

    model = fedwon("run", "--resume", out, "--set", "model=cnn")
    assert_one_line_error(model, r"cannot resume .*: model='cnn-tiny'→'cnn' would change what")
    clients = fedwon("run", "--resume", out, "--set", "num_clients=10")
    assert_one_line_error(clients, r"num_clients=5→10 would change")
    fewer = fedwon("run", "--resume", out, "--set", "num_rounds=1")
    assert_one_line_error(fewer, r"checkpoint is at round 2, beyond num_rounds=1")
    moved = fedwon("run", "--resume", out, "--out", tmp_path / "elsewhere")
    assert_one_line_error(moved, r"--out cannot move it")
    both = fedwon("run", SIMS / "cross_silo.toml", "--resume", out)
    assert_one_line_error(both, r"either a recipe .* or --resume DIR")
    assert (out / "config.toml").read_bytes() == config  # every refusal left it resumable
    assert not (tmp_path / "elsewhere").exists()

    more = fedwon("run", "--resume", out, "--set", "num_rounds=3", "--set", "eval_every=2")
    assert more.exit_code == 0, more.output
    assert rounds(out) == [1, 2, 3]


@pytest.mark.parametrize(
    ("overrides", "out", "message"),
    [
        (["lr=nan"], "run", r"lr: expected a finite number, got nan"),
        (["lr=inf"], "run", r"lr: expected a finite number, got inf"),
        (["num_rounds='1'"], "run", r"num_rounds: expected an integer, got a string '1'"),
        (["model=cnn", "image_size=2"], "run", r"model 'cnn' cannot take the 2x2 images"),
        ([], "file", r"run directory .*file is a file, not a directory"),
        ([], "file/run", r"run directory .*file/run cannot be created: .*file is a file"),
        (["ray_address=127.0.0.1:9", "num_workers=2"], "run", r"ray_address=.* cannot reach"),
    ],
    ids=["nan", "inf", "string", "image-size", "out-file", "out-under-file", "ray-address"],
)
def test_bad_input_is_one_line_with_exit_2_and_nothing_written(
    tmp_path: Path, overrides: list[str], out: str, message: str
) -> None:
    (tmp_path / "file").write_text("")
    result = fedwon(*run_args(tmp_path / out, *overrides))
    assert_one_line_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_an_unexpected_error_is_one_line_unless_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("something internal")

    monkeypatch.setattr("fedwon.simulation.run_simulation", broken)
    quiet = fedwon(*run_args(tmp_path / "run"))
    assert_one_line_error(quiet, r"KeyError: 'something internal' \(run with -v", exit_code=1)
    verbose = fedwon(*run_args(tmp_path / "run"), "-v")
    assert verbose.exit_code == 1 and "Traceback" in verbose.stderr


def _fake_run(run_dir: Path, num_rounds: int, metrics: str) -> Path:
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(f"strategy = 'fedbn'\nnum_rounds = {num_rounds}\n")
    (run_dir / "metrics.jsonl").write_text(metrics)
    return run_dir


def test_report_marks_unfinished_runs_and_survives_a_truncated_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    row = '{{"round": {r}, "accuracy": 0.{r}, "accuracy/usps": 0.{r}}}\n'
    done = _fake_run(tmp_path / "done", 2, row.format(r=1) + row.format(r=2))
    (done / "summary.json").write_text("{}")  # written last: the run finished
    killed = _fake_run(
        tmp_path / "killed", 5, row.format(r=1) + row.format(r=2) + '{"round": 3, "ac'
    )
    result = fedwon("report", done, killed)
    assert result.exit_code == 0, result.output
    assert "unfinished: round 2 of 5" in result.stdout
    assert "done" not in result.stdout.split("unfinished")[0].splitlines()[-1]  # finished: plain
    assert "killed/metrics.jsonl: skipped its incomplete last line" in caplog.text
    broken = _fake_run(tmp_path / "broken", 2, "oops\n" + row.format(r=2))
    assert_one_line_error(
        fedwon("report", broken), r"broken/metrics.jsonl line 1 is not valid JSON"
    )


def test_report_plot_paths(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", 1, '{"round": 1, "accuracy": 0.5}\n')
    into_dir = fedwon("report", run, "--plot", f"{tmp_path / 'plots'}/")
    assert into_dir.exit_code == 0, into_dir.output
    assert (tmp_path / "plots" / "compare.png").stat().st_size > 0
    assert not (tmp_path / "plots.png").exists()
    no_suffix = fedwon("report", run, "--plot", tmp_path / "cmp")
    assert no_suffix.exit_code == 0 and (tmp_path / "cmp.png").is_file()
    assert_one_line_error(fedwon("report", run, "--plot", tmp_path / "x.txt"), r"format '.txt'")
    (tmp_path / "file").write_text("")
    under_file = fedwon("report", run, "--plot", tmp_path / "file" / "x.png")
    assert_one_line_error(under_file, r"cannot write the plot to .*file/x.png")


def test_version_and_help_read_as_plain_text() -> None:
    version = fedwon("--version")
    assert version.exit_code == 0 and re.fullmatch(r"fedwon \d+\.\d+\S*\n", version.stdout)
    for args in (["--help"], ["run", "--help"], ["report", "--help"]):
        help_text = fedwon(*args).stdout
        assert "``" not in help_text and "--overwrite" in fedwon("run", "--help").stdout


def test_verbose_prints_flower_s_lines_once() -> None:
    script = (
        "import logging\n"
        "from fedwon.cli.console import setup_logging\n"
        "setup_logging(verbose=True)\n"
        "logging.getLogger('flwr').warning('a line from Flower')\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("a line from Flower") == 1


def test_sigterm_ends_a_run_cleanly_and_it_can_be_resumed(tmp_path: Path) -> None:
    """SIGTERM (systemd, Slurm, `flwr stop`) runs the clean-up a SIGKILL would skip."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [str(a) for a in run_args(tmp_path / "run", "num_rounds=100", "checkpoint_every=1")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedwon.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("round 2/100"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"interrupted; continue with: fedwon run --resume {tmp_path / 'run'}" in err
    assert "Traceback" not in err
    resumed = fedwon("run", "--resume", tmp_path / "run", "--set", "num_rounds=4")
    assert resumed.exit_code == 0, resumed.output
    assert rounds(tmp_path / "run") == [1, 2, 3, 4]


def test_a_run_whose_clients_all_fail_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory on this client")

    monkeypatch.setattr("fedwon.client_app.train_epochs", crash)
    result = fedwon(*run_args(tmp_path / "run"))
    assert_one_line_error(result, r"^error: round 1 train: 0 of 5 clients .*out of memory on this")
    assert not (tmp_path / "run").exists()  # the same command can simply be run again
