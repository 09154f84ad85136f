"""The study's plots: accuracy per round of each method, and accuracy per held-out domain.

Both are written without any timestamp or software tag in the PNG, so a report rebuilt from
the same records is byte for byte the same.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fedwon.study.part import METHODS
from fedwon.study.runs import RunRecord

__all__ = ["mean_curve", "plain", "plot_curves", "plot_heldout"]


def plain(title: str) -> str:
    """A part's markdown title as a plot shows it: code spans (`` `cnn-tiny` ``) without their
    backticks, which matplotlib would draw as they are."""
    return title.replace("`", "")


def mean_curve(records: list[RunRecord]) -> tuple[list[int], list[float]]:
    """Test accuracy per round averaged over the runs that evaluated that round."""
    by_round: dict[int, list[float]] = {}
    for r in records:
        for rnd, acc in r.curve:
            by_round.setdefault(rnd, []).append(acc)
    rounds = sorted(by_round)
    return rounds, [statistics.fmean(by_round[x]) for x in rounds]


def plot_curves(runs: dict[str, list[RunRecord]], title: str, path: Path) -> None:
    """Accuracy vs round, one line per method (mean over its reported seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for method, records in runs.items():
        ok = [r for r in records if r.ok]
        if ok:
            xs, ys = mean_curve(ok)
            ax.plot(xs, ys, marker="o", ms=3, label=f"{METHODS[method].label} (n={len(ok)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (avg over domains)")
    ax.set_ylim(0, 1)
    ax.set_title(plain(title), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_heldout(section: dict[str, Any], title: str, path: Path) -> None:
    """Grouped bars: accuracy on each held-out domain, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = section.get("methods", {})
    domains = sorted({d for e in methods.values() for d in e["per_domain"]})
    fig, ax = plt.subplots(figsize=(6.4, 4))
    width = 0.8 / max(len(methods), 1)
    for i, (name, e) in enumerate(methods.items()):
        xs = [j + i * width for j in range(len(domains))]
        ax.bar(xs, [e["per_domain"].get(d, 0.0) for d in domains], width, label=METHODS[name].label)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(domains))])
    ax.set_xticklabels(domains)
    ax.set_ylabel("test accuracy on the held-out domain")
    ax.set_ylim(0, 1)
    ax.set_title(plain(title), fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
