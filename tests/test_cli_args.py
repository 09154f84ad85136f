"""Several ``key=value`` after one ``--set``; a stray word refused in one line."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.cli.args import expand_sets

SIMS = Path(__file__).resolve().parents[1] / "sims"
VALUED = ["--out", "--resume"]


@pytest.mark.parametrize(
    ("args", "expanded"),
    [
        (["r.toml", "--set", "a=1", "b=2"], ["r.toml", "--set", "a=1", "--set", "b=2"]),
        (["r.toml", "--set", "a=1", "--set", "b=2"], ["r.toml", "--set", "a=1", "--set", "b=2"]),
        (["-s", "a=1", "b=2", "r.toml"], ["-s", "a=1", "--set", "b=2", "r.toml"]),
        (["--set=a=1", "b=", "--out", "x=y"], ["--set=a=1", "--set", "b=", "--out", "x=y"]),
        (["-sa=1", "b=2", "-v"], ["-sa=1", "--set", "b=2", "-v"]),
        (["--set", "a=1", "--out", "o", "b=2"], None),  # b=2 no longer follows a --set
        (["r.toml", "--", "a=1"], ["r.toml", "--", "a=1"]),
    ],
)
def test_words_after_a_set_become_overrides(args: list[str], expanded: list[str] | None) -> None:
    if expanded is None:
        with pytest.raises(ValueError, match=r"unexpected argument 'b=2' .*--set b=2"):
            expand_sets(args, VALUED, positionals=1 if "r.toml" in args else 0)
    else:
        assert expand_sets(args, VALUED, positionals=1) == expanded


def test_a_stray_bare_word_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unexpected argument 'oops' \(an override is written"):
        expand_sets(["r.toml", "--set", "a=1", "oops"], VALUED, positionals=1)


def test_run_takes_several_overrides_after_one_set(tmp_path: Path) -> None:
    """The README's composition example: strategy, aggregator and its setting after one --set
    (checked up to the config: a bad value in the third pair proves all three were read)."""
    overrides = ["strategy=fedbn", "aggregator=fedadam", "server_lr=-1"]
    args = ["run", str(SIMS / "cross_silo.toml"), "--set", *overrides, "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "server_lr" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_run_refuses_a_stray_word_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["run", str(SIMS / "cross_silo.toml"), "--set", "lr=0.1", "oops"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: unexpected argument 'oops' (an override is written key=value after --set)"
    )


def test_an_unknown_option_is_named_not_its_value() -> None:
    """``--nodez 2``: the error is the unknown option (click's), not a stray word '2'."""
    result = CliRunner().invoke(cli, ["run", str(SIMS / "cross_silo.toml"), "--outt", "x"])
    assert result.exit_code == 2
    assert "No such option" in result.output and "--outt" in result.output
    assert "unexpected argument" not in result.output
