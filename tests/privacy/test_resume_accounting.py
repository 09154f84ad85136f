"""A resumed DP run accounts every round at the noise it actually used.

The server's privacy wrap (:class:`fedwon.privacy.assembly.PrivacyWrap`, built by
:func:`fedwon.server_app.privacy_wrap`) is driven through random
schedules of processes -- each a new run or a resume from the previous one's checkpoint, with
a target epsilon or a fixed noise, raised ``num_rounds`` and budget stops -- exactly as
``run_server`` drives it, minus the training. After every process the epsilon it reports must
equal Opacus' own accountant over the noise history that was actually used, and stay within
``dp.max_epsilon`` and ``dp.target_epsilon``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedwon.config import ConfigError, RunConfig, make_config
from fedwon.privacy.accounting import (
    Mechanism,
    PrivacyLedger,
    calibrate_noise,
    calibrate_noise_after,
    history_epsilon,
    merge_history,
)
from fedwon.privacy.mechanisms.adaptive_clipping import composed_noise_multiplier
from fedwon.run.checkpoint import Checkpoint
from fedwon.server_app import privacy_wrap

DELTA = 1e-4
BASE: dict[str, Any] = {
    "strategy": "fedwon",
    "model": "cnn-tiny",
    "num_clients": 20,
    "clients_per_round": 5,
    "min_clients": 5,
    "dp.enabled": True,
    "dp.delta": DELTA,
}


def opacus_epsilon(history: list[Mechanism], delta: float = DELTA) -> float:
    """Opacus' RDP accountant over a (z, q, steps) history: the reference."""
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta)) if history else 0.0


def run_process(cfg: RunConfig, ckpt: Checkpoint | None) -> tuple[Checkpoint, dict[str, Any]]:
    """What ``run_server`` does with the privacy wrap in one process: build it against the
    checkpoint, run every round the budget allows, checkpoint the last, write the summary."""
    privacy = privacy_wrap(cfg, None, checkpoint=ckpt)
    privacy(FedAvg())
    start = ckpt.round if ckpt is not None else 0
    last = privacy.last_round(start)
    assert privacy.dp is not None
    rows = [*(ckpt.rows if ckpt else [])]
    rows += [
        {"round": r, "epsilon": privacy.dp.ledger.epsilon(r)} for r in range(start + 1, last + 1)
    ]
    new = Checkpoint(
        last, ArrayRecord(), rows, privacy=privacy.history(last), privacy_state=privacy.state()
    )
    return new, privacy.summary(rows)["privacy"]


def test_the_issue_repro_resume_raising_rounds_under_a_target() -> None:
    """10 rounds at target 6, then resumed to 30: the old code reported 5.99 then 3.77, while
    the noise it used gave 7.61 by Opacus (above target and cap)."""
    first = make_config({**BASE, "num_rounds": 10, "dp.target_epsilon": 6.0, "dp.max_epsilon": 6.1})
    ckpt, summary = run_process(first, None)
    assert summary["epsilon"] == pytest.approx(opacus_epsilon(ckpt.privacy or []), rel=1e-12)
    assert 5.99 <= summary["epsilon"] <= 6.0
    ckpt, summary = run_process(first.replace(num_rounds=30), ckpt)
    history = [
        (h["noise_multiplier"], h["sample_rate"], h["rounds"]) for h in summary["noise_history"]
    ]
    assert [n for _, _, n in history] == [10, 20] and history[0][0] < history[1][0]
    assert summary["epsilon"] == pytest.approx(opacus_epsilon(history), rel=1e-12)
    assert summary["epsilon"] <= 6.0 and summary["rounds_within_budget"] == 30
    # what the old code did: the last 20 rounds at the noise calibrated for 30 from scratch
    naive = calibrate_noise(6.0, DELTA, 0.25, 30)
    assert opacus_epsilon([(history[0][0], 0.25, 10), (naive, 0.25, 20)]) > 6.1


def test_an_interrupted_run_resumed_at_the_same_rounds_keeps_its_noise_bit_for_bit() -> None:
    cfg = make_config({**BASE, "num_rounds": 12, "dp.target_epsilon": 4.0})
    whole, summary_whole = run_process(cfg, None)
    interrupted = privacy_wrap(cfg, None)  # the same run, stopped after its round-5 checkpoint
    interrupted(FedAvg())
    part = Checkpoint(5, ArrayRecord(), whole.rows[:5], privacy=interrupted.history(5))
    resumed, summary = run_process(cfg, part)
    assert resumed.privacy == whole.privacy
    assert summary["epsilon"] == summary_whole["epsilon"]  # bitwise


def test_resuming_a_finished_or_budget_stopped_run_keeps_its_epsilon() -> None:
    cfg = make_config({**BASE, "num_rounds": 4, "dp.noise_multiplier": 1.0})
    ckpt, summary = run_process(cfg, None)
    _, summary_again = run_process(cfg, ckpt)
    assert summary_again["epsilon"] == summary["epsilon"] > 0
    capped = cfg.replace(num_rounds=40, **{"dp.max_epsilon": summary["epsilon"] * 1.5})
    ckpt, summary = run_process(capped, None)
    assert summary["stopped_by_budget"] and summary["epsilon"] <= summary["max_epsilon"]
    _, summary_again = run_process(capped, ckpt)
    assert summary_again["epsilon"] == summary["epsilon"]


def test_a_target_already_spent_is_refused_in_one_line() -> None:
    cfg = make_config({**BASE, "num_rounds": 10, "dp.target_epsilon": 3.0})
    ckpt, _ = run_process(cfg, None)
    spent = Checkpoint(10, ArrayRecord(), [], privacy=[(0.5, 0.25, 10)])  # spent far more
    with pytest.raises(ConfigError, match=r"already run spent epsilon .* no budget is left"):
        run_process(cfg.replace(num_rounds=20), spent)
    assert ckpt.round == 10


def test_a_checkpoint_without_a_privacy_ledger_cannot_resume_a_dp_run() -> None:
    cfg = make_config({**BASE, "num_rounds": 10, "dp.noise_multiplier": 1.0})
    with pytest.raises(ConfigError, match="holds no privacy ledger"):
        privacy_wrap(cfg, None, checkpoint=Checkpoint(3, ArrayRecord(), [], privacy=None))
    with pytest.raises(ConfigError, match="covers 2 rounds, but the checkpoint is at round 3"):
        privacy_wrap(cfg, None, checkpoint=Checkpoint(3, ArrayRecord(), [], privacy=[(1, 0.25, 2)]))


@settings(max_examples=10, deadline=None)
@given(
    schedule=st.lists(
        st.tuples(st.integers(1, 15), st.sampled_from([0.0, 1.0, 1.5])),
        min_size=1,
        max_size=4,
    ),
    target=st.sampled_from([0.0, 2.0, 5.0, 9.0]),
    noise=st.sampled_from([0.7, 1.2]),
    cap=st.sampled_from([0.0, 3.0, 6.0]),
    population=st.sampled_from([0, 40, 10_000]),
    mechanism=st.sampled_from(["gaussian", "adaptive_clipping"]),
)
def test_reported_epsilon_is_opacus_over_the_noise_used_and_within_every_bound(
    schedule: list[tuple[int, float]],
    target: float,
    noise: float,
    cap: float,
    population: int,
    mechanism: str,
) -> None:
    """Random resume schedules: each step raises ``num_rounds`` by its first number (the
    second is unused slack for hypothesis to shrink); the reported epsilon always equals
    Opacus' composition of the noise actually used, and never exceeds the cap or target.
    With adaptive clipping the noise actually used is the updates' z_upd and the count's
    sigma_b, which compose to the z of the history's last segment; its bound is carried
    from checkpoint to checkpoint."""
    settings_ = {"dp.target_epsilon": target} if target else {"dp.noise_multiplier": noise}
    if mechanism != "gaussian":  # sigma_b = 10 (2 sigma_b = 20) lets every z here through
        settings_ |= {"dp.mechanism": mechanism, "dp.unclipped_count_stddev": 10.0}
    if cap and target > cap:
        cap = 0.0  # refused by the config (tested elsewhere)
    base = make_config(
        {**BASE, "num_rounds": 1, "dp.max_epsilon": cap, "dp.population": population, **settings_}
    )
    q = 5 / (population or 20)
    first = PrivacyLedger(noise if not target else calibrate_noise(target, DELTA, q, 1), q, DELTA)
    if cap and first.epsilon(1) > cap:
        return  # refused up front (test_privacy_runs)
    ckpt: Checkpoint | None = None
    rounds = 0
    for step, _ in schedule:
        rounds += step
        cfg = base.replace(num_rounds=rounds)
        try:
            ckpt, summary = run_process(cfg, ckpt)
        except ConfigError as err:  # a target already spent: refused, nothing ran
            assert target, err
            refusals = ["no budget is left", "too little", "out of reach of adaptive clipping"]
            assert any(refusal in str(err) for refusal in refusals), err
            return
        history = ckpt.privacy or []
        assert sum(n for _, _, n in history) == ckpt.round <= rounds
        if mechanism != "gaussian" and history:
            assert ckpt.privacy_state is not None and ckpt.privacy_state["clip_norm"] == 0.1
            z_upd, z = summary["update_noise_multiplier"], history[-1][0]
            assert composed_noise_multiplier(z_upd, 10.0) == pytest.approx(z, rel=1e-9)
        assert summary["epsilon"] == pytest.approx(opacus_epsilon(history), rel=1e-12, abs=0)
        if ckpt.rows:
            assert ckpt.rows[-1]["epsilon"] == summary["epsilon"]
        if cap:
            assert summary["epsilon"] <= cap
        if target:
            assert summary["epsilon"] <= target
        if not cap:
            assert ckpt.round == rounds


def test_calibration_after_prior_rounds_meets_the_target_from_below() -> None:
    prior: list[Mechanism] = [(1.1, 0.1, 30)]  # 1.1 for 50 more would pass 5
    z = calibrate_noise_after(prior, 5.0, 1e-5, 0.1, 50)
    eps = history_epsilon([*prior, (z, 0.1, 50)], 1e-5)
    assert 5.0 - 0.01 <= eps <= 5.0
    assert eps == pytest.approx(opacus_epsilon([*prior, (z, 0.1, 50)], 1e-5), rel=1e-12)
    assert calibrate_noise_after([], 5.0, 1e-5, 0.1, 50) == calibrate_noise(5.0, 1e-5, 0.1, 50)
    assert merge_history([(1, 0.1, 2), (1, 0.1, 3), (2, 0.1, 0), (2, 0.1, 1)]) == [
        (1.0, 0.1, 5),
        (2.0, 0.1, 1),
    ]
    assert math.isinf(PrivacyLedger(0.0, 0.1, 1e-5, prior=[(1.0, 0.1, 2)]).epsilon(3))
