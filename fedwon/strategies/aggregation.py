"""Pure helpers on records: which replies are usable, the weight behind an aggregate,
per-domain metrics.

Kept free of strategy state so they can be tested against hand-computed values and used with
any Flower strategy (FedAvg, FedProx, FedAdam, DP wrappers) that :class:`RoundRules` wraps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedwon.common.errors import failure_line
from fedwon.common.records import CLIENT, DOMAIN_KEY, PARTITION_KEY, WEIGHT_KEY
from fedwon.engine.fastarrays import payload_view

log = logging.getLogger(__name__)


def as_number(value: object) -> float:
    """A record value as a number (records type their values as unions of scalars and lists)."""
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}: {value!r}")


def reply_weight(content: RecordDict, weight_key: str = WEIGHT_KEY) -> float:
    """A reply's aggregation weight: ``weight_key`` of its (single) MetricRecord."""
    return as_number(next(iter(content.metric_records.values()))[weight_key])


def total_weight(contents: Iterable[RecordDict], weight_key: str = WEIGHT_KEY) -> int:
    """Examples behind an aggregate (the sum of the replies' weights)."""
    return int(sum(reply_weight(c, weight_key) for c in contents))


def non_finite_arrays(content: RecordDict) -> list[str]:
    """Names of arrays in a reply holding NaN or Inf (an update that would poison the average).

    Reads the values in place (:func:`all_finite`: one BLAS pass, no temporary)."""
    return [name for record in content.array_records.values() for name in non_finite_in(record)]


def non_finite_in(record: ArrayRecord) -> list[str]:
    """Names of the arrays of one ``ArrayRecord`` holding NaN or Inf (see
    :func:`non_finite_arrays`; also used on the server's own aggregate)."""
    bad = []
    with np.errstate(over="ignore", invalid="ignore"):  # the probe may overflow: no warning
        for name, array in record.items():
            values = payload_view(array)
            if values.dtype.kind == "f" and not all_finite(values):
                bad.append(name)
    return bad


_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite (no NaN, no +-Inf), reading ``values`` once.

    First :func:`finite_probe`, then, only where it is not finite, element by element. The
    answer is always exact."""
    return finite_probe(values) or bool(np.isfinite(values).all())


def finite_probe(values: np.ndarray) -> bool:
    """True only if every value is finite: ``v . v`` (a BLAS dot, ~3x faster than ``sum``) is
    finite. NaN and Inf make it non-finite, and finite values only by overflowing (|v| > ~1e19
    in float32): False means "check element by element", not "not finite". (Callers silence
    numpy's overflow warning: ``np.errstate(over="ignore", invalid="ignore")``.)"""
    flat = values.reshape(-1)
    probe = np.dot(flat, flat) if flat.dtype in _BLAS_FLOATS else flat.sum()
    return math.isfinite(probe)


def non_finite_metrics(content: RecordDict) -> list[str]:
    """Names of scalar metrics in a reply that are NaN or Inf (a diverged client's loss)."""
    bad = []
    for record in content.metric_records.values():
        for name, value in record.items():
            values = value if isinstance(value, list) else [value]
            if not all(math.isfinite(v) for v in values):
                bad.append(name)
    return bad


def reply_problem(msg: Message, fold: Callable[[Message], list[str]] | None = None) -> str | None:
    """Why ``msg`` cannot be aggregated (one line), or None when it can.

    ``fold`` (the streamed mean's checked ``add``) adds a reply whose metrics are finite and
    returns the names of its non-finite arrays, adding nothing then: the arrays are checked
    as they are folded, not read once more. The answer is the same either way."""
    node = msg.metadata.src_node_id
    if msg.has_error():
        reason = str(msg.error.reason)
        log.debug("node %s failed:\n%s", node, reason)  # the whole traceback, with -v
        return f"node {node} failed: {failure_line(reason)}"
    bad = non_finite_metrics(msg.content)
    # with ``fold``, a reply with finite metrics is folded unless its arrays are not finite
    bad = fold(msg) if fold is not None and not bad else non_finite_arrays(msg.content) + bad
    if bad:
        return f"node {node} sent non-finite values in {', '.join(bad[:5])}"
    return None


def reply_order(msg: Message) -> tuple[int, int]:
    """Aggregate in partition order: float sums then do not depend on arrival order or on the
    (random, per-run) node ids, so engines and resumed runs agree bit for bit."""
    client = msg.content.config_records.get(CLIENT)
    partition = int(as_number(client[PARTITION_KEY])) if client and PARTITION_KEY in client else -1
    return partition, msg.metadata.src_node_id


def per_domain_metrics(records: Sequence[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted means overall and per domain (``accuracy/<domain>``, ``loss/<domain>``).

    Each client names its domain in its reply's ``client`` record; a domain's accuracy is the
    accuracy over the union of its clients' test examples, which equals the example-weighted
    mean of their accuracies. (The signature is Flower's ``evaluate_metrics_aggr_fn``.)
    """
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = reply_weight(record, weight_key)
        groups = [""]
        client = record.config_records.get(CLIENT)
        if client is not None and DOMAIN_KEY in client:
            groups.append(f"/{client[DOMAIN_KEY]!s}")
        for key, value in metrics.items():
            if key == weight_key or isinstance(value, list):
                continue
            for group in groups:
                totals[key + group] = totals.get(key + group, 0.0) + float(value) * weight
                weights[key + group] = weights.get(key + group, 0.0) + weight
    result = MetricRecord({k: totals[k] / weights[k] for k in sorted(totals) if weights[k] > 0})
    result[weight_key] = total_weight(records, weight_key)
    return result
