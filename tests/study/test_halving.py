"""Successive halving over a self-widening grid, driven by a formula instead of training."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import pytest

from fedwon.study.halving import (
    Axis,
    Ladder,
    Point,
    Request,
    SearchResult,
    drive,
    halving_rounds,
    rungs,
    search,
)

LR = Ladder((1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0))
CLIP = Ladder((0.08, 0.16, 0.32))


def run(
    axes: list[Axis], schedule: tuple[int, ...], score: Callable[[Point, int], float | None]
) -> tuple[SearchResult, list[list[Request]]]:
    """Drive one search with ``score``; return its result and every batch it asked for."""
    batches: list[list[Request]] = []

    def answer(batch: list[tuple[Hashable, Request]]) -> dict:
        batches.append([request for _, request in batch])
        return {(key, req): score(*req) for key, req in batch}

    return drive({"s": search(axes, schedule)}, answer)["s"], batches


def test_rungs_double_up_to_the_full_schedule() -> None:
    assert rungs(8, 64) == (8, 16, 32, 64)
    assert rungs(3, 20) == (3, 6, 12, 20)
    assert rungs(0, 12) == (12,)
    assert rungs(12, 12) == (12,)
    # 10 points over 8/16/32/64: 10·8 + 5·8 + 3·16 + 2·32
    assert halving_rounds(10, (8, 16, 32, 64)) == 80 + 40 + 48 + 64
    assert halving_rounds(1, (12,)) == 12


def test_halving_keeps_the_better_half_and_resumes_it() -> None:
    """Scores rise with rounds and peak at lr 0.01: each rung keeps ceil(n/2), best first,
    and a survivor is asked only for the rounds it has not reached (the runner resumes it)."""
    axis = Axis("lr", (1e-3, 3e-3, 0.01, 0.03, 0.1), LR)
    peak = {1e-3: 0.5, 3e-3: 0.7, 0.01: 0.9, 0.03: 0.8, 0.1: 0.6}
    result, batches = run([axis], (2, 4, 8), lambda p, r: peak[p[0]] * r / 8)
    assert batches == [
        [((1e-3,), 2), ((3e-3,), 2), ((0.01,), 2), ((0.03,), 2), ((0.1,), 2)],
        [((0.01,), 4), ((0.03,), 4), ((3e-3,), 4)],  # the better 3 of 5, best first
        [((0.01,), 8), ((0.03,), 8)],
    ]
    assert result.best == (0.01,) and not result.widened and not result.at_bound
    assert result.scores[(1e-3,)] == {2: pytest.approx(0.125)}  # never promoted


def test_ties_go_to_the_smaller_value_and_failures_are_never_promoted() -> None:
    axis = Axis("lr", (3e-3, 0.01, 0.03, 0.1), LR)
    flat = {3e-3: 0.4, 0.01: 0.5, 0.03: 0.5, 0.1: None}  # 0.1 diverged

    def score(point: Point, rounds: int) -> float | None:
        return flat[point[0]]

    result, batches = run([axis], (1, 2), score)
    assert batches[1] == [((0.01,), 2), ((0.03,), 2)]  # the tie: both kept, smaller first
    assert result.best == (0.01,)
    every_failed, _ = run([axis], (1, 2), lambda p, r: None)
    assert every_failed.best is None and every_failed.at_bound == {}


def test_when_every_survivor_fails_the_best_point_set_aside_takes_its_place() -> None:
    """lr 0.1 wins the short rung and diverges at round 8 (FedWon without AGC at batch size 1
    did): lr 0.03, set aside at rung 2, is trained on from rung 8, and the choice is made among
    the points that train; 0.1 is never asked again."""
    axis = Axis("lr", (0.01, 0.03, 0.1), LR)
    score = {0.01: 0.3, 0.03: 0.5, 0.1: 0.6}

    def formula(p: Point, r: int) -> float | None:
        return None if p[0] == 0.1 and r >= 8 else score[p[0]] * r / 8

    result, batches = run([axis], (2, 4, 8), formula)
    assert batches[:4] == [
        [((0.01,), 2), ((0.03,), 2), ((0.1,), 2)],
        [((0.1,), 4), ((0.03,), 4)],
        [((0.1,), 8)],  # the survivor diverges
        [((0.03,), 8)],  # the best point set aside (at rung 4) takes its place
    ]
    assert result.scores[(0.1,)][8] is None and result.best == (0.03,)
    assert all(((0.1,), r) not in b for b in batches[4:] for r in (2, 4, 8))


def test_a_grid_where_every_point_fails_chooses_nothing() -> None:
    result, _ = run([Axis("lr", (0.3, 1.0), LR)], (2, 4), lambda p, r: None)
    assert result.best is None


def test_the_grid_widens_at_an_edge_until_the_best_is_interior() -> None:
    """Best at the upper edge 0.03: the grid gains 0.1, then (best 0.1) 0.3; at 0.3 the score
    falls, so 0.1 is interior and the search stops. Scored points are never asked again."""
    axis = Axis("lr", (0.003, 0.01, 0.03), LR)
    good = {0.003: 0.2, 0.01: 0.4, 0.03: 0.6, 0.1: 0.8, 0.3: 0.5}
    result, batches = run([axis], (2, 4), lambda p, r: good[p[0]])
    assert result.widened == ["lr 0.03 → 0.1", "lr 0.1 → 0.3"]
    assert result.best == (0.1,) and result.at_bound == {}
    assert [p for (p,) in result.grid] == [0.003, 0.01, 0.03, 0.1, 0.3]
    asked = [req for batch in batches for req in batch]
    assert len(asked) == len(set(asked))  # nothing trained twice
    assert ((0.1,), 4) in asked and ((0.003,), 4) not in asked  # 0.003 never promoted


def test_widening_stops_at_a_bound_and_says_so() -> None:
    """Accuracy keeps rising with lr: the grid widens up to the ladder's end (1.0) and the
    choice is flagged as sitting on the upper bound."""
    axis = Axis("lr", (0.03, 0.1), LR)
    result, _ = run([axis], (1,), lambda p, r: p[0])
    assert result.widened == ["lr 0.1 → 0.3", "lr 0.3 → 1"]
    assert result.best == (1.0,) and result.at_bound == {"lr": 1.0}


def test_two_axes_widen_along_the_edge_the_best_sits_on() -> None:
    """lr x clip: the best (0.1, 0.32) is at the upper lr edge and the clip ladder's end: a new
    lr row (0.3 x every clip) is added, the clip axis is flagged at its bound."""
    axes = [Axis("lr", (0.03, 0.1), LR), Axis("agc_clip", (0.16, 0.32), CLIP)]
    best = {(0.1, 0.32): 0.9, (0.3, 0.32): 0.7}
    result, batches = run(axes, (1,), lambda p, r: best.get(p, 0.5))
    assert batches[1] == [((0.3, 0.16), 1), ((0.3, 0.32), 1)]
    assert result.best == (0.1, 0.32) and result.at_bound == {"agc_clip": 0.32}


def test_a_single_point_widens_both_ways() -> None:
    result, batches = run([Axis("lr", (0.01,), LR)], (1,), lambda p, r: 1 - abs(p[0] - 0.01))
    assert batches[1] == [((3e-3,), 1), ((0.03,), 1)] and result.best == (0.01,)


def test_searches_advance_in_lockstep_one_batch_per_rung() -> None:
    """Two searches advance together: every batch holds what each still asks, so parallel
    workers always see a whole rung. ``a`` scores every point alike: ties go to the smaller
    value, so its grid widens down to the ladder's lower bound."""
    a = search([Axis("lr", (0.01, 0.03), LR)], (1, 2))
    b = search([Axis("lr", (0.003, 0.01, 0.03), LR)], (1, 2))
    sizes = []

    def answer(batch: list[tuple[Hashable, Request]]) -> dict:
        sizes.append(sorted(str(k) for k, _ in batch))
        return {(k, req): (0.5 if k == "a" else -abs(req[0][0] - 0.01)) for k, req in batch}

    results = drive({"a": a, "b": b}, answer)
    assert sizes[:2] == [["a", "a", "b", "b", "b"], ["a", "b", "b"]]
    assert results["b"].best == (0.01,) and results["b"].widened == []
    assert results["a"].best == (1e-4,) and results["a"].at_bound == {"lr": 1e-4}


def test_a_ladder_and_an_axis_are_checked() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Ladder((0.1, 0.01))
    with pytest.raises(ValueError, match="must be values of its ladder"):
        Axis("lr", (0.05,), LR)
    assert LR.beyond(1.0, 1) is None and LR.beyond(0.03, -1) == 0.01
