"""The wire contract between fedwon's ServerApp and ClientApp: record keys and the client config.

Everything that crosses the wire in either direction is named here, and nowhere else:

- the record names of a message (``arrays``, ``config``) and of a reply (``arrays``,
  ``metrics``, ``client``), and the metric keys both sides read (``num-examples``, ...);
- :class:`ClientConfig`, the small set of settings local training needs. It travels in the
  ``config`` ConfigRecord of every message (Flower's strategies add their own keys to the same
  record: ``server-round``, FedProx's ``proximal-mu``, DP's ``clipping_norm``). A client reads
  the keys it knows, **ignores** (and logs once) the keys it does not, so a newer server or
  Flower's own strategies and mods do not break older clients; a missing required key is a
  one-line :class:`ProtocolError` naming it. Server-only settings (engine, Ray, checkpoints,
  sampling) never travel;
- :class:`NodeSettings`, what a node says about itself in its node config (``--node-config``
  of a real SuperNode): its partition, its own data root or data set, threads and device.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

from flwr.app import ConfigRecord
from flwr.app.user_config import UserConfig

log = logging.getLogger(__name__)

# ---- record names ---------------------------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the shared model arrays (message and train reply)
CONFIG = "config"  # ConfigRecord: ClientConfig + Flower's keys (message)
METRICS = "metrics"  # MetricRecord: train or evaluate metrics (reply)
CLIENT = "client"  # ConfigRecord: who replied (reply)

# ---- keys in records ------------------------------------------------------------------------
WEIGHT_KEY = "num-examples"  # MetricRecord: the reply's aggregation weight
PARTITION_KEY = "partition-id"  # CLIENT record: the replying client's partition
DOMAIN_KEY = "domain"  # CLIENT record: the replying client's domain name
ROUND_KEY = "server-round"  # CONFIG record, set by Flower's strategies
PROXIMAL_MU_KEY = "proximal-mu"  # CONFIG record, set by Flower's FedProx
CLIP_NORM_KEY = "dp-clip-norm"  # CONFIG record, set by CentralDP(placement="client")
CLIPPING_KEY = "dp-clipping"  # flat | per_layer
SPLIT_KEY = "dp-split"  # uniform | dim
# train MetricRecord under DP: epsilon spent after the round. Sample level (DP-SGD): each reply
# carries its client's own epsilon and the round's aggregate is the max over its clients.
EPSILON_METRIC = "epsilon"
CLIPPED_METRIC = "clipped_fraction"  # train MetricRecord under DP: share of updates clipped
TRAIN_LOSS = "train_loss"
ACCURACY = "accuracy"
LOSS = "loss"

# ---- node config keys (``flower-supernode --node-config``) ----------------------------------
NODE_PARTITION = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DATA_ROOT = "data-root"
NODE_DATASET = "dataset"
NODE_DOMAIN = "domain"
NODE_THREADS = "threads"
NODE_DEVICE = "device"
NODE_KEYS = (
    NODE_PARTITION,
    NODE_NUM_PARTITIONS,
    NODE_DATA_ROOT,
    NODE_DATASET,
    NODE_DOMAIN,
    NODE_THREADS,
    NODE_DEVICE,
)


class ProtocolError(ValueError):
    """A message or node config lacks something the client needs, or has the wrong type."""


@dataclass(frozen=True)
class ClientConfig:
    """What local training needs, validated on the server, carried by every message.

    Fields without a default are required; fields with one may be absent (an older server).
    On the wire a field ``local_epochs`` is the key ``local-epochs`` (Flower's style).
    Hashable: it keys the client's per-process cache of model, optimizer and data.
    """

    # model
    model: str
    norm: str  # resolved: never "auto"
    # data (the node's own data root / data set / domain override these, see NodeSettings)
    dataset: str
    partition: str
    num_clients: int
    seed: int
    data_root: str = ""
    alpha: float = 0.5
    dirichlet_scope: str = "domain"
    domains: str = ""  # comma-separated subset, empty = all
    train_per_domain: int = 0  # 0 = the data set's default
    test_per_domain: int = 0
    image_size: int = 0
    val_fraction: float = 0.0  # each client's validation share; absent (older server) = none
    # local training
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    agc_clip: float = 0.0
    device: str = "auto"  # a node's own ``device`` overrides it
    # sample-level DP (local DP-SGD, ``dp.level = "sample"``); an older server sends none: off
    dp_sgd: bool = False
    dp_sgd_clip_norm: float = 1.0  # C: bound on one example's gradient
    dp_sgd_clipping: str = "per_layer"  # flat | per_layer
    dp_sgd_split: str = "uniform"  # uniform | dim (per-layer bounds)
    dp_sgd_noise_multiplier: float = 0.0  # 0 = calibrate to dp_sgd_target_epsilon
    dp_sgd_target_epsilon: float = 0.0
    dp_sgd_delta: float = 1e-5
    dp_sgd_accountant: str = "rdp"  # rdp | prv
    dp_sgd_secure_rng: bool = False
    dp_sgd_rounds: int = 0  # the run's num_rounds: the horizon a target epsilon is planned for

    def to_record(self) -> ConfigRecord:
        """The ConfigRecord form (hyphenated keys; a strategy adds its own keys to it)."""
        return ConfigRecord({wire_key(f.name): getattr(self, f.name) for f in fields(self)})


def wire_key(field_name: str) -> str:
    """``local_epochs`` -> ``local-epochs``: Flower's record keys use hyphens."""
    return field_name.replace("_", "-")


_FIELDS = {wire_key(f.name): f for f in fields(ClientConfig)}
_REQUIRED = [k for k, f in _FIELDS.items() if f.default is dataclasses.MISSING]
_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
# Keys set by strategies and wrappers, read by the training step or a mod, not by ClientConfig.
FLOWER_KEYS = frozenset({ROUND_KEY, PROXIMAL_MU_KEY, CLIP_NORM_KEY, CLIPPING_KEY, SPLIT_KEY})
_reported_unknown: set[str] = set()


def _coerce(key: str, value: Any, kind: type) -> Any:
    """A record value as the field's type (ints may arrive as floats from older writers)."""
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ProtocolError(
        f"message config key {key!r} should be {kind.__name__}, got {type(value).__name__} "
        f"{value!r}"
    )


@lru_cache(maxsize=32)
def _parse(items: frozenset[tuple[str, Any]]) -> ClientConfig:
    values = dict(items)
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ProtocolError(
            f"message config lacks required key(s) {missing}: is the server a fedwon ServerApp "
            "of a compatible version?"
        )
    unknown = sorted(set(values) - set(_FIELDS) - FLOWER_KEYS - _reported_unknown)
    if unknown:
        _reported_unknown.update(unknown)
        log.info("ignoring message config key(s) this client does not use: %s", unknown)
    kwargs = {
        f.name: _coerce(k, values[k], _TYPES[str(f.type)])
        for k, f in _FIELDS.items()
        if k in values
    }
    return ClientConfig(**kwargs)


def read_client_config(record: ConfigRecord) -> ClientConfig:
    """The ClientConfig a message carries (parsed once per distinct record, then cached).

    Lists (which ConfigRecords admit) never belong to a ClientConfig; they are dropped from
    the cache key, so Flower or a newer server may send them without cost.
    """
    items = frozenset((k, v) for k, v in record.items() if not isinstance(v, list | bytes))
    return _parse(items)


@dataclass(frozen=True)
class NodeSettings:
    """What a node's own config says: which data it holds and what it runs on.

    In simulation the engine gives every node ``partition-id``/``num-partitions`` (and the fast
    engine ``threads``); a real SuperNode sets them with ``--node-config``. ``domain`` names the
    domain whose data the node holds: the node then loads only that domain, split into
    ``num-partitions`` parts (default 1) of which it is ``partition-id`` (default 0).
    """

    partition_id: int | None = None
    num_partitions: int | None = None
    data_root: str = ""
    dataset: str = ""
    domain: str = ""
    threads: int = 0  # 0 = leave torch's default
    device: str = ""  # empty = the run's ``device``


def _node_int(node_config: UserConfig, key: str) -> int | None:
    if key not in node_config:
        return None
    value = node_config[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"node config {key!r} must be a non-negative integer, got {value!r}")
    return value


def read_node_settings(node_config: UserConfig) -> NodeSettings:
    """Parse a node config (keys in :data:`NODE_KEYS`; others are left to other apps).

    Cached per distinct node config: a simulation worker sees a handful of them many times.
    """
    return _node_settings(frozenset(node_config.items()))


@lru_cache(maxsize=4096)
def _node_settings(items: frozenset[tuple[str, Any]]) -> NodeSettings:
    node_config = dict(items)
    device = str(node_config.get(NODE_DEVICE, ""))
    if device not in ("", "auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ProtocolError(
            f"node config 'device' must be auto, cpu, cuda or cuda:N, got {device!r}"
        )
    return NodeSettings(
        partition_id=_node_int(node_config, NODE_PARTITION),
        num_partitions=_node_int(node_config, NODE_NUM_PARTITIONS),
        data_root=str(node_config.get(NODE_DATA_ROOT, "")),
        dataset=str(node_config.get(NODE_DATASET, "")),
        domain=str(node_config.get(NODE_DOMAIN, "")),
        threads=_node_int(node_config, NODE_THREADS) or 0,
        device=device,
    )
