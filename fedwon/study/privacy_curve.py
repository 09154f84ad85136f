"""The privacy–utility curve of FedWon under user-level DP: a second study plan.

``fedwon privacy-curve`` (:mod:`fedwon.cli.privacy_curve`) runs it.

Apple's ablation ("Enabling DP FL for speech recognition") on fedwon's cross-device DP recipe
(``sims/dp_cross_device.toml``): at each target epsilon, **per-layer clipping + LAMB** against
**flat clipping + FedAvg**, and each change alone (per-layer + FedAvg, flat + LAMB) -- the same
clip norm, cohort, rounds and noise multiplier (each run calibrates z to its target over its
rounds) -- plus the non-private runs of both aggregators.

Every arm is an ordinary run directory under the cache (``runs/privacy-curve/<arm>``): a
finished run of the same config is reused, an interrupted one resumed from its checkpoint
(:func:`fedwon.simulation.run_simulation`), anything else started afresh. The results go to
``privacy_results.md`` (table), ``privacy_results.json`` (machine-readable, with the command
and commit) and ``img/privacy_utility.png`` under the output directory (``docs/``).
``--quick`` runs the same pipeline on a tiny federation for one round (a test of the
outputs' shape, not a result).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedwon.config import ConfigError, RunConfig, make_config, read_recipe
from fedwon.run.directory import Row, RunDir
from fedwon.run.provenance import code_commit
from fedwon.run.recorder import final_metrics, per_domain

log = logging.getLogger(__name__)

RECIPE = Path("sims/dp_cross_device.toml")
EPSILONS = (2.0, 8.0, 32.0)
# the paper's ablation: how updates are clipped, and how the server steps -- its two ends,
# then each change on its own (which of the two does the work)
METHODS: dict[str, dict[str, Any]] = {
    "per_layer+lamb": {"dp.clipping": "per_layer", "aggregator": "lamb"},
    "flat+fedavg": {"dp.clipping": "flat", "aggregator": "fedavg", "server_lr": None},
    "per_layer+fedavg": {"dp.clipping": "per_layer", "aggregator": "fedavg", "server_lr": None},
    "flat+lamb": {"dp.clipping": "flat", "aggregator": "lamb"},
}
# without DP clipping does nothing: one non-private run per aggregator
NON_PRIVATE = ("per_layer+lamb", "flat+fedavg")
# a tiny federation for --quick: one round of everything, a few seconds per run
QUICK: dict[str, Any] = {
    "num_clients": 10,
    "clients_per_round": 5,
    "min_clients": 5,
    "train_per_domain": 20,
    "test_per_domain": 10,
    "num_rounds": 1,
    "eval_every": 1,
    "checkpoint_every": 0,
    "num_workers": 0,
}
QUICK_EPSILONS = (4.0, 16.0)


@dataclass(frozen=True)
class Arm:
    """One run of the curve: a method at a target epsilon (``None``: without DP)."""

    method: str
    target_epsilon: float | None

    @property
    def name(self) -> str:
        """The run directory's name, e.g. ``per_layer+lamb-eps8`` or ``flat+fedavg-nodp``."""
        eps = "nodp" if self.target_epsilon is None else f"eps{self.target_epsilon:g}"
        return f"{self.method}-{eps}"

    def overrides(self) -> dict[str, Any]:
        values = dict(METHODS[self.method])
        if self.target_epsilon is None:
            values["dp.enabled"] = False
        else:
            values.update({"dp.enabled": True, "dp.target_epsilon": self.target_epsilon})
        return values


@dataclass(frozen=True)
class CurvePlan:
    """The recipe, the epsilons, and overrides applied to every arm."""

    recipe: Path = RECIPE
    epsilons: tuple[float, ...] = EPSILONS
    overrides: dict[str, Any] = field(default_factory=dict)

    def arms(self) -> list[Arm]:
        private = [Arm(m, eps) for eps in self.epsilons for m in METHODS]
        return [Arm(m, None) for m in NON_PRIVATE] + private

    def config(self, arm: Arm) -> RunConfig:
        values = read_recipe(self.recipe)
        values.update(self.overrides)
        values.update(arm.overrides())
        values = {k: v for k, v in values.items() if v is not None}  # None: the key unset
        if values.get("dp.enabled") is False:
            values = {
                k: v for k, v in values.items() if not k.startswith("dp.") or k == "dp.enabled"
            }
        return make_config(values)


def quick_plan(recipe: Path = RECIPE) -> CurvePlan:
    return CurvePlan(recipe, QUICK_EPSILONS, dict(QUICK))


def run_arm(cfg: RunConfig, run_dir: Path) -> str:
    """Make ``run_dir`` hold the finished run of ``cfg``; say how: cached, resumed, trained."""
    from fedwon.simulation import run_simulation

    reuse = RunDir(run_dir).reuse(cfg)
    if reuse == "cached":
        return "cached"
    if reuse == "resume":
        run_simulation(cfg, run_dir, resume=True)
        return "resumed"
    overwrite = run_dir.is_dir() and any(run_dir.iterdir())
    run_simulation(cfg, run_dir, overwrite=overwrite)
    return "trained"


def finished_run(run_dir: Path) -> tuple[list[Row], dict[str, Any]]:
    """A finished run's rows and summary (refused in one line when it did not finish)."""
    run = RunDir(run_dir)
    rows = run.metrics()
    summary = run.summary()
    if summary is None:
        raise ConfigError(f"{run.summary_file} is missing or unreadable: the run did not finish")
    return rows, summary


def outcome(rows: list[Row], summary: dict[str, Any]) -> dict[str, Any]:
    """The columns every privacy table reads from a run: accuracy, clipping, rounds, time."""
    final = final_metrics(rows)
    clipped = [r["clipped_fraction"] for r in rows if r.get("clipped_fraction") is not None]
    return {
        "accuracy": final.get("accuracy"),
        "per_domain": per_domain(final),
        "best_accuracy": summary.get("best_accuracy"),
        "clipped_fraction": sum(clipped) / len(clipped) if clipped else None,
        "rounds": len(rows),
        "seconds": round(sum(r.get("time_s", 0.0) for r in rows), 1),
    }


def arm_result(arm: Arm, cfg: RunConfig, run_dir: Path, status: str) -> dict[str, Any]:
    """What the table and plot need from a finished run directory."""
    rows, summary = finished_run(run_dir)
    privacy = summary.get("privacy") or {}
    return {
        "name": arm.name,
        "method": arm.method,
        "clipping": cfg.dp.clipping if cfg.dp.enabled else None,
        "aggregator": cfg.server.aggregator,
        "target_epsilon": arm.target_epsilon,
        "epsilon": privacy.get("epsilon"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        **outcome(rows, summary),
        "run_dir": str(run_dir),
        "status": status,
    }


def setting(cfg: RunConfig) -> dict[str, Any]:
    """The federation every arm shares (taken from a DP arm's config)."""
    return {
        "model": cfg.model.model,
        "norm": cfg.resolved_norm,
        "dataset": cfg.data.dataset,
        "population": cfg.dp_check().population,
        "simulated_clients": cfg.data.num_clients,
        "clients_per_round": cfg.sampled_per_round,
        "noise_cohort_size": cfg.dp.noise_cohort_size,
        "sample_rate": cfg.dp_check().sample_rate,
        "rounds": cfg.server.num_rounds,
        "local_epochs": cfg.train.local_epochs,
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "lamb_server_lr": cfg.server.server_lr,
        "clip_norm": cfg.dp.clip_norm,
        "split": cfg.dp.split,
        "delta": cfg.dp.delta,
        "accountant": cfg.dp.accountant,
        "seed": cfg.seed,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _population(setting: dict[str, Any]) -> str:
    """The clients an epsilon is stated for; says so when that population is larger than the
    simulated one (the sample rate, and so epsilon, is then an extrapolation)."""
    population = setting["population"]
    simulated = setting.get("simulated_clients", population)
    cohort = setting.get("noise_cohort_size", 0)
    noise = (
        f"; noise of a cohort of {cohort}, {setting['clients_per_round']} train" if cohort else ""
    )
    if population > simulated:
        return f"ε stated for a population of {population} (simulated: {simulated} clients{noise})"
    return f"{population} clients{noise}"


def markdown(results: dict[str, Any]) -> str:
    """privacy_results.md: the table (accuracy per method and epsilon) and its setting."""
    runs = results["runs"]
    s = results["setting"]
    by = {(r["method"], r["target_epsilon"]): r for r in runs}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    epsilons = sorted({r["target_epsilon"] for r in runs if r["target_epsilon"] is not None})
    lines = [
        "# Privacy–utility: FedWon under user-level DP",
        "",
        f"Made by `{results['command']}` at commit `{results['commit']}` "
        f"({results['date']}); {results['seconds']:.0f} s of training on this machine.",
        "",
        f"Setting: `{results['recipe']}` — {s['dataset']}, {_population(s)}, "
        f"{s['clients_per_round']} per round (q = {s['sample_rate']:g}), {s['rounds']} rounds, "
        f"`{s['model']}` with norm `{s['norm']}` (FedWon), {s['local_epochs']} local "
        f"epoch(s) at batch size {s['batch_size']} and lr {s['lr']:g}; clip norm C = "
        f"{s['clip_norm']:g} (per-layer split `{s['split']}`), δ = {s['delta']:g}, "
        f"{s['accountant'].upper()} accountant; LAMB server lr {s['lamb_server_lr']}; seed "
        f"{s['seed']}. The noise multiplier z of each DP run is calibrated to its target ε "
        "over all its rounds.",
        "",
        "Final test accuracy (%), all domains:",
        "",
        "| ε (target) | z | " + " | ".join(f"{m}" for m in methods) + " |",
        "|---:|---:|" + "---:|" * len(methods),
    ]
    for eps in epsilons:
        cells = [by.get((m, eps)) for m in methods]
        z = next((c["noise_multiplier"] for c in cells if c and c["noise_multiplier"]), None)
        lines.append(
            f"| {eps:g} | {'–' if z is None else f'{z:.3f}'} | "
            + " | ".join(_pct(c["accuracy"] if c else None) for c in cells)
            + " |"
        )
    # without DP clipping does nothing: a column shows its aggregator's non-private run
    plain = {r["aggregator"]: r for r in runs if r["target_epsilon"] is None}
    aggregator = {r["method"]: r["aggregator"] for r in runs}
    no_dp = [plain.get(aggregator[m]) for m in methods]
    lines.append(
        "| ∞ (no DP) | – | " + " | ".join(_pct(c["accuracy"] if c else None) for c in no_dp) + " |"
    )
    domains = sorted({d for r in runs for d in r["per_domain"]})
    lines += [
        "",
        "Per run: ε spent, mean share of clipped updates, best accuracy over evaluated rounds, "
        "and accuracy per domain (%):",
        "",
        "| run | ε spent | clipped | best | " + " | ".join(domains) + " | all |",
        "|---|---:|---:|---:|" + "---:|" * (len(domains) + 1),
    ]
    for r in runs:
        eps = "–" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        clipped = "–" if r["clipped_fraction"] is None else f"{r['clipped_fraction']:.2f}"
        lines.append(
            f"| {r['name']} | {eps} | {clipped} | {_pct(r['best_accuracy'])} | "
            + " | ".join(_pct(r["per_domain"].get(d)) for d in domains)
            + f" | {_pct(r['accuracy'])} |"
        )
    lines += [
        "",
        "![privacy-utility](img/privacy_utility.png)",
        "",
        "Against the population (a deployment's noise cohort, N = 10⁴ … 10⁷) and per-layer "
        "clipping on a deep model: [privacy_population.md](privacy_population.md) "
        "(`fedwon privacy-curve --plan population`).",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Accuracy against epsilon (log scale), one line per method; the non-private runs dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in results["runs"])):
        color = f"C{i}"
        runs = [r for r in results["runs"] if r["method"] == method]
        private = sorted(
            (r["target_epsilon"], r["accuracy"]) for r in runs if r["target_epsilon"] is not None
        )
        ax.plot(*zip(*private, strict=True), "o-", color=color, label=method)
        for r in runs:
            if r["target_epsilon"] is None and r["accuracy"] is not None:
                ax.axhline(r["accuracy"], color=color, ls="--", lw=1, label=f"{method}, no DP")
    ax.set_xscale("log", base=2)
    epsilons = sorted({r["target_epsilon"] for r in results["runs"]} - {None})
    ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
    ax.set_xlabel(f"ε (target, δ = {results['setting']['delta']:g})")
    ax.set_ylabel("final test accuracy")
    ax.set_title(f"FedWon, user-level DP, {_population(results['setting'])}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


OnArm = Callable[[int, int, dict[str, Any]], None]
"""Progress callback: (arms done, arms in total, the result of the arm just finished)."""


def arm_line(done: int, total: int, result: dict[str, Any]) -> str:
    """``[3/14] flat+fedavg-eps8: trained · accuracy 61.2% · ε 7.98``"""
    eps = "" if result["epsilon"] is None else f" · ε {result['epsilon']:.2f}"
    return (
        f"[{done}/{total}] {result['name']}: {result['status']} · accuracy "
        f"{_pct(result['accuracy'])}%{eps}"
    )


def run_curve(
    plan: CurvePlan, cache: Path, out: Path, command: str, on_arm: OnArm | None = None
) -> dict[str, Any]:
    """Run (or reuse) every arm, then write the table, the JSON and the plot under ``out``."""
    configs = {arm: plan.config(arm) for arm in plan.arms()}  # every config checked up front
    commit = code_commit()  # of the code that runs (the tree may change while it does)
    runs = []
    for i, (arm, cfg) in enumerate(configs.items(), start=1):
        status = run_arm(cfg, cache / arm.name)
        result = arm_result(arm, cfg, cache / arm.name, status)
        runs.append(result)
        if on_arm is not None:
            on_arm(i, len(configs), result)
    dp_cfg = next(cfg for arm, cfg in configs.items() if arm.target_epsilon is not None)
    results = {
        "command": command,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "recipe": str(plan.recipe),
        "overrides": plan.overrides,
        "setting": setting(dp_cfg),
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "privacy_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "privacy_results.md").write_text(markdown(results))
    plot(results, out / "img" / "privacy_utility.png")
    return results
