"""The plans: the same structure in FULL and QUICK, the order parts run in, seeds, grids on
their ladders, and the full plan's cost inside its budget."""

from __future__ import annotations

import pytest

from fedwon.config import load_config
from fedwon.study.budget import estimate_seconds, planned_rounds, planned_runs
from fedwon.study.part import AGC_CLIPS, REPORTED_SEEDS, TUNING_SEED, Candidate, Part
from fedwon.study.plan import BN_METHODS, FULL, QUICK
from fedwon.study.runs import RunSpec, refusal, run_config

BUDGET_HOURS = 4.0  # issue 20: the whole full study on two cores with `make report JOBS=2`


def test_full_and_quick_have_the_same_structure() -> None:
    assert [p.name for p in FULL.parts] == [p.name for p in QUICK.parts]
    for full, quick in zip(FULL.parts, QUICK.parts, strict=True):
        assert (full.methods, full.reuse, full.refused, full.heldout) == (
            quick.methods,
            quick.reuse,
            quick.refused,
            quick.heldout,
        )
        assert full.fedbn_averaged == quick.fedbn_averaged
        assert full.agc_arms == quick.agc_arms
        assert len(full.schedule) > 1 or full.reuse  # every tuned part halves


def test_cross_device_runs_first_label_skew_next_cross_silo_and_dg_last() -> None:
    assert [p.name for p in FULL.parts] == [
        "cross_device",
        "cross_device_bs2",
        "label_skew_alpha01",
        "label_skew_alpha05",
        "label_skew",
        "cross_silo",
        "domain_generalization",
    ]


def test_the_full_plan_is_the_issues_study() -> None:
    for part in FULL.parts:
        assert part.seeds == REPORTED_SEEDS and TUNING_SEED not in part.seeds
        if not part.reuse:
            assert part.agc_arms == ("all_but_head", "nfnets", "off")  # the AGC ablation
            assert part.agc_clips == AGC_CLIPS == (0.08, 0.16, 0.32, 0.64, 1.28)
    bs1, bs2 = FULL.part("cross_device"), FULL.part("cross_device_bs2")
    assert bs1.refused == BN_METHODS and not bs2.refused
    assert set(bs2.methods) == {"fedavg", "fedbn", "fedavg_gn", "fedavg_ws_gn", "fedwon"}
    for part in (bs1, bs2):
        cfg = run_config(part, RunSpec(part.name, "fedwon", Candidate(0.1), 1, "report"))
        assert (cfg.data.num_clients, cfg.sampled_per_round) == (100, 10)
        assert cfg.train.batch_size == (1 if part is bs1 else 2)
        per_client = cfg.data.train_per_domain * 5 / cfg.data.num_clients
        val = round(per_client * cfg.data.val_fraction + 0.5 - 1e-9)  # rounded half up
        assert per_client - val >= 3  # at least 3 local training samples on average
    for name, alpha in (("label_skew_alpha01", 0.1), ("label_skew_alpha05", 0.5)):
        cfg = load_config(FULL.part(name).recipe_path, FULL.part(name).settings)
        assert cfg.data.domains == ("mnist_m",) and cfg.data.alpha == alpha
    assert FULL.part("label_skew").settings.get("domains") is None  # feature shift + skew


@pytest.mark.parametrize("part", FULL.parts, ids=lambda p: p.name)
def test_every_run_of_the_full_plan_is_a_valid_config(part: Part) -> None:
    """Every method and arm at its starting grid's first point loads (refused methods aside,
    which the config refuses with its one-line error)."""
    for method in part.methods:
        candidates = [Candidate(0.01)]
        if not part.reuse:
            candidates = [
                part.candidate(method, arm, tuple(a.start[0] for a in part.axes(method, arm)))
                for arm in part.arms(method)
            ]
        for candidate in candidates:
            cfg = run_config(part, RunSpec(part.name, method, candidate, 1, "report"))
            assert cfg.server.num_rounds == part.num_rounds
    assert all(refusal(part, m) for m in part.refused)


@pytest.mark.parametrize("part", FULL.parts, ids=lambda p: p.name)
def test_every_grid_sits_on_its_ladder(part: Part) -> None:
    for method in part.methods if not part.reuse else ():
        for arm in part.arms(method):
            for axis in part.axes(method, arm):
                assert set(axis.start) <= set(axis.ladder.values)


def test_the_full_study_fits_its_budget_at_the_pilots_speed() -> None:
    """The estimate (runs and rounds counted from the plan, priced with the pilot's seconds per
    round, two runs at a time) stays within the issue's 4 hours."""
    seconds = sum(estimate_seconds(p) for p in FULL.parts)
    assert seconds / 2 / 3600 <= BUDGET_HOURS
    tuning, reported = planned_rounds(FULL.part("cross_device"))
    assert tuning > 0 and reported == 5 * 3 * FULL.part("cross_device").num_rounds
    assert planned_runs(FULL.part("domain_generalization")) == 3 * 3 * 5
