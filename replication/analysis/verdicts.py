"""The verdict on each of the paper's claims, from a loaded results folder (`results.load`).

One home for the claims' statements and the rules that judge them (VERDICT_RULES, printed in
every report): claims 1-3 from the SB/LB tables and curves (`compare`), claim 4 from the
batch-size sweep (`sweep`), claim 5 from the warm starts (`warmstart`), claim 6 from the kept
iterates (`iterate_tables`), claim 7 from the remedies (`remedy_tables`). Each verdict is a dict: claim, statement,
verdict ("reproduced", "partly reproduced", "not reproduced", "not run"), scope, reason.
"""

from __future__ import annotations

import math

import numpy as np

from replication import config as config_lib
from replication.analysis import compare, iterate_tables, remedy_tables, sweep, warmstart  # none of them imports verdicts
from replication.analysis import results as results_lib

TRAIN_TOLERANCE_POINTS = 2.0  # "same training accuracy": the paper's own F2 differs by 1.64 points
STEEP_FACTOR = 10.0           # "rises steeply": every published Figure 3/7 curve has a ratio >= 41
CLAIMS = {
    1: "LB reaches the same training accuracy as SB but a lower test accuracy (Table 2).",
    2: "LB minimisers are much sharper than SB minimisers, in the full space (Table 3) and in "
       "random 100-dimensional subspaces (Table 4).",
    3: "On the path from x_SB (alpha=0) to x_LB (alpha=1) the loss is flat around alpha=0 and "
       "rises steeply around alpha=1 (Figure 3; Figure 7 on a curved path).",
    4: "Test accuracy falls and sharpness rises with the batch size, sharply past a threshold (Figure 4).",
    5: "Warm-starting LB from SB iterates helps only after enough SB epochs (Figure 5).",
    6: "Sharpness along the iterates grows for LB and falls for SB as the loss decreases (Figure 6).",
    7: "Augmentation, conservative and adversarial training narrow the gap but LB minima stay "
       "sharp (Tables 6, 7).",
}
NOT_RUN = {
    4: "no batch-size sweep (Figure 4) in these results: give a config a `sweep` section "
       "(configs/sweep/, `make sweep`)",
    5: "no piggyback runs (Figure 5) in these results: enable a config's `warm_start` section with kept "
       "iterates (configs/iterates/, `make iterates`; configs/warmstart/ for the paper's protocol)",
    6: "no measured iterates (Figure 6) in these results: give a config `keep_iterates` "
       "(configs/iterates/, `make iterates`), then `python -m replication iterates RUN_DIR`",
    7: "no augmentation or conservative-training runs (Tables 6, 7) in these results: enable a config's "
       "`augmentation` or `conservative` section (configs/remedies/, `make remedies`); adversarial "
       "training is not built (the paper publishes no numbers for it)",
}
VERDICT_RULES = f"""\
Each claim is judged per unit (network, or curve), then overall: every unit passes -> reproduced;
none passes -> not reproduced; otherwise partly reproduced; no results -> not run. The scope
(networks run, data other than the paper's, protocol deviations) is stated with every verdict and
never changes it: a claim reproduced on a stand-in dataset says so.
- Claim 1, per network: passes if SB test accuracy exceeds LB's by more than the larger seed
  standard deviation of the two (ddof=1) AND the train accuracies differ by at most
  {TRAIN_TOLERANCE_POINTS} points. Partial if the test gap is positive but there is only one seed
  (no standard deviation) or the train accuracies differ by more. Fails otherwise.
- Claim 2, per (network, space, epsilon): passes if the mean LB sharpness exceeds the mean SB
  sharpness (failed solves left out and counted). Capped at partly reproduced if one of the two
  spaces (full, random subspace) was not computed.
- Claim 3, per computed curve (pair x path): with rise(a) = (f(a - h) + f(a + h)) / 2 - f(a) of
  the training cross-entropy, h = {compare.RISE_STEP} (one step of the paper's grid; a finite-difference
  curvature, h^2/2 f''), passes if rise(1) > {STEEP_FACTOR:g} x rise(0) (every published curve of
  Figures 3 and 7 has a ratio of at least 41), partial if rise(1) > rise(0) only, fails otherwise.
  Capped at partly reproduced if the linear (Figure 3) or curvilinear (Figure 7) path is missing.
- Claim 4, per network and data, on the unscaled sweep (the paper's fixed learning rate; SB and
  LB runs count as points): passes if test accuracy falls with the batch size (Spearman rho <=
  -0.5 and lower at the largest batch than at the smallest) AND sharpness rises (rho >= 0.5 and
  higher at the largest batch; full space at eps 1e-3, else the first computed); partial if one of
  the two, or if both but the train accuracy also falls by more than {TRAIN_TOLERANCE_POINTS}
  points (at a fixed epoch budget the largest batches take few steps: under-training, not only a
  generalization gap); fails if neither. Needs at least 3 batch sizes with non-diverged runs;
  capped at partly reproduced if no sharpness was computed. The threshold's location is reported
  (the largest drop between consecutive batch sizes), not judged.
{warmstart.RULE}{iterate_tables.RULE}{remedy_tables.RULE}"""


def overall(levels: list[str], cap: str | None = None) -> str:
    """Per-unit levels ("pass", "partial", "fail") -> a verdict; `cap` names what was not run."""
    if not levels:
        return "not run"
    if all(level == "pass" for level in levels):
        return "partly reproduced" if cap else "reproduced"
    if all(level == "fail" for level in levels):
        return "not reproduced"
    return "partly reproduced"


# Deviations that do not bear on a claim (a run's list names every later measurement's settings).
UNRELATED = {1: ("sharpness", "parametric plots", "iterates"), 2: ("parametric plots", "iterates"),
             3: ("sharpness", "iterates"), 4: ("parametric plots", "iterates"), 5: ("parametric plots",),
             6: ("parametric plots",),
             7: ("parametric plots",)}


def qualifier(records: list[dict], ignore: tuple[str, ...] = ()) -> str:
    """Scope of a verdict: networks run, stand-in data, reduced protocol (from the records'
    network, dataset, dataset_label and deviations; those starting with `ignore` left out)."""
    networks = [n for n in config_lib.NETWORKS if any(r["network"] == n for r in records)]
    missing = [n for n in config_lib.NETWORKS if n not in networks]
    stand_in = sorted({r.get("dataset_label") or r.get("data") or r["dataset"] for r in records
                       if r["dataset"] != config_lib.PAPER_DATASET[r["network"]]})
    protocol = sorted({d for r in records for d in _as_list(r.get("deviations"))
                       if not d.startswith(("dataset ", *ignore))})
    parts = [f"{', '.join(networks)} only" if missing else "all six networks"]
    if stand_in:
        parts.append(f"on data other than the paper's ({', '.join(stand_in)})")
    if protocol:
        parts.append(f"reduced/changed protocol ({len(protocol)} deviations, listed in the evidence)")
    return "; ".join(parts)


def deviations_text(records: list[dict], ignore: tuple[str, ...] = ()) -> str:
    """The protocol deviations of `records`, one sorted list (dataset changes included)."""
    found = sorted({d for r in records for d in _as_list(r.get("deviations"))
                    if not d.startswith(ignore)})
    return "deviations from the paper's protocol: " + ("; ".join(found) if found else "none")


def _as_list(deviations) -> list[str]:
    if isinstance(deviations, str):
        return [] if deviations in ("", "none") else deviations.split("; ")
    return list(deviations or [])


def claim1(rows: list[dict], runs: list[dict] = ()) -> dict:
    """Verdict on claim 1 from table2() rows; `runs` (the runs' metrics) give the scope (VERDICT_RULES)."""
    pairs: dict = {}
    for row in rows:
        pairs.setdefault((row["network"], row["data"]), {})[row["regime"].lower()] = row
    levels, evidence = [], []
    for (network, label), pair in pairs.items():
        if not ("sb" in pair and "lb" in pair):
            evidence.append(f"{network} ({label}): only {', '.join(r.upper() for r in pair)} trained")
            continue
        sb, lb = pair["sb"], pair["lb"]
        gap = sb["test_mean"] - lb["test_mean"]
        noise = max((s for s in (sb["test_std"], lb["test_std"]) if not math.isnan(s)), default=math.nan)
        train_diff = abs(sb["train_mean"] - lb["train_mean"])
        same_train = train_diff <= TRAIN_TOLERANCE_POINTS
        if math.isnan(gap):
            level = "fail"
        elif not math.isnan(noise):
            level = ("pass" if same_train else "partial") if gap > noise else "fail"
        else:
            level = "partial" if gap > 0 else "fail"
        levels.append(level)
        noise_text = f"seed std {noise:.2f}" if not math.isnan(noise) else "one seed, no std"
        evidence.append(f"{network} ({label}): test SB - LB = {gap:+.2f} points ({noise_text}); "
                        f"train accuracies differ by {train_diff:.2f} points -> {level}")
    return verdict(1, overall(levels), list(runs), evidence, "no SB/LB pair of runs")


def _not_computed(wanted: set, found: set, kind: str, levels: list, evidence: list) -> str | None:
    """The cap of a claim whose evidence lacks a `kind` (a space, a path); said in the evidence
    when other units were judged."""
    missing = sorted(wanted - found)
    cap = f"not computed: {', '.join(missing)} {kind}" if missing else None
    if cap and levels:
        evidence.append(cap)
    return cap


def claim2(results: list[dict]) -> dict:
    """Verdict on claim 2 from sharpness_results() (rule in VERDICT_RULES)."""
    cells: dict = {}
    for r in results:
        if r.get("diverged_run"):  # as in the tables: a diverged run has no minimiser to measure
            continue
        cells.setdefault((r["network"], r["dataset_label"], r["space"], r["epsilon"]), []).append(r)
    levels, evidence = [], []
    for (network, label, space, eps), items in sorted(cells.items()):
        ok = {g: [float(r["phi"]) for r in items if r["regime"] == g and not r["failed"]
                  and r["phi"] is not None] for g in compare.REGIMES}
        failed = sum(r["failed"] for r in items)
        note = f", {failed} failed solve(s) left out" if failed else ""
        if not ok["sb"] or not ok["lb"]:
            evidence.append(f"{network} ({label}) {space} eps {eps:g}: no SB/LB pair of results{note}")
            continue
        sb, lb = float(np.mean(ok["sb"])), float(np.mean(ok["lb"]))
        level = "pass" if lb > sb else "fail"
        levels.append(level)
        ratio = f"{lb / sb:.1f}x" if sb > 0 else "SB is 0"
        evidence.append(f"{network} ({label}) {space} eps {eps:g}: LB {lb:.3g} vs SB {sb:.3g} "
                        f"({ratio}; {len(ok['lb'])}+{len(ok['sb'])} runs{note}) -> {level}")
    cap = _not_computed({"full", "random"}, {r["space"] for r in results}, "space", levels, evidence)
    return verdict(2, overall(levels, cap), results, evidence, "no sharpness results")


def claim3(rows: list[dict]) -> dict:
    """Verdict on claim 3 from landscape_rows() (rule in VERDICT_RULES)."""
    levels, evidence = [], []
    for r in rows:
        steeper = r["rise_lb"] > r["rise_sb"]
        level = "pass" if steeper and r["rise_lb"] > STEEP_FACTOR * r["rise_sb"] else \
            "partial" if steeper else "fail"
        levels.append(level)
        evidence.append(f"{r['network']} ({r['data']}) seed {r['seed']} {r['path']}: train xent rise "
                        f"SB end {r['rise_sb']:.3g}, LB end {r['rise_lb']:.3g} (ratio {r['rise_ratio']:.3g}; "
                        f"paper {r['paper_rise_ratio']:.3g}) -> {level}")
    cap = _not_computed({"linear", "curvilinear"}, {r["path"] for r in rows}, "path", levels, evidence)
    return verdict(3, overall(levels, cap), rows, evidence, "no parametric-plot results")


def verdict(claim: int, verdict: str, records: list[dict], evidence: list[str], empty: str) -> dict:
    ignore = UNRELATED.get(claim, ())
    scope = qualifier(records, ignore) if records and verdict != "not run" else ""
    if scope:
        evidence = [*evidence, deviations_text(records, ignore)]
    return {"claim": claim, "statement": CLAIMS[claim], "verdict": verdict, "scope": scope,
            "reason": " | ".join(evidence) if evidence else empty}


def claim_rows(loaded: results_lib.Results) -> dict:
    """The rows claims 5-7 are judged on, which the report's sections show too (computed once):
    warmstart.rows, iterate_tables.rows and remedy_tables.rows of each remedy."""
    return {"warmstart": warmstart.rows(loaded), "iterates": iterate_tables.rows(loaded),
            "remedies": {remedy: remedy_tables.rows(loaded, remedy) for remedy in remedy_tables.TABLES}}


def verdicts(loaded: results_lib.Results, rows: dict | None = None) -> list[dict]:
    """The seven claims' verdicts on a loaded results folder (rules in VERDICT_RULES); `rows`:
    claim_rows(loaded), when the caller has them already."""
    rows = rows if rows is not None else claim_rows(loaded)
    # Claims 1-3 are about the SB/LB pair: sweep runs (and their scaled learning rates) stay out.
    pair_runs = [r.metrics for r in loaded.runs if r.regime in compare.REGIMES]
    pair_sharpness = [r for r in compare.sharpness_results(loaded) if r["regime"] in compare.REGIMES]
    out = [claim1(compare.table2(loaded), pair_runs), claim2(pair_sharpness),
           claim3(compare.landscape_rows(loaded)), claim4(sweep.points(loaded))]
    out.append(claim5(rows["warmstart"]))
    out.append(claim6(rows["iterates"]))
    out.append(claim7([row for remedy_rows in rows["remedies"].values() for row in remedy_rows]))
    return out


def _not_run(claim: int) -> dict:
    return {"claim": claim, "statement": CLAIMS[claim], "verdict": "not run", "scope": "",
            "reason": NOT_RUN[claim]}


def claim7(rows: list[dict]) -> dict:
    """Verdict on claim 7 from remedy_tables.rows() of both remedies (rule: remedy_tables.RULE)."""
    levels, evidence = remedy_tables.claim7(rows)
    if not levels:
        return {**_not_run(7), "reason": " | ".join(evidence) or NOT_RUN[7]}
    return verdict(7, overall(levels), rows, evidence, NOT_RUN[7])


def claim5(rows: list[dict]) -> dict:
    """Verdict on claim 5 from warmstart.rows() (rule in VERDICT_RULES: warmstart.RULE)."""
    levels, evidence = warmstart.judge(rows)
    if not levels:
        return {**_not_run(5), "reason": " | ".join(evidence) or NOT_RUN[5]}
    return verdict(5, overall(levels), rows, evidence, NOT_RUN[5])


def claim6(rows: list[dict]) -> dict:
    """Verdict on claim 6 from iterate_tables.rows() (rule in VERDICT_RULES: iterate_tables.RULE)."""
    levels, evidence = iterate_tables.judge(rows)
    if not levels:
        return {**_not_run(6), "reason": " | ".join(evidence) or NOT_RUN[6]}
    return verdict(6, overall(levels), rows, evidence, NOT_RUN[6])


PAPER_THRESHOLD = {"C1": 500, "F2": 15000}  # PAPER.md claim 4


def claim4(rows: list[dict]) -> dict:
    """Verdict on claim 4 from points(), per trial on the unscaled curve (the paper's protocol);
    the rule is VERDICT_RULES' claim 4."""
    levels, evidence, records, caps = [], [], [], set()
    trials: dict = {}
    for row in rows:
        if row["lr_scaling"] == "none":
            trials.setdefault((row["network"], row["data"]), []).append(row)
    for (network, label), items in trials.items():
        measured = [r for r in items if math.isfinite(r["test_mean"])]
        diverged = sorted(r["batch_size"] for r in items if not math.isfinite(r["test_mean"]))
        note = f"; every seed diverged at batch {', '.join(map(str, diverged))}" if diverged else ""
        if len(measured) < sweep.MIN_BATCH_SIZES:
            evidence.append(f"{network} ({label}): {len(measured)} batch sizes with results, at least "
                            f"{sweep.MIN_BATCH_SIZES} are needed for a trend{note}")
            continue
        records += [{**r, "deviations": r["deviations"].split("; ") if r["deviations"] != "none" else []}
                    for r in items]
        batches = sorted(r["batch_size"] for r in measured)
        rho_acc, change_acc = sweep.trend(measured, "test_mean")
        _, change_train = sweep.trend(measured, "train_mean")
        keys = sweep.sharpness_columns(measured)
        sharp_key = keys[0] if keys else None
        rho_phi, change_phi = sweep.trend(measured, sharp_key) if sharp_key else (math.nan, math.nan)
        falls = rho_acc <= -sweep.TREND and change_acc < 0
        rises = rho_phi >= sweep.TREND and change_phi > 0
        level = "pass" if falls and rises else "partial" if falls or rises else "fail"
        undertrained = math.isfinite(change_train) and change_train < -TRAIN_TOLERANCE_POINTS
        if level == "pass" and undertrained:
            level = "partial"  # the fall may be under-training at a fixed epoch budget, not a gap
        if not sharp_key:
            caps.add("sharpness not computed")
        levels.append(level)
        drop = sweep.largest_drop(measured)
        threshold = (f"largest test-accuracy drop {drop[2]:.2f} points between batch {drop[0]} and "
                     f"{drop[1]}" if drop else "no drop")
        paper = PAPER_THRESHOLD.get(network)
        evidence.append(
            f"{network} ({label}), batch {batches[0]}-{batches[-1]} ({len(batches)} sizes): test accuracy "
            f"rho {rho_acc:+.2f}, change {change_acc:+.2f} points; train accuracy change "
            f"{change_train:+.2f} points"
            + (f" (more than {TRAIN_TOLERANCE_POINTS:g}: the largest batches are not trained "
               "as far, so the test drop is not only a generalization gap)" if undertrained else "")
            + "; " + (f"{sweep.sharpness_label(sharp_key)}: rho {rho_phi:+.2f}, change {change_phi:+.3g}"
                      if sharp_key else "sharpness not computed")
            + f"; {threshold}" + (f" (paper: threshold about {paper})" if paper else "") + note
            + f" -> {level}")
    if not levels:
        return {"claim": 4, "statement": CLAIMS[4], "verdict": "not run", "scope": "",
                "reason": " | ".join(evidence) or NOT_RUN[4]}
    cap = "; ".join(sorted(caps)) or None
    if cap:
        evidence.append(cap)
    return verdict(4, overall(levels, cap), records, evidence, NOT_RUN[4])
