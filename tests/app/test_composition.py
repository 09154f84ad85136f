"""Flower's own strategies and mods compose with fedwon's methods, on both engines.

The matrix {fedavg, fedbn, fedwon} x {Flower FedAvg, FedProx, FedAdam,
DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping with
``fixedclipping_mod`` on the ClientApp}, 2 rounds of a tiny model each. One ServerApp runs the
combinations one after another, so each engine starts once per ClientApp (Ray start-up is
paid twice, not fifteen times). Without DP noise both engines must agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engines import run_apps
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedwon.client_app import app as plain_client_app
from fedwon.client_app import make_client_app
from fedwon.config import RunConfig, make_config
from fedwon.models import build_model
from fedwon.server_app import RunOutcome, initial_arrays, run_server
from fedwon.simulation import NodeConfigs
from fedwon.strategies import norm_state_keys

METHODS = ("fedavg", "fedbn", "fedwon")
WRAPPERS = ("fedavg", "fedprox", "fedadam", "dp-server", "dp-client")
CLIENTS = 5
TINY: dict[str, Any] = {
    "model": "cnn-tiny",
    "train_per_domain": 24,
    "test_per_domain": 16,
    "num_clients": CLIENTS,
    "batch_size": 8,
    "num_rounds": 2,
    "checkpoint_every": 0,
}
NODES = NodeConfigs(CLIENTS, threads=1)  # what `fedwon run` gives the fast engine's nodes
Wrap = Callable[[Strategy], Strategy] | None


def combination(method: str, wrapper: str, index: int) -> tuple[RunConfig, Wrap]:
    """The run config and the wrapper (between round rules and aggregator) of one cell."""
    aggregator = {"fedprox": {"aggregator": "fedprox", "proximal_mu": 0.1}}.get(wrapper, {})
    if wrapper == "fedadam":
        aggregator = {"aggregator": "fedadam", "server_lr": 0.01}
    lr = 0.1 if method == "fedwon" else 0.05
    cfg = make_config({**TINY, "strategy": method, "lr": lr, "seed": index, **aggregator})
    wrap: Wrap = None
    if wrapper == "dp-server":
        wrap = lambda s: DifferentialPrivacyServerSideFixedClipping(s, 0.001, 5.0, CLIENTS)  # noqa: E731
    elif wrapper == "dp-client":
        wrap = lambda s: DifferentialPrivacyClientSideFixedClipping(s, 0.001, 5.0, CLIENTS)  # noqa: E731
    return cfg, wrap


def cells(dp_client: bool) -> list[tuple[str, str, int]]:
    """The matrix cells one ClientApp serves (the clipping mod needs DP-client cells only)."""
    all_cells = [(m, w, i) for i, (m, w) in enumerate((m, w) for m in METHODS for w in WRAPPERS)]
    return [c for c in all_cells if (c[1] == "dp-client") == dp_client]


def matrix_server_app(
    selected: list[tuple[str, str, int]], out: dict[str, RunOutcome]
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        for method, wrapper, index in selected:
            cfg, wrap = combination(method, wrapper, index)
            out[f"{method}/{wrapper}"] = run_server(grid, cfg, wrap=wrap)

    return server_app


def clipping_client_app() -> ClientApp:
    return make_client_app(train_mods=[fixedclipping_mod])


def run_matrix(engine: str) -> dict[str, RunOutcome]:
    out: dict[str, RunOutcome] = {}
    for dp_client, client_app in ((False, plain_client_app), (True, clipping_client_app())):
        run_apps(engine, matrix_server_app(cells(dp_client), out), client_app, CLIENTS)
    return out


def check_matrix(out: dict[str, RunOutcome]) -> None:
    assert sorted(out) == sorted(f"{m}/{w}" for m in METHODS for w in WRAPPERS)
    bn_local = set(norm_state_keys(build_model("cnn-tiny", norm="bn")))
    for name, outcome in out.items():
        method, wrapper = name.split("/")
        cfg, _ = combination(method, wrapper, 0)
        rows = outcome.rows
        assert [r["round"] for r in rows] == [1, 2], name
        assert all(r["clients"] == CLIENTS and r["dropped"] == 0 for r in rows), name
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows), name
        assert set(outcome.summary["final"]["per_domain"]) == {
            "mnist",
            "mnist_m",
            "svhn",
            "synth",
            "usps",
        }, name
        start = initial_arrays(cfg)
        assert set(outcome.arrays.keys()) == set(start.keys()), name
        if method == "fedbn":
            assert not set(outcome.arrays.keys()) & bn_local, name
        moved = 0.0
        for key, array in outcome.arrays.items():
            values = array.numpy()
            assert np.isfinite(values).all(), (name, key)
            if values.dtype.kind == "f":
                moved += float(np.abs(values - start[key].numpy()).sum())
        assert moved > 0, f"{name}: nothing was trained"


@pytest.fixture(scope="module")
def fast_matrix() -> dict[str, RunOutcome]:
    return run_matrix("fast")


def test_every_method_composes_with_flower_strategies_and_mods_on_the_fast_engine(
    fast_matrix: dict[str, RunOutcome],
) -> None:
    check_matrix(fast_matrix)


@pytest.mark.ray
def test_the_same_matrix_on_flowers_engine_agrees_with_the_fast_engine(
    fast_matrix: dict[str, RunOutcome],
) -> None:
    flower = run_matrix("flower")
    check_matrix(flower)
    for name, outcome in flower.items():
        if name.split("/")[1].startswith("dp-"):
            continue  # Flower's DP noise comes from numpy's global generator: not seeded
        ours = fast_matrix[name]
        for key, array in outcome.arrays.items():
            np.testing.assert_array_equal(array.numpy(), ours.arrays[key].numpy(), err_msg=name)
        assert [r["accuracy"] for r in outcome.rows] == [r["accuracy"] for r in ours.rows], name


def test_dp_client_clipping_bounds_every_update(tmp_path: Path) -> None:
    """fixedclipping_mod really ran: each reply's update is within the clipping norm."""
    from flwr.app import Message

    from fedwon.client_app import train

    cfg = make_config({**TINY, "strategy": "fedwon", "lr": 0.5})
    start = initial_arrays(cfg)
    norms: dict[str, float] = {}

    def measure(
        msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        reply = call_next(msg, ctx)
        new = reply.content["arrays"]
        norms[str(ctx.node_id)] = float(
            np.sqrt(sum(((new[k].numpy() - start[k].numpy()) ** 2).sum() for k in start))
        )
        return reply

    client_app = make_client_app(train_mods=[measure, fixedclipping_mod])
    wrap = lambda s: DifferentialPrivacyClientSideFixedClipping(s, 0.0, 0.25, CLIENTS)  # noqa: E731
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg.replace(num_rounds=1), wrap=wrap)

    run_apps("fast", server_app, client_app, CLIENTS)
    assert train is not None and len(norms) == CLIENTS
    assert all(n <= 0.25 + 1e-5 for n in norms.values()), norms
    assert max(norms.values()) > 0.2  # lr 0.5 moves far more than 0.25 unclipped
