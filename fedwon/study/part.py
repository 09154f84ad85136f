"""The study's vocabulary: methods, grid points, parts and plans (the plans are
:mod:`fedwon.study.plan`).

A :class:`Part` is one comparison of the FedWon paper (cross-silo table, cross-device at batch
size 1 and 2, label skew with and without feature shift, domain generalization): a recipe from
``sims/`` plus the overrides every run of the part shares, the methods compared, and how their
hyper-parameters are chosen:

* ``tune``: each method's learning rate — and FedWon's AGC clip λ — is searched on
  :data:`TUNING_SEED` by successive halving over a grid that widens itself at its edges
  (:mod:`fedwon.study.halving`), ranked by **validation** accuracy (each client's held-out share
  of its training data, ``val_fraction``); test accuracy is never looked at. The chosen values
  then run on the part's ``seeds`` (1, 2, 3), never on the tuning seed: no tuning run is
  reported.
* FedWon's **AGC ablation**: each of the part's ``agc_arms`` — AGC by the rule
  ``all_but_head`` (every parameter but the classifier), by DeepMind's NFNets rule ``nfnets``
  (conv weights, gains and biases; no linear weight), and ``off`` (no AGC) — is searched and
  reported on its own (λ from :data:`AGC_CLIPS`, tuned at the part's batch size); FedWon's row
  in the main table is the arm with the best validation accuracy at the full schedule.
* ``reuse``: take the values chosen in another part (domain generalization trains on four of the
  cross-silo domains and reuses the cross-silo choice rather than tuning per held-out domain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedwon.study.halving import Axis, Ladder, rungs

__all__ = [
    "AGC_ARMS",
    "AGC_CLIPS",
    "ARM_LABELS",
    "CLIP_LADDER",
    "LR_LADDER",
    "METHODS",
    "REPORTED_SEEDS",
    "TUNING_SEED",
    "Candidate",
    "Method",
    "Part",
    "StudyPlan",
    "arm_key",
    "arm_label",
]

SIMS = Path(__file__).resolve().parent.parent.parent / "sims"

TUNING_SEED = 0
"""Grid runs use this seed; reported runs use the part's ``seeds`` (never this one)."""
REPORTED_SEEDS = (1, 2, 3)

LR_LADDER = Ladder((1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0))
"""Learning rates a grid may widen to: half-decade steps (×10^±0.5, rounded to 1 and 3), bounded
by [1e-4, 1]."""
AGC_CLIPS = (0.08, 0.16, 0.32, 0.64, 1.28)
"""FedWon's starting AGC λ grid (issue 20); NFNets uses 0.01 at batch 4096, and smaller batches
tolerate larger λ (REFERENCES.md)."""
CLIP_LADDER = Ladder((0.01, 0.02, 0.04, *AGC_CLIPS, 2.56, 5.12))
"""AGC λ a grid may widen to: the starting grid's own doubling steps, bounded by [0.01, 5.12]."""

AGC_ARMS = ("all_but_head", "nfnets", "off")
"""FedWon's AGC ablation: the two clipping rules (``fedwon.clients.train.AGC_RULES``) and none."""
ARM_LABELS = {
    "all_but_head": "AGC on all but the classifier",
    "nfnets": "AGC by the NFNets rule",
    "off": "no AGC",
}


@dataclass(frozen=True)
class Method:
    """A row of the paper's tables: what is shared (strategy) and which normalization."""

    name: str
    label: str
    strategy: str
    norm: str

    @property
    def overrides(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "norm": self.norm}

    @property
    def uses_agc(self) -> bool:
        """FedWon trains with adaptive gradient clipping, so its clip is tuned as well."""
        return self.strategy == "fedwon"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fedavg", "FedAvg (BN)", "fedavg", "bn"),
        Method("fedavg_gn", "FedAvg + GN", "fedavg", "gn"),
        Method("fedavg_ln", "FedAvg + LN", "fedavg", "ln"),
        Method("fedavg_ws_gn", "FedAvg + WS+GN", "fedavg", "ws_gn"),
        Method("fedbn", "FedBN", "fedbn", "bn"),
        Method("fedwon", "FedWon", "fedwon", "ws"),
    )
}
"""The six methods of ``docs/results.json`` (DESIGN.md), in table order."""


def arm_key(method: str, arm: str) -> str:
    """``fedavg`` for a method's only arm, ``fedwon:nfnets`` for one of FedWon's AGC arms."""
    return f"{method}:{arm}" if arm else method


def arm_label(method: str, arm: str) -> str:
    """``FedWon (AGC by the NFNets rule)``: a method's arm as the report names it."""
    label = METHODS[method].label
    return f"{label} ({ARM_LABELS[arm]})" if arm else label


@dataclass(frozen=True)
class Candidate:
    """One grid point: learning rate, AGC clip λ (0 = AGC off) and the AGC rule."""

    lr: float
    agc_clip: float = 0.0
    agc_rule: str = "all_but_head"

    def overrides(self) -> dict[str, Any]:
        return {"lr": self.lr, "agc_clip": self.agc_clip, "agc_rule": self.agc_rule}

    def tag(self) -> str:
        if not self.agc_clip:
            return f"lr{self.lr:g}"
        rule = "" if self.agc_rule == "all_but_head" else f"-{self.agc_rule}"
        return f"lr{self.lr:g}-clip{self.agc_clip:g}{rule}"

    def as_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "agc_clip": self.agc_clip, "agc_rule": self.agc_rule}


@dataclass(frozen=True)
class Part:
    """One comparison: recipe + shared overrides, methods, grids, rungs and seeds (module doc).

    ``settings`` must name ``num_rounds`` (the full schedule). ``rung0``: rounds of the first
    halving rung (rungs double up to the full schedule; 0 = a single rung).
    """

    name: str
    title: str
    recipe: str
    settings: dict[str, Any]
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = REPORTED_SEEDS
    lrs: tuple[float, ...] = ()  # starting lr grid of every method but FedWon
    fedwon_lrs: tuple[float, ...] = ()
    agc_clips: tuple[float, ...] = AGC_CLIPS  # FedWon's starting λ grid (each AGC arm)
    agc_arms: tuple[str, ...] = AGC_ARMS
    rung0: int = 0
    lr_ladder: Ladder = LR_LADDER
    clip_ladder: Ladder = CLIP_LADDER
    reuse: str = ""  # take the chosen values of this part instead of tuning
    refused: tuple[str, ...] = ()  # methods shown as refused by the config (BN at batch size 1)
    heldout: bool = False  # one run per held-out domain, trained on the others
    fedbn_averaged: bool = False  # also score FedBN with its clients' averaged norm layers

    def __post_init__(self) -> None:
        if not isinstance(self.settings.get("num_rounds"), int):
            raise ValueError(f"part {self.name}: settings must name num_rounds")
        unknown = set(self.agc_arms) - set(AGC_ARMS)
        if unknown:
            raise ValueError(f"part {self.name}: unknown AGC arms {sorted(unknown)}")

    @property
    def num_rounds(self) -> int:
        return int(self.settings["num_rounds"])

    @property
    def schedule(self) -> tuple[int, ...]:
        """The halving rungs: ``rung0``, doubling, ending at ``num_rounds``."""
        return rungs(self.rung0, self.num_rounds)

    @property
    def convergence_from(self) -> int:
        """The round the last 20% of the schedule starts from (the convergence column's)."""
        return self.num_rounds - max(1, math.floor(0.2 * self.num_rounds + 0.5))

    def arms(self, method: str) -> tuple[str, ...]:
        """``("",)`` for a method tuned as one; FedWon's AGC arms (its ablation) otherwise."""
        return self.agc_arms if METHODS[method].uses_agc else ("",)

    def axes(self, method: str, arm: str) -> tuple[Axis, ...]:
        """What the search of ``method``'s ``arm`` tunes: lr, and λ when the arm clips."""
        if not METHODS[method].uses_agc:
            return (Axis("lr", self.lrs, self.lr_ladder),)
        lr = Axis("lr", self.fedwon_lrs, self.lr_ladder)
        return (lr,) if arm == "off" else (lr, Axis("agc_clip", self.agc_clips, self.clip_ladder))

    def candidate(self, method: str, arm: str, point: tuple[float, ...]) -> Candidate:
        """The grid point ``point`` (values in :meth:`axes` order) of ``method``'s ``arm``."""
        if not METHODS[method].uses_agc or arm == "off":
            return Candidate(point[0])
        return Candidate(point[0], point[1], arm)

    @property
    def recipe_path(self) -> Path:
        return SIMS / self.recipe


@dataclass(frozen=True)
class StudyPlan:
    name: str
    parts: tuple[Part, ...]

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"unknown study part {name!r}; parts: {[p.name for p in self.parts]}")

    def on_device(self, device: str) -> StudyPlan:
        """Every run of the plan on ``device`` (``auto``: a GPU when torch sees one). A machine
        key: the runs and their records are the same ones on any device."""
        if device == "auto":
            return self
        parts = tuple(replace(p, settings={**p.settings, "device": device}) for p in self.parts)
        return StudyPlan(self.name, parts)

    def only(self, names: list[str]) -> StudyPlan:
        """The plan restricted to some parts (plus the parts whose choices they reuse), named
        so that its report says it is partial."""
        wanted = {self.part(n).name for n in names}
        wanted |= {self.part(n).reuse for n in names if self.part(n).reuse}
        parts = tuple(p for p in self.parts if p.name in wanted)
        if len(parts) == len(self.parts):
            return self
        return StudyPlan(f"{self.name} (parts: {', '.join(p.name for p in parts)})", parts)
