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

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flwr.app import ConfigRecord
from flwr.app.user_config import UserConfig
from pydantic import ValidationError

from fedwon.clients.spec import TrainSpec
from fedwon.common.records import (  # noqa: F401  (re-exported: the wire contract names them)
    ACCURACY,
    ARRAYS,
    CLIENT,
    CLIP_NORM_KEY,
    CLIP_NORM_METRIC,
    CLIPPED_METRIC,
    CLIPPING_KEY,
    CONFIG,
    DOMAIN_KEY,
    EPSILON_METRIC,
    LOSS,
    METRICS,
    NODE_DATA_ROOT,
    NODE_DATASET,
    NODE_DEVICE,
    NODE_DOMAIN,
    NODE_KEYS,
    NODE_NUM_PARTITIONS,
    NODE_PARTITION,
    NODE_STATE_DIR,
    NODE_THREADS,
    PARTITION_KEY,
    PROXIMAL_MU_KEY,
    ROUND_KEY,
    RUN_OUT_KEY,
    SPLIT_KEY,
    TRAIN_LOSS,
    UNCLIPPED_KEY,
    WEIGHT_KEY,
)
from fedwon.common.section import Section
from fedwon.datasets.spec import DataSpec
from fedwon.models.spec import ModelSpec
from fedwon.privacy.config import DPConfig

log = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """A message or node config lacks something the client needs, or has the wrong type."""


@dataclass(frozen=True)
class ClientConfig:
    """What local training needs, validated on the server, carried by every message: the run's
    data, model (norm resolved), train and dp sections as they are, its seed, and its number
    of rounds (the horizon a DP-SGD target epsilon is planned for).

    On the wire a section's key is ``<section>.<key>`` with hyphens (``train.local-epochs``,
    ``dp.clip-norm``); ``seed`` and ``num-rounds`` stand alone. Hashable: it keys the client's
    per-process cache of model, optimizer and data.
    """

    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    dp: DPConfig
    seed: int
    num_rounds: int

    def to_record(self) -> ConfigRecord:
        """The ConfigRecord form (a strategy adds its own keys to it)."""
        record: dict[str, Any] = {SEED_KEY: self.seed, NUM_ROUNDS_KEY: self.num_rounds}
        for name in SECTION_TYPES:
            section: Section = getattr(self, name)
            flat = (
                section.to_flat(prefix="") if isinstance(section, DPConfig) else section.to_flat()
            )
            record.update({f"{name}.{wire_key(k)}": v for k, v in flat.items()})
        return ConfigRecord(record)

    def fingerprint(self) -> str:
        """A short hash of the training setup: a client's local layers saved under one setup
        are never loaded under another (e.g. another model whose shapes would not fit). What
        a resumed run may change without changing what is trained (the number of rounds, the
        device, where the same data files lie) is left out, so FedBN resumes exactly."""
        items = {k: v for k, v in self.to_record().items() if k not in _NOT_THE_SETUP}
        return hashlib.sha1(repr(sorted(items.items())).encode()).hexdigest()[:16]

    def node_data(self, node: NodeSettings) -> DataSpec:
        """The data a client reads: the run's data section, overridden by the node's own (its
        data root and data set; a node naming a ``domain`` holds only that domain, split into
        ``num-partitions`` parts)."""
        updates: dict[str, Any] = {}
        if node.dataset:
            updates["dataset"] = node.dataset
        if node.data_root:
            updates["data_root"] = node.data_root
        if node.domain:
            updates["domains"] = (node.domain,)
            updates["num_clients"] = node.num_partitions or 1
        if not updates:
            return self.data
        try:
            return DataSpec.model_validate({**self.data.model_dump(), **updates})
        except ValidationError as err:
            raise ProtocolError(f"node config: {_validation_line(err)}") from None


def wire_key(field_name: str) -> str:
    """``local_epochs`` -> ``local-epochs``: Flower's record keys use hyphens."""
    return field_name.replace("_", "-")


SEED_KEY = "seed"
NUM_ROUNDS_KEY = "num-rounds"
_NOT_THE_SETUP = frozenset({NUM_ROUNDS_KEY, "train.device", "data.data-root"})
SECTION_TYPES: dict[str, type[Section]] = {
    "data": DataSpec,
    "model": ModelSpec,
    "train": TrainSpec,
    "dp": DPConfig,
}
_SECTION_FIELDS = {
    name: {wire_key(f): f for f in cls.model_fields} for name, cls in SECTION_TYPES.items()
}
_REQUIRED = [SEED_KEY, NUM_ROUNDS_KEY, "model.model", "model.norm", "data.dataset"]
# Keys set by strategies and wrappers, read by the training step or a mod, not by ClientConfig.
FLOWER_KEYS = frozenset({ROUND_KEY, PROXIMAL_MU_KEY, CLIP_NORM_KEY, CLIPPING_KEY, SPLIT_KEY})
_reported_unknown: set[str] = set()


def _validation_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


@lru_cache(maxsize=32)
def _parse(items: frozenset[tuple[str, Any]]) -> ClientConfig:
    values = dict(items)
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ProtocolError(
            f"message config lacks required key(s) {missing}: is the server a fedwon ServerApp "
            "of a compatible version?"
        )
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTION_TYPES}
    unknown = []
    for key, value in values.items():
        name, _, field = key.partition(".")
        if name in sections and field in _SECTION_FIELDS[name]:
            sections[name][_SECTION_FIELDS[name][field]] = value
        elif key not in (SEED_KEY, NUM_ROUNDS_KEY) and key not in FLOWER_KEYS:
            unknown.append(key)
    unknown = sorted(set(unknown) - _reported_unknown)
    if unknown:
        _reported_unknown.update(unknown)
        log.info("ignoring message config key(s) this client does not use: %s", unknown)
    seed, num_rounds = values[SEED_KEY], values[NUM_ROUNDS_KEY]
    for key, value in ((SEED_KEY, seed), (NUM_ROUNDS_KEY, num_rounds)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"message config key {key!r} should be int, got {value!r}")
    try:
        built = {name: SECTION_TYPES[name].model_validate(v) for name, v in sections.items()}
    except ValidationError as err:
        raise ProtocolError(f"message config: {_validation_line(err)}") from None
    data = built["data"].model_copy(update={"seed": seed})
    return ClientConfig(
        data=data,  # type: ignore[arg-type]
        model=built["model"],  # type: ignore[arg-type]
        train=built["train"],  # type: ignore[arg-type]
        dp=built["dp"],  # type: ignore[arg-type]
        seed=seed,
        num_rounds=num_rounds,
    )


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
    state_dir: str = ""  # empty = Context.state only (fedwon.clients.node_state)


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
        state_dir=str(node_config.get(NODE_STATE_DIR, "")),
    )


def node_partition(node: NodeSettings, num_clients: int) -> int:
    """This node's partition of a federation of ``num_clients``, checked against what the
    node config says."""
    if node.domain:
        pid = node.partition_id or 0
    elif node.partition_id is None:
        raise ProtocolError("node config lacks 'partition-id' (or a 'domain' the node holds)")
    else:
        pid = node.partition_id
        if node.num_partitions is not None and node.num_partitions != num_clients:
            raise ProtocolError(
                f"node config num-partitions={node.num_partitions} but the run has "
                f"num_clients={num_clients}"
            )
    if not 0 <= pid < num_clients:
        raise ProtocolError(
            f"node config partition-id={pid} is out of range for {num_clients} clients"
        )
    return pid
