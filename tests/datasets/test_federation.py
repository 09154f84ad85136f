"""``load_federation``: the contract other code relies on, caching, views, and spec errors."""

from __future__ import annotations

import timeit

import numpy as np
import pytest
import torch

from fedwon.datasets import (
    DATASETS,
    PARTITIONERS,
    DataError,
    DataSpec,
    DomainArrays,
    Federation,
    PartitionIdError,
    load_federation,
    validate_spec,
)
from fedwon.datasets.flwr_partition import FLWR_PARTITIONERS


@pytest.fixture(scope="module")
def spec(small_embedded: dict[str, DomainArrays], small_sizes: tuple[int, int]) -> DataSpec:
    n_train, n_test = small_sizes
    return DataSpec(train_per_domain=n_train, test_per_domain=n_test, num_clients=10)


def test_contract_attributes_and_tensors(spec: DataSpec) -> None:
    fed = load_federation(spec)
    assert isinstance(fed, Federation) and fed.spec == spec
    assert fed.domains == ["mnist", "mnist_m", "svhn", "usps", "synth"]
    assert (fed.num_clients, fed.num_classes, fed.in_channels, fed.image_size) == (10, 10, 3, 28)
    for pid in range(fed.num_clients):
        x, y = fed.train_data(pid)
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 28, 28)
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],) == (fed.num_train(pid),)
        assert -1.0 <= float(x.min()) < -0.5 and 0.5 < float(x.max()) <= 1.0
        tx, ty = fed.test_data(pid)
        assert tx.shape[0] == ty.shape[0] == fed.num_test(pid) > 0
        assert fed.client_domain(pid) == fed.domains[pid // 2]
    assert fed.clients_of_domain("svhn") == [4, 5]


def test_cached_per_process_and_views(spec: DataSpec) -> None:
    fed = load_federation(spec)
    assert load_federation(spec.model_copy()) is fed
    x, _ = fed.train_data(3)
    x2, _ = fed.train_data(3)
    assert x.data_ptr() == x2.data_ptr(), "client data must be a view, not a fresh copy"
    assert x.untyped_storage().data_ptr() == fed.train_data(0)[0].untyped_storage().data_ptr()


def test_warm_client_fetch_is_cheap(spec: DataSpec) -> None:
    load_federation(spec)
    per_call = timeit.timeit(lambda: load_federation(spec).train_data(7), number=2000) / 2000
    assert per_call < 5e-4


def test_domain_partition_test_shares_cover_domain_test_set(spec: DataSpec) -> None:
    fed = load_federation(spec)
    for domain in fed.domains:
        dx, dy = fed.domain_test_data(domain)
        pieces = [fed.test_data(pid) for pid in fed.clients_of_domain(domain)]
        assert sum(len(p[1]) for p in pieces) == len(dy) == spec.test_per_domain
        joined = torch.cat([p[0] for p in pieces])
        assert sorted(r.numpy().tobytes() for r in joined) == sorted(
            r.numpy().tobytes() for r in dx
        )
        per_client = torch.stack([torch.bincount(p[1], minlength=10) for p in pieces])
        assert torch.equal(torch.bincount(dy, minlength=10), per_client.sum(0))


@pytest.mark.parametrize(
    "changes",
    [
        {"partition": "iid", "num_clients": 7},
        {"partition": "dirichlet", "num_clients": 15, "alpha": 0.1},
        {"partition": "dirichlet", "num_clients": 8, "alpha": 0.3, "dirichlet_scope": "global"},
        {"partition": "domain", "num_clients": 100},
    ],
)
def test_every_partitioner_disjoint_complete_reproducible(
    spec: DataSpec, changes: dict[str, object]
) -> None:
    s = spec.model_copy(update=changes)  # type: ignore[arg-type]
    fed = load_federation(s)
    n_train = len(fed.domains) * spec.train_per_domain  # type: ignore[operator]
    joined = np.concatenate(fed.assignment.train)
    assert len(joined) == len(np.unique(joined)) == n_train
    joined_test = np.concatenate(fed.assignment.test)
    assert len(joined_test) == len(np.unique(joined_test)) == len(fed.pool.test_y)
    assert min(fed.num_train(p) for p in range(fed.num_clients)) >= 1
    for domain in fed.domains:
        assert len(fed.domain_test_data(domain)[1]) == spec.test_per_domain
    from fedwon.datasets.federation import build_federation

    fresh = build_federation(s)
    for pid in range(fed.num_clients):
        assert torch.equal(fresh.train_data(pid)[0], fed.train_data(pid)[0])
        assert torch.equal(fresh.test_data(pid)[1], fed.test_data(pid)[1])
    other = build_federation(s.model_copy(update=dict(seed=1)))
    assert any(
        other.num_train(p) != fed.num_train(p)
        or not torch.equal(other.train_data(p)[1], fed.train_data(p)[1])
        for p in range(fed.num_clients)
    )


def test_domain_subset_order_and_image_size(spec: DataSpec) -> None:
    fed = load_federation(
        spec.model_copy(update=dict(domains=("usps", "mnist"), num_clients=2, image_size=32))
    )
    assert fed.domains == ["usps", "mnist"] and fed.image_size == 32
    assert fed.client_domain(0) == "usps" and fed.train_data(1)[0].shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("pid", [-1, 10, 99, "0", 1.0, True])
def test_bad_partition_id(spec: DataSpec, pid: object) -> None:
    fed = load_federation(spec)
    with pytest.raises(PartitionIdError, match=r"num_clients=10") as info:
        fed.train_data(pid)  # type: ignore[arg-type]
    assert isinstance(info.value, IndexError) and isinstance(info.value, ValueError)
    assert str(pid) in str(info.value) or repr(pid) in str(info.value)


def test_domains_list_becomes_tuple() -> None:
    spec = DataSpec(domains=["svhn", "usps"])  # type: ignore[arg-type]
    assert spec.domains == ("svhn", "usps") and hash(spec) == hash(
        DataSpec(domains=("svhn", "usps"))
    )


def test_numpy_integer_pid_accepted(spec: DataSpec) -> None:
    fed = load_federation(spec)
    assert fed.num_train(np.int64(2)) == fed.num_train(2)  # type: ignore[arg-type]


BAD_SPECS = [
    ({"dataset": "mnist"}, r"unknown dataset 'mnist'; valid: \['digits-embedded', 'digits5'"),
    ({"domains": ("mnist", "kmnist")}, r"unknown domain 'kmnist' .*valid: \['mnist', 'mnist_m'"),
    ({"domains": "mnist"}, r"domains must be a tuple"),
    ({"domains": ()}, r"domains is empty"),
    ({"domains": ("mnist", "mnist")}, r"twice"),
    (
        {"partition": "shards"},
        r"unknown partition 'shards'; valid: \['domain', 'iid', 'dirichlet', 'natural_id'\]",
    ),
    ({"partition": "dirichlet", "alpha": 0.0}, r"alpha must be > 0, got 0"),
    ({"alpha": -1.0}, r"alpha must be > 0"),
    ({"alpha": float("nan")}, r"alpha must be a finite number"),
    ({"num_clients": 7}, r"multiple of the 5 domains .*num_clients=7"),
    ({"num_clients": 0}, r"num_clients must be a positive integer, got 0"),
    ({"partition": "dirichlet", "num_clients": 6}, r"multiple of the 5 domains"),
    (
        {"dirichlet_scope": "world"},
        r"unknown dirichlet_scope 'world'; valid: \['domain', 'global'\]",
    ),
    ({"train_per_domain": 0}, r"train_per_domain must be a positive integer"),
    ({"image_size": -3}, r"image_size must be a positive integer"),
    ({"seed": -1}, r"seed must be a non-negative integer"),
    ({"dataset": "digits5"}, r"dataset 'digits5' needs data_root; expected layout: .*MNIST"),
    (
        {"dataset": "cifar10", "partition": "iid"},
        r"needs data_root; expected layout: .*data_batch_1",
    ),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SPECS)
def test_spec_errors_are_one_clear_line(changes: dict[str, object], message: str) -> None:
    bad = DataSpec().model_copy(update=changes)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=message) as info:
        load_federation(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=message):
        validate_spec(bad)


def test_registries_list_the_documented_names() -> None:
    assert list(DATASETS) == [
        "digits-embedded",
        "digits5",
        "office-caltech10",
        "domainnet",
        "cifar10",
        "hf",
    ]
    assert list(PARTITIONERS) == ["domain", "iid", "dirichlet"]
    assert list(FLWR_PARTITIONERS) == ["natural_id", "iid", "dirichlet"]
    assert DATASETS["domainnet"].domains == (
        "clipart",
        "infograph",
        "painting",
        "quickdraw",
        "real",
        "sketch",
    )
    assert DATASETS["office-caltech10"].domains == ("amazon", "caltech", "dslr", "webcam")
