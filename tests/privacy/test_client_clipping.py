"""dp_clipping_mod: clipping on the client gives the server-side aggregate; pass-through."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from privacy_fakes import COHORT, StubGrid, central_dp, client_delta, model_arrays, record, reply

from fedwon.privacy import dp_clipping_mod, layer_bounds, update_norms

SCALES = [0.01, 0.2, 1.5, 4.0]


def context(node: int) -> Context:
    return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})


def train_app(index: int, scale: float) -> Any:
    """A ClientApp body that 'trains' by a fixed delta (and bumps its BN counter)."""

    def app(msg: Message, ctx: Context) -> Message:
        sent = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        return reply(msg, client_delta(index, scale, sent), num_examples=3 + index)

    return app


def aggregate(placement: str, seed: int) -> dict[str, np.ndarray]:
    dp = central_dp(
        noise_multiplier=1.1, clip_norm=0.8, seed=seed, placement=placement, split="dim"
    )
    messages = sorted(
        dp.configure_train(1, record(model_arrays()), ConfigRecord(), StubGrid(COHORT)),  # type: ignore[arg-type]
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = []
    for i, (msg, scale) in enumerate(zip(messages, SCALES, strict=True)):
        app = train_app(i, scale)
        if placement == "client":
            replies.append(dp_clipping_mod(msg, context(msg.metadata.dst_node_id), app))
        else:
            replies.append(app(msg, context(msg.metadata.dst_node_id)))
    arrays, _ = dp.aggregate_train(1, replies)
    assert arrays is not None
    return {k: a.numpy() for k, a in arrays.items()}


def test_server_side_and_client_side_clipping_give_the_same_aggregate() -> None:
    server, client = aggregate("server", seed=5), aggregate("client", seed=5)
    assert server.keys() == client.keys()
    for key in server:
        # equal up to float32 rounding of (w + clip(u)) - w on the way back from the client
        np.testing.assert_allclose(client[key], server[key], rtol=1e-5, atol=1e-6)
    other_seed = aggregate("client", seed=6)
    assert not np.allclose(other_seed["fc.weight"], client["fc.weight"])


def test_the_mod_clips_every_layer_before_the_reply_leaves() -> None:
    dp = central_dp(placement="client", clip_norm=0.5, clipping="per_layer", split="uniform")
    sent = model_arrays()
    msg = next(iter(dp.configure_train(1, record(sent), ConfigRecord(), StubGrid(COHORT))))  # type: ignore[arg-type]
    out = dp_clipping_mod(msg, context(1), train_app(0, 10.0))
    got = {k: a.numpy() for k, a in out.content["arrays"].items()}
    floats = [k for k in sent if sent[k].dtype.kind == "f"]
    norms = update_norms([got[k].astype(np.float64) - sent[k] for k in floats])
    bounds = layer_bounds([sent[k].size for k in floats], 0.5, "uniform")
    assert (norms <= bounds * (1 + 1e-4)).all() and (norms > bounds * 0.999).all()
    assert got["bn.num_batches_tracked"] == 7  # the counter does not leave the client either
    assert out.content["metrics"]["num-examples"] == 3  # the rest of the reply is untouched


def test_messages_without_dp_settings_pass_through() -> None:
    plain = FedAvg(fraction_train=1.0, min_train_nodes=COHORT, min_available_nodes=COHORT)
    sent = model_arrays()
    msg = next(iter(plain.configure_train(1, record(sent), ConfigRecord(), StubGrid(COHORT))))  # type: ignore[arg-type]
    expected = train_app(0, 10.0)(msg, context(1))
    out = dp_clipping_mod(msg, context(1), train_app(0, 10.0))
    np.testing.assert_array_equal(
        out.content["arrays"]["fc.weight"].numpy(), expected.content["arrays"]["fc.weight"].numpy()
    )


def test_a_reply_with_other_arrays_becomes_an_error_reply() -> None:
    dp = central_dp(placement="client")
    msg = next(iter(dp.configure_train(1, record(model_arrays()), ConfigRecord(), StubGrid(4))))  # type: ignore[arg-type]

    def app(m: Message, ctx: Context) -> Message:
        out = train_app(0, 1.0)(m, ctx)
        del out.content["arrays"]["fc.weight"]
        return out

    out = dp_clipping_mod(msg, context(1), app)
    assert out.has_error()
    assert "other arrays than it was sent" in out.error.reason
