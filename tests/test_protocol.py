"""The wire contract: what travels, what is ignored, what is refused."""

import logging

import pytest
from flwr.app import ConfigRecord

from fedwon import protocol
from fedwon.clients import TrainSpec
from fedwon.config import make_config
from fedwon.protocol import (
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
    assert record["model.norm"] == "ws"  # resolved, never "auto"
    assert record["train.local-epochs"] == cfg.train.local_epochs  # Flower's hyphenated style
    assert record["train.lr"] == 0.2 and record["seed"] == 0
    for key in SERVER_ONLY:
        assert not any(k.endswith(key) or k.endswith(key.replace("_", "-")) for k in keys), key


def test_the_sections_travel_unchanged() -> None:
    """A client gets the run's data, model, train and dp sections as they are: no copies."""
    cfg = make_config({"strategy": "fedwon", "domains": "mnist,usps", "num_clients": 2})
    got = read_client_config(cfg.client_config().to_record())
    assert got.data == cfg.data and got.train == cfg.train and got.dp == cfg.dp
    assert got.model == cfg.model_spec and got.data.domains == ("mnist", "usps")


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


def test_a_server_sending_only_the_required_keys_gets_the_defaults() -> None:
    full = make_config({}).client_config().to_record()
    required = {"model.model", "model.norm", "data.dataset", "seed", "num-rounds"}
    cfg = read_client_config(ConfigRecord({k: v for k, v in full.items() if k in required}))
    assert cfg.train == TrainSpec()  # defaults fill the rest
    assert cfg.data.val_fraction == 0.0  # a data section's own default: no validation share


def test_the_validation_share_travels_to_clients() -> None:
    """It decides what each client trains on: a server's split must reach every client."""
    record = make_config({"val_fraction": 0.2}).client_config().to_record()
    assert record["data.val-fraction"] == 0.2
    assert read_client_config(record).data.val_fraction == 0.2


def test_missing_required_key_and_wrong_type_are_named() -> None:
    record = make_config({}).client_config().to_record()
    del record["model.model"]
    with pytest.raises(ProtocolError, match=r"lacks required key\(s\) \['model.model'\]"):
        read_client_config(record)
    record = make_config({}).client_config().to_record()
    record["train.batch-size"] = "32"
    with pytest.raises(ProtocolError, match="batch_size: expected an integer, got a string '32'"):
        read_client_config(record)
    record["train.batch-size"] = 16
    assert read_client_config(record).train.batch_size == 16


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


def test_the_dp_section_travels_as_it_is() -> None:
    """DP-SGD's settings are the dp section itself (no flattened copies); the run's number of
    rounds travels as the horizon a target epsilon is planned for."""
    cfg = make_config(
        {"strategy": "fedwon", "num_rounds": 7, "dp.enabled": True, "dp.level": "sample"}
        | {"dp.target_epsilon": 3.0, "dp.clip_norm": 0.5, "dp.split": "dim"}
    )
    record = cfg.client_config().to_record()
    assert record["dp.enabled"] is True and record["num-rounds"] == 7
    assert record["dp.clip-norm"] == 0.5 and record["dp.split"] == "dim"
    back = read_client_config(record)
    assert back == cfg.client_config() and back.dp == cfg.dp


def test_the_setup_fingerprint_ignores_what_a_resume_may_change() -> None:
    """FedBN's local layers are tagged with it: a resume raising num_rounds (or moving the
    data, or the device) must find them; another model or lr must not."""
    base = make_config({"strategy": "fedbn", "num_rounds": 2})
    same = [
        base.replace(num_rounds=4),
        base.replace(device="cpu"),
        base.replace(data_root="/moved/data"),
    ]
    other = [base.replace(lr=0.5), base.replace(model="cnn-tiny"), base.replace(seed=1)]
    tag = base.client_config().fingerprint()
    assert all(c.client_config().fingerprint() == tag for c in same)
    assert all(c.client_config().fingerprint() != tag for c in other)
