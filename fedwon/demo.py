"""``make demo``: FedAvg, FedBN and FedWon on the embedded five-domain digits, side by side.

Runs ``sims/cross_silo.toml`` once per method with a short schedule (a few minutes on two CPU
cores), writes each run under ``runs/demo/<method>`` and prints the per-domain comparison.
Per-method learning rates follow the finding that FedWon wants a larger one than BN models.

``python -m fedwon.demo key=value ...`` appends recipe overrides (the Makefile passes none):
tests/test_demo.py runs the demo this way with ``num_rounds=1`` and a little data.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rich.console import Console

from fedwon.cli import results_table
from fedwon.config import load_config
from fedwon.run.recorder import final_metrics
from fedwon.simulation import run_simulation

RECIPE = Path(__file__).resolve().parent.parent / "sims" / "cross_silo.toml"
METHODS = {  # each method at the best lr of a small grid (see sims/cross_silo.toml)
    "fedavg": ["strategy=fedavg", "lr=0.01", "agc_clip=0"],
    "fedbn": ["strategy=fedbn", "lr=0.01", "agc_clip=0"],
    "fedwon": ["strategy=fedwon", "lr=0.05", "agc_clip=0.32"],
}
# val_fraction=0: the demo trains on all of each client's data, as when its README table was made
# (the study, docs/results.md, holds 10% back to choose learning rates honestly).
SHORT = [
    "num_rounds=8",
    "train_per_domain=400",
    "test_per_domain=200",
    "checkpoint_every=0",
    "val_fraction=0",
]


def main(out_root: str = "runs/demo") -> None:
    logging.basicConfig(level=logging.WARNING)
    console = Console()
    finals = {}
    for name, overrides in METHODS.items():
        cfg = load_config(RECIPE, overrides + SHORT + sys.argv[1:])
        console.print(
            f"[bold]{name}[/bold]: {cfg.server.num_rounds} rounds, {cfg.data.num_clients} clients"
        )
        outcome = run_simulation(
            cfg,
            Path(out_root) / name,
            overwrite=True,  # runs/demo/<method> belongs to the demo: a second demo replaces it
            on_round=lambda row: console.print(
                f"  round {row['round']:>3}  train_loss {row['train_loss']:.3f}"
                + (f"  acc {100 * row['accuracy']:.1f}%" if row.get("accuracy") else "")
            ),
        )
        finals[name] = final_metrics(outcome.rows)
    console.print(results_table(finals, title="digits-embedded, cross-silo: test accuracy (%)"))
    console.print(f"runs in {out_root}/; compare again with: fedwon report {out_root}/*")


if __name__ == "__main__":
    main()
