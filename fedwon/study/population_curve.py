"""Privacy–utility against the population, and the per-layer claim on a deep model.

``fedwon privacy-curve --plan population`` (:mod:`fedwon.cli.privacy_curve`) runs it: a study
plan next to the privacy curve (:mod:`fedwon.study.privacy_curve`), issue 21 items 2 and 3.

Apple's speech paper states user-level (7.2, 1e-9)-DP at a 1.3% absolute WER cost, "given
several million users". Its recipe cannot be run with millions of clients here; what makes the
population matter is the noise on the average, std z·C/M for a cohort of M clients per round,
and the sample rate q = M/N the accountant amplifies with. ``dp.noise_cohort_size`` simulates
both while m clients train (docs/privacy.md, "population-scale simulation"). This plan sweeps
the population with a stated **cohort rule** (:class:`CohortRule`): q fixed (M = q·N, so the
noise std on the average falls as 1/N at a fixed ε), δ = N^-1.1 rounded to two digits
(always below 1/N).

Two parts:

* **population** -- for each model (the recipe's ``cnn-tiny``, and a deeper normalization-free
  ResNet), the recipe's method (per-layer clipping + LAMB) at ε ∈ {2, 4.5, 7.2} × N ∈ {10⁴ … 10⁷},
  beside the same model's non-private run;
* **per_layer** -- on the deep model at one ε and N: flat clipping against per-layer clipping
  (uniform and ``dim`` splits) × FedAvg against LAMB, on several seeds, with the non-private
  run of each aggregator (seed 0) as a reference.

**Records.** Every arm trains as an ordinary run directory under the cache
(``runs/privacy-population/<arm>``: reused when finished, resumed when interrupted); once it
has finished, its ``config.toml``, ``metrics.jsonl`` and ``summary.json`` (no checkpoint) and a
``provenance.json`` (the commit and command that trained it) are copied to
``RECORDS/<arm>/`` (``docs/privacy_study/``), which is what is committed. The tables and the
plot are built from those records alone: a record whose config is the arm's planned config
(:meth:`fedwon.run.directory.RunDir.reuse`) is used without training, and ``records_only`` never
trains -- an arm without a record is listed as missing.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedwon.common.errors import error_line
from fedwon.config import RunConfig, make_config, read_recipe
from fedwon.run.directory import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RunDir
from fedwon.run.provenance import code_commit
from fedwon.strategies import RoundFailedError
from fedwon.study.privacy_curve import RECIPE, finished_run, outcome, run_arm

__all__ = [
    "METHODS",
    "PROVENANCE_FILE",
    "CohortRule",
    "PopArm",
    "PopulationPlan",
    "full_plan",
    "markdown",
    "plot",
    "quick_plan",
    "run_population",
]

PROVENANCE_FILE = "provenance.json"
RECORD_FILES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE)

# Apple's ablation, with both per-layer splits: how updates are clipped x how the server steps.
# Every method names its split, so no arm depends on the recipe's.
METHODS: dict[str, dict[str, Any]] = {
    "flat+fedavg": {"dp.clipping": "flat", "aggregator": "fedavg", "server_lr": None},
    "flat+lamb": {"dp.clipping": "flat", "aggregator": "lamb"},
    "per_layer+fedavg": {
        "dp.clipping": "per_layer",
        "dp.split": "uniform",
        "aggregator": "fedavg",
        "server_lr": None,
    },
    "per_layer+lamb": {"dp.clipping": "per_layer", "dp.split": "uniform", "aggregator": "lamb"},
    "per_layer_dim+fedavg": {
        "dp.clipping": "per_layer",
        "dp.split": "dim",
        "aggregator": "fedavg",
        "server_lr": None,
    },
    "per_layer_dim+lamb": {"dp.clipping": "per_layer", "dp.split": "dim", "aggregator": "lamb"},
}
# the clipping rows and aggregator columns of the per-layer table
CLIPPINGS = {
    "flat": "flat",
    "per_layer": "per-layer, uniform split",
    "per_layer_dim": "per-layer, dim split",
}
AGGREGATORS = {"fedavg": "FedAvg", "lamb": "LAMB"}


@dataclass(frozen=True)
class CohortRule:
    """How a population N becomes the DP settings of a run.

    * the noise cohort M = q·N (``dp.noise_cohort_size``): the sample rate q is the same for
      every N, so at a fixed ε and number of rounds the noise multiplier z barely moves and the
      noise std on the average, z·C/M, falls as 1/N;
    * δ = N^-``delta_exponent`` rounded to two significant digits: always below 1/N (a
      mechanism publishing one random client's data is (0, 1/N)-DP).
    """

    sample_rate: float = 0.005
    delta_exponent: float = 1.1

    def noise_cohort(self, population: int) -> int:
        return round(self.sample_rate * population)

    def delta(self, population: int) -> float:
        return float(f"{population**-self.delta_exponent:.2g}")

    def overrides(self, population: int) -> dict[str, Any]:
        return {
            "dp.population": population,
            "dp.noise_cohort_size": self.noise_cohort(population),
            "dp.delta": self.delta(population),
        }

    def describe(self) -> str:
        return (
            f"q = M/N = {self.sample_rate:g} for every population (M = {self.sample_rate:g}·N "
            f"clients' noise on the average), δ = N^-{self.delta_exponent:g} (two digits)"
        )


@dataclass(frozen=True)
class PopArm:
    """One run: a model and method at a target ε and population (``None``: without DP)."""

    model: str
    method: str
    target_epsilon: float | None
    population: int | None
    seed: int = 0

    @property
    def private(self) -> bool:
        return self.target_epsilon is not None

    @property
    def name(self) -> str:
        """``resnet18-tiny-per_layer+lamb-eps7.2-N1e6-seed0``, ``cnn-tiny-flat+lamb-nodp-seed0``"""
        if self.target_epsilon is None or self.population is None:
            return f"{self.model}-{self.method}-nodp-seed{self.seed}"
        return (
            f"{self.model}-{self.method}-eps{self.target_epsilon:g}-"
            f"N{_population_tag(self.population)}-seed{self.seed}"
        )


def _population_tag(population: int) -> str:
    exponent = math.log10(population)
    return f"1e{round(exponent)}" if exponent.is_integer() else str(population)


@dataclass(frozen=True)
class PopulationPlan:
    """The arms of both parts, and how each becomes a run config.

    ``models`` maps each model of the population part to its overrides of the recipe (the
    first is the recipe's own model); ``layer_model`` is the deep model of the per-layer part.
    ``overrides`` apply to every arm (e.g. the engine: one core, in-process).
    """

    recipe: Path = RECIPE
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    epsilons: tuple[float, ...] = (2.0, 4.5, 7.2)
    populations: tuple[int, ...] = (10**4, 10**5, 10**6, 10**7)
    rule: CohortRule = CohortRule()
    population_method: str = "per_layer+lamb"
    layer_model: str = "resnet18-tiny"
    layer_epsilon: float = 7.2
    layer_population: int = 10**6
    layer_methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = (0, 1, 2)
    reference_seeds: tuple[int, ...] = (0,)
    overrides: dict[str, Any] = field(default_factory=dict)

    def population_arms(self) -> list[PopArm]:
        """Per model: the non-private run, then every (N, ε)."""
        arms = []
        for model in self.models:
            arms.append(PopArm(model, self.population_method, None, None))
            arms += [
                PopArm(model, self.population_method, eps, n)
                for n in self.populations
                for eps in self.epsilons
            ]
        return arms

    def layer_arms(self) -> list[PopArm]:
        """Every method on each seed (seed by seed, so an interrupted set has whole seeds),
        then the non-private run of each aggregator on the reference seeds."""
        arms = [
            PopArm(self.layer_model, m, self.layer_epsilon, self.layer_population, seed)
            for seed in self.seeds
            for m in self.layer_methods
        ]
        aggregators = dict.fromkeys(_aggregator(m) for m in self.layer_methods)
        arms += [
            PopArm(self.layer_model, _reference_method(a, self.layer_methods), None, None, seed)
            for seed in self.reference_seeds
            for a in aggregators
        ]
        return arms

    def arms(self) -> list[PopArm]:
        """All arms once, in the order they train (an arm both parts use runs once)."""
        return list(dict.fromkeys(self.population_arms() + self.layer_arms()))

    def config(self, arm: PopArm) -> RunConfig:
        values = read_recipe(self.recipe)
        values.update(self.overrides)
        values["model"] = arm.model
        values.update(self.models.get(arm.model, {}))
        values.update(METHODS[arm.method])
        values["seed"] = arm.seed
        if arm.target_epsilon is None or arm.population is None:
            values = {k: v for k, v in values.items() if not k.startswith("dp.")}
            values["dp.enabled"] = False
        else:
            values.update({"dp.enabled": True, "dp.target_epsilon": arm.target_epsilon})
            values.update(self.rule.overrides(arm.population))
        values = {k: v for k, v in values.items() if v is not None}  # None: the key unset
        return make_config(values)


def _aggregator(method: str) -> str:
    return method.rsplit("+", 1)[1]


def _clipping(method: str) -> str:
    return method.rsplit("+", 1)[0]


def _reference_method(aggregator: str, methods: Iterable[str]) -> str:
    """The method a non-private run of ``aggregator`` is named by: without DP clipping does
    nothing, so the first method with that aggregator (the population part's, per_layer+lamb,
    shares its run)."""
    candidates = [m for m in methods if _aggregator(m) == aggregator]
    preferred = [m for m in candidates if _clipping(m) == "per_layer"]
    return (preferred or candidates)[0]


# ---- the plans ---------------------------------------------------------------------------------

# One core, in-process: the measured wall times are of this (reused runs ignore these keys).
ENGINE: dict[str, Any] = {"num_workers": 0, "cpus_per_client": 1.0}
# The recipe's model as the recipe trains it (50 clients per round, 40 rounds). The deep model
# (a normalization-free ResNet: 38 tensors, 78k parameters) with the recipe's federation and
# learning rates, sized to the compute of the study (docs/privacy.md, "privacy against the
# population"): 40 rounds, evaluated at rounds 20 and 40 -- its non-private run is not
# converged there (a pilot: 64% at round 40, 78% at 70). Pilots: with 20 clients per round it
# did not leave chance in 80 rounds (LAMB server lr 0.05) or diverged (0.1).
FULL_MODELS: dict[str, dict[str, Any]] = {
    "cnn-tiny": {},
    "resnet18-tiny": {"num_rounds": 40, "eval_every": 20},
}
# a tiny federation for --quick: one round, one population, one epsilon, two methods
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


def full_plan(recipe: Path = RECIPE) -> PopulationPlan:
    return PopulationPlan(recipe, dict(FULL_MODELS), overrides=dict(ENGINE))


def quick_plan(recipe: Path = RECIPE) -> PopulationPlan:
    """The pipeline on 10 clients for one round: 3 runs (a test of the outputs, not a result)."""
    return PopulationPlan(
        recipe,
        {"cnn-tiny": {}},
        epsilons=(4.0,),
        populations=(100,),
        rule=CohortRule(sample_rate=0.05),
        layer_model="cnn-tiny",
        layer_epsilon=4.0,
        layer_population=100,
        layer_methods=("per_layer+lamb", "flat+lamb"),
        seeds=(0,),
        overrides=dict(QUICK),
    )


# ---- records -----------------------------------------------------------------------------------


def record_arm(run_dir: Path, record: Path, provenance: dict[str, Any]) -> None:
    """Copy a finished run's config, metrics and summary to ``record`` (replacing it), with
    ``provenance``; written beside it first and renamed, so a record is whole or absent."""
    tmp = record.with_name(record.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copyfile(run_dir / name, tmp / name)
    (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    if record.exists():
        shutil.rmtree(record)
    tmp.rename(record)


def arm_result(arm: PopArm, cfg: RunConfig, record: Path, status: str) -> dict[str, Any]:
    """What the tables and the plot need from a record (a run directory's small files)."""
    rows, summary = finished_run(record)
    privacy = summary.get("privacy") or {}
    provenance_file = record / PROVENANCE_FILE
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    return {
        "name": arm.name,
        "model": arm.model,
        "method": arm.method,
        "clipping": _clipping(arm.method),
        "aggregator": cfg.server.aggregator,
        "seed": arm.seed,
        "target_epsilon": arm.target_epsilon,
        "population": arm.population,
        "noise_cohort_size": privacy.get("noise_cohort_size"),
        "trained_per_round": cfg.sampled_per_round,
        "delta": privacy.get("delta"),
        "sample_rate": privacy.get("sample_rate"),
        "epsilon": privacy.get("epsilon"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        "noise_std_on_mean": privacy.get("noise_std_on_mean"),
        **outcome(rows, summary),
        "trained_at": provenance.get("commit"),
        "wall_s": provenance.get("wall_s"),
        "record": str(record),
        "status": status,
    }


def setting(cfg: RunConfig) -> dict[str, Any]:
    """A model's federation (taken from one of its DP arms)."""
    return {
        "model": cfg.model.model,
        "norm": cfg.resolved_norm,
        "dataset": cfg.data.dataset,
        "simulated_clients": cfg.data.num_clients,
        "clients_per_round": cfg.sampled_per_round,
        "rounds": cfg.server.num_rounds,
        "local_epochs": cfg.train.local_epochs,
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "lamb_server_lr": cfg.server.server_lr,
        "clip_norm": cfg.dp.clip_norm,
        "accountant": cfg.dp.accountant,
    }


OnArm = Callable[[int, int, dict[str, Any] | None, str], None]
"""Progress: (arms done, arms in total, the arm's result or None when missing, its name)."""


def run_population(
    plan: PopulationPlan,
    cache: Path,
    records: Path,
    out: Path,
    command: str,
    *,
    records_only: bool = False,
    on_arm: OnArm | None = None,
) -> dict[str, Any]:
    """Get every arm's record (reused, or trained and recorded unless ``records_only``), then
    write ``privacy_population.{md,json}`` and ``img/privacy_population.png`` under ``out``."""
    configs = {arm: plan.config(arm) for arm in plan.arms()}  # every config checked up front
    commit = code_commit()  # of the code that runs (the tree may change while it does)
    runs: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    failed: dict[str, str] = {}
    for i, (arm, cfg) in enumerate(configs.items(), start=1):
        record = records / arm.name
        if RunDir(record).reuse(cfg) == "cached":
            status = "recorded"
        elif records_only:
            missing.append(arm.name)
            if on_arm is not None:
                on_arm(i, len(configs), None, arm.name)
            continue
        else:
            start = time.perf_counter()
            try:
                status = run_arm(cfg, cache / arm.name)
            except RoundFailedError as err:  # e.g. every client diverged: a result, not a crash
                failed[arm.name] = error_line(err, with_type=False)
                if on_arm is not None:
                    on_arm(i, len(configs), None, arm.name)
                continue
            provenance = {
                "commit": commit,
                "command": command,
                "date": time.strftime("%Y-%m-%d"),
                "wall_s": round(time.perf_counter() - start, 1),  # this invocation's share
            }
            record_arm(cache / arm.name, record, provenance)
        runs[arm.name] = arm_result(arm, cfg, record, status)
        if on_arm is not None:
            on_arm(i, len(configs), runs[arm.name], arm.name)
    results = results_dict(plan, configs, runs, missing, command, commit, records)
    results["failed"] = failed
    write_outputs(results, out)
    return results


def results_dict(
    plan: PopulationPlan,
    configs: dict[PopArm, RunConfig],
    runs: dict[str, dict[str, Any]],
    missing: list[str],
    command: str,
    commit: str,
    records: Path,
) -> dict[str, Any]:
    settings = {}
    for model in dict.fromkeys([*plan.models, plan.layer_model]):
        cfg = next(c for a, c in configs.items() if a.model == model and a.private)
        settings[model] = setting(cfg)
    return {
        "command": command,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "recipe": str(plan.recipe),
        "records": str(records),
        "rule": {
            "sample_rate": plan.rule.sample_rate,
            "delta_exponent": plan.rule.delta_exponent,
            "text": plan.rule.describe(),
        },
        "settings": settings,
        "population": {
            "models": list(plan.models),
            "method": plan.population_method,
            "epsilons": list(plan.epsilons),
            "populations": list(plan.populations),
            "arms": [a.name for a in plan.population_arms()],
        },
        "per_layer": {
            "model": plan.layer_model,
            "epsilon": plan.layer_epsilon,
            "population": plan.layer_population,
            "methods": list(plan.layer_methods),
            "seeds": list(plan.seeds),
            "arms": [a.name for a in plan.layer_arms()],
        },
        "seconds": round(sum(r["seconds"] for r in runs.values()), 1),
        "missing": missing,
        "runs": runs,
    }


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "privacy_population.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "privacy_population.md").write_text(markdown(results))
    plot(results, out / "img" / "privacy_population.png")


# ---- the tables and the plot -------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _power(n: int) -> str:
    exponent = math.log10(n)
    if exponent.is_integer():
        return "10" + str(round(exponent)).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return f"{n:,}"


def _arm_of(name: str, results: dict[str, Any]) -> dict[str, Any] | None:
    return results["runs"].get(name)


def population_table(results: dict[str, Any]) -> list[str]:
    """Rows model × N, columns ε (and the model's non-private run)."""
    part = results["population"]
    rule = results["rule"]
    epsilons = part["epsilons"]
    by_key: dict[tuple[str, float | None, int | None], dict[str, Any]] = {}
    for name in part["arms"]:
        r = _arm_of(name, results)
        if r is not None:
            by_key[(r["model"], r["target_epsilon"], r["population"])] = r
    head = " | ".join(f"ε = {e:g}" for e in epsilons)
    lines = [
        f"| model | N | M = {rule['sample_rate']:g}·N | δ | {head} | no DP |",
        "|---|---:|---:|---:|" + "---:|" * (len(epsilons) + 1),
    ]
    for model in part["models"]:
        plain = by_key.get((model, None, None))
        for n in part["populations"]:
            cells = [by_key.get((model, e, n)) for e in epsilons]
            known = next((c for c in cells if c), None)
            planned = CohortRule(rule["sample_rate"], rule["delta_exponent"])
            m = known["noise_cohort_size"] if known else planned.noise_cohort(n)
            delta = known["delta"] if known else planned.delta(n)
            lines.append(
                f"| `{model}` | {_power(n)} | {m:,} | {delta:.2g} | "
                + " | ".join(_pct(c["accuracy"] if c else None) for c in cells)
                + f" | {_pct(plain['accuracy'] if plain else None)} |"
            )
    return lines


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} (1 seed)"
    sd = 100 * statistics.stdev(values)
    each = ", ".join(f"{100 * v:.1f}" for v in values)
    return f"{mean:.1f} ± {sd:.1f} ({each})"


def layer_summary(results: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Final accuracies per clipping and aggregator over the seeds (private arms)."""
    part = results["per_layer"]
    cells: dict[str, dict[str, list[float]]] = {}
    for name in part["arms"]:
        r = _arm_of(name, results)
        if r is None or r["target_epsilon"] is None or r["accuracy"] is None:
            continue
        cells.setdefault(r["clipping"], {}).setdefault(_aggregator(r["method"]), []).append(
            r["accuracy"]
        )
    return cells


def layer_table(results: dict[str, Any]) -> list[str]:
    """Rows: clipping; columns: server step; mean ± sd over the seeds (each seed listed)."""
    part = results["per_layer"]
    methods = part["methods"]
    clippings = list(dict.fromkeys(_clipping(m) for m in methods))
    aggregators = list(dict.fromkeys(_aggregator(m) for m in methods))
    cells = layer_summary(results)
    lines = [
        "| clipping | " + " | ".join(AGGREGATORS.get(a, a) for a in aggregators) + " |",
        "|---|" + "---:|" * len(aggregators),
    ]
    for c in clippings:
        lines.append(
            f"| {CLIPPINGS.get(c, c)} | "
            + " | ".join(_mean_sd(cells.get(c, {}).get(a, [])) for a in aggregators)
            + " |"
        )
    plain: dict[str, list[float]] = {}
    for name in part["arms"]:
        r = _arm_of(name, results)
        if r is not None and r["target_epsilon"] is None and r["accuracy"] is not None:
            plain.setdefault(_aggregator(r["method"]), []).append(r["accuracy"])
    lines.append("| no DP | " + " | ".join(_mean_sd(plain.get(a, [])) for a in aggregators) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    """privacy_population.md: both tables, their settings, and every run."""
    part, layer = results["population"], results["per_layer"]
    lines = [
        "# Privacy–utility against the population: FedWon under user-level DP",
        "",
        f"Made by `{results['command']}` at commit `{results['commit']}` ({results['date']}) "
        f"from the run records under `{results['records']}/` (each names the commit that "
        f"trained it); {results['seconds']:.0f} s of training in all. Verdicts and what was "
        "cut for compute: [privacy.md](privacy.md#privacy-against-the-population).",
        "",
        f"Cohort rule: {results['rule']['text']}. Each DP run calibrates its noise multiplier "
        "z to its target ε over its rounds at q; the m clients sampled per round train, and "
        "the noise on their average is that of the M a population of N would put in a round "
        "(`dp.noise_cohort_size`; ε is stated for that deployment, not for the simulation).",
        "",
    ]
    for model, s in results["settings"].items():
        lines.append(
            f"* `{model}` (norm `{s['norm']}`): {s['dataset']}, {s['simulated_clients']} "
            f"simulated clients, {s['clients_per_round']} trained per round, {s['rounds']} "
            f"rounds, {s['local_epochs']} local epoch(s) at batch size {s['batch_size']} and "
            f"lr {s['lr']:g}; C = {s['clip_norm']:g}; LAMB server lr {s['lamb_server_lr']}; "
            f"{s['accountant'].upper()} accountant."
        )
    lines += [
        "",
        f"## Accuracy against the population ({part['method']})",
        "",
        "Final test accuracy (%), all domains, seed 0:",
        "",
        *population_table(results),
        "",
        "![privacy against the population](img/privacy_population.png)",
        "",
        f"## Per-layer clipping on `{layer['model']}` (ε = {layer['epsilon']:g}, "
        f"N = {_power(layer['population'])})",
        "",
        f"Final test accuracy (%), mean ± sd over seeds {', '.join(map(str, layer['seeds']))} "
        "(each seed in brackets):",
        "",
        *layer_table(results),
        "",
    ]
    if results["missing"]:
        lines += [
            f"Missing ({len(results['missing'])} arms without a record, shown as –): "
            + ", ".join(f"`{m}`" for m in results["missing"]),
            "",
        ]
    if results.get("failed"):
        lines += [
            f"Failed ({len(results['failed'])} arms, retried by the next invocation): "
            + "; ".join(f"`{name}`: {why}" for name, why in results["failed"].items()),
            "",
        ]
    lines += [
        "## Every run",
        "",
        "| run | ε spent | δ | z | noise std on the average | clipped | best | final | "
        "rounds | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"].values():
        eps = "–" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        delta = "–" if r["delta"] is None else f"{r['delta']:.2g}"
        z = "–" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}"
        std = "–" if r["noise_std_on_mean"] is None else f"{r['noise_std_on_mean']:.1e}"
        clipped = "–" if r["clipped_fraction"] is None else f"{r['clipped_fraction']:.2f}"
        lines.append(
            f"| {r['name']} | {eps} | {delta} | {z} | {std} | {clipped} | "
            f"{_pct(r['best_accuracy'])} | {_pct(r['accuracy'])} | {r['rounds']} | "
            f"{r['seconds']:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Accuracy against N (log scale), one panel per model, one line per ε; no DP dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part = results["population"]
    models = part["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    runs = [results["runs"][n] for n in part["arms"] if n in results["runs"]]
    for ax, model in zip(axes[0], models, strict=True):
        for i, eps in enumerate(part["epsilons"]):
            points = sorted(
                (r["population"], 100 * r["accuracy"])
                for r in runs
                if r["model"] == model and r["target_epsilon"] == eps and r["accuracy"] is not None
            )
            if points:
                ax.plot(*zip(*points, strict=True), "o-", color=f"C{i}", label=f"ε = {eps:g}")
        for r in runs:
            if r["model"] == model and r["target_epsilon"] is None and r["accuracy"] is not None:
                ax.axhline(100 * r["accuracy"], color="k", ls="--", lw=1, label="no DP")
        ax.set_xscale("log")
        ax.set_xticks(part["populations"], [_power(n) for n in part["populations"]])
        ax.set_xlabel(f"population N (noise cohort M = {results['rule']['sample_rate']:g}·N)")
        ax.set_ylabel("final test accuracy (%)")
        ax.set_ylim(0, 100)
        rounds = results["settings"].get(model, {}).get("rounds")
        ax.set_title(f"{model}, {part['method']}, {rounds} rounds")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def arm_line(done: int, total: int, result: dict[str, Any] | None, name: str) -> str:
    """``[3/45] cnn-tiny-per_layer+lamb-eps2-N1e4-seed0: trained · accuracy 61.2% · ε 1.99``"""
    if result is None:
        return f"[{done}/{total}] {name}: no result (failed, or no record with --records-only)"
    eps = "" if result["epsilon"] is None else f" · ε {result['epsilon']:.2f}"
    return (
        f"[{done}/{total}] {name}: {result['status']} · accuracy {_pct(result['accuracy'])}%{eps}"
    )
