"""Every ``fedwon`` command in README.md works as written, so a README that drifts from the CLI
fails the suite (issue 18: four of its copy-paste commands had stopped working).

The commands are read from the README itself: the lines of its fenced blocks and its inline
code spans that start with ``fedwon`` (or ``.venv/bin/fedwon``). ``PLANS`` says how each one is
covered, keyed by its exact text; a command without a plan, or a plan whose command the README
no longer has, fails :func:`test_every_readme_command_has_a_plan`.

- ``RUN``: run in README order in one working directory (``sims/`` linked into it), so a command
  finds what earlier ones wrote (``fedwon report runs/fedavg runs/fedbn runs/fedwon``); ``TINY``
  is appended to each training command (one round, a few images per domain, in-process).
- ``PARSE``: a deployment, the study and the privacy curve take minutes to hours. In the default
  suite their arguments go through the real command up to the point where it would start (every
  option exists, takes its value, nothing required is missing); the slow test runs each one for
  real with its ``--quick`` or tiny settings.
- ``NAME``: the README names a command without arguments (``fedwon report`` in prose): it exists.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from fedwon.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# one round on 40 training and 20 test images per domain, clients trained in this process
TINY = ["num_rounds=1", "train_per_domain=40", "test_per_domain=20", "num_workers=0"]
# sims/dp_cross_device.toml's 500 clients would get no images from 200: the DP cohort
SMALL_DP = ["num_clients=20", "clients_per_round=5", "min_clients=5"]


@dataclass(frozen=True)
class Plan:
    how: str  # RUN, PARSE or NAME (see the module docstring)
    extra: list[str] = field(default_factory=list)  # appended to the README's words (RUN)
    slow_extra: list[str] = field(default_factory=list)  # appended in the slow run (PARSE)


RUN, PARSE, NAME = "RUN", "PARSE", "NAME"
TRAIN = Plan(RUN, ["--set", *TINY])

PLANS: dict[str, Plan] = {
    # Running
    "fedwon run sims/cross_silo.toml --out runs/fedwon": TRAIN,
    "fedwon run sims/cross_silo.toml --set strategy=fedbn lr=0.01 agc_clip=0 --out runs/fedbn": (
        TRAIN
    ),
    "fedwon run sims/cross_silo.toml --set strategy=fedavg lr=0.01 agc_clip=0 --out runs/fedavg": (
        TRAIN
    ),
    "fedwon report runs/fedavg runs/fedbn runs/fedwon --plot compare.png": Plan(RUN),
    # a resumed run keeps its data: only the rounds shrink (it ran 1, the README asks for 30)
    "fedwon run --resume runs/fedbn --set num_rounds=30": Plan(
        RUN, ["--set", "num_rounds=2", "num_workers=0"]
    ),
    "fedwon run sims/cross_device.toml": TRAIN,
    # Experiment tracking (the extra is installed by make setup, as in CI)
    "fedwon run sims/cross_silo.toml --track tensorboard,mlflow,wandb --out runs/tracked": TRAIN,
    # Composing with Flower's strategies (no --out: each writes to its default directory)
    "fedwon run sims/cross_silo.toml --set strategy=fedwon aggregator=fedadam server_lr=0.01": (
        TRAIN
    ),
    "fedwon run sims/cross_silo.toml --set strategy=fedbn lr=0.01 agc_clip=0 aggregator=fedprox "
    "proximal_mu=0.01": TRAIN,
    # Differential privacy
    "fedwon run sims/dp_cross_device.toml": Plan(RUN, ["--set", *TINY, *SMALL_DP]),
    "fedwon privacy-curve": Plan(PARSE, slow_extra=["--quick", "--cache", "pc", "--out", "pc"]),
    "fedwon privacy-curve --plan population": Plan(
        PARSE, slow_extra=["--quick", "--cache", "pp", "--out", "pp"]
    ),
    "fedwon privacy-curve --plan population --records-only": Plan(
        PARSE, slow_extra=["--quick", "--cache", "pp", "--out", "pp"]
    ),
    # Speed
    "fedwon run sims/cross_device.toml --set model=cnn-tiny": TRAIN,
    # the table of parts and the results paragraph
    "fedwon deploy": Plan(NAME),
    "fedwon deploy local --nodes 2 --rounds 2": Plan(
        PARSE, slow_extra=["--set", "model=cnn-tiny", "train_per_domain=40", "test_per_domain=20"]
    ),
    "fedwon study --estimate --jobs 2": Plan(RUN),  # prints the plan's cost, runs nothing
    "fedwon study --part cross_silo": Plan(
        PARSE,
        slow_extra=["--quick", "--cache", "study", "--records", "study/rec", "--out", "study/out"],
    ),
    # on a machine without CUDA the slow run can only price it (tests/study: the refusal)
    "fedwon study --device cuda --jobs 4": Plan(PARSE, slow_extra=["--quick", "--estimate"]),
    "fedwon report": Plan(NAME),
    "fedwon data export": Plan(NAME),  # named in the data row; tests/datasets/test_hf.py runs it
}

COMMAND = re.compile(r"(?:\.venv/bin/)?fedwon\s")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def readme_commands(text: str) -> list[str]:
    """The README's ``fedwon`` commands in the order they appear, each as its words joined by
    one space (``.venv/bin/`` and shell comments dropped, line breaks in prose spans undone)."""
    found: list[tuple[int, str]] = []
    for fence in FENCE.finditer(text):
        start = fence.start(1)
        for line in fence.group(1).splitlines(keepends=True):
            if COMMAND.match(line.strip()):
                found.append((start, " ".join(shlex.split(line, comments=True))))
            start += len(line)
    # inline spans outside fences, paired left to right (fences blanked, positions kept)
    prose = FENCE.sub(lambda m: " " * len(m.group(0)), text)
    for span in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)*)`", prose):
        if COMMAND.match(span.group(1)):
            found.append((span.start(), " ".join(span.group(1).split())))
    commands = [re.sub(r"^\.venv/bin/", "", cmd) for _, cmd in sorted(found, key=lambda f: f[0])]
    return list(dict.fromkeys(commands))


COMMANDS = readme_commands(README.read_text())


def test_every_readme_command_has_a_plan() -> None:
    missing = [c for c in COMMANDS if c not in PLANS]
    stale = [c for c in PLANS if c not in COMMANDS]
    assert not missing, f"README commands with no plan in tests/test_readme.py: {missing}"
    assert not stale, f"plans for commands the README no longer has: {stale}"


def test_the_extraction_finds_fenced_and_inline_commands() -> None:
    text = (
        "Run `fedwon run a.toml --set\nx=1` or `fedwon.config` or `fedwon`.\n"
        "```bash\n.venv/bin/fedwon run b.toml\n"
        ".venv/bin/fedwon report r  # compare\nflwr run .\n```\n"
        "then `fedwon deploy`.\n"
    )
    assert readme_commands(text) == [
        "fedwon run a.toml --set x=1",
        "fedwon run b.toml",  # before "report": README order, not alphabetical
        "fedwon report r",
        "fedwon deploy",
    ]


def words(command: str, extra: list[str] | None = None) -> list[str]:
    return [*shlex.split(command)[1:], *(extra or [])]


def test_readme_commands_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RUN commands, in README order, in one directory: each exits 0 and writes what it says."""
    (tmp_path / "sims").symlink_to(ROOT / "sims")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in COMMANDS:
        plan = PLANS[command]
        if plan.how != RUN:
            continue
        result = runner.invoke(cli, words(command, plan.extra))
        assert result.exit_code == 0, f"{command}\n{result.output}"
        for wrote in re.findall(r"^wrote (\S+)$", result.stdout, re.M):
            assert (tmp_path / wrote).exists(), f"{command}: says it wrote {wrote}"
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert len((tmp_path / "runs" / "fedbn" / "metrics.jsonl").read_text().splitlines()) == 2


def parse_only(command: str) -> dict[str, Any]:
    """The arguments ``command`` would start with: parsed and checked by the real command, whose
    work is replaced by recording them."""
    root = typer.main.get_command(cli)
    args = words(command)
    leaf, rest = root, list(args)
    while isinstance(leaf, click.Group) and rest and rest[0] in leaf.commands:
        leaf = leaf.commands[rest.pop(0)]
    seen: dict[str, Any] = {}
    leaf.callback = lambda **params: seen.update(params)
    root.main(args, prog_name="fedwon", standalone_mode=False)
    return seen


@pytest.mark.parametrize("command", [c for c in COMMANDS if PLANS.get(c, Plan(RUN)).how == PARSE])
def test_long_readme_commands_parse(command: str) -> None:
    params = parse_only(command)
    assert params, f"{command}: the command was not reached"
    given = {w.lstrip("-").replace("-", "_") for w in words(command) if w.startswith("--")}
    assert given <= set(params), (given, params)


def test_parse_only_refuses_what_the_command_would() -> None:
    with pytest.raises(click.NoSuchOption, match="No such option '--nodez'"):
        parse_only("fedwon deploy local --nodez 2")
    with pytest.raises(click.BadParameter, match="'two' is not a valid integer"):
        parse_only("fedwon deploy local --nodes two")


@pytest.mark.parametrize("command", [c for c in COMMANDS if PLANS.get(c, Plan(RUN)).how == NAME])
def test_named_commands_exist(command: str) -> None:
    root = typer.main.get_command(cli)
    assert isinstance(root, click.Group)
    assert words(command)[0] in root.commands


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if PLANS.get(c, Plan(RUN)).how == PARSE])
def test_long_readme_commands_run(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sims").symlink_to(ROOT / "sims")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, words(command, PLANS[command].slow_extra))
    assert result.exit_code == 0, f"{command}\n{result.output}"
