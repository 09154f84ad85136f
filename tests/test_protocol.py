"""The wire contract: what travels, what is ignored, what is refused."""

import logging

import pytest
from flwr.app import ConfigRecord

from fedwon import protocol
from fedwon.config import make_config
from fedwon.protocol import (
    ClientConfig,
    ProtocolError,
    read_client_config,
    read_node_settings,
)

SERVER_ONLY = (
    "engine",
    "ray_address",
    "num_workers",
    "checkpoint_every",
    "cpus_per_client",
    "gpus_per_client",
    "aggregator",
    "min_clients",
    "clients_per_round",
    "eval_every",
)


def test_client_config_round_trips_and_server_only_settings_never_travel() -> None:
    cfg = make_config({"strategy": "fedwon", "lr": 0.2, "engine": "flower", "num_workers": 3})
    record = cfg.client_config().to_record()
    assert read_client_config(record) == cfg.client_config()
    keys = set(record.keys())
    assert record["norm"] == "ws"  # resolved, never "auto"
    assert record["local-epochs"] == cfg.local_epochs  # Flower's hyphenated style
    for key in SERVER_ONLY:
        assert key not in keys and key.replace("_", "-") not in keys


def test_unknown_keys_are_ignored_and_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "_reported_unknown", set())  # as in a fresh process
    record = make_config({}).client_config().to_record()
    record["proximal-mu"] = 0.1  # Flower's FedProx
    record["clipping_norm"] = 1.0  # Flower's client-side DP
    record["a-newer-server-key"] = "x"
    with caplog.at_level(logging.INFO, logger="fedwon.protocol"):
        first = read_client_config(record)
        record["server-round"] = 2  # another record, same unknown keys
        second = read_client_config(record)
    assert first == second == make_config({}).client_config()
    logged = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(logged) == 1
    assert "a-newer-server-key" in logged[0] and "clipping_norm" in logged[0]
    assert "proximal-mu" not in logged[0]  # read by the training step


def test_an_older_server_without_optional_keys_still_works() -> None:
    full = make_config({}).client_config().to_record()
    required = {"model", "norm", "dataset", "partition", "num-clients", "seed"}
    old = ConfigRecord({k: v for k, v in full.items() if k in required})
    cfg = read_client_config(old)
    assert cfg.batch_size == ClientConfig.batch_size  # defaults fill the rest
    assert cfg.val_fraction == 0.0  # an older server's clients trained on all their data


def test_the_validation_share_travels_to_clients() -> None:
    """It decides what each client trains on: a server's split must reach every client."""
    record = make_config({"val_fraction": 0.2}).client_config().to_record()
    assert record["val-fraction"] == 0.2
    assert read_client_config(record).val_fraction == 0.2


def test_missing_required_key_and_wrong_type_are_named() -> None:
    record = make_config({}).client_config().to_record()
    del record["model"]
    with pytest.raises(ProtocolError, match=r"lacks required key\(s\) \['model'\]"):
        read_client_config(record)
    record = make_config({}).client_config().to_record()
    record["batch-size"] = "32"
    with pytest.raises(ProtocolError, match="'batch-size' should be int, got str"):
        read_client_config(record)
    record["batch-size"] = 32.0  # an integral float is an int
    assert read_client_config(record).batch_size == 32


def test_node_settings_from_a_supernode_config() -> None:
    node = read_node_settings(
        {
            "partition-id": 3,
            "num-partitions": "5",
            "data-root": "/data",
            "threads": 4,
            "device": "cpu",
        }
    )
    assert (node.partition_id, node.num_partitions, node.data_root) == (3, 5, "/data")
    assert (node.threads, node.device) == (4, "cpu")
    assert read_node_settings({}).partition_id is None
    with pytest.raises(ProtocolError, match="'partition-id' must be a non-negative integer"):
        read_node_settings({"partition-id": -1})
    with pytest.raises(ProtocolError, match="'device' must be auto, cpu, cuda or cuda:N"):
        read_node_settings({"device": "tpu"})


def test_dp_sgd_settings_travel_with_sample_level_dp_only() -> None:
    plain = make_config({"strategy": "fedwon"}).client_config()
    assert plain.dp_sgd is False
    user = make_config(
        {"strategy": "fedwon", "dp.enabled": True, "dp.noise_multiplier": 1.0, "min_clients": 5}
    ).client_config()
    assert user == plain  # user-level DP happens on the server (or in a mod): nothing to send
    cfg = make_config(
        {"strategy": "fedwon", "num_rounds": 7, "dp.enabled": True, "dp.level": "sample"}
        | {"dp.target_epsilon": 3.0, "dp.clip_norm": 0.5, "dp.split": "dim"}
    )
    record = cfg.client_config().to_record()
    assert record["dp-sgd"] is True and record["dp-sgd-rounds"] == 7
    assert record["dp-sgd-clip-norm"] == 0.5 and record["dp-sgd-split"] == "dim"
    assert read_client_config(record) == cfg.client_config()
