"""``fedwon deploy local`` as the README types it: no ``--out`` needed, several overrides per
``--set`` (checked up to the config, before any process starts)."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedwon.cli import cli
from fedwon.deploy.local import default_out


def test_default_out_is_a_fresh_directory_under_runs() -> None:
    out = default_out(Path("sims/cross_silo.toml"), "fedwon")
    assert out.parent == Path("runs")
    assert re.fullmatch(r"deploy-cross_silo-fedwon-\d{8}-\d{6}", out.name), out.name


def test_local_needs_no_out_and_reads_several_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["deploy", "local", "--nodes", "2", "--rounds", "2", "--set", "lr=0.1", "lrr=1"]
    )
    assert result.exit_code == 2, result.output
    assert "Missing option" not in result.output
    assert "unknown config key 'lrr'" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
