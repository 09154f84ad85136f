"""Plots a user opens (``accuracy.png``, ``fedwon report --plot``): whole-number round ticks and
a title, even for a 3-round run where matplotlib's default ticks are 1.0, 1.5, 2.0, ..."""

import json
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from fedwon.cli.report import plot_runs
from fedwon.run.recorder import plot_accuracy

ROWS = [
    {"round": r, "accuracy": 0.5 + r / 10, "accuracy/mnist": 0.6, "accuracy/usps": 0.7}
    for r in (1, 2, 3)
]


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures a plot function saves (it closes them, so they are caught at savefig)."""
    figures: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        self.canvas.draw()  # ticks are placed when drawn
        figures.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def assert_round_axis(fig: Figure) -> None:
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert ax.get_title(), "the plot has no title"


def test_accuracy_png_has_round_ticks_and_a_title(tmp_path: Path, saved: list[Figure]) -> None:
    plot_accuracy(ROWS, tmp_path / "accuracy.png", title="fedwon: test accuracy per round")
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert_round_axis(saved[0])


def test_compare_png_has_round_ticks_and_a_title(tmp_path: Path, saved: list[Figure]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    plot_runs(["fedwon"], [run], tmp_path / "compare.png")
    assert_round_axis(saved[0])
