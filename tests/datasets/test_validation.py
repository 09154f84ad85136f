"""Each client's validation split: sizes, stratification, disjointness, determinism, and the
Federation's val/held-out-domain accessors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedwon.datasets import DataError, DataSpec, DomainArrays, load_federation
from fedwon.datasets.base import rng_for
from fedwon.datasets.validation import num_validation, val_counts, validation_split


def examples(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    """(image, label) pairs as a sorted list of bytes: equality of data up to order."""
    return sorted(bytes(xi.numpy()) + bytes(yi.numpy()) for xi, yi in zip(x, y, strict=True))


def test_num_validation_rounds_half_up_and_keeps_a_training_example() -> None:
    assert [num_validation(n, 0.1) for n in (0, 1, 2, 4, 5, 10, 15, 743)] == [
        0,
        0,
        0,
        0,
        1,  # 0.5 rounds up
        1,
        2,
        74,
    ]
    assert num_validation(3, 0.9) == 2  # never the client's last training example
    assert num_validation(100, 0.0) == 0


def test_split_is_disjoint_complete_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    fit, val = validation_split(labels, 0.2, rng_for(0, "t"))
    assert len(val) == 20 and len(fit) == 80
    assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(100))
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(val) > 0)  # sorted positions
    assert np.bincount(labels[val], minlength=4).tolist() == [10, 6, 3, 1]  # 20% of each class
    again_fit, again_val = validation_split(labels, 0.2, rng_for(0, "t"))
    assert np.array_equal(again_val, val) and np.array_equal(again_fit, fit)
    _, other = validation_split(labels, 0.2, rng_for(1, "t"))
    assert not np.array_equal(other, val)


def test_classes_tied_for_the_last_validation_unit_are_drawn_at_random() -> None:
    # one example of each of ten classes, 10%: one validation example. Ties used to go to the
    # lowest class, so every such client held back its 0 and no client trained on a 0.
    labels = np.arange(10)
    held = [
        int(labels[validation_split(labels, 0.1, rng_for(pid, "t"))[1]][0]) for pid in range(60)
    ]
    assert len(set(held)) >= 8  # random over the ten classes (seen: all of them)
    # no tie at the boundary: the allocation, and the rng's use, are exactly as before
    counts = np.array([50, 30, 15, 5])
    rng = rng_for(0, "t")
    state = rng.bit_generator.state
    assert val_counts(counts, 20, rng).tolist() == [10, 6, 3, 1]
    assert rng.bit_generator.state == state
    # a partial tie: classes 1 and 2 (remainder 0.5) share one unit, class 0 keeps its own
    picks = {tuple(val_counts(np.array([3, 1, 1]), 2, rng_for(s, "t")).tolist()) for s in range(20)}
    assert picks == {(1, 1, 0), (1, 0, 1)}


def test_fraction_zero_keeps_everything_and_draws_nothing() -> None:
    rng = rng_for(0, "t")
    state = rng.bit_generator.state
    fit, val = validation_split(np.array([3, 1, 2]), 0.0, rng)
    assert fit.tolist() == [0, 1, 2] and val.size == 0
    assert rng.bit_generator.state == state


@pytest.fixture(scope="module")
def spec(small_embedded: dict[str, DomainArrays], small_sizes: tuple[int, int]) -> DataSpec:
    n_train, n_test = small_sizes
    return DataSpec(train_per_domain=n_train, test_per_domain=n_test, num_clients=10)


def test_federation_val_data_is_carved_from_the_training_share(spec: DataSpec) -> None:
    whole = load_federation(spec)
    split = load_federation(spec.model_copy(update=dict(val_fraction=0.2)))
    assert whole.num_val(0) == 0 and whole.val_data(0)[0].shape == (0, 3, 28, 28)
    for pid in range(spec.num_clients):
        n = whole.num_train(pid)
        assert split.num_val(pid) == round(0.2 * n) and split.num_train(pid) == n - split.num_val(
            pid
        )
        # the same examples: train ∪ val of the split client == the unsplit client's train data
        x = torch.cat([split.train_data(pid)[0], split.val_data(pid)[0]])
        y = torch.cat([split.train_data(pid)[1], split.val_data(pid)[1]])
        assert examples(x, y) == examples(*whole.train_data(pid))
        assert torch.equal(split.test_data(pid)[1], whole.test_data(pid)[1])  # test untouched
    assert split.client_data(3, "val")[1].tolist() == split.val_data(3)[1].tolist()
    assert split.label_counts(3, "val").sum() == split.num_val(3)
    assert "val=" in split.describe() and "val=" not in whole.describe()
    with pytest.raises(
        DataError, match=r"unknown data split 'dev'; valid: \['train', 'val', 'test'\]"
    ):
        split.client_data(0, "dev")


def test_fraction_zero_federation_is_unchanged(spec: DataSpec) -> None:
    """val_fraction=0 lays out exactly the data a spec without the key always gave."""
    fed = load_federation(spec)
    idx = np.concatenate(fed.assignment.train)
    assert torch.equal(
        fed.train_data(0)[1], torch.from_numpy(fed.pool.train_y[fed.assignment.train[0]])
    )
    assert sum(fed.num_train(p) for p in range(fed.num_clients)) == len(idx)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), True, "0.1"])
def test_bad_val_fraction_is_refused(spec: DataSpec, bad: object) -> None:
    with pytest.raises(DataError, match=r"val_fraction must be a number in \[0, 1\)"):
        load_federation(spec.model_copy(update=dict(val_fraction=bad)))  # type: ignore[arg-type]


def test_heldout_domain_test_data(spec: DataSpec) -> None:
    four = load_federation(
        spec.model_copy(update=dict(domains=("mnist", "svhn", "usps", "synth"), num_clients=4))
    )
    assert four.heldout_domains == ["mnist_m"]
    x, y = four.heldout_test_data("mnist_m")
    # the images the mnist_m clients of the five-domain federation are tested on
    fx, fy = load_federation(spec).domain_test_data("mnist_m")
    assert examples(x, y) == examples(fx, fy) and x.dtype == torch.float32
    assert four.heldout_test_data("mnist_m")[0] is x  # loaded once
    with pytest.raises(DataError, match=r"domain 'svhn' is not held out.*\['mnist_m'\]"):
        four.heldout_test_data("svhn")
    with pytest.raises(DataError, match="domain 'kmnist' is not held out"):
        four.heldout_test_data("kmnist")
    assert load_federation(spec).heldout_domains == []
