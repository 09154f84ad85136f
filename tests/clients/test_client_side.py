"""Client side: the training loop, AGC's parameter choice, workspace reset, local state, the
ClientApp's handling of node configs and Flower's extra keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant
from torch import nn

from fedwon.client_app import evaluate_step, train
from fedwon.clients import ContextStateStore, evaluate, train_epochs, workspace
from fedwon.clients.train import clipped_parameters
from fedwon.clients.workspace import load_in_place
from fedwon.config import ConfigError, make_config
from fedwon.models import build_model
from fedwon.protocol import ProtocolError
from fedwon.server_app import initial_arrays

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
TINY = {"model": "cnn-tiny", "train_per_domain": 24, "test_per_domain": 16, "batch_size": 8}


def context(node_config: dict) -> Context:  # type: ignore[type-arg]
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def message(cfg_values: dict, kind: str = "train", **extra: object) -> Message:  # type: ignore[type-arg]
    cfg = make_config({**TINY, **cfg_values})
    record = cfg.client_config().to_record()
    record["server-round"] = 1
    for k, v in extra.items():
        record[k] = v  # type: ignore[assignment]
    content = RecordDict({"arrays": initial_arrays(cfg), "config": record})
    return Message(content, dst_node_id=7, message_type=kind)


def test_training_lowers_the_loss_and_counts_examples() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(20, 4)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    before = evaluate(model, x, y)
    stats = train_epochs(model, opt, x, y, epochs=5, batch_size=4, agc_clip=0.0, generator=g)
    assert stats.num_examples == 20 and stats.steps == 25
    assert evaluate(model, x, y).loss < before.loss


def test_proximal_term_pulls_towards_the_global_weights() -> None:
    def run(mu: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        anchor = {k: v.detach().clone() for k, v in model.state_dict().items()}
        x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        train_epochs(
            model,
            opt,
            x,
            y,
            epochs=10,
            batch_size=4,
            agc_clip=0.0,
            generator=torch.Generator().manual_seed(0),
            proximal_mu=mu,
            anchor=anchor,
        )
        return float(
            sum(((p.detach() - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
        )

    assert run(1.0) < 0.5 * run(0.0)


def test_agc_clips_everything_but_the_head() -> None:
    model = build_model("cnn-tiny", norm="ws")
    clipped = {id(p) for p in clipped_parameters(model)}
    head = model.get_submodule(model.head_name)  # type: ignore[arg-type]
    assert not any(id(p) in clipped for p in head.parameters())
    assert len(clipped) == len(list(model.parameters())) - len(list(head.parameters()))
    plain = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    assert [id(p) for p in clipped_parameters(plain)] == [id(p) for p in plain[0].parameters()]


def test_workspace_reset_leaves_nothing_of_the_previous_client() -> None:
    cfg = make_config({**TINY, "strategy": "fedbn", "momentum": 0.9}).client_config()
    ws = workspace(cfg.data, cfg.model, cfg.train, cfg.seed)
    assert ws is workspace(cfg.data, cfg.model, cfg.train, cfg.seed)  # one per process
    x, y = ws.federation.train_data(0)
    ws.reset({}, None)
    train_epochs(
        ws.model,
        ws.optimizer,
        x,
        y,
        epochs=1,
        batch_size=8,
        agc_clip=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert ws.optimizer.state  # momentum buffers exist now
    ws.reset({}, None)
    assert not ws.optimizer.state
    for key, value in ws.model.state_dict().items():
        assert torch.equal(value, ws.initial_state[key]), key


def test_in_place_load_equals_load_state_dict_and_keeps_its_errors() -> None:
    torch.manual_seed(0)
    model = build_model("cnn-tiny", norm="bn")
    reference = build_model("cnn-tiny", norm="bn")
    targets = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
    state = {k: torch.randn_like(v) if v.is_floating_point() else v + 3 for k, v in targets.items()}
    load_in_place(model, targets, state)
    reference.load_state_dict(state)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    params = dict(model.named_parameters())
    assert params["conv1.weight"].requires_grad and params["conv1.weight"].grad is None
    bad = {**state, "conv1.weight": torch.zeros(1, 2, 3)}
    with pytest.raises(RuntimeError, match=r"size mismatch for conv1\.weight"):
        load_in_place(model, targets, bad)
    missing = {k: v for k, v in state.items() if k != "fc3.bias"}
    with pytest.raises(RuntimeError, match=r"Missing key.*fc3\.bias"):
        load_in_place(model, targets, missing)


def test_in_place_load_defers_to_load_state_dict_when_a_module_has_load_hooks() -> None:
    model = nn.Linear(2, 2)
    seen: list[str] = []
    model.register_load_state_dict_post_hook(lambda module, keys: seen.append("post"))
    targets = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
    load_in_place(model, targets, {k: torch.ones_like(v) for k, v in targets.items()})
    assert seen == ["post"] and torch.equal(model.weight, torch.ones(2, 2))


def test_workspace_seed_draws_what_torch_manual_seed_draws() -> None:
    cfg = make_config(TINY).client_config()
    ws = workspace(cfg.data, cfg.model, cfg.train, cfg.seed)
    torch.manual_seed(123)
    expected = torch.rand(5), torch.nn.functional.dropout(torch.ones(8), 0.5)
    ws.seed(123)
    got = torch.rand(5), torch.nn.functional.dropout(torch.ones(8), 0.5)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_context_store_keeps_local_layers_for_the_same_setup_only() -> None:
    cfg = make_config({**TINY, "strategy": "fedbn"}).client_config()
    ctx = context({})
    store = ContextStateStore(ctx, cfg.fingerprint())
    assert store.load() is None
    store.save({"bn.weight": torch.tensor([1.0, 2.0])})
    assert torch.equal(
        ContextStateStore(ctx, cfg.fingerprint()).load()["bn.weight"], torch.tensor([1.0, 2.0])
    )  # type: ignore[index]
    other = make_config({**TINY, "strategy": "fedbn", "seed": 1}).client_config()
    assert ContextStateStore(ctx, other.fingerprint()).load() is None


def test_client_trains_with_flowers_extra_keys_and_keeps_fedbn_layers_in_context() -> None:
    ctx = context({"partition-id": 2, "num-partitions": 5})
    msg = message({"strategy": "fedbn"}, **{"proximal-mu": 0.01, "clipping_norm": 1.0, "new": 1})
    reply = train(msg, ctx)
    sent = msg.content["arrays"]
    assert list(reply.content["arrays"].keys()) == list(sent.keys())  # the keys received
    assert reply.content["client"]["partition-id"] == 2
    assert reply.content["client"]["domain"] == "svhn"
    assert reply.content["metrics"]["num-examples"] == 24 - 2  # 10% (2) held out to validate
    local = ctx.state["fedwon.local"]
    assert isinstance(local, ArrayRecord) and local.keys() and not set(local) & set(sent)
    ev = evaluate_step(message({"strategy": "fedbn"}, kind="evaluate"), ctx)
    assert 0.0 <= float(ev.content["metrics"]["accuracy"]) <= 1.0  # type: ignore[arg-type]
    assert ev.content["metrics"]["num-examples"] == 16


def test_node_config_errors_name_the_key() -> None:
    with pytest.raises(ProtocolError, match="lacks 'partition-id'"):
        train(message({}), context({}))
    with pytest.raises(ProtocolError, match="num-partitions=3 but the run has num_clients=5"):
        train(message({}), context({"partition-id": 0, "num-partitions": 3}))
    with pytest.raises(ProtocolError, match="partition-id=9 is out of range for 5 clients"):
        train(message({}), context({"partition-id": 9}))


def test_a_node_holding_one_domain_reads_only_that_domain() -> None:
    reply = train(message({}), context({"domain": "usps"}))
    assert reply.content["client"]["domain"] == "usps"
    assert reply.content["metrics"]["num-examples"] == 24 - 2  # 10% (2) held out to validate
    values = [v.numpy() for v in reply.content["arrays"].values()]
    assert all(np.isfinite(v).all() for v in values)


def test_dp_sgd_client_reports_its_epsilon_over_all_its_steps() -> None:
    """dp.level='sample': each message trains with DP-SGD; the client's steps accumulate in
    its Context.state and the reply carries epsilon over all of them (Opacus' accountant)."""
    dp = {"strategy": "fedwon", "dp.enabled": True, "dp.level": "sample"}
    dp |= {"dp.noise_multiplier": 1.2, "local_epochs": 2}
    ctx = context({"partition-id": 2, "num-partitions": 5})
    epsilons = []
    for _ in range(2):
        reply = train(message(dp), ctx)
        epsilons.append(reply.content["metrics"]["epsilon"])
    acc = RDPAccountant()
    acc.history = [(1.2, 1 / 3, 2 * 2 * 3)]  # 2 messages x 2 epochs x ceil(24 / 8) steps
    assert epsilons[0] < epsilons[1] == acc.get_epsilon(1e-5)
    assert ctx.state["fedwon.dp-sgd"]["steps"] == [12]
    # without DP no epsilon travels, and the history is not touched
    plain = train(message({"strategy": "fedwon"}), context({"partition-id": 2}))
    assert "epsilon" not in plain.content["metrics"]


def test_the_agc_rule_chooses_what_agc_clips() -> None:
    """NFNets' rule clips convolution weights, gains and every bias, but no linear weight; the
    default clips all but the classifier. Both reach clients as the train section's key."""
    model = build_model("cnn-tiny", norm="ws")
    nfnets = {id(p) for p in clipped_parameters(model, "nfnets")}
    for name, p in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        is_linear_weight = isinstance(module, nn.Linear) and name.endswith(".weight")
        assert (id(p) in nfnets) != is_linear_weight, name
    assert any(isinstance(m, nn.Linear) for m in model.modules())
    with pytest.raises(ValueError, match=r"unknown agc_rule 'x'; choose one of"):
        clipped_parameters(model, "x")
    cfg = make_config({"strategy": "fedwon", "agc_clip": 0.1, "agc_rule": "nfnets"})
    assert cfg.client_config().train.agc_rule == "nfnets"
    with pytest.raises(ConfigError, match="agc_rule"):
        make_config({"agc_rule": "everything"})
