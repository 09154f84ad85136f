"""The FedWon paper's claims, in its abstract's words, each checked with a stated rule.

The abstract (ICLR 2024): FedWon "surpasses both FedAvg and the current state-of-the-art method
(FedBN) across all experimental setups, achieving notable accuracy improvements of more than 10%
in certain domains"; it "is versatile for both cross-silo and cross-device FL, exhibiting robust
domain generalization capability, showcasing strong performance even with a batch size as small
as 1"; and it "can also effectively tackle the challenge of skewed label distribution".

**Comparison rule.** "A beats B" in one setting is decided on the mean over seeds, against the
seed-to-seed spread: with difference d = mean_A − mean_B and spread s = sqrt(std_A² + std_B²)
(sample standard deviations over the reported seeds; 0 with a single seed),

* ``yes``  if d > s,   * ``no``  if d < −s,   * ``within noise`` otherwise.

Every comparison is made against **each baseline separately, in each setting** (the per-setting
verdicts, :func:`comparisons`); a baseline the config refuses (BN at batch size 1) is shown as
refused, not compared. A claim is ``reproduced`` when every comparison it makes is ``yes``,
``not reproduced`` when any is ``no``, and ``inconclusive`` otherwise. "More than 10% in certain
domains" is read as: for each baseline, some domain of some setting where FedWon's mean over
seeds is more than 10 points above the baseline's.

A claim whose methods have fewer seeds than the plan (a run failed) gets no verdict: it is
``incomplete: <method> n of N seeds``, and its evidence says what the seeds that ran would give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "Comparison", "check_claims", "compare", "comparisons"]

Entry = dict[str, Any]  # {"mean", "std", "per_domain", "seeds", ...} of one method
Section = Mapping[str, Any]  # a part of results.json: {"methods", "refused", ...}

RULE = (
    "A beats B when mean_A − mean_B > sqrt(std_A² + std_B²) (std over seeds, 0 for one seed); "
    "each baseline is compared separately in each setting, a refused baseline is not compared; "
    "reproduced = every comparison holds, not reproduced = one is reversed beyond the spread"
)
BASELINES = ("fedavg", "fedbn", "fedavg_gn", "fedavg_ln", "fedavg_ws_gn")
PAPER_BASELINES = ("fedavg", "fedbn")  # "surpasses both FedAvg and ... FedBN"
INDEPENDENT_NORMS = ("fedavg_gn", "fedavg_ln", "fedavg_ws_gn")
GAIN_THRESHOLD = 0.10


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


@dataclass(frozen=True)
class Comparison:
    """FedWon against one baseline in one setting."""

    setting: str
    baseline: str
    outcome: str  # yes | no | within noise | refused | not run
    gain: float | None = None  # mean_FedWon − mean_baseline
    spread: float | None = None
    short: str = ""  # a method with fewer seeds than planned: "FedBN 2 of 3 seeds"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "setting": self.setting,
            "baseline": self.baseline,
            "outcome": self.outcome,
        }
        if self.gain is not None:
            out |= {"gain": self.gain, "spread": self.spread}
        if self.short:
            out["incomplete"] = self.short
        return out

    def text(self, labels: Mapping[str, str]) -> str:
        """``vs FedBN +0.3 ± 1.6 (within noise)``"""
        if self.gain is None:
            return f"vs {labels.get(self.baseline, self.baseline)}: {self.outcome}"
        return (
            f"vs {labels.get(self.baseline, self.baseline)} {100 * self.gain:+.1f} ± "
            f"{_pct(self.spread or 0.0)} ({self.outcome})"
        )


def _short(methods: Mapping[str, Entry], names: list[str], labels: Mapping[str, str]) -> str:
    """``"FedBN 2 of 3 seeds"`` for each method with fewer seeds than planned (``""``: none)."""
    return ", ".join(
        f"{labels.get(m, m)} {methods[m]['seeds']} of {methods[m]['planned_seeds']} seeds"
        for m in names
        if m in methods and methods[m]["seeds"] < methods[m].get("planned_seeds", 0)
    )


def comparisons(sections: Mapping[str, Section], labels: Mapping[str, str]) -> list[Comparison]:
    """FedWon against each baseline in each setting that ran FedWon (settings in order)."""
    out = []
    for setting, section in sections.items():
        methods = section.get("methods", {})
        refused = section.get("refused", {})
        if "fedwon" not in methods:
            continue
        won = methods["fedwon"]
        for base in BASELINES:
            if base in refused:
                out.append(Comparison(setting, base, "refused"))
            elif base in methods:
                theirs = methods[base]
                spread = math.sqrt((won.get("std") or 0.0) ** 2 + (theirs.get("std") or 0.0) ** 2)
                short = _short(methods, ["fedwon", base], labels)
                gain = won["mean"] - theirs["mean"]
                out.append(Comparison(setting, base, compare(won, theirs), gain, spread, short))
    return out


@dataclass(frozen=True)
class Claim:
    claim: str
    verdict: str
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return {"claim": self.claim, "verdict": self.verdict, "evidence": self.evidence}


def _claim(
    claim: str,
    found: list[Comparison],
    labels: Mapping[str, str],
    names: Mapping[str, str],
    require: tuple[str, ...] = (),
) -> Claim:
    """A claim made of ``found`` comparisons (refused ones shown, not counted)."""
    counted = [c for c in found if c.gain is not None]
    missing = [m for m in require if not any(c.baseline == m for c in found)]
    if not counted or missing:
        what = ", ".join(labels.get(m, m) for m in missing) or "its methods"
        return Claim(claim, "not run", f"no results for {what}")
    evidence = "; ".join(f"{names.get(c.setting, c.setting)}: {c.text(labels)}" for c in found)
    verdict = _verdict([c.outcome for c in counted])
    short = ", ".join(sorted({c.short for c in counted if c.short}))
    if short:
        ran = f"{evidence} (on the seeds that ran: {verdict})"
        return Claim(claim, f"incomplete: {short}", ran)
    return Claim(claim, verdict, evidence)


def _domain_gain(
    claim: str,
    sections: Mapping[str, Section],
    base: str,
    labels: Mapping[str, str],
    names: Mapping[str, str],
) -> Claim:
    """Reproduced when some domain of some setting has FedWon > ``base`` by > 10 points."""
    best: tuple[float, str, str] | None = None
    short = ""
    for setting, section in sections.items():
        methods = section.get("methods", {})
        if "fedwon" not in methods or base not in methods:
            continue
        won, theirs = methods["fedwon"]["per_domain"], methods[base]["per_domain"]
        for domain in sorted(set(won) & set(theirs)):
            gain = won[domain] - theirs[domain]
            if best is None or gain > best[0]:
                best = (gain, setting, domain)
        short = short or _short(methods, ["fedwon", base], labels)
    if best is None:
        return Claim(claim, "not run", f"no results for {labels.get(base, base)}")
    gain, setting, domain = best
    evidence = (
        f"largest gain vs {labels.get(base, base)}: {100 * gain:+.1f} points on {domain} "
        f"({names.get(setting, setting)})"
    )
    verdict = "reproduced" if gain > GAIN_THRESHOLD else "not reproduced"
    if short:
        ran = f"{evidence} (on the seeds that ran: {verdict})"
        return Claim(claim, f"incomplete: {short}", ran)
    return Claim(claim, verdict, evidence)


def check_claims(
    sections: Mapping[str, Section],
    labels: Mapping[str, str],
    names: Mapping[str, str] | None = None,
) -> list[Claim]:
    """Every claim of the abstract the study tests, from the parts of ``results.json`` (in
    report order; ``names``: how each setting is called in the evidence)."""
    names = names or {}
    found = comparisons(sections, labels)

    def among(settings: list[str], baselines: tuple[str, ...]) -> list[Comparison]:
        return [c for c in found if c.setting in settings and c.baseline in baselines]

    every = list(sections)
    skew = [s for s in every if s.startswith("label_skew")]
    device = [s for s in every if s.startswith("cross_device")]
    claims = [
        _claim(
            "FedWon surpasses both FedAvg and FedBN across all experimental setups",
            among(every, PAPER_BASELINES),
            labels,
            names,
            PAPER_BASELINES,
        ),
        *(
            _domain_gain(
                f"FedWon achieves accuracy improvements of more than 10% in certain domains "
                f"(over {labels.get(base, base)})",
                sections,
                base,
                labels,
                names,
            )
            for base in PAPER_BASELINES
        ),
        _claim(
            "FedWon is versatile for cross-device FL, showing strong performance even with a "
            "batch size as small as 1 (against every normalization that can train there)",
            among(device, BASELINES),
            labels,
            names,
        ),
        _claim(
            "FedWon exhibits robust domain generalization capability (unseen domain)",
            among(["domain_generalization"], PAPER_BASELINES),
            labels,
            names,
            PAPER_BASELINES,
        ),
        _claim(
            "FedWon can effectively tackle the challenge of skewed label distribution",
            among(skew, PAPER_BASELINES),
            labels,
            names,
            PAPER_BASELINES,
        ),
        _claim(
            "Cross-silo: FedWon beats the batch-independent normalizations (GN, LN, WS+GN)",
            among(["cross_silo"], INDEPENDENT_NORMS),
            labels,
            names,
            INDEPENDENT_NORMS,
        ),
    ]
    refused = sections.get("cross_device", {}).get("refused", {})
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
