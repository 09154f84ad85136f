"""The FedWon paper's claims, each checked against the study's numbers with a stated rule.

A comparison "A beats B" is decided on the mean over seeds, against the seed-to-seed spread:
with difference d = mean_A − mean_B and spread s = sqrt(std_A² + std_B²) (sample standard
deviations over seeds; 0 with a single seed),

* ``yes``  if d > s,   * ``no``  if d < −s,   * ``within noise`` otherwise.

A claim is ``reproduced`` when every comparison it makes is ``yes``, ``not reproduced`` when any
is ``no``, and ``inconclusive`` otherwise. The rule is deliberately simple and printed with every
verdict; the report gives the numbers so that readers can apply their own.

A claim whose methods have fewer seeds than the plan (a run failed) gets no verdict: it is
``incomplete: <method> n of N seeds``, and its evidence says what the seeds that ran would give.
A dropped seed can flip a verdict, so a verdict on fewer seeds is never stated as if complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "check_claims", "compare"]

Entry = dict[str, Any]  # {"mean", "std", "per_domain", "seeds", ...} of one method

RULE = (
    "A beats B when mean_A − mean_B > sqrt(std_A² + std_B²) (std over seeds, 0 for one seed); "
    "reproduced = every comparison holds, not reproduced = one is reversed beyond the spread"
)


def compare(a: Entry, b: Entry) -> str:
    """``yes`` / ``no`` / ``within noise``: does ``a`` beat ``b`` (module docstring)?"""
    diff = a["mean"] - b["mean"]
    spread = math.sqrt((a.get("std") or 0.0) ** 2 + (b.get("std") or 0.0) ** 2)
    if diff > spread:
        return "yes"
    if diff < -spread:
        return "no"
    return "within noise"


def _verdict(outcomes: list[str]) -> str:
    if not outcomes:
        return "not run"
    if all(o == "yes" for o in outcomes):
        return "reproduced"
    if any(o == "no" for o in outcomes):
        return "not reproduced"
    return "inconclusive"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _pm(entry: Entry) -> str:
    std = entry.get("std")
    return _pct(entry["mean"]) + (f" ± {_pct(std)}" if std is not None else "")


@dataclass(frozen=True)
class Claim:
    claim: str
    verdict: str
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return {"claim": self.claim, "verdict": self.verdict, "evidence": self.evidence}


def _missing_seeds(methods: dict[str, Entry], names: list[str], labels: dict[str, str]) -> str:
    """``"FedBN 2 of 3 seeds"`` for each method with fewer seeds than planned (``""``: none)."""
    short = [
        f"{labels.get(m, m)} {methods[m]['seeds']} of {methods[m]['planned_seeds']} seeds"
        for m in names
        if methods[m]["seeds"] < methods[m].get("planned_seeds", methods[m]["seeds"])
    ]
    return ", ".join(short)


def _unless_incomplete(claim: Claim, missing: str) -> Claim:
    """``claim``, or no verdict when a method lacks seeds (module docstring)."""
    if not missing:
        return claim
    evidence = f"{claim.evidence} (on the seeds that ran: {claim.verdict})"
    return Claim(claim.claim, f"incomplete: {missing}", evidence)


def _beats(
    claim: str, methods: dict[str, Entry], winner: str, losers: list[str], labels: dict[str, str]
) -> Claim:
    if winner not in methods or not all(m in methods for m in losers):
        missing = [m for m in (winner, *losers) if m not in methods]
        return Claim(claim, "not run", f"no results for {', '.join(missing)}")
    outcomes, parts = [], []
    for loser in losers:
        outcome = compare(methods[winner], methods[loser])
        outcomes.append(outcome)
        diff = methods[winner]["mean"] - methods[loser]["mean"]
        parts.append(f"vs {labels[loser]} {_pm(methods[loser])} ({100 * diff:+.1f}: {outcome})")
    evidence = f"{labels[winner]} {_pm(methods[winner])}; " + "; ".join(parts)
    short = _missing_seeds(methods, [winner, *losers], labels)
    return _unless_incomplete(Claim(claim, _verdict(outcomes), evidence), short)


def _largest_domain_gain(
    claim: str, methods: dict[str, Entry], labels: dict[str, str], threshold: float
) -> Claim:
    """Reproduced when FedWon's best per-domain gain (means over seeds) over *each* of FedAvg
    and FedBN exceeds ``threshold``."""
    if not all(m in methods for m in ("fedwon", "fedavg", "fedbn")):
        return Claim(claim, "not run", "needs fedwon, fedavg and fedbn")
    won = methods["fedwon"]["per_domain"]
    best: dict[str, tuple[float, str]] = {}
    for base in ("fedavg", "fedbn"):
        theirs = methods[base]["per_domain"]
        best[base] = max((won[d] - theirs[d], d) for d in won if d in theirs)
    evidence = "; ".join(
        f"largest gain vs {labels[b]}: {100 * gain:+.1f} on {domain}"
        for b, (gain, domain) in best.items()
    )
    ok = all(gain > threshold for gain, _ in best.values())
    missing = _missing_seeds(methods, ["fedwon", "fedavg", "fedbn"], labels)
    verdict = Claim(claim, "reproduced" if ok else "not reproduced", evidence)
    return _unless_incomplete(verdict, missing)


def check_claims(results: dict[str, Any], labels: dict[str, str]) -> list[Claim]:
    """Every claim of the paper the study tests, from the ``results.json`` dictionary."""
    silo = results.get("methods", {})
    device = results.get("cross_device", {}).get("methods", {})
    skew = results.get("label_skew", {}).get("methods", {})
    dg = results.get("domain_generalization", {}).get("methods", {})
    claims = [
        _beats(
            "Cross-silo multi-domain: FedWon beats FedAvg (BN) and FedBN",
            silo,
            "fedwon",
            ["fedavg", "fedbn"],
            labels,
        ),
        _largest_domain_gain(
            "Cross-silo: on some domain FedWon gains >10 points over FedAvg and over FedBN",
            silo,
            labels,
            0.10,
        ),
        _beats(
            "Cross-silo: FedWon beats batch-independent normalizations (GN, LN, WS+GN)",
            silo,
            "fedwon",
            ["fedavg_gn", "fedavg_ln", "fedavg_ws_gn"],
            labels,
        ),
        _beats(
            "Cross-device, batch size 1: FedWon beats FedAvg with GN and with WS+GN",
            device,
            "fedwon",
            ["fedavg_gn", "fedavg_ws_gn"],
            labels,
        ),
        _beats(
            "Label skew (Dirichlet 0.1): FedWon beats FedAvg and FedBN",
            skew,
            "fedwon",
            ["fedavg", "fedbn"],
            labels,
        ),
        _beats(
            "Domain generalization (unseen domain): FedWon beats FedAvg and FedBN",
            dg,
            "fedwon",
            ["fedavg", "fedbn"],
            labels,
        ),
    ]
    refused = results.get("cross_device", {}).get("refused", {})
    if "fedavg" in refused:
        ok = bool(refused["fedavg"]) and "batch_size=1" in refused["fedavg"]
        claims.append(
            Claim(
                "Batch size 1: BN cannot train (the framework refuses it up front)",
                "reproduced" if ok else "not reproduced",
                f"config error: {refused['fedavg']}",
            )
        )
    return claims
