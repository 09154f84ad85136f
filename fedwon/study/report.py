"""Writing the study: ``results.json`` (machine), ``results.md`` (human), plots under ``img/``.

Everything here is computed from the run records; nothing is typed in by hand. Accuracy of a run
is its final round's test accuracy *averaged over domains* (each domain counts once); a method's
``mean`` and ``std`` are over the reported seeds (sample standard deviation, ``null`` for a single
seed). The files contain no timings, so rebuilding the report from cached runs reproduces them
byte for byte.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedwon.study.claims import RULE, check_claims
from fedwon.study.plan import METHODS, TUNING_SEED
from fedwon.study.runner import PartResult, StudyResults
from fedwon.study.runs import RunRecord, run_config

__all__ = ["IMAGES", "results_json", "results_markdown", "write_report"]

IMAGES = {
    "cross_silo": "study_cross_silo.png",
    "cross_device": "study_cross_device.png",
    "label_skew": "study_label_skew.png",
    "domain_generalization": "study_domain_generalization.png",
}
LABELS = {name: m.label for name, m in METHODS.items()}
PART_KEYS = ("cross_device", "label_skew", "domain_generalization")
"""The parts after the cross-silo table, in report order (``results.json`` top-level keys)."""
FEDBN_UNSEEN_NOTE = (
    "FedBN keeps normalization layers on clients, so no client has layers for a domain it never "
    "saw: the held-out domain is evaluated with the unweighted average of the clients' local "
    "normalization layers (affine parameters and running statistics)."
)


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


def _mean_per_domain(per_run: list[dict[str, float]]) -> dict[str, float]:
    domains = sorted({d for pd in per_run for d in pd})
    return {d: statistics.fmean(pd[d] for pd in per_run if d in pd) for d in domains}


def method_entry(part: PartResult, method: str) -> dict[str, Any] | None:
    """``{"mean", "std", "per_domain", "seeds", "planned_seeds", "lr", "agc_clip"}`` of one
    method in one part. ``seeds`` counts the seeds whose every run finished (a held-out seed
    with one failed domain does not count): fewer than ``planned_seeds`` makes every claim on
    this method incomplete (:mod:`fedwon.study.claims`)."""
    runs = [r for r in part.reported.get(method, []) if r.ok]
    if not runs or method not in part.chosen:
        return None
    chosen = part.chosen[method]
    if part.part.heldout:
        # one record per (seed, held-out domain): per seed, the mean over held-out domains
        broken = {r.spec.seed for r in part.reported.get(method, []) if not r.ok}
        by_seed: dict[int, dict[str, float]] = {}
        for r in runs:
            if r.heldout and r.spec.seed not in broken:
                by_seed.setdefault(r.spec.seed, {}).update(r.heldout["per_domain"])
        per_seed = list(by_seed.values())
        seen = [r.test["accuracy"] for r in runs if r.test.get("accuracy") is not None]
        extra: dict[str, Any] = {"seen_domains_mean": statistics.fmean(seen) if seen else None}
    else:
        per_seed = [r.test["per_domain"] for r in runs]
        extra = {}
    means = [statistics.fmean(pd.values()) for pd in per_seed if pd]
    if not means:
        return None
    return {
        "mean": statistics.fmean(means),
        "std": _std(means),
        "per_domain": _mean_per_domain(per_seed),
        "seeds": len(per_seed),
        "planned_seeds": len(part.part.seeds),
        "lr": chosen.lr,
        "agc_clip": chosen.agc_clip,
        **extra,
        "failed_runs": sum(1 for r in part.reported.get(method, []) if not r.ok),
    }


def tuning_entry(part: PartResult, method: str) -> dict[str, Any]:
    grid = []
    for r in part.tuning.get(method, []):
        point: dict[str, Any] = {**r.spec.candidate.as_dict()}
        point["val_accuracy"] = (r.val or {}).get("accuracy") if r.ok else None
        if not r.ok:
            point["error"] = r.error
        grid.append(point)
    chosen = part.chosen.get(method)
    lrs = sorted({p["lr"] for p in grid})
    at_edge = bool(chosen and len(lrs) > 1 and chosen.lr in (lrs[0], lrs[-1]))
    return {
        "seed": TUNING_SEED,
        "grid": grid,
        "chosen": chosen.as_dict() if chosen else None,
        "chosen_at_grid_edge": at_edge,
    }


def _settings(part: PartResult) -> dict[str, Any]:
    """The settings every run of the part shares (from the first reported run's config)."""
    record = next((r for runs in part.reported.values() for r in runs), None)
    if record is None:
        return {}
    cfg = run_config(part.part, record.spec)
    keys = (
        "model",
        "dataset",
        "partition",
        "num_clients",
        "num_rounds",
        "local_epochs",
        "batch_size",
        "momentum",
        "val_fraction",
        "train_per_domain",
        "test_per_domain",
        "eval_every",
    )
    values = cfg.to_flat()
    settings = {k: values[k] for k in keys}
    for k in ("train_per_domain", "test_per_domain"):
        if not settings[k]:
            settings[k] = "data set default"
    settings["clients_per_round"] = cfg.sampled_per_round
    if cfg.data.partition == "dirichlet":
        settings["alpha"] = cfg.data.alpha
    if part.part.heldout:
        settings["num_clients"] = f"{cfg.data.num_clients} (one domain held out)"
    return settings


def part_json(part: PartResult) -> dict[str, Any]:
    methods = {m: e for m in part.part.methods if (e := method_entry(part, m)) is not None}
    out: dict[str, Any] = {"title": part.part.title, "methods": methods}
    if part.refused:
        out["refused"] = dict(part.refused)
    if part.tuning:
        out["tuning"] = {m: tuning_entry(part, m) for m in part.part.methods if m in part.tuning}
    elif part.part.reuse:
        out["tuning"] = f"values chosen in {part.part.reuse}"
    out["seeds"] = list(part.part.seeds)
    out["settings"] = _settings(part)
    if part.part.heldout:
        out["note"] = FEDBN_UNSEEN_NOTE
    return out


def missing_runs(results: StudyResults) -> list[dict[str, Any]]:
    """Every planned run without a result: each failed run (tuning and reported), with its
    error, and each method whose reported seeds never ran because no grid point finished."""
    missing: list[dict[str, Any]] = []
    for name, part in results.parts.items():
        for runs in (*part.tuning.values(), *part.reported.values()):
            for r in runs:
                if not r.ok:
                    missing.append(
                        {
                            "part": name,
                            "method": r.spec.method,
                            "role": r.spec.role,
                            "seed": r.spec.seed,
                            **({"heldout": r.spec.heldout} if r.spec.heldout else {}),
                            **r.spec.candidate.as_dict(),
                            "run": f"{name}/{Path(r.path).name}",
                            "error": r.error,
                        }
                    )
        for method in part.part.methods:
            if method not in part.chosen and method not in part.reported:
                source = part.part.reuse or name
                missing.append(
                    {
                        "part": name,
                        "method": method,
                        "role": "report",
                        "seeds": list(part.part.seeds),
                        "error": f"not run: no grid point of {source} finished, nothing was chosen",
                    }
                )
    return missing


def results_json(results: StudyResults) -> dict[str, Any]:
    """The ``docs/results.json`` dictionary (schema: DESIGN.md and issue 14)."""
    parts = {name: part_json(p) for name, p in results.parts.items()}
    silo = parts.pop("cross_silo", {"methods": {}})
    out: dict[str, Any] = {"methods": silo.pop("methods")}
    out["cross_silo"] = silo
    for name in PART_KEYS:
        if name in parts:
            out[name] = parts.pop(name)
    out.update(parts)
    out["missing_runs"] = missing_runs(results)
    out["claims"] = [c.as_dict() for c in check_claims(out, LABELS)]
    out["claim_rule"] = RULE
    out["plan"] = results.plan.name
    out["trained_at"] = sorted({r.commit for r in results.records if r.ok})
    out["commit"] = results.commit
    out["command"] = results.command
    return out


# ---- markdown ------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pm(entry: dict[str, Any]) -> str:
    std = entry.get("std")
    return _pct(entry["mean"]) + ("" if std is None else f" ± {_pct(std)}")


def _hp(entry: dict[str, Any], method: str) -> str:
    """``0.05`` or, for FedWon (whose AGC clip is tuned too), ``0.05, AGC 0.32`` / ``AGC off``."""
    if not METHODS[method].uses_agc:
        return f"{entry['lr']:g}"
    clip = entry.get("agc_clip") or 0.0
    return f"{entry['lr']:g}, AGC " + (f"{clip:g}" if clip else "off")


def _table(section: dict[str, Any], avg_label: str = "avg") -> list[str]:
    methods = section.get("methods", {})
    if not methods:
        return ["(no results)"]
    domains = sorted({d for e in methods.values() for d in e["per_domain"]})
    head = ["method", *domains, f"{avg_label} (mean ± std)", "seeds", "lr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for name, e in methods.items():
        cells = [LABELS.get(name, name), *(_pct(e["per_domain"].get(d)) for d in domains)]
        seeds = str(e["seeds"])
        if e["seeds"] < e.get("planned_seeds", e["seeds"]):
            seeds = f"**{e['seeds']} of {e['planned_seeds']}**"
        cells += [f"**{_pm(e)}**", seeds, _hp(e, name)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _tuning_lines(section: dict[str, Any]) -> list[str]:
    tuning = section.get("tuning")
    if not isinstance(tuning, dict):
        return [f"Hyper-parameters: {tuning}."] if tuning else []
    lines = [
        f"Validation accuracy (%) of each grid point on seed {TUNING_SEED} "
        "(chosen value in bold; test accuracy played no part):",
        "",
        "| method | grid point → validation accuracy | chosen |",
        "|---|---|---|",
    ]
    for name, t in tuning.items():
        chosen = t["chosen"]
        points = []
        for p in t["grid"]:
            value = "failed" if "error" in p else _pct(p["val_accuracy"])
            text = f"lr {_hp(p, name)} → {value}"
            is_chosen = chosen and chosen["lr"] == p["lr"] and chosen["agc_clip"] == p["agc_clip"]
            points.append(f"**{text}**" if is_chosen else text)
        edge = " (grid edge)" if t["chosen_at_grid_edge"] else ""
        pick = "—" if chosen is None else _hp(chosen, name) + edge
        lines.append(f"| {LABELS.get(name, name)} | {'; '.join(points)} | {pick} |")
    return lines


def _seed_sentence(data: dict[str, Any]) -> str:
    """Whether the tuning seed is among the reported ones, and what that costs, said plainly."""
    sections = [data.get("cross_silo", {}), *(data.get(k) or {} for k in PART_KEYS)]
    if not any(TUNING_SEED in s.get("seeds", ()) for s in sections):
        return f"The reported seeds exclude seed {TUNING_SEED}."
    return (
        f"The reported seeds include seed {TUNING_SEED}: its run at the chosen values is the "
        "grid run itself, reused. Its test accuracy was never looked at, but the run was picked "
        "for its validation score, a small optimistic bias that every method shares."
    )


def _settings_line(section: dict[str, Any]) -> str:
    s = section.get("settings", {})
    return "Settings: " + ", ".join(f"`{k}={v}`" for k, v in s.items()) + "."


def _missing_lines(missing: list[dict[str, Any]]) -> list[str]:
    """The "Missing runs" section: every planned run without a result, and why."""
    if not missing:
        return []
    lines = [
        "## Missing runs",
        "",
        f"{len(missing)} planned run{'s' if len(missing) != 1 else ''} have no result. A claim "
        "on a method with fewer seeds than planned is marked incomplete instead of given a "
        "verdict. The next `fedwon study` retries each failed run (the failed run directory "
        "is kept beside it as `<run>.failed-<n>`).",
        "",
    ]
    for m in missing:
        label = LABELS.get(m["method"], m["method"])
        if "seeds" in m:
            what = f"{m['part']} {label} seeds {', '.join(map(str, m['seeds']))} ({m['role']})"
            lines.append(f"- {what}: {m['error']}")
            continue
        held = f" held-out {m['heldout']}" if m.get("heldout") else ""
        what = f"{m['part']} {label} lr={m['lr']:g} seed {m['seed']}{held} ({m['role']})"
        lines.append(f"- {what}: failed: `{m['error']}` (`{m['run']}`)")
    return [*lines, ""]


def results_markdown(data: dict[str, Any]) -> str:
    """``docs/results.md`` from the ``results.json`` dictionary (and nothing else)."""
    out = [
        "# FedWon paper comparisons, reproduced",
        "",
        "<!-- generated by `" + data["command"] + "`; do not edit by hand -->",
        "",
        f"Command: `{data['command']}` · code commit: `{data['commit']}` · plan: `{data['plan']}`"
        + (
            f" · runs trained at: {', '.join(f'`{c}`' for c in data['trained_at'])}"
            if data["trained_at"]
            else ""
        ),
        "",
    ]
    if data["plan"].startswith("quick"):
        out += [
            "> **Quick plan**: tiny model, data and rounds, to exercise the pipeline in minutes. "
            "These numbers are not evidence for or against the paper; `make report` runs the "
            "full study.",
            "",
        ]
    elif data["plan"] != "full":
        out += [f"> **Partial study** (`{data['plan']}`): `make report` runs every part.", ""]
    out += [
        "Every number is test accuracy (%) at the last round, averaged over domains, mean ± "
        "sample std over the reported seeds. Learning rates (and FedWon's AGC clip) were chosen "
        f"per method and setting from a small grid by **validation** accuracy on seed "
        f"{TUNING_SEED} — each client's held-out share of its own training data. "
        + _seed_sentence(data)
        + " Data: `digits-embedded`, five digit "
        "domains built offline from data shipped inside installed packages (not the "
        "downloaded Digits-5 of the paper; see docs/data.md).",
        "",
        "## Claims",
        "",
        "| claim | verdict | evidence |",
        "|---|---|---|",
    ]
    out += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in data["claims"]]
    out += ["", f"Rule: {data['claim_rule']}.", ""]
    out += _missing_lines(data.get("missing_runs", []))

    silo = data.get("cross_silo", {})
    out += [f"## {silo.get('title', 'Cross-silo')}", "", *_table({"methods": data["methods"]}), ""]
    out += [_settings_line(silo), "", f"![cross-silo](img/{IMAGES['cross_silo']})", ""]
    out += [*_tuning_lines(silo), ""]

    device = data.get("cross_device")
    if device:
        out += [f"## {device['title']}", "", *_table(device), ""]
        for method, error in device.get("refused", {}).items():
            out += [f"{LABELS.get(method, method)} is refused before training: `{error}`", ""]
        out += [_settings_line(device), "", f"![cross-device](img/{IMAGES['cross_device']})", ""]
        out += [*_tuning_lines(device), ""]

    skew = data.get("label_skew")
    if skew:
        out += [f"## {skew['title']}", "", *_table(skew), ""]
        out += [_settings_line(skew), "", f"![label skew](img/{IMAGES['label_skew']})", ""]
        out += [*_tuning_lines(skew), ""]

    dg = data.get("domain_generalization")
    if dg:
        out += [f"## {dg['title']}", ""]
        out += ["Columns are the held-out (unseen) domain; each run trains on the other four.", ""]
        out += [*_table(dg, avg_label="avg over held-out domains"), ""]
        seen = {m: e.get("seen_domains_mean") for m, e in dg["methods"].items()}
        if any(v is not None for v in seen.values()):
            out += [
                "Test accuracy on the four training domains of the same runs (avg): "
                + ", ".join(f"{LABELS.get(m, m)} {_pct(v)}" for m, v in seen.items())
                + ".",
                "",
            ]
        out += [dg.get("note", ""), "", _settings_line(dg), ""]
        out += [f"![domain generalization](img/{IMAGES['domain_generalization']})", ""]
        out += [*_tuning_lines(dg), ""]
    return "\n".join(out).rstrip() + "\n"


# ---- plots ---------------------------------------------------------------------------------


def _mean_curve(records: list[RunRecord]) -> tuple[list[int], list[float]]:
    """Test accuracy per round averaged over the runs that evaluated that round."""
    by_round: dict[int, list[float]] = {}
    for r in records:
        for rnd, acc in r.curve:
            by_round.setdefault(rnd, []).append(acc)
    rounds = sorted(by_round)
    return rounds, [statistics.fmean(by_round[x]) for x in rounds]


def plot_curves(part: PartResult, path: Path) -> None:
    """Accuracy vs round, one line per method (mean over the reported seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for method in part.part.methods:
        runs = [r for r in part.reported.get(method, []) if r.ok]
        if runs:
            xs, ys = _mean_curve(runs)
            ax.plot(xs, ys, marker="o", ms=3, label=f"{LABELS[method]} (n={len(runs)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (avg over domains)")
    ax.set_ylim(0, 1)
    ax.set_title(part.part.title, fontsize=9)
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
        ax.bar(xs, [e["per_domain"].get(d, 0.0) for d in domains], width, label=LABELS[name])
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(domains))])
    ax.set_xticklabels(domains)
    ax.set_ylabel("test accuracy on the held-out domain")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_report(results: StudyResults, out_dir: str | Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the plots under ``out_dir``; return the paths."""
    out = Path(out_dir)
    (out / "img").mkdir(parents=True, exist_ok=True)
    data = results_json(results)
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(data, indent=2) + "\n")
    written[1].write_text(results_markdown(data))
    for name, part in results.parts.items():
        path = out / "img" / IMAGES[name]
        if part.part.heldout:
            plot_heldout(data[name], part.part.title, path)
        else:
            plot_curves(part, path)
        written.append(path)
    return written
