"""Flower Datasets' partitioners (``flwr-datasets``) over fedwon's pool of domains.

fedwon pools the selected domains (:class:`~fedwon.datasets.partition.Pool`: labels and domain
ids, images untouched); here that pool becomes a small ``datasets.Dataset`` (columns ``row``,
``domain``, ``cell``) and a Flower Datasets partitioner splits it, so client ``pid`` is the
partitioner's partition ``pid``. Which partitioner runs (:func:`partitioner_for`):

``natural_id``
    ``NaturalIdPartitioner(partition_by="domain")``: one client per domain (FedBN's layout),
    clients in the federation's domain order; each holds its domain's whole train and test sets.
    Any data set (it needs only domain ids); ``num_clients`` must equal the number of domains.
``iid`` (``dataset = "hf"``)
    The pool shuffled with the seed (as ``FederatedDataset`` does) and cut by ``IidPartitioner``
    into ``num_clients`` contiguous shards; the test pool likewise.
``dirichlet`` (``dataset = "hf"``)
    ``DirichletPartitioner(partition_by="cell", alpha, min_partition_size=1)``: per domain over
    the class (scope ``domain``: the domain's ``k`` clients), or over the pooled ``(domain,
    class)`` cells (scope ``global``), as fedwon's own. Test shares follow the train shares
    (:func:`~fedwon.datasets.partition.proportional_test_owner`), because Flower Datasets
    partitions one split at a time and would draw unrelated label mixes for the test split.

For the built-in data sets ``iid`` and ``dirichlet`` stay fedwon's own partitioners (their
golden runs are pinned). Every client must hold training data: a partition that leaves one empty
is a one-line :class:`DataError` naming it. ``flwr-datasets`` is optional
(``pip install fedwon[hf]``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from fedwon.datasets.base import rng_for
from fedwon.datasets.errors import DataError
from fedwon.datasets.partition import (
    PARTITIONERS,
    Assignment,
    Partitioner,
    PartitionOptions,
    Pool,
    clients_per_domain,
    proportional_test_owner,
    to_owner,
    to_parts,
)
from fedwon.datasets.spec import CHOICES

HF_DATASET = "hf"  # the data set whose iid / dirichlet are Flower Datasets' (see hf.NAME)
EXTRA = "pip install 'fedwon[hf]'"


def _flwr_partitioners() -> Any:
    try:
        from flwr_datasets import partitioner
    except ImportError:
        raise DataError(
            f"Flower Datasets' partitioners need flwr-datasets (Python >= 3.11): {EXTRA}"
        ) from None
    return partitioner


def _as_dataset(rows: np.ndarray, domain: np.ndarray, cell: np.ndarray) -> Any:
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict(
        {"row": rows.astype(np.int64), "domain": domain.astype(np.int64), "cell": cell}
    )


def _rows_of(partitioner: Any, pid: int) -> np.ndarray:
    # NaturalIdPartitioner draws a tqdm bar on stderr (no switch): keep it off the run's output
    with contextlib.redirect_stderr(io.StringIO()):
        part = partitioner.load_partition(pid)
    return np.sort(np.asarray(part["row"], dtype=np.int64))


def _require_nonempty(train: list[np.ndarray], name: str, detail: str) -> None:
    for pid, rows in enumerate(train):
        if len(rows) == 0:
            raise DataError(
                f"partition {name!r} (Flower Datasets) leaves client {pid} without training "
                f"examples ({detail}); lower num_clients"
            )


def _seed(opts: PartitionOptions, *keys: str) -> int:
    return int(rng_for(opts.seed, *keys).integers(2**31 - 1))


def partition_natural_id(pool: Pool, opts: PartitionOptions) -> Assignment:
    """One client per domain with ``NaturalIdPartitioner`` on the domain ids (module doc)."""
    flwr = _flwr_partitioners()
    if opts.num_clients != len(pool.domains):
        raise DataError(
            f"partition 'natural_id' gives one client per domain: num_clients must be "
            f"{len(pool.domains)} for the domains {list(pool.domains)}, got {opts.num_clients}"
        )
    parts: dict[str, list[np.ndarray]] = {}
    for split, domain_ids in (("train", pool.train_d), ("test", pool.test_d)):
        partitioner = flwr.NaturalIdPartitioner(partition_by="domain")
        n = len(domain_ids)
        partitioner.dataset = _as_dataset(np.arange(n), domain_ids, domain_ids)
        by_domain: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(pool.domains)
        # partition ids follow the sorted natural ids, i.e. the domains a split has; the
        # mapping is filled in by num_partitions
        for pid in range(partitioner.num_partitions):
            domain = int(partitioner.partition_id_to_natural_id[pid])
            by_domain[domain] = _rows_of(partitioner, pid)
        parts[split] = by_domain
    _require_nonempty(parts["train"], "natural_id", "a domain without training rows")
    return Assignment(parts["train"], parts["test"], list(range(len(pool.domains))))


def partition_iid(pool: Pool, opts: PartitionOptions) -> Assignment:
    """``IidPartitioner`` shards of the seeded shuffle of the train pool and of the test pool."""
    flwr = _flwr_partitioners()
    k = opts.num_clients
    n = len(pool.train_y)
    if n < k:  # IidPartitioner would fail with an IndexError deep inside datasets
        shards = [np.arange(1)] * n + [np.zeros(0, dtype=np.int64)] * (k - n)
        _require_nonempty(shards, "iid", f"{n} examples, num_clients={k}")
    parts: dict[str, list[np.ndarray]] = {}
    for split, labels, domain_ids in (
        ("train", pool.train_y, pool.train_d),
        ("test", pool.test_y, pool.test_d),
    ):
        partitioner = flwr.IidPartitioner(num_partitions=k)
        shuffled = _as_dataset(np.arange(len(labels)), domain_ids, labels)
        partitioner.dataset = shuffled.shuffle(seed=_seed(opts, "partition-iid-flwr", split))
        parts[split] = [_rows_of(partitioner, pid) for pid in range(k)]
    _require_nonempty(parts["train"], "iid", f"{len(pool.train_y)} examples, num_clients={k}")
    domain_of = [int(np.argmax(np.bincount(pool.train_d[p]))) for p in parts["train"]]
    return Assignment(parts["train"], parts["test"], domain_of)


def _dirichlet_group(
    pool: Pool,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    k: int,
    opts: PartitionOptions,
    where: str,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    flwr = _flwr_partitioners()
    train_cells = pool.cells("train")[train_idx]
    partitioner = flwr.DirichletPartitioner(
        num_partitions=k,
        partition_by="cell",
        alpha=opts.alpha,
        min_partition_size=1,  # fedwon's promise: no client without training data
        self_balancing=False,
        shuffle=True,
        seed=_seed(opts, "partition-dirichlet-flwr", where),
    )
    partitioner.dataset = _as_dataset(
        np.arange(len(train_idx)), pool.train_d[train_idx], train_cells
    )
    try:
        local = [_rows_of(partitioner, pid) for pid in range(k)]
    except ValueError as err:
        raise DataError(
            f"partition 'dirichlet' (Flower Datasets' DirichletPartitioner) leaves a client "
            f"empty: {len(train_idx)} examples {where} for {k} clients at alpha={opts.alpha} "
            f"({' '.join(str(err).split())}); raise alpha or lower num_clients"
        ) from None
    _require_nonempty(local, "dirichlet", f"{len(train_idx)} examples {where}")
    train_owner = to_owner(local, len(train_idx))
    test_cells = pool.cells("test")[test_idx]
    rng = rng_for(opts.seed, "partition-dirichlet-flwr-test", where)
    test_owner = proportional_test_owner(train_owner, train_cells, test_cells, k, rng)
    return [train_idx[p] for p in local], [test_idx[p] for p in to_parts(test_owner, k)]


def partition_dirichlet(pool: Pool, opts: PartitionOptions) -> Assignment:
    """``DirichletPartitioner`` label skew per domain or across the pool (module doc)."""
    if opts.dirichlet_scope == "global":
        train, test = _dirichlet_group(
            pool,
            np.arange(len(pool.train_y)),
            np.arange(len(pool.test_y)),
            opts.num_clients,
            opts,
            "in the pool",
        )
        domain_of = [int(np.argmax(np.bincount(pool.train_d[p]))) for p in train]
        return Assignment(train, test, domain_of)
    k = clients_per_domain(opts.num_clients, pool.domains, "dirichlet")
    train, test, domain_of = [], [], []
    for d, name in enumerate(pool.domains):
        group_train, group_test = _dirichlet_group(
            pool,
            np.flatnonzero(pool.train_d == d),
            np.flatnonzero(pool.test_d == d),
            k,
            opts,
            f"in domain {name!r}",
        )
        train += group_train
        test += group_test
        domain_of += [d] * k
    return Assignment(train, test, domain_of)


FLWR_PARTITIONERS: dict[str, Partitioner] = {
    "natural_id": partition_natural_id,
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
}
"""Flower Datasets' partitioners by fedwon's partition name."""

PARTITION_NAMES: tuple[str, ...] = (*PARTITIONERS, "natural_id")
CHOICES["partition"] = PARTITION_NAMES  # what a data section may name


def partitioner_for(dataset: str, partition: str) -> Callable[[Pool, PartitionOptions], Assignment]:
    """The partitioner a data section names: Flower Datasets' for ``natural_id`` and for any
    partition of ``dataset = "hf"`` it has, fedwon's own otherwise."""
    if partition == "natural_id" or (dataset == HF_DATASET and partition in FLWR_PARTITIONERS):
        return FLWR_PARTITIONERS[partition]
    if partition not in PARTITIONERS:
        raise DataError(f"unknown partition {partition!r}; valid: {list(PARTITION_NAMES)}")
    return PARTITIONERS[partition]
