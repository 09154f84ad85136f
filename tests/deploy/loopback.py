"""Helpers for tests that start real SuperLinks and SuperNodes on loopback."""

from pathlib import Path
from typing import Any

from fedwon.config import RunConfig, load_config
from fedwon.deploy.commands import write_toml
from fedwon.deploy.local import DEFAULT_RECIPE
from fedwon.deploy.network import is_listening
from fedwon.deploy.plan import fit_to_nodes

# Tiny runs: the time goes into starting processes, not into training.
SMALL = [
    "model=cnn-tiny",
    "train_per_domain=100",
    "test_per_domain=50",
    "checkpoint_every=0",
    "lr=0.1",
]


def leftovers(root: Path) -> list[int]:
    """Live processes started for the deployment under ``root`` (each one's FLWR_HOME is there,
    and their children inherit it), found without trusting the code under test."""
    needle = f"FLWR_HOME={root}".encode()
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(needle) for e in entries):
            stat = environ.with_name("stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(environ.parent.name))
    return pids


def assert_nothing_left(root: Path, ports: list[int]) -> None:
    assert leftovers(root) == []
    assert ports and not [p for p in ports if is_listening(p)]


def fitted(nodes: int, *extra: str) -> RunConfig:
    """The default recipe, tiny, sized to ``nodes`` SuperNodes and 2 rounds."""
    return fit_to_nodes(load_config(DEFAULT_RECIPE, [*SMALL, *extra]), nodes, 2)[0]


def run_config_for(root: Path, cfg: RunConfig) -> dict[str, Any]:
    """``flwr run``'s run config for ``cfg``, writing results into ``root``."""
    recipe = write_toml(root / "deploy" / "recipe.toml", cfg.to_flat())
    return {"recipe": str(recipe), "set": "", "out": str(root)}
