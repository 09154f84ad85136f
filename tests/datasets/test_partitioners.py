"""Partitioners: disjoint, complete, reproducible, non-empty, and shaped as documented."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedwon.datasets import PARTITIONERS, DataError
from fedwon.datasets.partition import (
    Assignment,
    PartitionOptions,
    Pool,
    balanced_subset,
    class_quotas,
    dirichlet_split,
    largest_remainder,
    proportional_test_split,
    stratified_split,
)

DOMAINS = ("a", "b", "c")


def make_pool(seed: int = 0, train: int = 300, test: int = 120) -> Pool:
    rng = np.random.default_rng(seed)
    sizes_train = [train, train + 17, train - 40]
    sizes_test = [test, test + 5, test - 11]
    return Pool(
        train_y=np.concatenate([rng.integers(0, 10, n) for n in sizes_train]),
        train_d=np.repeat(np.arange(3), sizes_train),
        test_y=np.concatenate([rng.integers(0, 10, n) for n in sizes_test]),
        test_d=np.repeat(np.arange(3), sizes_test),
        domains=DOMAINS,
        num_classes=10,
    )


CASES = [
    ("domain", PartitionOptions(num_clients=3)),
    ("domain", PartitionOptions(num_clients=12)),
    ("iid", PartitionOptions(num_clients=7)),
    ("dirichlet", PartitionOptions(num_clients=9, alpha=0.3)),
    ("dirichlet", PartitionOptions(num_clients=11, alpha=0.3, dirichlet_scope="global")),
    ("dirichlet", PartitionOptions(num_clients=30, alpha=0.01)),
]


def assert_disjoint_complete(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n, "parts must cover every sample"
    assert len(np.unique(joined)) == n, "parts must be disjoint"


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_disjoint_complete_nonempty(name: str, opts: PartitionOptions) -> None:
    pool = make_pool()
    a = PARTITIONERS[name](pool, opts)
    assert len(a.train) == len(a.test) == len(a.domain_of) == opts.num_clients
    assert_disjoint_complete(a.train, len(pool.train_y))
    assert_disjoint_complete(a.test, len(pool.test_y))
    assert min(len(p) for p in a.train) >= 1
    assert min(len(p) for p in a.test) >= 1


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_reproducible_from_seed(name: str, opts: PartitionOptions) -> None:
    pool = make_pool()
    first, again = PARTITIONERS[name](pool, opts), PARTITIONERS[name](pool, opts)
    other = PARTITIONERS[name](
        pool,
        PartitionOptions(opts.num_clients, opts.alpha, opts.dirichlet_scope, seed=opts.seed + 1),
    )
    same = all(np.array_equal(x, y) for x, y in zip(first.train, again.train, strict=True))
    same_test = all(np.array_equal(x, y) for x, y in zip(first.test, again.test, strict=True))
    assert same and same_test
    if opts.num_clients > 3 or name != "domain":
        assert any(not np.array_equal(x, y) for x, y in zip(first.train, other.train, strict=True))


def test_domain_partition_is_stratified_and_per_domain() -> None:
    pool = make_pool()
    a = PARTITIONERS["domain"](pool, PartitionOptions(num_clients=12))
    k = 4
    assert a.domain_of == [d for d in range(3) for _ in range(k)]
    for pid in range(12):
        d = pid // k
        assert set(pool.train_d[a.train[pid]]) == {d}
        assert set(pool.test_d[a.test[pid]]) == {d}
    for d in range(3):
        clients = range(d * k, (d + 1) * k)
        for split, parts, labels in (
            ("train", a.train, pool.train_y),
            ("test", a.test, pool.test_y),
        ):
            counts = np.stack([np.bincount(labels[parts[c]], minlength=10) for c in clients])
            assert (counts.max(0) - counts.min(0)).max() <= 1, split
            sizes = counts.sum(1)
            assert sizes.max() - sizes.min() <= 1, split
        domain_test = np.flatnonzero(pool.test_d == d)
        assert np.array_equal(np.sort(np.concatenate([a.test[c] for c in clients])), domain_test)


def test_iid_even_sizes() -> None:
    pool = make_pool()
    a = PARTITIONERS["iid"](pool, PartitionOptions(num_clients=7))
    sizes = [len(p) for p in a.train]
    assert max(sizes) - min(sizes) <= 1
    test_sizes = [len(p) for p in a.test]
    assert max(test_sizes) - min(test_sizes) <= 1


def _skew(a: Assignment, labels: np.ndarray) -> float:
    """Mean share of a client's most frequent class."""
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in a.train]))


def test_dirichlet_alpha_controls_label_skew() -> None:
    pool = make_pool(train=600)
    skewed = PARTITIONERS["dirichlet"](pool, PartitionOptions(num_clients=9, alpha=0.05))
    mild = PARTITIONERS["dirichlet"](pool, PartitionOptions(num_clients=9, alpha=100.0))
    assert (
        _skew(mild, pool.train_y)
        < 0.2
        < _skew(mild, pool.train_y) + 0.15
        < _skew(skewed, pool.train_y)
    )


def test_dirichlet_domain_scope_keeps_one_domain_per_client() -> None:
    pool = make_pool()
    a = PARTITIONERS["dirichlet"](pool, PartitionOptions(num_clients=6, alpha=0.5))
    for pid in range(6):
        assert set(pool.train_d[a.train[pid]]) == {pid // 2}
        assert set(pool.test_d[a.test[pid]]) == {pid // 2}


def test_dirichlet_test_shares_follow_train_labels() -> None:
    pool = make_pool(train=600, test=400)
    a = PARTITIONERS["dirichlet"](pool, PartitionOptions(num_clients=6, alpha=0.2))
    for pid in range(6):
        train_frac = np.bincount(pool.train_y[a.train[pid]], minlength=10) / len(a.train[pid])
        test_frac = np.bincount(pool.test_y[a.test[pid]], minlength=10) / len(a.test[pid])
        assert np.abs(train_frac - test_frac).sum() < 0.5
        absent = train_frac == 0
        assert test_frac[absent].sum() <= 1 / len(a.test[pid]) + 1e-9


def test_dirichlet_guarantees_nonempty_clients_even_when_draws_fail() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 60)
    parts = dirichlet_split(labels, 50, 1e-4, rng, max_tries=2)
    assert min(len(p) for p in parts) >= 1
    assert_disjoint_complete(parts, 60)


def test_proportional_test_split_gives_each_client_a_sample() -> None:
    rng = np.random.default_rng(1)
    train_cells = np.array([0] * 98 + [1, 1])
    test_cells = np.array([0] * 40 + [1] * 3)
    parts = [np.arange(98), np.array([98, 99])]
    test = proportional_test_split(parts, train_cells, test_cells, rng)
    assert_disjoint_complete(test, len(test_cells))
    assert len(test[1]) >= 1 and set(test_cells[test[1]]) == {1}


def test_balanced_subset_and_quotas() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 50 + [1] * 5 + [2] * 30)
    quota = class_quotas(np.array([50, 5, 30]), 40, rng)
    assert quota.tolist() in ([18, 5, 17], [17, 5, 18])
    idx = balanced_subset(labels, 40, rng)
    assert len(idx) == len(np.unique(idx)) == 40
    assert np.bincount(labels[idx]).tolist() in ([18, 5, 17], [17, 5, 18])
    assert len(balanced_subset(labels, 1000, rng)) == len(labels)


def test_stratified_split_and_largest_remainder() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 103)
    parts = stratified_split(labels, 4, rng)
    assert_disjoint_complete(parts, 103)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert largest_remainder(np.array([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]
    assert largest_remainder(np.array([0.0, 2.0, 1.0]), 7).sum() == 7


@pytest.mark.parametrize(
    ("name", "scope"), [("domain", "domain"), ("dirichlet", "domain"), ("dirichlet", "global")]
)
def test_a_thousand_clients_partition_quickly(name: str, scope: str) -> None:
    pool = make_pool(train=1300, test=700)
    start = time.perf_counter()
    a = PARTITIONERS[name](pool, PartitionOptions(999, alpha=0.3, dirichlet_scope=scope))
    assert time.perf_counter() - start < 10.0
    assert_disjoint_complete(a.train, len(pool.train_y))
    assert_disjoint_complete(a.test, len(pool.test_y))
    assert min(len(p) for p in a.train) >= 1 and min(len(p) for p in a.test) >= 1


def test_partition_errors_are_clear() -> None:
    pool = make_pool()
    with pytest.raises(DataError, match=r"multiple of the 3 domains .*num_clients=4"):
        PARTITIONERS["domain"](pool, PartitionOptions(num_clients=4))
    with pytest.raises(DataError, match=r"alpha must be > 0, got 0"):
        PARTITIONERS["dirichlet"](pool, PartitionOptions(num_clients=3, alpha=0.0))
    with pytest.raises(DataError, match="domain 'c' has 260 training samples, fewer than its 300"):
        PARTITIONERS["domain"](pool, PartitionOptions(num_clients=900))
    with pytest.raises(DataError, match="num_clients=5000"):
        PARTITIONERS["iid"](pool, PartitionOptions(num_clients=5000))
    with pytest.raises(DataError, match="dirichlet_scope 'nope'"):
        PARTITIONERS["dirichlet"](pool, PartitionOptions(3, 0.5, dirichlet_scope="nope"))
