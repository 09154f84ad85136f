"""The claims in the abstract's words: the comparison rule, each baseline separately in each
setting, refused baselines shown not counted, the 10-point domain gain per baseline."""

from __future__ import annotations

from typing import Any

import pytest

from fedwon.study.claims import Claim, check_claims, compare, comparisons
from fedwon.study.part import METHODS

LABELS = {name: m.label for name, m in METHODS.items()}


def entry(mean: float, std: float | None = None, **per_domain: float) -> dict[str, Any]:
    return {
        "mean": mean,
        "std": std,
        "per_domain": per_domain or {"a": mean},
        "seeds": 3,
        "planned_seeds": 3,
    }


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (entry(0.80, 0.01), entry(0.70, 0.01), "yes"),
        (entry(0.70, 0.01), entry(0.80, 0.01), "no"),
        # difference 0.04 < spread sqrt(0.03² + 0.03²) = 0.042
        (entry(0.84, 0.03), entry(0.80, 0.03), "within noise"),
        (entry(0.84, 0.02), entry(0.80, 0.02), "yes"),  # 0.04 > 0.028
        (entry(0.81), entry(0.80), "yes"),  # one seed: no spread to hide behind
    ],
)
def test_compare_against_the_seed_spread(a: dict, b: dict, expected: str) -> None:
    assert compare(a, b) == expected


SECTIONS: dict[str, Any] = {
    "cross_silo": {
        "methods": {
            "fedwon": entry(0.90, 0.01, mnist=0.95, svhn=0.85),
            "fedavg": entry(0.80, 0.01, mnist=0.94, svhn=0.66),  # svhn +19
            "fedbn": entry(0.89, 0.01, mnist=0.95, svhn=0.83),  # at most +2 here
            "fedavg_gn": entry(0.70, 0.02),
            "fedavg_ln": entry(0.72, 0.02),
            "fedavg_ws_gn": entry(0.95, 0.01),
        }
    },
    "cross_device": {
        "methods": {"fedwon": entry(0.5), "fedavg_gn": entry(0.3), "fedavg_ws_gn": entry(0.4)},
        "refused": {
            "fedavg": "invalid config: batch_size=1 cannot train with norm='bn' ...",
            "fedbn": "invalid config: batch_size=1 cannot train with norm='bn' ...",
        },
    },
    "label_skew_alpha01": {
        "methods": {
            "fedwon": entry(0.6, 0.01, mnist_m=0.6),
            "fedavg": entry(0.5, 0.01, mnist_m=0.5),
            "fedbn": entry(0.45, 0.01, mnist_m=0.45),  # +15 over FedBN in this domain
        }
    },
}


def test_each_baseline_is_compared_separately_in_each_setting() -> None:
    found = {(c.setting, c.baseline): c for c in comparisons(SECTIONS, LABELS)}
    assert found[("cross_silo", "fedbn")].outcome == "within noise"
    assert found[("cross_silo", "fedavg")].gain == pytest.approx(0.10)
    assert found[("cross_silo", "fedavg_ws_gn")].outcome == "no"
    assert found[("cross_device", "fedavg")].outcome == "refused"  # shown, not compared
    assert found[("cross_device", "fedavg")].gain is None
    assert found[("cross_device", "fedavg_gn")].outcome == "yes"
    assert ("cross_device", "fedavg_ln") not in found  # not run there
    assert found[("label_skew_alpha01", "fedbn")].as_dict() == {
        "setting": "label_skew_alpha01",
        "baseline": "fedbn",
        "outcome": "yes",
        "gain": pytest.approx(0.15),
        "spread": pytest.approx(0.0141, abs=1e-4),
    }


def test_claims_in_the_abstracts_words() -> None:
    claims = check_claims(SECTIONS, LABELS, {"cross_silo": "cross-silo"})

    def find(text: str) -> Claim:
        (match,) = [c for c in claims if text in c.claim]
        return match

    every = find("surpasses both FedAvg and FedBN across all experimental setups")
    assert every.verdict == "inconclusive"  # within noise of FedBN in cross-silo, no reversal
    assert every.evidence.startswith("cross-silo: vs FedAvg (BN) +10.0 ± 1.4 (yes)")
    assert "cross_device: vs FedAvg (BN): refused" in every.evidence
    over_avg = find("more than 10% in certain domains (over FedAvg (BN))")
    assert (
        over_avg.verdict == "reproduced"
        and "+19.0 points on svhn (cross-silo)" in over_avg.evidence
    )
    over_bn = find("more than 10% in certain domains (over FedBN)")
    assert over_bn.verdict == "reproduced" and "+15.0 points on mnist_m" in over_bn.evidence
    assert find("batch size as small as 1").verdict == "reproduced"  # GN and WS+GN, BN refused
    assert find("skewed label distribution").verdict == "reproduced"
    assert find("domain generalization").verdict == "not run"
    assert find("GN, LN, WS+GN").verdict == "not reproduced"  # WS+GN is ahead
    assert find("BN cannot train").verdict == "reproduced"


def test_a_claim_on_fewer_seeds_than_planned_is_incomplete_not_a_verdict() -> None:
    silo = {
        "fedwon": entry(0.90, 0.01, mnist=0.95, svhn=0.85),
        "fedavg": entry(0.70, 0.01, mnist=0.90, svhn=0.50),
        "fedbn": entry(0.80, 0.01, mnist=0.93, svhn=0.67),
    }
    (complete, gain_avg, gain_bn, *_) = check_claims({"cross_silo": {"methods": silo}}, LABELS)
    assert complete.verdict == "reproduced" and gain_bn.verdict == "reproduced"
    short = {**silo, "fedbn": {**silo["fedbn"], "seeds": 2}}  # one FedBN run failed
    (every, gain_avg, gain_bn, *_) = check_claims({"cross_silo": {"methods": short}}, LABELS)
    assert every.verdict == "incomplete: FedBN 2 of 3 seeds"
    assert every.evidence.endswith("(on the seeds that ran: reproduced)")
    assert gain_bn.verdict == "incomplete: FedBN 2 of 3 seeds"
    assert gain_avg.verdict == "reproduced"  # FedAvg has every seed
