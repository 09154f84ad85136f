"""Pure helpers on records: which replies are usable, which arrays stay local, per-domain metrics.

Kept free of strategy state so they can be tested against hand-computed values and reused by
any Flower strategy (FedAvg, FedProx, FedAdam, DP wrappers) that our strategies subclass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

DOMAIN_KEY = "domain-index"
WEIGHT_KEY = "num-examples"
PARTITION_KEY = "partition-id"  # in the reply's "client" ConfigRecord


def as_number(value: object) -> float:
    """A record value as a number (records type their values as unions of scalars and lists)."""
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}: {value!r}")


def reply_weight(content: RecordDict, weight_key: str) -> float:
    """A reply's aggregation weight: ``weight_key`` of its (single) MetricRecord."""
    return as_number(next(iter(content.metric_records.values()))[weight_key])


def total_weight(contents: Iterable[RecordDict], weight_key: str) -> int:
    """Examples behind an aggregate (the sum of the replies' weights)."""
    return int(sum(reply_weight(c, weight_key) for c in contents))


def non_finite_arrays(content: RecordDict) -> list[str]:
    """Names of arrays in a reply holding NaN or Inf (an update that would poison the average)."""
    bad = []
    for record in content.array_records.values():
        for name, array in record.items():
            values = array.numpy()
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                bad.append(name)
    return bad


def non_finite_metrics(content: RecordDict) -> list[str]:
    """Names of scalar metrics in a reply that are NaN or Inf (a diverged client's loss)."""
    bad = []
    for record in content.metric_records.values():
        for name, value in record.items():
            values = value if isinstance(value, list) else [value]
            if not all(np.isfinite(float(v)) for v in values):
                bad.append(name)
    return bad


def split_usable(replies: Iterable[Message]) -> tuple[list[Message], list[str]]:
    """Replies that can be aggregated, and a one-line reason for each one that cannot."""
    usable: list[Message] = []
    problems: list[str] = []
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            reason = " ".join(str(msg.error.reason).split())  # one line, whatever the engine
            problems.append(f"node {node} failed: {reason}")
            continue
        bad = non_finite_arrays(msg.content) + non_finite_metrics(msg.content)
        if bad:
            problems.append(f"node {node} sent non-finite values in {', '.join(bad[:5])}")
            continue
        usable.append(msg)
    return sorted(usable, key=_reply_order), problems


def _reply_order(msg: Message) -> tuple[int, int]:
    """Aggregate in partition order: float sums then do not depend on arrival order or on the
    (random, per-run) node ids, so engines and resumed runs agree bit for bit."""
    client = msg.content.config_records.get("client")
    partition = int(as_number(client[PARTITION_KEY])) if client and PARTITION_KEY in client else -1
    return partition, msg.metadata.src_node_id


def without_keys(arrays: ArrayRecord, keys: Iterable[str]) -> ArrayRecord:
    """A copy of ``arrays`` lacking ``keys`` (FedBN: what never leaves a client)."""
    drop = set(keys)
    return ArrayRecord({k: v for k, v in arrays.items() if k not in drop})


def per_domain_metrics(
    records: Sequence[RecordDict], weight_key: str, domains: Sequence[str]
) -> MetricRecord:
    """Example-weighted means overall and per domain (``accuracy/<domain>``, ``loss/<domain>``).

    Each client reports its metrics and the index of its domain; a domain's accuracy is the
    accuracy over the union of its clients' test examples, which equals the example-weighted
    mean of their accuracies.
    """
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = reply_weight(record, weight_key)
        groups = [""]
        if DOMAIN_KEY in metrics:
            index = int(as_number(metrics[DOMAIN_KEY]))
            name = domains[index] if 0 <= index < len(domains) else f"domain-{index}"
            groups.append(f"/{name}")
        for key, value in metrics.items():
            if key in (weight_key, DOMAIN_KEY) or isinstance(value, list):
                continue
            for group in groups:
                totals[key + group] = totals.get(key + group, 0.0) + float(value) * weight
                weights[key + group] = weights.get(key + group, 0.0) + weight
    result = MetricRecord({k: totals[k] / weights[k] for k in sorted(totals) if weights[k] > 0})
    result[weight_key] = total_weight(records, weight_key)
    return result
