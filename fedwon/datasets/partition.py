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


def stratified_split(labels: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``k`` disjoint, covering, class-stratified shares.

    Classes are dealt out round-robin with a pointer carried from class to class, so both the
    per-class counts and the share sizes differ by at most one.
    """
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    pointer = 0
    for c in rng.permutation(np.unique(labels)):
        members = rng.permutation(np.flatnonzero(labels == c))
        owners = (pointer + np.arange(len(members))) % k
        for j in range(k):
            buckets[j].append(members[owners == j])
        pointer = (pointer + len(members)) % k
    return [_sorted_concat(b) for b in buckets]


def iid_split(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``k`` near-equal parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(n), k)]


def dirichlet_split(
    labels: np.ndarray,
    k: int,
    alpha: float,
    rng: np.random.Generator,
    max_tries: int = DIRICHLET_MAX_TRIES,
) -> list[np.ndarray]:
    """Label-skewed split of ``range(len(labels))`` into ``k`` non-empty shares (see module doc)."""
    if len(labels) < k:
        raise DataError(f"cannot give {k} clients a sample each from only {len(labels)} samples")
    classes = np.unique(labels)
    parts: list[np.ndarray] = []
    for _ in range(max_tries):
        parts = _dirichlet_draw(labels, classes, k, alpha, rng)
        if min(len(p) for p in parts) > 0:
            return parts
    return _fill_empty(parts)


def _dirichlet_draw(
    labels: np.ndarray, classes: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        proportions = rng.dirichlet(np.full(k, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(np.int64)
        for j, chunk in enumerate(np.split(members, cuts)):
            buckets[j].append(chunk)
    return [_sorted_concat(b) for b in buckets]


def _fill_empty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Give each empty part one element taken from the currently largest part (deterministic)."""
    parts = [p.copy() for p in parts]
    for j in range(len(parts)):
        if len(parts[j]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[j] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return parts


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


def proportional_test_split(
    train_parts: list[np.ndarray],
    train_cells: np.ndarray,
    test_cells: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Divide ``range(len(test_cells))`` among clients following their train cell counts.

    ``train_parts`` index into ``train_cells``; cells are arbitrary integer codes (e.g.
    ``domain * num_classes + label``). A test cell no client trains on is split evenly.
    """
    k = len(train_parts)
    cells = np.unique(np.concatenate([train_cells, test_cells]))
    held = np.stack([_cell_counts(train_cells[p], cells) for p in train_parts])  # (k, cells)
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    for ci, cell in enumerate(cells):
        members = rng.permutation(np.flatnonzero(test_cells == cell))
        if len(members) == 0:
            continue
        weights = held[:, ci].astype(np.float64)
        if weights.sum() == 0:
            weights = np.ones(k)
        alloc = largest_remainder(weights, len(members))
        for j, chunk in enumerate(np.split(members, np.cumsum(alloc)[:-1])):
            buckets[j].append(chunk)
    parts = [_sorted_concat(b) for b in buckets]
    return _ensure_test_nonempty(parts, held, test_cells, cells)


def _ensure_test_nonempty(
    parts: list[np.ndarray], held: np.ndarray, test_cells: np.ndarray, cells: np.ndarray
) -> list[np.ndarray]:
    if sum(len(p) for p in parts) < len(parts):
        return parts
    parts = [p.copy() for p in parts]
    for j in range(len(parts)):
        if len(parts[j]) > 0:
            continue
        taken = _take_from_shared_cell(parts, j, held, test_cells, cells)
        if not taken:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[j] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return parts


def _take_from_shared_cell(
    parts: list[np.ndarray], j: int, held: np.ndarray, test_cells: np.ndarray, cells: np.ndarray
) -> bool:
    """Move one test sample of a cell client ``j`` trains on from the client with the most test
    samples of that cell (keeping the donor non-empty); report whether it worked."""
    best: tuple[int, int, int] | None = None  # (count, donor, position)
    for ci in np.flatnonzero(held[j] > 0):
        for d, part in enumerate(parts):
            in_cell = np.flatnonzero(test_cells[part] == cells[ci])
            better = best is None or len(in_cell) > best[0]
            if d != j and len(part) > 1 and len(in_cell) > 0 and better:
                best = (len(in_cell), d, int(in_cell[-1]))
    if best is None:
        return False
    _, donor, pos = best
    parts[j] = parts[donor][pos : pos + 1]
    parts[donor] = np.delete(parts[donor], pos)
    return True


def _cell_counts(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    return np.array([(values == c).sum() for c in cells], dtype=np.int64)


def _sorted_concat(chunks: list[np.ndarray]) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chunks)).astype(np.int64)


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
    local_train = dirichlet_split(train_cells, k, opts.alpha, rng)
    local_test = proportional_test_split(local_train, train_cells, test_cells, rng)
    return [train_idx[p] for p in local_train], [test_idx[p] for p in local_test]


Partitioner = Callable[[Pool, PartitionOptions], Assignment]

PARTITIONERS: dict[str, Partitioner] = {
    "domain": partition_by_domain,
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
}
