"""What a study plan costs: runs and rounds counted from the plan, times from pilot runs.

:func:`planned_rounds` counts what a part trains when nothing fails and no grid widens —
halving's rounds per search (:func:`fedwon.study.halving.halving_rounds`) plus every reported
run — and :func:`estimate_seconds` prices them with :data:`PILOT`, seconds per round and per
test evaluation measured with the paper's ``cnn`` on this project's 2-core machine, plus a fixed
cost per stop (start-up, checkpoint, offline validation). Widening adds points the plan cannot
foresee; :data:`WIDENING_MARGIN` is the share allowed for it. ``fedwon study --estimate``
prints :func:`table`, which the full plan's docstring quotes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedwon.study.halving import halving_rounds
from fedwon.study.part import Part, StudyPlan
from fedwon.study.runs import heldout_domains

__all__ = ["PILOT", "Pilot", "estimate_seconds", "planned_rounds", "planned_runs", "table"]


@dataclass(frozen=True)
class Pilot:
    """Measured costs of one part's runs (single-threaded, as ``--jobs`` runs them)."""

    round_s: float  # one training round, averaged over the part's methods
    eval_s: float  # one federated test evaluation (every client)


PILOT: dict[str, Pilot] = {
    # 4-round pilots of each part's settings (cnn, one thread) on the project's 2-core machine
    # while four other jobs shared it (load average 5-10): wall seconds times the pilot
    # process's CPU share, i.e. what a round costs a worker that has a core to itself. The
    # evaluation figure is the last round's extra (test evaluation of every client, final
    # checkpoint, summary and plot).
    "cross_device": Pilot(round_s=0.3, eval_s=1.0),  # cnn-tiny (100 rounds, 10 clients of 7)
    "cross_device_bs2": Pilot(round_s=0.2, eval_s=1.0),
    # label skew on cnn-tiny: a 256-round one-domain pilot (Dirichlet 0.1, 5 clients of 50
    # images a round) took 0.12 s a round; with feature shift 10 clients train a round
    "label_skew_alpha01": Pilot(round_s=0.15, eval_s=0.5),
    "label_skew_alpha05": Pilot(round_s=0.15, eval_s=0.5),
    "label_skew": Pilot(round_s=0.3, eval_s=0.5),
    # cnn, 743 images a client: a 20-round pilot took 18 s a round with one evaluation every
    # two rounds, sharing the machine with two niced study workers
    "cross_silo": Pilot(round_s=16.0, eval_s=4.0),
    "domain_generalization": Pilot(round_s=13.0, eval_s=4.0),  # four clients of five
}
STOP_S = 1.0
"""Per stop of a run beyond its last round's evaluation (which ``eval_s`` prices, with the final
checkpoint): resuming, the offline validation, the record. Measured: a resumed one-round stop of
the cross-device part cost 6.8 CPU seconds, its round 1.4 and its evaluation about 5."""
WIDENING_MARGIN = 0.15
"""Share of the tuning rounds allowed for grids that widen."""


def _grid_size(part: Part, method: str, arm: str) -> int:
    return math.prod(len(axis.start) for axis in part.axes(method, arm))


def _reported_runs(part: Part) -> int:
    arms = len(part.methods) if part.reuse else sum(len(part.arms(m)) for m in part.methods)
    held = len(heldout_domains(part)) if part.heldout else 1
    return arms * len(part.seeds) * held


def planned_runs(part: Part) -> int:
    """Requests (a run brought to a stop, or to its two reported stops) without widening."""
    requests = 0
    if not part.reuse:
        for method in part.methods:
            for arm in part.arms(method):
                alive = _grid_size(part, method, arm)
                for _ in part.schedule:
                    requests += alive
                    alive = max(1, math.ceil(alive / 2))
    return requests + _reported_runs(part)


def planned_rounds(part: Part) -> tuple[int, int]:
    """``(tuning, reported)`` rounds ``part`` trains when nothing fails and no grid widens."""
    tuning = 0
    if not part.reuse:
        for method in part.methods:
            for arm in part.arms(method):
                tuning += halving_rounds(_grid_size(part, method, arm), part.schedule)
    return tuning, _reported_runs(part) * part.num_rounds


def _evals(part: Part, rounds: int) -> float:
    every = int(part.settings.get("eval_every") or 1)
    return rounds / every


def estimate_seconds(part: Part) -> float:
    """Seconds of one worker ``part`` takes (module docstring), widening margin included."""
    pilot = PILOT[part.name]
    tuning, reported = planned_rounds(part)
    tuning = int(tuning * (1 + WIDENING_MARGIN))
    stops = planned_runs(part) + _reported_runs(part)  # reported runs stop twice
    evals = _evals(part, tuning + reported) + stops  # every stop evaluates its last round
    return (tuning + reported) * pilot.round_s + evals * pilot.eval_s + stops * STOP_S


def table(plan: StudyPlan, jobs: int = 2) -> str:
    """The estimate per part and in all, as the plan's docstring quotes it."""
    lines = []
    total = 0.0
    for part in plan.parts:
        tuning, reported = planned_rounds(part)
        seconds = estimate_seconds(part)
        total += seconds
        lines.append(
            f"  {part.name:<22} {part.num_rounds:>3} rounds: {tuning:>5} tuning + {reported:>5} "
            f"reported rounds, {planned_runs(part):>3} runs ≈ {seconds / 3600:.2f} h"
        )
    lines.append(
        f"  in all ≈ {total / 3600:.1f} h of one worker ≈ {total / 3600 / jobs:.1f} h with "
        f"--jobs {jobs} at the pilot's speed"
    )
    return "\n".join(lines)
