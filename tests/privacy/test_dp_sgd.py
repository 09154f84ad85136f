"""DP-SGD on clients: WSConv2d per-example gradients, clean-up, clipping, refusals."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from flwr.app import RecordDict
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.grad_sample import GradSampleModule as GSM
from torch import nn
from torch.nn import functional as F

from fedwon.config import make_config
from fedwon.models import build_model
from fedwon.nn import WSConv2d
from fedwon.privacy import DPConfig, compute_epsilon, layer_bounds
from fedwon.privacy.dp_sgd import (
    StepHistory,
    check_dp_sgd_model,
    dp_sgd_noise_multiplier,
    parameter_bounds,
    private_training,
)
from fedwon.privacy.grad_samplers import compute_ws_conv_grad_sample
from fedwon.protocol import read_client_config


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Optimal order is the")


def per_example_vs_autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest |Opacus per-example grad - autograd grad of that example alone|, relative."""
    gsm = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(gsm(x), y, reduction="sum").backward()
    samples = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    gsm._close()
    worst = 0.0
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        scale = max(float(p.grad.abs().max()) for p in model.parameters())
        for name, p in model.named_parameters():
            worst = max(worst, float((p.grad - samples[name][i]).abs().max()) / scale)
    return worst


def test_wsconv2d_has_its_own_grad_sampler() -> None:
    assert GSM.GRAD_SAMPLERS[WSConv2d] is compute_ws_conv_grad_sample


@pytest.mark.parametrize(
    ("groups", "stride", "bias", "padding"),
    [(1, 1, True, 1), (2, 2, True, 0), (4, 1, False, "same"), (4, 2, True, 1)],
)
def test_wsconv2d_per_example_gradients_equal_autograd(
    groups: int, stride: int, bias: bool, padding: int | str
) -> None:
    torch.manual_seed(0)
    conv = WSConv2d(4, 8, 3, stride=stride, padding=padding, groups=groups, bias=bias, gamma=1.7)
    with torch.no_grad():
        conv.gain.uniform_(0.5, 1.5)
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(3, 4, 9, 9)
    model(x)  # materialize the lazy layer
    assert per_example_vs_autograd(model, x, torch.tensor([0, 3, 4])) < 1e-5


@pytest.mark.parametrize(("name", "size"), [("cnn-tiny", 28), ("mobilenetv2-tiny", 32)])
def test_fedwon_models_per_example_gradients_equal_autograd(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, norm="ws", num_classes=10, in_channels=3)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # dropout masks differ between a batch and its single examples
    x, y = torch.randn(3, 3, size, size), torch.tensor([1, 5, 9])
    assert per_example_vs_autograd(model, x, y) < 1e-5


def test_empty_poisson_batches_give_zero_gradients() -> None:
    conv = WSConv2d(2, 3, 3, padding=1)
    grads = compute_ws_conv_grad_sample(conv, [torch.zeros(0, 2, 5, 5)], torch.zeros(0, 3, 5, 5))
    assert set(grads) == {conv.weight, conv.gain, conv.bias}
    assert all(g.shape == (1, *p.shape) and not g.any() for p, g in grads.items())


def test_batchnorm_models_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"BatchNorm layers \['bn1'.*norm='gn' or norm='ws'"):
        check_dp_sgd_model(build_model("cnn-tiny", norm="bn"))
    check_dp_sgd_model(build_model("cnn-tiny", norm="gn"))


def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 3, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_private_training_leaves_no_trace_on_the_model() -> None:
    model = build_model("cnn-tiny", norm="ws")
    keys = list(model.state_dict())
    hooks_before = [len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data(6)
    with private_training(
        model, opt, x, y, batch_size=2, noise_multiplier=1.0, clip_norm=1.0
    ) as dp:
        for xb, yb in dp.loader:
            dp.optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            dp.optimizer.step()
        steps = dp.steps_per_epoch
        assert dp.sample_rate == pytest.approx(1 / 3)
        assert dp.epsilon(1e-5) == pytest.approx(compute_epsilon(1.0, 1 / 3, steps, 1e-5))
    assert list(model.state_dict()) == keys
    assert [len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()] == hooks_before
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    # the same model trains normally afterwards
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_without_noise_or_clipping_a_dp_step_is_an_sgd_step() -> None:
    torch.manual_seed(0)
    model = build_model("cnn-tiny", norm="ws")
    reference = copy.deepcopy(model)
    x, y = data(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # batch = all data: sample rate 1, every example in the (only) batch
    with private_training(
        model, opt, x, y, batch_size=4, noise_multiplier=0.0, clip_norm=1e6, clipping="flat"
    ) as dp:
        (xb, yb) = next(iter(dp.loader))
        assert len(yb) == 4
        dp.optimizer.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        dp.optimizer.step()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    F.cross_entropy(reference(x), y).backward()
    ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("split", ["uniform", "dim"])
def test_per_layer_clipping_bounds_every_parameter_step(split: str) -> None:
    torch.manual_seed(0)
    model = build_model("cnn-tiny", norm="gn")
    before = [p.detach().clone() for p in model.parameters()]
    lr, clip = 1.0, 1e-3
    bounds = layer_bounds([p.numel() for p in model.parameters()], clip, split)
    assert parameter_bounds(model, clip, split) == pytest.approx(list(bounds))
    x, y = data(4)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with private_training(
        model, opt, x, y, batch_size=4, noise_multiplier=0.0, clip_norm=clip, split=split
    ) as dp:
        (xb, yb) = next(iter(dp.loader))
        dp.optimizer.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        dp.optimizer.step()
    # the step is lr times the mean of per-example gradients clipped to C_h
    for p, b, bound in zip(model.parameters(), before, bounds, strict=True):
        assert float((p.detach() - b).norm()) <= lr * bound * (1 + 1e-4)


def test_sample_level_noise_comes_from_the_config_and_is_conservative() -> None:
    fixed = DPConfig(enabled=True, level="sample", noise_multiplier=1.3)
    sizes = dict(num_examples=50, batch_size=10, local_epochs=1, num_rounds=20)
    assert dp_sgd_noise_multiplier(fixed, **sizes) == 1.3
    target = DPConfig(enabled=True, level="sample", target_epsilon=8.0)
    z = dp_sgd_noise_multiplier(target, **sizes)
    # assumed: the client trains in all 20 rounds, 5 steps each, at q = 1/5
    assert 7.99 <= compute_epsilon(z, 0.2, 100, 1e-5) <= 8.0


def test_step_history_lives_in_a_record_dict_and_merges_like_opacus() -> None:
    state = RecordDict()
    assert StepHistory.load(state).entries == [] and StepHistory.load(state).epsilon(1e-5) == 0
    history = StepHistory()
    history.extend([(1.0, 0.25, 4)])
    history.extend([(1.0, 0.25, 4), (1.2, 0.25, 0)])  # the same mechanism: merged; 0 steps: none
    history.extend([(1.2, 0.25, 4)])
    history.save(state)
    loaded = StepHistory.load(state)
    assert loaded.entries == [(1.0, 0.25, 8), (1.2, 0.25, 4)] and loaded.steps == 12
    acc = RDPAccountant()
    acc.history = [(1.0, 0.25, 8), (1.2, 0.25, 4)]
    assert loaded.epsilon(1e-5) == acc.get_epsilon(1e-5)


def test_private_training_reports_the_steps_opacus_accounted() -> None:
    model = build_model("cnn-tiny", norm="ws")
    x, y = data(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with private_training(
        model, opt, x, y, batch_size=4, noise_multiplier=1.1, clip_norm=1.0
    ) as dp:
        for _ in range(2):
            for xb, yb in dp.loader:
                dp.optimizer.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                dp.optimizer.step()
        assert dp.history() == [(1.1, 1 / 3, 6)]  # ceil(10 / 4) = 3 Poisson batches an epoch


def test_the_message_carries_the_dp_section_itself() -> None:
    cfg = make_config(
        {
            "strategy": "fedwon",
            "dp.enabled": True,
            "dp.level": "sample",
            "dp.target_epsilon": 5.0,
            "dp.clipping": "flat",
            "dp.delta": 1e-4,
        }
    )
    sent = read_client_config(cfg.client_config().to_record())
    assert sent.dp == cfg.dp  # the dp section, validated again on the client
    assert sent.num_rounds == cfg.server.num_rounds  # the horizon a target is planned for
