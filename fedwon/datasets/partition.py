"""Partitioners: which train and test samples each client (``partition-id``) holds.

Everything here is pure numpy on label / domain-id vectors; images are never touched. The samples
of all selected domains are *pooled* (domain 0's samples first, then domain 1's, ...) and a
partitioner returns, per client, indices into that pool.

Partitioners (:data:`PARTITIONERS`):

``domain``
    ``k = num_clients / num_domains`` clients per domain; client ``pid`` holds domain
    ``pid // k``. Each domain's train set and its test set are each split into ``k`` disjoint,
    class-stratified shares (per-class counts and share sizes differ by at most one), which
    together cover the domain exactly once.
``iid``
    The pooled train set (all domains) is shuffled and cut into ``num_clients`` near-equal parts;
    likewise the pooled test set.
``dirichlet``
    Label skew (Hsu et al. 2019): for every class, the class's samples are divided among the
    clients of a group with proportions drawn from ``Dir(alpha)``. With scope ``"domain"`` each
    domain's ``k`` clients form a group (clients keep one domain each: feature shift *and* label
    skew); with scope ``"global"`` all clients share the pooled data and the cells are
    ``(domain, class)`` pairs. Every client is non-empty: the draw is repeated (up to
    :data:`DIRICHLET_MAX_TRIES` times) until no client is empty; if that never happens (tiny
    ``alpha`` with many clients) each empty client receives one sample from the largest client.
    Test shares follow the train shares: each ``(domain, class)`` cell of the group's test pool is
    divided among the group's clients in proportion to their train counts in that cell (largest
    remainder rounding), so test shares are disjoint and cover the pool; a client whose share
    rounds to nothing receives one test sample from the client holding the most of one of its
    cells (or, failing that, the most overall) whenever the pool has at least one sample per client.

All partitions are reproducible from the seed, disjoint and complete (they cover the pool).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedwon.datasets.base import rng_for
from fedwon.datasets.errors import DataError
from fedwon.datasets.spec import CHOICES

DIRICHLET_MAX_TRIES = 100
DIRICHLET_SCOPES = ("domain", "global")


# ---------------------------------------------------------------------------------------------
# Splitting primitives (labels in, index arrays out)
# ---------------------------------------------------------------------------------------------


def class_quotas(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """How many samples to take per class for a subset of ``n`` that is as balanced as the class
    sizes ``counts`` allow (water-filling; leftover units go to randomly chosen classes)."""
    quota = np.zeros_like(counts)
    remaining = min(int(n), int(counts.sum()))
    while remaining > 0:
        open_ = np.flatnonzero(quota < counts)
        room = int((counts[open_] - quota[open_]).min())
        step = min(remaining // len(open_), room)
        if step > 0:
            quota[open_] += step
            remaining -= step * len(open_)
        else:
            chosen = rng.choice(open_, size=remaining, replace=False)
            quota[chosen] += 1
            remaining = 0
    return quota


def balanced_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-balanced random subset of size ``min(n, len(labels))``."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = class_quotas(counts, n, rng)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[:q]
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def to_parts(owner: np.ndarray, k: int) -> list[np.ndarray]:
    """Per client ``j`` the sorted indices ``i`` with ``owner[i] == j``."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    bounds = np.cumsum(np.bincount(owner, minlength=k))[:-1]
    return np.split(order, bounds)


def to_owner(parts: list[np.ndarray], n: int) -> np.ndarray:
    """Inverse of :func:`to_parts` (every index must belong to exactly one part)."""
    owner = np.full(n, -1, dtype=np.int64)
    for j, p in enumerate(parts):
        owner[p] = j
    return owner


def stratified_owner(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Client id per sample for ``k`` disjoint, covering, class-stratified shares.

    Classes are dealt out round-robin with a pointer carried from class to class, so both the
    per-class counts and the share sizes differ by at most one.
    """
    owner = np.empty(len(labels), dtype=np.int64)
    pointer = 0
    for c in rng.permutation(np.unique(labels)):
        members = rng.permutation(np.flatnonzero(labels == c))
        owner[members] = (pointer + np.arange(len(members))) % k
        pointer = (pointer + len(members)) % k
    return owner


def stratified_split(labels: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """:func:`stratified_owner` as index lists."""
    return to_parts(stratified_owner(labels, k, rng), k)


def iid_split(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``k`` near-equal parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(n), k)]


def dirichlet_owner(
    labels: np.ndarray,
    k: int,
    alpha: float,
    rng: np.random.Generator,
    max_tries: int = DIRICHLET_MAX_TRIES,
) -> np.ndarray:
    """Client id per sample for a label-skewed split into ``k`` non-empty shares (module doc)."""
    if len(labels) < k:
        raise DataError(f"cannot give {k} clients a sample each from only {len(labels)} samples")
    classes = np.unique(labels)
    owner = np.zeros(len(labels), dtype=np.int64)
    for _ in range(max_tries):
        owner = _dirichlet_draw(labels, classes, k, alpha, rng)
        if np.bincount(owner, minlength=k).min() > 0:
            return owner
    return _fill_empty(owner, k)


def dirichlet_split(
    labels: np.ndarray,
    k: int,
    alpha: float,
    rng: np.random.Generator,
    max_tries: int = DIRICHLET_MAX_TRIES,
) -> list[np.ndarray]:
    """:func:`dirichlet_owner` as index lists."""
    return to_parts(dirichlet_owner(labels, k, alpha, rng, max_tries), k)


def _dirichlet_draw(
    labels: np.ndarray, classes: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    owner = np.empty(len(labels), dtype=np.int64)
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(k, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        owner[members] = np.searchsorted(cuts, np.arange(len(members)), side="right")
    return owner


def _fill_empty(owner: np.ndarray, k: int) -> np.ndarray:
    """Give each empty client one sample taken from the currently largest one (deterministic)."""
    owner = owner.copy()
    sizes = np.bincount(owner, minlength=k)
    for j in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        owner[np.flatnonzero(owner == donor)[-1]] = j
        sizes[donor] -= 1
        sizes[j] += 1
    return owner


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer allocation of ``total`` proportional to ``weights`` (Hamilton's method; ties go to
    the lower index)."""
    exact = weights / weights.sum() * total
    alloc = np.floor(exact).astype(np.int64)
    short = total - int(alloc.sum())
    if short > 0:
        order = np.argsort(-(exact - alloc), kind="stable")
        alloc[order[:short]] += 1
    return alloc


def cell_counts(owner: np.ndarray, cell_idx: np.ndarray, k: int, n_cells: int) -> np.ndarray:
    """``(k, n_cells)`` matrix: how many samples of each cell each client holds."""
    flat = np.bincount(owner * n_cells + cell_idx, minlength=k * n_cells)
    return flat.reshape(k, n_cells)


def proportional_test_owner(
    train_owner: np.ndarray,
    train_cells: np.ndarray,
    test_cells: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Client id per test sample, dividing each test cell in proportion to the clients' train
    counts in that cell (cells are integer codes, e.g. ``domain * num_classes + label``).

    A test cell no client trains on is split evenly; afterwards :func:`_ensure_test_nonempty`.
    """
    cells, inverse = np.unique(np.concatenate([train_cells, test_cells]), return_inverse=True)
    train_idx, test_idx = inverse[: len(train_cells)], inverse[len(train_cells) :]
    held = cell_counts(train_owner, train_idx, k, len(cells))
    owner = np.empty(len(test_cells), dtype=np.int64)
    for ci in range(len(cells)):
        members = rng.permutation(np.flatnonzero(test_idx == ci))
        if len(members) == 0:
            continue
        weights = held[:, ci].astype(np.float64)
        if weights.sum() == 0:
            weights = np.ones(k)
        owner[members] = np.repeat(np.arange(k), largest_remainder(weights, len(members)))
    return _ensure_test_nonempty(owner, held, test_idx, k)


def proportional_test_split(
    train_parts: list[np.ndarray],
    train_cells: np.ndarray,
    test_cells: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """:func:`proportional_test_owner` with index lists in and out."""
    k = len(train_parts)
    owner = proportional_test_owner(
        to_owner(train_parts, len(train_cells)), train_cells, test_cells, k, rng
    )
    return to_parts(owner, k)


def _ensure_test_nonempty(
    owner: np.ndarray, held: np.ndarray, test_idx: np.ndarray, k: int
) -> np.ndarray:
    """Give each client without test samples one sample of a cell it trains on, taken from the
    client holding most of that cell (and more than one sample in total); failing that, one
    sample from the largest client. Skipped when there are fewer test samples than clients."""
    if len(owner) < k:
        return owner
    owner = owner.copy()
    n_cells = held.shape[1]
    have = cell_counts(owner, test_idx, k, n_cells)
    for j in np.flatnonzero(have.sum(1) == 0):
        totals = have.sum(1)
        candidates = have * (held[j] > 0)[None, :] * (totals > 1)[:, None]
        if candidates.max() > 0:
            donor, cell = divmod(int(np.argmax(candidates)), n_cells)
            pos = int(np.flatnonzero((owner == donor) & (test_idx == cell))[-1])
        else:
            donor = int(np.argmax(totals))
            pos = int(np.flatnonzero(owner == donor)[-1])
            cell = int(test_idx[pos])
        owner[pos] = j
        have[donor, cell] -= 1
        have[j, cell] += 1
    return owner


# ---------------------------------------------------------------------------------------------
# Partitioners over a pool of domains
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Labels and domain ids of the pooled train and test samples (domain-major order)."""

    train_y: np.ndarray
    train_d: np.ndarray
    test_y: np.ndarray
    test_d: np.ndarray
    domains: tuple[str, ...]
    num_classes: int

    def cells(self, split: str) -> np.ndarray:
        """``(domain, class)`` cell code per sample of ``split`` ("train" or "test")."""
        y, d = (self.train_y, self.train_d) if split == "train" else (self.test_y, self.test_d)
        return d.astype(np.int64) * self.num_classes + y


@dataclass(frozen=True)
class Assignment:
    """Per client: pool indices of its train and test samples, and its (main) domain index."""

    train: list[np.ndarray]
    test: list[np.ndarray]
    domain_of: list[int]


@dataclass(frozen=True)
class PartitionOptions:
    num_clients: int
    alpha: float = 0.5
    dirichlet_scope: str = "domain"
    seed: int = 0


def clients_per_domain(num_clients: int, domains: tuple[str, ...], partition: str) -> int:
    """``k`` for the per-domain partitioners; error unless ``num_clients`` is a multiple."""
    d = len(domains)
    if num_clients < d or num_clients % d:
        raise DataError(
            f"partition {partition!r} needs num_clients to be a multiple of the {d} domains "
            f"{list(domains)} (k clients per domain); got num_clients={num_clients}"
        )
    return num_clients // d


def _domain_groups(pool: Pool, k: int, partition: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
    groups = []
    for d, name in enumerate(pool.domains):
        train_idx = np.flatnonzero(pool.train_d == d)
        test_idx = np.flatnonzero(pool.test_d == d)
        if len(train_idx) < k:
            raise DataError(
                f"partition {partition!r}: domain {name!r} has {len(train_idx)} training samples,"
                f" fewer than its {k} clients"
            )
        groups.append((d, train_idx, test_idx))
    return groups


def _majority_domain(idx: np.ndarray, domain_ids: np.ndarray) -> int:
    return int(np.argmax(np.bincount(domain_ids[idx]))) if len(idx) else 0


def partition_by_domain(pool: Pool, opts: PartitionOptions) -> Assignment:
    """``k`` clients per domain, class-stratified train and test shares (module doc)."""
    k = clients_per_domain(opts.num_clients, pool.domains, "domain")
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    domain_of: list[int] = []
    for d, train_idx, test_idx in _domain_groups(pool, k, "domain"):
        rng = rng_for(opts.seed, "partition-domain", pool.domains[d])
        train += [train_idx[p] for p in stratified_split(pool.train_y[train_idx], k, rng)]
        test += [test_idx[p] for p in stratified_split(pool.test_y[test_idx], k, rng)]
        domain_of += [d] * k
    return Assignment(train, test, domain_of)


def partition_iid(pool: Pool, opts: PartitionOptions) -> Assignment:
    """Pooled train and test sets, each shuffled and cut into ``num_clients`` parts."""
    n, k = len(pool.train_y), opts.num_clients
    if n < k:
        raise DataError(f"partition 'iid': {n} training samples for num_clients={k}")
    rng = rng_for(opts.seed, "partition-iid")
    train = iid_split(n, k, rng)
    test = iid_split(len(pool.test_y), k, rng)
    return Assignment(train, test, [_majority_domain(p, pool.train_d) for p in train])


def partition_dirichlet(pool: Pool, opts: PartitionOptions) -> Assignment:
    """Dirichlet(alpha) label skew within each domain or across the pool (module doc)."""
    if not opts.alpha > 0:
        raise DataError(f"dirichlet alpha must be > 0, got {opts.alpha}")
    if opts.dirichlet_scope == "global":
        rng = rng_for(opts.seed, "partition-dirichlet-global")
        all_train = np.arange(len(pool.train_y))
        all_test = np.arange(len(pool.test_y))
        train, test = _dirichlet_group(pool, all_train, all_test, opts.num_clients, opts, rng)
        return Assignment(train, test, [_majority_domain(p, pool.train_d) for p in train])
    if opts.dirichlet_scope != "domain":
        raise DataError(
            f"unknown dirichlet_scope {opts.dirichlet_scope!r}; valid: {list(DIRICHLET_SCOPES)}"
        )
    k = clients_per_domain(opts.num_clients, pool.domains, "dirichlet")
    train, test, domain_of = [], [], []
    for d, train_idx, test_idx in _domain_groups(pool, k, "dirichlet"):
        rng = rng_for(opts.seed, "partition-dirichlet", pool.domains[d])
        group_train, group_test = _dirichlet_group(pool, train_idx, test_idx, k, opts, rng)
        train += group_train
        test += group_test
        domain_of += [d] * k
    return Assignment(train, test, domain_of)


def _dirichlet_group(
    pool: Pool,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    k: int,
    opts: PartitionOptions,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    train_cells = pool.cells("train")[train_idx]
    test_cells = pool.cells("test")[test_idx]
    train_owner = dirichlet_owner(train_cells, k, opts.alpha, rng)
    test_owner = proportional_test_owner(train_owner, train_cells, test_cells, k, rng)
    local_train, local_test = to_parts(train_owner, k), to_parts(test_owner, k)
    return [train_idx[p] for p in local_train], [test_idx[p] for p in local_test]


Partitioner = Callable[[Pool, PartitionOptions], Assignment]

PARTITIONERS: dict[str, Partitioner] = {
    "domain": partition_by_domain,
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
}
CHOICES["partition"] = PARTITIONERS  # what a data section may name
CHOICES["dirichlet_scope"] = DIRICHLET_SCOPES
