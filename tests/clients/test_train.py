"""The local training loop: mini-batches, and never a batch of one for BatchNorm."""

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fedwon.clients.train import batch_bounds, train_epochs, uses_batch_statistics
from fedwon.models import build_model


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models: a second intra-op thread only adds contention (25x slower on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch_sizes(model: nn.Module) -> list[int]:
    """Record the batch size of every forward pass through ``model``."""
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(int(args[0].shape[0])))
    return sizes


def _train(model: nn.Module, n: int, batch_size: int, epochs: int = 2) -> tuple[int, int]:
    torch.manual_seed(0)
    x, y = torch.randn(n, 4), torch.randint(0, 3, (n,))
    stats = train_epochs(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        agc_clip=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    return stats.steps, stats.num_examples


def _mlp(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), norm, nn.ReLU(), nn.Linear(8, 3))


def test_batchnorm_never_trains_on_a_batch_of_one() -> None:
    """Every batch size 2..8 on clients of 2..9 examples (BatchNorm1d itself raises on a
    training batch of one: "Expected more than 1 value per channel")."""
    for batch_size in range(2, 9):
        for n in range(2, 10):
            model = _mlp(nn.BatchNorm1d(8))
            sizes = _batch_sizes(model)
            steps, examples = _train(model, n, batch_size)
            case = f"n={n} batch_size={batch_size}: {sizes}"
            assert min(sizes) >= 2, case
            assert sum(sizes) == 2 * n, case  # every example, once per epoch
            assert examples == n, case
            expected_batches = n // batch_size + (n % batch_size > 1)
            assert steps == len(sizes) == 2 * expected_batches, case


def test_a_batchnorm_client_with_one_example_takes_no_step() -> None:
    model = _mlp(nn.BatchNorm1d(8))
    before = [p.detach().clone() for p in model.parameters()]
    steps, examples = _train(model, 1, 4)
    assert (steps, examples) == (0, 1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("norm", [nn.GroupNorm(2, 8), nn.LayerNorm(8), nn.Identity()])
def test_batch_size_one_still_trains_models_without_batchnorm(norm: nn.Module) -> None:
    model = _mlp(norm)
    sizes = _batch_sizes(model)
    assert _train(model, 3, 1) == (6, 3)
    assert sizes == [1] * 6


def test_batch_statistics_are_detected_by_module_type() -> None:
    assert uses_batch_statistics(build_model("cnn-tiny", norm="bn"))
    assert uses_batch_statistics(nn.Sequential(nn.LazyBatchNorm1d()))
    assert uses_batch_statistics(nn.Sequential(nn.SyncBatchNorm(4)))
    for norm in ("gn", "ln", "in", "ws", "none"):
        assert not uses_batch_statistics(build_model("cnn-tiny", norm=norm)), norm


def test_batch_bounds() -> None:
    assert batch_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert batch_bounds(7, 3, min_batch=2) == [(0, 3), (3, 7)]
    assert batch_bounds(8, 3, min_batch=2) == [(0, 3), (3, 6), (6, 8)]
    assert batch_bounds(1, 3, min_batch=2) == []
    assert batch_bounds(0, 3) == []


def test_a_batch_source_replaces_the_shuffled_batches_and_empty_batches_step() -> None:
    """DP-SGD's Poisson batches: every batch (even an empty one) is a step; the mean loss is
    over the batches that held examples, so an empty one cannot make it NaN."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    epochs = [[(x[:2], y[:2]), (x[:0], y[:0]), (x[2:5], y[2:5])], [(x[:0], y[:0])]]
    calls = iter(epochs)
    sizes = _batch_sizes(model)
    stats = train_epochs(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),  # lr 0: the loss is the initial model's
        x,
        y,
        epochs=2,
        batch_size=99,
        agc_clip=0.0,
        generator=torch.Generator(),
        batches=lambda: next(calls),
    )
    assert sizes == [2, 0, 3, 0] and stats.steps == 4 and stats.num_examples == 6
    with torch.no_grad():
        losses = [float(nn.functional.cross_entropy(model(a), b)) for a, b in epochs[0][::2]]
    assert stats.loss == pytest.approx(sum(losses) / 2)


def test_only_empty_batches_report_the_loss_on_the_data() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    stats = train_epochs(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        x,
        y,
        epochs=1,
        batch_size=1,
        agc_clip=0.0,
        generator=torch.Generator(),
        batches=lambda: [(x[:0], y[:0])],
    )
    assert stats.steps == 1
    with torch.no_grad():
        assert stats.loss == pytest.approx(float(nn.functional.cross_entropy(model(x), y)))
