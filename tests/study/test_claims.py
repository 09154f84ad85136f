"""The claim rule: a comparison against the seed spread, verdicts, and every claim's inputs."""

from __future__ import annotations

from typing import Any

import pytest

from fedwon.study.claims import Claim, check_claims, compare
from fedwon.study.plan import METHODS

LABELS = {name: m.label for name, m in METHODS.items()}


def entry(mean: float, std: float | None = None, **per_domain: float) -> dict[str, Any]:
    return {"mean": mean, "std": std, "per_domain": per_domain or {"a": mean}, "seeds": 3}


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


def test_claim_verdicts_from_results() -> None:
    results = {
        "methods": {
            "fedwon": entry(0.90, 0.01, mnist=0.95, svhn=0.85),
            "fedavg": entry(0.80, 0.01, mnist=0.94, svhn=0.66),  # svhn +19
            "fedbn": entry(0.89, 0.01, mnist=0.95, svhn=0.83),  # at most +2
            "fedavg_gn": entry(0.70, 0.02),
            "fedavg_ln": entry(0.72, 0.02),
            "fedavg_ws_gn": entry(0.95, 0.01),
        },
        "cross_device": {
            "methods": {"fedwon": entry(0.5), "fedavg_gn": entry(0.3), "fedavg_ws_gn": entry(0.4)},
            "refused": {"fedavg": "invalid config: batch_size=1 cannot train with norm='bn' ..."},
        },
        "label_skew": {"methods": {"fedwon": entry(0.5, 0.1), "fedavg": entry(0.45, 0.1)}},
    }
    claims = check_claims(results, LABELS)

    def find(text: str) -> Claim:
        (match,) = [c for c in claims if text in c.claim]
        return match

    silo = find("beats FedAvg (BN) and FedBN")
    assert silo.verdict == "inconclusive"  # beats FedAvg, within noise of FedBN
    assert silo.evidence.startswith("FedWon 90.0 ± 1.0; vs FedAvg (BN) 80.0 ± 1.0 (+10.0: yes)")
    assert "vs FedBN 89.0 ± 1.0 (+1.0: within noise)" in silo.evidence
    gain = find("10 points")
    assert gain.verdict == "not reproduced"  # +19 over FedAvg but only +2 over FedBN
    assert "+19.0 on svhn" in gain.evidence and "+2.0 on svhn" in gain.evidence
    assert find("GN, LN, WS+GN").verdict == "not reproduced"  # WS+GN is ahead
    assert find("Cross-device").verdict == "reproduced"
    assert find("Label skew").verdict == "not run"  # no FedBN result
    assert "no results for fedbn" in find("Label skew").evidence
    assert find("Domain generalization").verdict == "not run"
    assert find("BN cannot train").verdict == "reproduced"


def test_a_claim_on_fewer_seeds_than_planned_is_incomplete_not_a_verdict() -> None:
    full = {
        "fedwon": entry(0.90, 0.01, mnist=0.95, svhn=0.85),
        "fedavg": entry(0.70, 0.01, mnist=0.90, svhn=0.50),
        "fedbn": entry(0.80, 0.01, mnist=0.93, svhn=0.67),
    }
    for e in full.values():
        e["planned_seeds"] = 3
    (complete, gain, *_) = check_claims({"methods": full}, LABELS)
    assert complete.verdict == "reproduced" and gain.verdict == "reproduced"
    short = {**full, "fedbn": {**full["fedbn"], "seeds": 2}}  # one FedBN run failed
    (silo, gain, *_) = check_claims({"methods": short}, LABELS)
    assert silo.verdict == "incomplete: FedBN 2 of 3 seeds"
    assert silo.evidence.endswith("(on the seeds that ran: reproduced)")
    assert gain.verdict == "incomplete: FedBN 2 of 3 seeds"
