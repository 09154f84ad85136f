"""Sizing a run to N SuperNodes, and what each node is told about itself."""

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedwon.config import load_config, make_config
from fedwon.deploy.commands import write_toml
from fedwon.deploy.errors import DeployError
from fedwon.deploy.plan import fit_to_nodes, node_config

SIMS = Path(__file__).resolve().parents[2] / "sims"


def test_fewer_nodes_than_domains_use_the_first_domains() -> None:
    cfg, changes = fit_to_nodes(load_config(SIMS / "cross_silo.toml", []), 2, rounds=3)
    assert changes == {"num_clients": 2, "num_rounds": 3, "domains": "mnist,mnist_m"}
    assert (cfg.data.num_clients, cfg.server.num_rounds, cfg.data.domains) == (
        2,
        3,
        ("mnist", "mnist_m"),
    )


def test_a_multiple_of_the_domains_keeps_them_all() -> None:
    cfg, changes = fit_to_nodes(load_config(SIMS / "cross_silo.toml", []), 10)
    assert changes == {"num_clients": 10} and cfg.data.domains is None


@pytest.mark.parametrize(("overrides", "nodes"), [([], 7), (['domains="mnist,usps"'], 3)])
def test_nodes_that_do_not_fit_the_domains_are_refused(overrides: list[str], nodes: int) -> None:
    cfg = load_config(SIMS / "cross_silo.toml", overrides)
    with pytest.raises(DeployError, match=rf"--nodes {nodes} does not fit partition 'domain'"):
        fit_to_nodes(cfg, nodes)


def test_sampling_and_min_clients_are_capped_at_the_nodes() -> None:
    cfg = make_config(
        {"partition": "iid", "num_clients": 100, "clients_per_round": 10, "min_clients": 5}
    )
    fitted, changes = fit_to_nodes(cfg, 3)
    assert changes == {"num_clients": 3, "clients_per_round": 3, "min_clients": 3}
    assert fitted.sampled_per_round == 3


def test_node_config_round_trips_through_flowers_parser(tmp_path: Path) -> None:
    cfg = make_config({"data_root": "/data/my digits", "cpus_per_client": 2, "device": "cpu"})
    values = node_config(cfg, 1, 5)
    path = write_toml(tmp_path / "node-1.toml", values)
    assert parse_config_args([str(path)]) == {
        "partition-id": 1,
        "num-partitions": 5,
        "dataset": "digits-embedded",
        "data-root": "/data/my digits",
        "threads": 2,
        "device": "cpu",
    }
    assert "data-root" not in node_config(make_config({}), 0, 5)
