"""Tables 6 (data augmentation) and 7 (conservative training) beside the paper's, and claim 7's rule.

From a loaded results folder (`results.load`) whose configs enabled a remedy: each remedy run
(`sb-augmented`, `lb-augmented`, `sb-conservative`, `lb-conservative`; replication/remedies.py)
starts from its trial's x0, like the plain SB and LB runs beside it, which the loader has checked
were made under the same protocol. Per network and data, one row per remedy:

- "SB" is the SB column of the published table: the augmented SB run for Table 6 (the paper's
  "baseline" there is SB with augmentation: C1 83.63 vs Table 2's 80.04), the plain SB run for
  Table 7 (its "baseline" equals Table 2's SB). Our SB run under conservative training is an extra
  column (the paper publishes none).
- "LB" is the LB run under the remedy; its sharpness (full space, eps 1e-3 and 5e-4, Metric 2.1) is
  set beside the published "sharpness (LB method)".
- gap = SB - LB test accuracy (points) under the remedy; plain gap = plain SB - plain LB, from the
  same folder; the paper's two gaps come from the table and Table 2.

Means over seeds, sample standard deviations (ddof=1); diverged runs and failed solves are counted,
never averaged in (`results.over_seeds`, as in every table). Evaluation and sharpness of a remedy
run use the training images as they are (augmentation acts inside training only).

Claim 7 (PAPER.md: the remedies narrow the gap but the LB minima stay sharp) is judged per
(network, data, remedy) on `seed_rows` (the same runs, one row per seed: a seed's plain and remedy
runs share x0), with the paired tests of `paired` (RULE, printed in the report).
Adversarial training is not built: the paper publishes no numbers for it.
"""

from __future__ import annotations

import math

import numpy as np

from replication import regimes
from replication.analysis import compare, paired
from replication.analysis import results as results_lib

# remedy -> (table name in tables/, published CSV, the CSV's LB column prefix, report title)
TABLES = {
    "augmentation": ("table6", "table6_data_augmentation", "augmented_lb",
                     "Table 6: data augmentation (test accuracy %, LB sharpness)"),
    "conservative": ("table7", "table7_conservative_training", "conservative_lb",
                     "Table 7: conservative training (test accuracy %, LB sharpness)"),
}
EPSILONS = compare.SHARPNESS_EPSILONS          # the published tables' tags: {"eps1e-3": 1e-3, "eps5e-4": 5e-4}
SPACE = "full"                                 # the space of Tables 6 and 7 (as Table 3's)
# Published tag -> our column of that sharpness (phi_full_eps0.001, ...), every table's name for it.
PHI = {tag: results_lib.sharpness_column("phi", SPACE, epsilon) for tag, epsilon in EPSILONS.items()}
RULE = f"""\
- Claim 7, per network, data and remedy (Tables 6 and 7): the gap under the remedy is the table's
  SB minus the remedy's LB test accuracy (the table's SB is the augmented SB run for Table 6, the
  plain SB run for Table 7, as in the paper), the plain gap the plain SB minus the plain LB. Narrows:
  the plain gap minus the gap under the remedy, margin the accuracy margin; stays sharp:
  log(phi of the remedy's LB / phi of the table's SB) (full space, eps 1e-3 where computed), margin
  a geometric-mean ratio above {paired.SHARP_FACTOR:g}. A half without its runs or sharpness is not computed
  (does not hold). Adversarial training is not built (the paper publishes no numbers for it). On the paper's
  own means, Table 7's C3 gap widens (49.58 - 45.98 = 3.60 against Table 2's 3.13): "narrows" cannot
  hold there.
"""
NOTE = ("Our SB and LB runs under the remedy start from the trial's x0, like the plain runs of the same "
        "folder (plain gap). Evaluation and sharpness use the training images as they are (augmentation "
        "acts inside training only). Sharpness: full space, Metric 2.1 (x100).")


def _remedy_trials(loaded: results_lib.Results, remedy: str):
    """((network, dataset), runs by regime, the remedy's SB and LB runs) of each trial that has any."""
    names = [regimes.remedy(base, remedy).name for base in regimes.REGIMES]
    for trial, by_regime in loaded.trials().items():
        if remedy_runs := [run for name in names for run in by_regime.get(name, [])]:
            yield trial, by_regime, remedy_runs


def rows(loaded: results_lib.Results, remedy: str) -> list[dict]:
    """Table 6 (`remedy` "augmentation") or 7 ("conservative"): one row per network and data with
    runs of that remedy (module docstring), beside the published row."""
    _, csv_name, lb_prefix, _ = TABLES[remedy]
    paper, table2 = compare.published(csv_name), compare.published("table2_accuracy")
    sb_regime, lb_regime = (regimes.remedy(base, remedy).name for base in regimes.REGIMES)
    out = []
    for (network, dataset), by_regime, remedy_runs in _remedy_trials(loaded, remedy):
        baseline = by_regime.get(sb_regime if remedy == "augmentation" else "sb", [])
        groups = {"sb": baseline, "lb": by_regime.get(lb_regime, []), "remedy_sb": by_regime.get(sb_regime, []),
                  "plain_sb": by_regime.get("sb", []), "plain_lb": by_regime.get("lb", [])}
        first = remedy_runs[0].metrics
        published = paper.get(network, {})
        row = {"network": network, "dataset": dataset, "data": first["dataset_label"],
               "dataset_label": first["dataset_label"], "remedy": remedy,
               "sb_baseline": sb_regime if remedy == "augmentation" else "sb",
               "seeds": len({r.seed for r in remedy_runs}),
               "diverged": sum(r.diverged for r in remedy_runs),
               "settings": _settings(remedy_runs)}
        for name, runs in groups.items():
            test = results_lib.over_seeds(runs, lambda run: run.metrics["test_accuracy"])
            row.update(test.columns(f"{name}_test", results_lib.MEAN_STD))
        row["paper_sb_test_mean"] = published.get("baseline_sb_test_mean", math.nan)
        row["paper_sb_test_std"] = published.get("baseline_sb_test_std", math.nan)
        row["paper_lb_test_mean"] = published.get(f"{lb_prefix}_test_mean", math.nan)
        row["paper_lb_test_std"] = published.get(f"{lb_prefix}_test_std", math.nan)
        row["gap"] = row["sb_test_mean"] - row["lb_test_mean"]
        row["plain_gap"] = row["plain_sb_test_mean"] - row["plain_lb_test_mean"]
        row["paper_gap"] = row["paper_sb_test_mean"] - row["paper_lb_test_mean"]
        plain = table2.get(network, {})
        row["paper_plain_gap"] = plain.get("test_sb_mean", math.nan) - plain.get("test_lb_mean", math.nan)
        for tag, epsilon in EPSILONS.items():
            for name in ("lb", "sb", "plain_lb"):
                phi = results_lib.over_seeds(groups[name], lambda run: results_lib.sharpness_value(run, SPACE, epsilon))
                row.update(phi.columns(f"{name}_{PHI[tag]}", ("mean", "std", "n", "failed") if name == "lb"
                                       else results_lib.MEAN_STD))
            row[f"paper_lb_{PHI[tag]}_mean"] = published.get(f"lb_sharpness_{tag}_mean", math.nan)
            row[f"paper_lb_{PHI[tag]}_std"] = published.get(f"lb_sharpness_{tag}_std", math.nan)
        row["deviations"] = "; ".join(sorted({d for r in remedy_runs for d in r.metrics["deviations"]})) or "none"
        out.append(row)
    return out


def markdown(rows_: list[dict]) -> str:
    """The rows as a Markdown table, ours beside the paper's (either table: the remedy names the SB)."""
    lines = ["| network | data | SB | seeds (diverged) | SB test % | paper SB | LB test % | paper LB | "
             "gap (plain gap) | paper gap (Table 2) | LB phi, eps 1e-3 | paper | LB phi, eps 5e-4 | paper | "
             "SB phi, eps 1e-3 | plain LB phi, eps 1e-3 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    main = PHI["eps1e-3"]
    for r in rows_:
        sb = "augmented" if r["sb_baseline"] != "sb" else "plain"
        lines.append(
            f"| {r['network']} | {r['data']} | {sb} | {r['seeds']} ({r['diverged']}) | "
            f"{compare.cell(r['sb_test_mean'], r['sb_test_std'])} | "
            f"{compare.cell(r['paper_sb_test_mean'], r['paper_sb_test_std'])} | "
            f"{compare.cell(r['lb_test_mean'], r['lb_test_std'])} | "
            f"{compare.cell(r['paper_lb_test_mean'], r['paper_lb_test_std'])} | "
            f"{_points(r['gap'])} ({_points(r['plain_gap'])}) | "
            f"{_points(r['paper_gap'])} ({_points(r['paper_plain_gap'])}) | "
            + " | ".join(f"{compare.phi_cell(r[f'lb_{k}_mean'], r[f'lb_{k}_std'])} | "
                         f"{compare.cell(r[f'paper_lb_{k}_mean'], r[f'paper_lb_{k}_std'])}"
                         for k in PHI.values())
            + f" | {compare.phi_cell(r[f'sb_{main}_mean'], r[f'sb_{main}_std'])} | "
            f"{compare.phi_cell(r[f'plain_lb_{main}_mean'], r[f'plain_lb_{main}_std'])} |")
    extra = [r for r in rows_ if r["remedy"] == "conservative"]
    if extra:
        lines += ["", "Our SB runs under conservative training (not in the paper): " + "; ".join(
            f"{r['network']} {compare.cell(r['remedy_sb_test_mean'], r['remedy_sb_test_std'])}%"
            if r["remedy_sb_test_mean"] is not None and math.isfinite(r["remedy_sb_test_mean"])
            else f"{r['network']} none run" for r in extra)]
    lines += ["", "Remedy settings: " + " | ".join(sorted({r["settings"] for r in rows_})),
              "", "Deviations from the paper's protocol: " + " | ".join(sorted({r["deviations"] for r in rows_}))]
    return "\n".join(lines) + "\n"


def seed_rows(loaded: results_lib.Results, remedy: str) -> list[dict]:
    """Claim 7's evidence, one row per (network, data, seed) with runs of `remedy`: the test accuracy
    of the table's SB (sb_test), the remedy's LB (lb_test) and the plain runs (plain_sb_test,
    plain_lb_test), and for each epsilon of the full space the table's SB and the remedy's LB phi
    (sb_phi_full_eps<eps>, lb_phi_full_eps<eps>) with the f recorded beside it (sb_f_full_eps<eps>,
    lb_f_full_eps<eps>); the runs' final training losses (sb_train_loss, lb_train_loss); nan where a
    run is missing, diverged or its solve failed."""
    sb_regime, lb_regime = (regimes.remedy(base, remedy).name for base in regimes.REGIMES)
    out = []
    for (network, dataset), by_regime, remedy_runs in _remedy_trials(loaded, remedy):
        roles = {"sb": sb_regime if remedy == "augmentation" else "sb", "lb": lb_regime, "plain_sb": "sb",
                 "plain_lb": "lb"}
        seeds = sorted({r.seed for r in remedy_runs})
        for seed in seeds:
            runs = {role: next((r for r in by_regime.get(regime, []) if r.seed == seed and not r.diverged), None)
                    for role, regime in roles.items()}
            row = {"network": network, "dataset": dataset, "data": remedy_runs[0].metrics["dataset_label"],
                   "dataset_label": remedy_runs[0].metrics["dataset_label"], "remedy": remedy, "seed": seed}
            for role, run in runs.items():
                row[f"{role}_test"] = float(run.metrics["test_accuracy"]) if run else math.nan
            for role in ("sb", "lb"):
                run = runs[role]
                row[f"{role}_train_loss"] = float(run.metrics.get("train_loss", math.nan)) if run else math.nan
                for tag, epsilon in EPSILONS.items():
                    phi = results_lib.sharpness_value(run, SPACE, epsilon) if run else None
                    record = run.sharpness[(SPACE, epsilon)].record if isinstance(phi, float) else {}
                    f_x = record.get("f_x")
                    row[f"{role}_{PHI[tag]}"] = phi if isinstance(phi, float) else math.nan
                    row[f"{role}_{PHI[tag]}_capped"] = bool(record) and results_lib.at_cap(record)
                    row[f"{role}_{results_lib.f_column(PHI[tag])}"] = math.nan if f_x is None else float(f_x)
            row["deviations"] = "; ".join(sorted({d for r in remedy_runs for d in r.metrics["deviations"]})) or "none"
            out.append(row)
    return out


def claim7(rows_: list[dict]) -> tuple[list[dict], list[str]]:
    """Claim 7 by RULE over seed_rows() of both remedies, paired by seed: (units, paired.unit's
    dicts; notes: what was not judged or not run)."""
    units, notes = [], []
    groups: dict = {}
    for r in rows_:
        groups.setdefault((r["network"], r["data"], r["remedy"]), []).append(r)
    for (network, label, remedy), items in groups.items():
        table = TABLES[remedy][0].replace("table", "Table ")
        name = f"{network} ({label}), {remedy} ({table})"
        narrowing = [(r["plain_sb_test"] - r["plain_lb_test"]) - (r["sb_test"] - r["lb_test"]) for r in items]
        narrows = paired.paired(narrowing, paired.accuracy_margin(network),
                                f"gap narrowing (plain gap minus gap under {remedy}, points)")
        tag = next((t for t, k in PHI.items() if any(np.isfinite(r[f"lb_{k}"]) and np.isfinite(r[f"sb_{k}"])
                                                      for r in items)), None)
        if tag:
            key, f_key = PHI[tag], results_lib.f_column(PHI[tag])
            measured = [r for r in items if np.isfinite(r[f"lb_{key}"]) and np.isfinite(r[f"sb_{key}"])]
            what = f"LB under {remedy} / SB sharpness ({SPACE}, {tag.replace('eps', 'eps ')})"
            sharp = paired.paired([paired.log_ratio(r[f"lb_{key}"], r[f"sb_{key}"]) for r in measured],
                                  paired.SHARP_FACTOR, what, "ratio")
            loss = "; " + paired.side_losses([paired.loss(r[f"sb_{f_key}"], r["sb_train_loss"]) for r in measured],
                                             [paired.loss(r[f"lb_{f_key}"], r["lb_train_loss"]) for r in measured])
            loss += paired.cap_words([(bool(r.get(f"sb_{key}_capped")), bool(r.get(f"lb_{key}_capped")))
                                      for r in measured])
        else:
            sharp, loss = paired.not_computed("sharpness", paired.SHARP_FACTOR, "ratio"), ""
        level = paired.level([narrows, sharp])
        if level is None:
            notes.append(f"{name}: no seed with the plain and remedy runs of the gap, and no sharpness: not judged")
            continue
        gaps = (f" (mean gap {np.nanmean([r['sb_test'] - r['lb_test'] for r in items]):+.2f} under the remedy vs "
                f"{np.nanmean([r['plain_sb_test'] - r['plain_lb_test'] for r in items]):+.2f} plain)"
                if narrows["n"] else "")
        units.append(paired.unit(name, network, [narrows, sharp], level,
                                 f"{name}: {paired.describe(narrows)}{gaps}; {paired.describe(sharp)}{loss}"))
    if units or notes:
        missing = [remedy for remedy in TABLES if not any(r["remedy"] == remedy for r in rows_)]
        notes.append((f"not run: {', '.join(missing)}; " if missing else "")
                     + "adversarial training is not built (the paper publishes no numbers for it)")
    return units, notes


# Helpers --------------------------------------------------------------------------------------------
def _settings(runs) -> str:
    """The remedy's settings as the runs recorded them (their resolved config's `run.remedy`).
    The loader compares runs' protocols without their `run` entry, so runs of one remedy trained
    with different settings (another lambda, say) are refused here: never averaged."""
    first = None
    for run in runs:
        remedy = dict(run.metrics.get("resolved_config", {}).get("run", {}).get("remedy") or {})
        if first is None:
            first = (run, remedy)
        elif remedy != first[1]:
            key = next(k for k in sorted({*remedy, *first[1]}) if remedy.get(k) != first[1].get(k))
            raise results_lib.ResultsError(
                f"runs {first[0].path} and {run.path} were trained with different remedy settings "
                f"('{key}' is {first[1].get(key)!r} in the first, {remedy.get(key)!r} in the second), so "
                f"they cannot be averaged or compared: {results_lib.FIX}")
    settings = {k: v for k, v in first[1].items() if k != "remedy"}
    return ", ".join(f"{k} {v}" for k, v in settings.items()) or "not recorded"


def _points(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"
