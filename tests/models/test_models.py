"""Every model x norm builds, trains and round-trips; FedBN references match; ws is norm-free."""

from __future__ import annotations

import copy
import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedwon.models import MODELS, build_model
from fedwon.models.resnet import BasicBlock
from fedwon.nn import NORM_KINDS, StdConv2d, WSConv2d, has_norm_layers, is_norm_layer

TINY = {"cnn-tiny": 28, "alexnet-tiny": 64, "resnet18-tiny": 16, "mobilenetv2-tiny": 16}
BN_MESSAGE = "norm='bn' cannot train with batch size 1"


def test_registry_names() -> None:
    expected = {"cnn", "alexnet", "resnet18", "resnet18-cifar", "mobilenetv2"}
    expected |= {"cnn-tiny", "alexnet-tiny", "resnet18-tiny", "mobilenetv2-tiny"}
    assert set(MODELS) == expected


def test_unknown_name_and_norm_errors_list_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*cnn-tiny.*resnet18-cifar"):
        build_model("vgg")
    with pytest.raises(ValueError, match=r"unknown norm 'batch'.*bn, gn, ln, in, none, ws, ws_gn"):
        build_model("cnn-tiny", norm="batch")


@pytest.mark.parametrize("norm", NORM_KINDS)
@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward_every_model_and_norm(name: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, norm=norm, num_classes=7)
    assert model.norm == norm
    size = TINY[name]
    batches = (2,) if norm == "bn" else (2, 1)  # bn at batch 1: see the dedicated test
    for batch in batches:
        model.zero_grad(set_to_none=True)
        out = model.train()(torch.randn(batch, 3, size, size))
        assert out.shape == (batch, 7)
        F.cross_entropy(out, torch.arange(batch) % 7).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (name, norm, batch)
    head = model.get_submodule(model.head_name)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert model.eval()(torch.randn(1, 3, size, size)).shape == (1, 7)


@pytest.mark.parametrize("name", list(TINY))
def test_ws_models_are_normalization_free(name: str) -> None:
    ws = build_model(name, norm="ws")
    assert not has_norm_layers(ws)
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, WSConv2d) for m in convs)
    assert {m.gamma for m in convs} <= {1.0, 1.7139588594436646}
    assert any(m.gamma != 1.0 for m in convs)
    none = build_model(name, norm="none")
    assert not has_norm_layers(none)
    for norm in ("bn", "gn", "ln", "in", "ws_gn"):
        model = build_model(name, norm=norm)
        assert has_norm_layers(model)
        assert not any(isinstance(m, WSConv2d) for m in model.modules())
    bn = build_model(name, norm="bn")
    bn1d = [m for m in bn.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bool(bn1d) == name.startswith(("cnn", "alexnet"))  # FedBN's fc norms


@pytest.mark.parametrize("name", list(TINY))
def test_bn_batch_one_in_train_mode_is_refused_clearly(name: str) -> None:
    model = build_model(name, norm="bn")
    x = torch.randn(1, 3, TINY[name], TINY[name])
    with pytest.raises(ValueError, match=BN_MESSAGE) as info:
        model.train()(x)
    assert "norm='ws'" in str(info.value)
    assert model.eval()(x).shape == (1, 10)  # inference uses running statistics
    # the guard survives copies (clients deep-copy and pickle models)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with pytest.raises(ValueError, match=BN_MESSAGE):
            clone.train()(x)


@pytest.mark.parametrize("norm", NORM_KINDS)
@pytest.mark.parametrize("name", list(TINY))
def test_state_dict_round_trip(name: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, norm=norm)
    size = TINY[name]
    model.train()(torch.randn(4, 3, size, size))  # move BN running stats off their init
    torch.manual_seed(1)
    fresh = build_model(name, norm=norm)
    x = torch.randn(2, 3, size, size)
    assert not torch.equal(fresh.eval()(x), model.eval()(x))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def fedbn_digit_model(num_classes: int = 10) -> nn.Sequential:
    """FedBN's DigitModel (med-air/FedBN nets/models.py) spelled out as a Sequential."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 64, 5, 1, 2)),
                ("bn1", nn.BatchNorm2d(64)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),
                ("conv2", nn.Conv2d(64, 64, 5, 1, 2)),
                ("bn2", nn.BatchNorm2d(64)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),
                ("conv3", nn.Conv2d(64, 128, 5, 1, 2)),
                ("bn3", nn.BatchNorm2d(128)),
                ("relu3", nn.ReLU()),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(6272, 2048)),
                ("bn4", nn.BatchNorm1d(2048)),
                ("relu4", nn.ReLU()),
                ("fc2", nn.Linear(2048, 512)),
                ("bn5", nn.BatchNorm1d(512)),
                ("relu5", nn.ReLU()),
                ("fc3", nn.Linear(512, num_classes)),
            ]
        )
    )


def test_cnn_is_fedbn_digit_model() -> None:
    """Same parameters, same names and shapes, same function as FedBN's DigitModel."""
    torch.manual_seed(0)
    ref = fedbn_digit_model()
    model = build_model("cnn", norm="bn")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_params == sum(p.numel() for p in ref.parameters() if p.requires_grad) == 14_219_210
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == ref_shapes
    model.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 28, 28)
    torch.testing.assert_close(model.train()(x), ref.train()(x))
    torch.testing.assert_close(model.eval()(x), ref.eval()(x))


def test_cnn_rejects_other_input_sizes_clearly() -> None:
    model = build_model("cnn-tiny", norm="ws")
    with pytest.raises(ValueError, match=r"cnn expects 3x28x28 inputs.*\(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))
    gray = build_model("cnn-tiny", norm="gn", in_channels=1)
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="cnn expects 1x28x28"):
        gray(torch.randn(2, 3, 28, 28))


def test_alexnet_matches_fedbn_layout_and_rejects_tiny_inputs() -> None:
    model = build_model("alexnet", norm="bn")
    names = [n for n, _ in model.named_modules()]
    for expected in (
        "features.conv1",
        "features.bn5",
        "avgpool",
        "classifier.bn7",
        "classifier.fc3",
    ):
        assert expected in names
    assert isinstance(model.get_submodule("classifier.bn6"), nn.BatchNorm1d)
    assert sum(p.numel() for p in model.parameters()) == 57_063_498  # FedBN AlexNet, 10 classes
    norms = [m for m in model.modules() if is_norm_layer(m)]
    assert len(norms) == 7  # after every conv and hidden fc
    tiny = build_model("alexnet-tiny", norm="ws")
    assert tiny(torch.randn(1, 3, 63, 63)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"alexnet expects .* >= 63"):
        tiny(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("norm", ["ws", "ws_gn"])
def test_full_size_forward_passes(norm: str) -> None:
    """One forward of each non-tiny family at a small input (shapes, not speed)."""
    with torch.no_grad():
        assert build_model("cnn", norm=norm).eval()(torch.randn(1, 3, 28, 28)).shape == (1, 10)
        for name, size in (("resnet18", 32), ("resnet18-cifar", 8), ("mobilenetv2", 32)):
            out = build_model(name, norm=norm).eval()(torch.randn(1, 3, size, size))
            assert out.shape == (1, 10), name


@pytest.mark.parametrize("name", [*TINY, "cnn"])
def test_ws_gn_is_plain_weight_standardization_followed_by_group_norm(name: str) -> None:
    """Qiao et al.'s WS+GN: every conv a StdConv2d, the gn model's GroupNorms, same state keys."""
    ws_gn, gn = build_model(name, norm="ws_gn"), build_model(name, norm="gn")
    convs = [m for m in ws_gn.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is StdConv2d for m in convs)
    norms = [type(m) for m in ws_gn.modules() if is_norm_layer(m)]
    assert norms and set(norms) == {nn.GroupNorm}
    assert norms == [type(m) for m in gn.modules() if is_norm_layer(m)]
    assert ws_gn.state_dict().keys() == gn.state_dict().keys()  # no gain, unlike WSConv2d
    assert not ws_gn.norm_free  # type: ignore[union-attr]


def test_resnet18_structure() -> None:
    model = build_model("resnet18", norm="bn")
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8
    assert sum(b.downsample is not None for b in blocks) == 3
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.conv1.kernel_size == (7, 7)
    cifar = build_model("resnet18-cifar", norm="bn")
    assert isinstance(cifar.maxpool, nn.Identity) and cifar.conv1.kernel_size == (3, 3)
    assert sum(p.numel() for p in model.parameters()) == 11_181_642  # torchvision's, 10 classes


def test_ws_resnet18_preserves_signal_variance_at_init() -> None:
    """NF-ResNet scaling: every block's output has ~unit variance (unscaled: grows to ~2+)."""
    torch.manual_seed(0)
    model = build_model("resnet18-cifar", norm="ws")
    variances: list[float] = []
    for block in (m for m in model.modules() if isinstance(m, BasicBlock)):
        block.register_forward_hook(lambda _m, _i, out: variances.append(out.var().item()))
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))
    assert len(variances) == 8
    assert all(0.5 < v < 1.6 for v in variances), variances


@pytest.mark.parametrize(
    ("name", "size", "batch", "steps"),
    [("resnet18", 16, 4, 4), ("resnet18-tiny", 16, 6, 8), ("mobilenetv2-tiny", 16, 8, 10)],
)
def test_ws_model_trains(name: str, size: int, batch: int, steps: int) -> None:
    """Loss on a fixed random batch drops within a few SGD steps (no BN to lean on)."""
    torch.manual_seed(0)
    model = build_model(name, norm="ws").train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    # FedWon wants a larger learning rate than BN (REFERENCES: 0.02-0.1 vs 0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("norm", ["ws", "ws_gn"])
@pytest.mark.parametrize("name", list(TINY))
def test_ws_models_support_opacus_per_sample_gradients(name: str, norm: str) -> None:
    """DP-SGD (Opacus) on weight-standardized models: every parameter gets a per-sample grad."""
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    model = build_model(name, norm=norm)
    assert ModuleValidator.validate(model, strict=False) == []
    wrapped = GradSampleModule(model, loss_reduction="sum")
    x = torch.randn(3, 3, TINY[name], TINY[name])
    F.cross_entropy(wrapped(x), torch.tensor([0, 1, 2]), reduction="sum").backward()
    for param in model.parameters():
        assert param.grad_sample is not None and param.grad_sample.shape[0] == 3  # type: ignore[attr-defined]
    # per-sample gradients sum to the batch gradient (also through the weight standardization)
    for name_, param in model.named_parameters():
        summed = param.grad_sample.sum(0)  # type: ignore[attr-defined]
        torch.testing.assert_close(summed, param.grad, rtol=1e-4, atol=1e-5, msg=name_)
