"""Choosing a grid point: synchronous successive halving over a grid that widens itself.

The search of one method (or one FedWon AGC arm) in one part, as a pure generator that asks for
scores and never trains anything itself (:func:`search`; :mod:`fedwon.study.runner` answers its
requests by training, tests by a formula):

1. **Successive halving.** Every grid point trains the first rung (``rungs[0]`` rounds) and is
   scored by validation accuracy; the better half (``ceil(n/2)``; ties go to the smaller
   value, compared axis by axis, so the outcome never depends on the order runs finish in)
   continues to the next rung — the same run directory resumed with a larger ``num_rounds``,
   which is bit-identical to having trained straight there — and so on until the last rung,
   the part's full schedule, where the best point is chosen. A failed point (diverged) scores
   nothing and is never promoted; when every point alive at a rung fails, the best points set
   aside at earlier rungs take their places there. The last survivor is trained to the last
   rung too, so every search ends with a score at the full schedule (the study compares
   FedWon's AGC arms there).
2. **Widening.** If the chosen point sits on an edge of the grid along an axis, the grid grows by
   the next value of that axis's :class:`Ladder` beyond the edge (one new value, crossed with
   the grid's values of the other axes) and halving runs again over the larger grid; points
   already scored keep their scores (nothing is trained twice). This repeats until the chosen
   point is interior or the ladder ends (a stated bound, reported when the choice sits on it).

Why not Optuna's ``SuccessiveHalvingPruner`` or Ray Tune's ASHA (DESIGN.md asks): both are
*asynchronous* — a trial is promoted when it finishes, against whatever has finished by then —
so with ``--jobs 2`` the choice would depend on timing, and a study rebuilt from committed
records could not replay it. Their state lives in their own storage (a database, an experiment
folder), not in the per-run records the report is a pure function of. Synchronous halving over
a fixed grid is a few lines, deterministic, and replays from the records exactly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Hashable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Axis",
    "Ladder",
    "Point",
    "Request",
    "SearchResult",
    "drive",
    "halving_rounds",
    "rungs",
    "search",
]

Point = tuple[float, ...]
"""One grid point: a value per axis, in the order of the search's axes."""
Request = tuple[Point, int]
"""Score ``point`` after this many rounds (its validation accuracy; ``None``: the run failed)."""
Score = float | None
Scores = dict[Request, Score]


@dataclass(frozen=True)
class Ladder:
    """The values an axis may take, ascending; its two ends are the bounds widening stops at."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if list(self.values) != sorted(set(self.values)) or not self.values:
            raise ValueError(f"a ladder is ascending distinct values, got {self.values}")

    @property
    def bounds(self) -> tuple[float, float]:
        return self.values[0], self.values[-1]

    def beyond(self, value: float, direction: int) -> float | None:
        """The next value below (``-1``) or above (``+1``) ``value``; ``None`` past a bound."""
        i = self.values.index(value) + direction
        return self.values[i] if 0 <= i < len(self.values) else None


@dataclass(frozen=True)
class Axis:
    """A tuned hyper-parameter: its name, starting grid and ladder (``start`` on the ladder)."""

    key: str
    start: tuple[float, ...]
    ladder: Ladder

    def __post_init__(self) -> None:
        missing = [v for v in self.start if v not in self.ladder.values]
        if missing or not self.start:
            raise ValueError(f"{self.key}: start {self.start} must be values of its ladder")


def rungs(first: int, total: int) -> tuple[int, ...]:
    """``first, 2·first, 4·first, ...`` below ``total``, then ``total`` (``first`` 0: one rung)."""
    out: list[int] = []
    r = first
    while 0 < r < total:
        out.append(r)
        r *= 2
    return (*out, total)


def halving_rounds(n: int, schedule: Sequence[int]) -> int:
    """Rounds trained by halving ``n`` points over ``schedule`` (every point resumed, never
    retrained; no failures, no widening): what a search costs at least."""
    total, alive, done = 0, n, 0
    for r in schedule:
        total += alive * (r - done)
        done, alive = r, max(1, math.ceil(alive / 2))
    return total


@dataclass
class SearchResult:
    """What a search did: every score it asked for, the final grid, the choice, the widening."""

    axes: tuple[Axis, ...]
    rungs: tuple[int, ...]
    grid: list[Point] = field(default_factory=list)  # the starting grid, then widened points
    scores: dict[Point, dict[int, float | None]] = field(default_factory=dict)
    best: Point | None = None
    widened: list[str] = field(default_factory=list)  # "lr 0.1 → 0.3", in order
    at_bound: dict[str, float] = field(default_factory=dict)  # axis -> the bound chosen

    def score(self, point: Point, rounds: int) -> float | None:
        return self.scores.get(point, {}).get(rounds)


def _ok(score: float | None) -> bool:
    return score is not None and score == score  # NaN is a failure too


def _rank(result: SearchResult, points: list[Point], rounds: int) -> list[Point]:
    """``points`` that did not fail at ``rounds``, best first (ties: the smaller point)."""
    scored = [p for p in points if _ok(result.score(p, rounds))]
    return sorted(scored, key=lambda p: (-(result.score(p, rounds) or 0.0), p))


def _halving(result: SearchResult) -> Generator[list[Request], Scores, Point | None]:
    """One pass of successive halving over ``result.grid`` (scores known are not asked again).

    Points a rung sets aside wait in ``reserve``, best first (those set aside later first): when
    every point still alive fails at a rung (e.g. the high learning rate that won the short
    rungs diverges later), as many of them take their places at that rung, so the search still
    chooses among the points that train rather than choosing nothing."""
    alive, reserve = list(result.grid), list[Point]()
    i = 0
    while i < len(result.rungs):
        rounds = result.rungs[i]
        ask = [(p, rounds) for p in alive if rounds not in result.scores.get(p, {})]
        if ask:
            answers = yield ask
            for point, r in ask:
                result.scores.setdefault(point, {})[r] = answers[(point, r)]
        ranked = _rank(result, alive, rounds)
        if not ranked:
            if not reserve:
                return None
            alive, reserve = reserve[: len(alive)], reserve[len(alive) :]
            continue  # the same rung, for the best points set aside before
        if i == len(result.rungs) - 1:
            return ranked[0]
        keep = max(1, math.ceil(len(alive) / 2))
        alive, reserve = ranked[:keep], ranked[keep:] + reserve
        i += 1
    return None  # pragma: no cover - rungs are never empty


def _widen(result: SearchResult, best: Point) -> list[Point]:
    """New points beyond each edge ``best`` sits on (module docstring)."""
    values = [sorted({p[i] for p in result.grid}) for i in range(len(result.axes))]
    new: list[Point] = []
    for i, axis in enumerate(result.axes):
        for direction, edge in ((-1, values[i][0]), (1, values[i][-1])):
            if best[i] != edge:
                continue
            nxt = axis.ladder.beyond(edge, direction)
            if nxt is None:
                continue
            result.widened.append(f"{axis.key} {edge:g} → {nxt:g}")
            others = [[nxt] if j == i else values[j] for j in range(len(result.axes))]
            new += [p for p in itertools.product(*others) if p not in result.grid + new]
    return new


def search(
    axes: Sequence[Axis], schedule: Sequence[int]
) -> Generator[list[Request], Scores, SearchResult]:
    """Halving over the grid of ``axes``, widened until the choice is interior or on a bound.

    Drive it with ``send``: each yielded list of requests is answered by a dict from request to
    validation accuracy (``None`` for a failed run). Returns the :class:`SearchResult`.
    """
    result = SearchResult(tuple(axes), tuple(schedule))
    result.grid = list(itertools.product(*(a.start for a in axes)))
    while True:
        best = yield from _halving(result)
        result.best = best
        new = _widen(result, best) if best is not None else []
        if not new:
            if best is not None:
                result.at_bound = {
                    a.key: v for a, v in zip(axes, best, strict=True) if v in a.ladder.bounds
                }
            return result
        result.grid += new


def drive(
    searches: dict[Hashable, Generator[list[Request], Scores, SearchResult]],
    answer: Callable[[list[tuple[Hashable, Request]]], dict[tuple[Hashable, Request], Score]],
) -> dict[Hashable, SearchResult]:
    """Run several searches in lockstep: each step gathers every search's requests into one
    batch for ``answer`` (which may train them in parallel) and hands each search its scores."""
    results: dict[Hashable, SearchResult] = {}
    pending: dict[Hashable, list[Request]] = {}

    def advance(key: Hashable, scores: Scores | None) -> None:
        try:
            pending[key] = searches[key].send(scores)  # type: ignore[arg-type]
        except StopIteration as stop:
            results[key] = stop.value

    for key in searches:
        advance(key, None)
    while pending:
        batch = [(key, request) for key, requests in pending.items() for request in requests]
        answers = answer(batch)
        asked, pending = pending, {}
        for key, requests in asked.items():
            advance(key, {request: answers[(key, request)] for request in requests})
    return {key: results[key] for key in searches}
