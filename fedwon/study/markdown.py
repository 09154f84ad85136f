"""``docs/results.md`` from the ``results.json`` dictionary and nothing else.

The method section is generated too, so it always says what the study did: how values were
chosen (successive halving on the tuning seed, widening grids), which seeds are reported, how
convergence is measured and what the runs cost.
"""

from __future__ import annotations

from typing import Any

from fedwon.study.part import ARM_LABELS, METHODS, TUNING_SEED

__all__ = ["LABELS", "SETTING_NAMES", "image_name", "results_markdown"]

LABELS = {name: m.label for name, m in METHODS.items()}
SETTING_NAMES = {
    "cross_silo": "cross-silo",
    "cross_device": "cross-device, batch 1",
    "cross_device_bs2": "cross-device, batch 2",
    "label_skew_alpha01": "label skew α=0.1",
    "label_skew_alpha05": "label skew α=0.5",
    "label_skew": "label skew + feature shift",
    "domain_generalization": "domain generalization",
}
BASELINE_COLUMNS = ("fedavg", "fedbn", "fedavg_gn", "fedavg_ln", "fedavg_ws_gn")


def image_name(part: str) -> str:
    return f"study_{part}.png"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pm(entry: dict[str, Any]) -> str:
    std = entry.get("std")
    return _pct(entry["mean"]) + ("" if std is None else f" ± {_pct(std)}")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _hp(entry: dict[str, Any]) -> str:
    """``0.05``, or with AGC ``0.05, λ 0.32`` (``, NFNets rule`` when that rule clips)."""
    clip = entry.get("agc_clip") or 0.0
    if not clip:
        return f"{entry['lr']:g}" + (", no AGC" if entry.get("agc_arm") == "off" else "")
    rule = ", NFNets rule" if entry.get("agc_rule") == "nfnets" else ""
    return f"{entry['lr']:g}, λ {clip:g}{rule}"


def _change(entry: dict[str, Any]) -> str:
    change = entry.get("val_change")
    if change is None:
        return "—"
    text = f"{100 * change:+.1f}"
    return text if entry.get("converged") else f"**{text} (not converged)**"


def _row(label: str, entry: dict[str, Any], domains: list[str]) -> str:
    seeds = str(entry["seeds"])
    if entry["seeds"] < entry.get("planned_seeds", entry["seeds"]):
        seeds = f"**{entry['seeds']} of {entry['planned_seeds']}**"
    cells = [label, *(_pct(entry["per_domain"].get(d)) for d in domains)]
    cells += [f"**{_pm(entry)}**", seeds, _hp(entry), _change(entry)]
    return "| " + " | ".join(cells) + " |"


def _table(rows: list[tuple[str, dict[str, Any]]], avg_label: str = "avg") -> list[str]:
    rows = [(label, e) for label, e in rows if e]
    if not rows:
        return ["(no results)"]
    domains = sorted({d for _, e in rows for d in e["per_domain"]})
    head = [
        "method",
        *domains,
        f"{avg_label} (mean ± std)",
        "seeds",
        "lr",
        "Δval last 20%",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    return lines + [_row(label, e, domains) for label, e in rows]


def _tuning_lines(name: str, section: dict[str, Any]) -> list[str]:
    tuning = section.get("tuning")
    if not isinstance(tuning, dict):
        return [f"Hyper-parameters: {tuning}."] if tuning else []
    lines = [
        "<details><summary>Validation accuracy (%) of every grid point at every rung "
        f"(seed {TUNING_SEED}; test accuracy played no part)</summary>",
        "",
    ]
    for key, t in tuning.items():
        method, _, arm = key.partition(":")
        label = LABELS.get(method, method) + (f" ({ARM_LABELS.get(arm, arm)})" if arm else "")
        axes = t["axes"]
        head = [("λ" if a == "agc_clip" else a) for a in axes]
        head += [f"{r} round{'s' if r != 1 else ''}" for r in t["rungs"]]
        lines += [f"**{label}**", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "---:|" * len(head))
        chosen = t["chosen"]
        for p in t["grid"]:
            is_chosen = chosen is not None and all(p[a] == chosen[a] for a in axes)
            cells = [f"{p[a]:g}" for a in axes]
            for r in t["rungs"]:
                v = p["val"].get(str(r), "")
                cells.append("failed" if v is None else "" if v == "" else _pct(v))
            if is_chosen:
                cells = [f"**{c}**" if c else c for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        notes = []
        if t["widened"]:
            notes.append("widened: " + ", ".join(t["widened"]))
        for axis, value in t["at_bound"].items():
            bound = "upper" if value == max(t["bounds"][axis]) else "lower"
            notes.append(f"**chosen {axis} {value:g} sits on the {bound} bound**")
        if chosen is None:
            notes.append("every grid point failed")
        errors = sorted({p["error"] for p in t["grid"] if "error" in p})
        notes += [f"failed: `{e}`" for e in errors]
        bounds = ", ".join(f"{a} in [{lo:g}, {hi:g}]" for a, (lo, hi) in t["bounds"].items())
        lines += ["", f"Bounds: {bounds}." + (" " + "; ".join(notes) + "." if notes else ""), ""]
    return [*lines, "</details>"]


def _bound_lines(section: dict[str, Any]) -> list[str]:
    """A visible flag for every choice that sits on a bound of its search (not in a fold)."""
    tuning = section.get("tuning")
    if not isinstance(tuning, dict):
        return []
    flags = []
    for key, t in tuning.items():
        method, _, arm = key.partition(":")
        label = LABELS.get(method, method) + (f" ({ARM_LABELS.get(arm, arm)})" if arm else "")
        for axis, value in t["at_bound"].items():
            bound = "upper" if value == max(t["bounds"][axis]) else "lower"
            name = "λ" if axis == "agc_clip" else axis
            flags.append(f"{label} {name} {value:g} ({bound} bound)")
    if not flags:
        return []
    return [
        "**Chosen on a bound** (the grid could widen no further; the best value may lie "
        f"beyond): {'; '.join(flags)}.",
        "",
    ]


def _diverged_lines(diverged: list[dict[str, Any]]) -> list[str]:
    """Reported seeds whose run diverged: results of their configuration, said beside the
    tables (a method or arm missing from a table, or with fewer seeds, is explained here)."""
    if not diverged:
        return []
    by_key: dict[str, list[str]] = {}
    for d in diverged:
        method, _, arm = d["method"].partition(":")
        label = LABELS.get(method, method) + (f" ({ARM_LABELS.get(arm, arm)})" if arm else "")
        what = f"{label} lr {d['lr']:g}" + (f", λ {d['agc_clip']:g}" if d.get("agc_clip") else "")
        at = f" at round {d['round']}" if d.get("round") else ""
        held = f" (held out: {d['heldout']})" if d.get("heldout") else ""
        by_key.setdefault(what, []).append(f"seed {d['seed']}{held}{at}")
    found = "; ".join(f"{what}: {', '.join(seeds)}" for what, seeds in by_key.items())
    return [
        "**Diverged** (reported seeds at the chosen values on which every client sent "
        f"non-finite updates; a result, not retried): {found}.",
        "",
    ]


def _settings_line(section: dict[str, Any]) -> str:
    s = section.get("settings", {})
    schedule = section.get("schedule", {})
    text = "Settings: " + ", ".join(f"`{k}={v}`" for k, v in s.items()) + "."
    if schedule and isinstance(section.get("tuning"), dict):
        text += (
            f" Halving rungs: {', '.join(map(str, schedule['rungs']))} rounds; convergence "
            f"measured from round {schedule['convergence_from']} to {schedule['num_rounds']}."
        )
    return text


def _missing_lines(missing: list[dict[str, Any]]) -> list[str]:
    """The "Missing runs" section: every planned run without a result, and why."""
    if not missing:
        return []
    lines = [
        "## Missing runs",
        "",
        f"{len(missing)} planned run{'s' if len(missing) != 1 else ''} have no result. A claim "
        "on a method with fewer seeds than planned is marked incomplete instead of given a "
        "verdict. A run that diverged is a result (its grid point is never chosen); any other "
        "failure is retried by the next `fedwon study` (the failed run directory is kept "
        "beside it as `<run>.failed-<n>`).",
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


def _method_lines(data: dict[str, Any], parts: dict[str, dict[str, Any]]) -> list[str]:
    """The generated method section: how values were chosen, seeds, convergence, cost."""
    seeds = sorted({s for p in parts.values() for s in p.get("seeds", [])})
    cost = data["compute"]
    total = cost["train_seconds"] + cost["eval_seconds"]
    return [
        "## Method",
        "",
        "Every number is test accuracy (%) at the last round, averaged over domains, mean ± "
        f"sample std over the reported seeds ({', '.join(map(str, seeds))}).",
        "",
        f"**Choosing hyper-parameters.** Each method's learning rate — and FedWon's AGC clip λ "
        f"— was chosen per setting on seed {TUNING_SEED} by **validation** accuracy (each "
        "client's held-out share of its own training data; test accuracy played no part), by "
        "successive halving: every grid point trains the first rung of rounds, the better "
        "half (ties to the smaller value) continues — resumed from its checkpoint, not "
        "retrained — to the next rung, and so on to the full schedule, where the best point "
        "is chosen. A grid whose best point sits on an edge widens itself by the next step "
        "beyond it (learning rate ×10^±0.5, λ ×2^±1) and is searched again, until the best "
        "point is interior or on the stated bound; a choice on a bound is flagged. Seed "
        f"{TUNING_SEED} only tunes: no tuning run is reported.",
        "",
        "**AGC ablation.** In every tuned setting FedWon is searched and reported three ways: "
        f"{ARM_LABELS['all_but_head']} (`agc_rule=all_but_head`), {ARM_LABELS['nfnets']} (conv "
        "weights, gains and biases; `agc_rule=nfnets`) and with no AGC, each at its own best "
        "learning rate and λ; FedWon's row in each main table is the arm with the best "
        "validation accuracy at the full schedule.",
        "",
        "**Convergence.** Δval is the change of validation accuracy (points, mean over the "
        "reported runs) over the last 20% of the schedule of the chosen configuration; a "
        "method whose |Δval| exceeds 1 point is marked **not converged** — its number may "
        "still move with more rounds.",
        "",
        f"**Cost.** The {cost['runs']} runs behind this report took {_hours(total)} of "
        f"compute (the sum of their recorded round times, {_hours(cost['train_seconds'])}, "
        f"and evaluation times, {_hours(cost['eval_seconds'])}); run two at a time "
        f"(`make report JOBS=2`) that is about {_hours(total / 2)} of wall time. Each run's "
        "record (resolved config, metrics, summary, validation scores) is committed under "
        "`docs/study/`, and `make report` rebuilds this page from them without training.",
        "",
        "Data: `digits-embedded`, five digit domains built offline from data shipped inside "
        "installed packages (not the downloaded Digits-5 of the paper; see docs/data.md).",
        "",
    ]


def _comparison_lines(data: dict[str, Any]) -> list[str]:
    """Per setting, FedWon's gain over each baseline and its verdict."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for c in data.get("comparisons", []):
        rows.setdefault(c["setting"], {})[c["baseline"]] = c
    columns = [b for b in BASELINE_COLUMNS if any(b in r for r in rows.values())]
    if not rows:
        return []
    head = ["setting", *(f"vs {LABELS[b]}" for b in columns)]
    lines = [
        "FedWon's gain (points, ± the spread of the rule) against each baseline, per setting:",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for setting, found in rows.items():
        cells = [SETTING_NAMES.get(setting, setting)]
        for b in columns:
            c = found.get(b)
            if c is None:
                cells.append("—")
            elif "gain" not in c:
                cells.append(c["outcome"])
            else:
                short = " (incomplete)" if c.get("incomplete") else ""
                cells.append(f"{100 * c['gain']:+.1f} ± {_pct(c['spread'])}: {c['outcome']}{short}")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _not_converged(parts: dict[str, dict[str, Any]], data: dict[str, Any]) -> list[str]:
    found = []
    for name, section in parts.items():
        methods = data["methods"] if name == "cross_silo" else section.get("methods", {})
        for method, e in methods.items():
            if e.get("converged") is False:
                found.append(
                    f"{LABELS.get(method, method)} in {SETTING_NAMES.get(name, name)} "
                    f"({100 * e['val_change']:+.1f})"
                )
    if not found:
        return ["Every reported configuration converged by the rule above.", ""]
    return [
        f"**Not converged** (|Δval| > 1 point over the last 20% of rounds): {'; '.join(found)}.",
        "",
    ]


def _part_lines(name: str, section: dict[str, Any], methods: dict[str, Any]) -> list[str]:
    title = section.get("title", name)
    heldout = name == "domain_generalization"
    out = [f"## {title}", ""]
    if heldout:
        out += ["Columns are the held-out (unseen) domain; each run trains on the others.", ""]
    rows = [(LABELS.get(m, m), e) for m, e in methods.items()]
    if section.get("fedbn_averaged"):
        rows.append(("FedBN, averaged norm layers", section["fedbn_averaged"]))
    avg = "avg over held-out domains" if heldout else "avg"
    out += [*_table(rows, avg_label=avg), ""]
    if section.get("fedbn_averaged"):
        out += [
            "FedBN is scored twice from the same runs: each client with its own normalization "
            "layers (its row above), and with the average of all clients' layers.",
            "",
        ]
    for method, error in section.get("refused", {}).items():
        out += [f"{LABELS.get(method, method)} is refused before training: `{error}`", ""]
    out += _bound_lines(section)
    ablation = section.get("agc_ablation")
    if ablation:
        out += ["FedWon's AGC ablation (each arm tuned and reported on its own):", ""]
        out += [*_table([(ARM_LABELS.get(a, a), e) for a, e in ablation.items() if e]), ""]
    out += _diverged_lines(section.get("diverged", []))
    if heldout:
        seen = {m: e.get("seen_domains_mean") for m, e in methods.items()}
        if any(v is not None for v in seen.values()):
            out += [
                "Test accuracy on the training domains of the same runs (avg): "
                + ", ".join(f"{LABELS.get(m, m)} {_pct(v)}" for m, v in seen.items())
                + ".",
                "",
            ]
        out += [section.get("note", ""), ""]
    out += [_settings_line(section), "", f"![{name}](img/{image_name(name)})", ""]
    return [*out, *_tuning_lines(name, section), ""]


def results_markdown(data: dict[str, Any]) -> str:
    """``docs/results.md`` from the ``results.json`` dictionary (and nothing else)."""
    parts = {k: v for k, v in data.items() if isinstance(v, dict) and "title" in v}
    trained = data["trained_at"]
    out = [
        "# FedWon paper comparisons, reproduced",
        "",
        "<!-- generated by `" + data["command"] + "`; do not edit by hand -->",
        "",
        f"Command: `{data['command']}` · code commit: `{data['commit']}` · plan: `{data['plan']}`"
        + (f" · runs trained at: {', '.join(f'`{c}`' for c in trained)}" if trained else ""),
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
    out += ["## Claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    out += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in data["claims"]]
    out += ["", f"Rule: {data['claim_rule']}.", ""]
    out += _comparison_lines(data)
    out += _not_converged(parts, data)
    out += _method_lines(data, parts)
    out += _missing_lines(data.get("missing_runs", []))
    for name, section in parts.items():
        methods = data["methods"] if name == "cross_silo" else section.get("methods", {})
        out += _part_lines(name, section, methods)
    return "\n".join(out).rstrip() + "\n"
