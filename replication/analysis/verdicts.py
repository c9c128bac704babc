"""The verdict on each of the paper's claims, from a loaded results folder (`results.load`).

One home for the claims' statements and the rules that judge them (VERDICT_RULES, printed in
every report): claims 1-3 from the SB/LB runs, sharpness and curves (`compare`), claim 4 from the
batch-size sweep (`sweep`), claim 5 from the warm starts (`warmstart`), claim 6 from the kept
iterates (`iterate_tables`), claim 7 from the remedies (`remedy_tables`). Every rule compares
within seeds with the sign test and a margin of `paired`. Each verdict is a dict: claim,
statement, verdict ("reproduced", "partly reproduced", "not reproduced", "inconclusive (n seeds;
the rule needs 5)", "not run"), scope, reason (the evidence, " | "-separated) and tests (one dict
per paired test, `paired.paired`'s, with its claim and unit).
"""

from __future__ import annotations

import math

import numpy as np

from replication import config as config_lib
# None of these imports verdicts.
from replication.analysis import compare, iterate_tables, paired, remedy_tables, sweep, warmstart
from replication.analysis import results as results_lib

# "Same training accuracy": the paper calls F2's 99.99 vs 98.35 +- 2.08 (LB seed std) the same; with
# 5 seeds drawn like that, the mean difference stays within 3 points about 93% of the time (2: 65%).
SAME_TRAIN_POINTS = 3.0
STEEP_FACTOR = 10.0   # "rises steeply": every published Figure 3/7 curve has a ratio >= 41
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
_MARGINS = ", ".join(f"{n} {paired.accuracy_margin(n):.2f}" for n in config_lib.NETWORKS)
VERDICT_RULES = f"""\
Every rule compares within seeds (a seed's SB, LB, sweep, piggyback and remedy runs start from one
x0), per unit (network and data; for claim 2 also the space and epsilon, for claim 3 the path),
and per half of a claim (claims 4-7 have two). For each half, one number per seed, below; null
hypothesis: it is as likely negative as positive (no effect); test: the {paired.TEST} at
alpha {paired.ALPHA:g}, which needs at least {paired.MIN_SEEDS} seeds (all agreeing:
p = 1/{2 ** paired.MIN_SEEDS}); margin: the mean over seeds (the geometric mean of ratios) must also pass the margin stated below. A half
holds if p <= {paired.ALPHA:g} and its effect passes the margin. A unit passes if every half holds, fails
if none does, and is partial otherwise (a half that was not computed does not hold); with fewer
than {paired.MIN_SEEDS} seeds it is inconclusive. Overall: every judged unit passes -> reproduced; none
passes -> not reproduced; otherwise partly reproduced; every unit inconclusive -> "inconclusive
(n seeds; the rule needs {paired.MIN_SEEDS})"; no results -> not run. Inconclusive units are listed in the
evidence and left out of the verdict and its scope. The scope (networks, data other than the
paper's, protocol deviations) is stated with every verdict and never changes it. With 5 seeds
drawn at the paper's published means and seed spreads each rule passes at least 80% of the time
(but claim 7 on Table 7's F2, whose narrowing is 1.6 seed standard deviations per seed: about 3
times in 4), and a half with no effect holds at most 5% of the time (tests/test_verdict_power.py).
The accuracy margin is the larger of the paper's SB and LB seed standard deviations of test
accuracy (Table 2): {_MARGINS} points.
Every sharpness comparison states the training loss of both sides (f on the sharpness examples
where the sharpness file records it, else the run's final training loss) and whether they match
within {paired.LOSS_MATCH_FACTOR:g}x; the verdicts do not depend on it. Where runs kept every epoch,
the section "Sharpness at matched training loss" compares SB and LB at equal f instead.
- Claim 1, per network: SB minus LB test accuracy; margin: the accuracy margin. Passes if that
  holds and the mean SB - LB training accuracy is within {SAME_TRAIN_POINTS:g} points in absolute value;
  partial if it holds but the training accuracies differ by more; fails otherwise.
- Claim 2, per (network, space, epsilon): log(phi_LB / phi_SB) (failed solves left out and
  counted); margin: a geometric-mean ratio above {paired.SHARP_FACTOR:g} ("much sharper"; the paper's
  smallest is 8.7, C3 in Table 3). Capped at partly reproduced if one of the two spaces was not computed.
- Claim 3, per (network, path): with rise(a) = (f(a - h) + f(a + h)) / 2 - f(a) of the training
  cross-entropy, h = {compare.RISE_STEP} (one step of the paper's grid; a finite-difference curvature,
  h^2/2 f''), log(rise(1) / rise(0)) (+inf if only the SB end does not rise, -inf if the LB end does
  not); margin: a geometric-mean ratio above {STEEP_FACTOR:g} (every published curve of Figures 3 and 7 has
  at least 41). Capped at partly reproduced if the linear or curvilinear path is missing.
- Claim 4, per network and data, on the unscaled sweep (the paper's fixed learning rate; SB and LB
  runs count as points; at least {sweep.MIN_BATCH_SIZES} batch sizes): accuracy falls: test accuracy at the
  smallest batch minus at the largest, margin the accuracy margin; sharpness rises: log(phi at the
  largest batch / phi at the smallest) (full space at eps 1e-3, else the first computed), margin
  {paired.SHARP_FACTOR:g}x. A pass becomes partial if the mean training accuracy also falls by more than
  {SAME_TRAIN_POINTS:g} points (at a fixed epoch budget the largest batches take few steps: under-training, not only a
  generalization gap). The mean Spearman rho over seeds and the threshold's location (the largest
  drop between consecutive batch sizes) are reported, not judged.
{warmstart.RULE}{iterate_tables.RULE}{remedy_tables.RULE}"""


def overall(levels: list[str], cap: str | None = None) -> str:
    """Judged units' levels ("pass", "partial", "fail") -> a verdict; `cap` names what was not run."""
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
             7: ("parametric plots", "iterates")}


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
        parts.append(f"reduced/changed protocol ({len(protocol)} deviation{'s' if len(protocol) > 1 else ''}, "
                     "listed in the evidence)")
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


def verdict(claim: int, units: list[dict], records: list[dict], notes: list[str] = (), cap: str | None = None,
            empty: str = "") -> dict:
    """A claim's verdict from its units (rule in VERDICT_RULES); `notes`: what was not judged and
    why; `cap`: what was not computed; `empty`: the reason when nothing was judged and no note says."""
    if not units:
        return {"claim": claim, "statement": CLAIMS[claim], "verdict": "not run", "scope": "",
                "reason": " | ".join(notes) or empty, "tests": []}
    judged = [u for u in units if u["level"] != "inconclusive"]
    if judged:
        result = overall([u["level"] for u in judged], cap)
        networks = {u["network"] for u in judged}
        records = [r for r in records if r["network"] in networks]
    else:
        result = paired.inconclusive([u["n"] for u in units])
    evidence = [u["evidence"] for u in units] + list(notes) + ([cap] if cap else [])
    ignore = UNRELATED.get(claim, ())
    scope = qualifier(records, ignore) if records else ""
    if scope:
        evidence.append(deviations_text(records, ignore))
    return {"claim": claim, "statement": CLAIMS[claim], "verdict": result, "scope": scope,
            "reason": " | ".join(evidence), "tests": [{"claim": claim, **t} for u in units for t in u["tests"]]}


def _label(record: dict) -> str:
    return record.get("dataset_label") or record.get("data") or record["dataset"]


def _mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


# Claims 1-3: the SB/LB pair --------------------------------------------------------------------------
def claim1(runs: list[dict]) -> dict:
    """Verdict on claim 1 from the SB and LB runs' metrics (metrics.json dicts), paired by seed."""
    trials: dict = {}
    for run in runs:
        trials.setdefault((run["network"], _label(run)), {}).setdefault(run["regime"], {})[int(run["seed"])] = run
    units, notes, records = [], [], []
    for (network, label), by_regime in trials.items():
        name = f"{network} ({label})"
        if not ("sb" in by_regime and "lb" in by_regime):
            notes.append(f"{name}: only {', '.join(r.upper() for r in by_regime)} trained")
            continue
        sb, lb = by_regime["sb"], by_regime["lb"]
        seeds = [s for s in sorted(set(sb) & set(lb)) if not sb[s]["diverged"] and not lb[s]["diverged"]]
        left_out = len(sb) + len(lb) - 2 * len(seeds)
        note = (f"; {left_out} run(s) left out (diverged, or no finished run of the other regime with its seed)"
                if left_out else "")
        if not seeds:
            notes.append(f"{name}: no seed with finished SB and LB runs{note}")
            continue
        records += [sb[s] for s in seeds] + [lb[s] for s in seeds]
        test = paired.paired([float(sb[s]["test_accuracy"]) - float(lb[s]["test_accuracy"]) for s in seeds],
                             paired.accuracy_margin(network), "test accuracy SB - LB")
        train = _mean([float(sb[s]["train_accuracy"]) - float(lb[s]["train_accuracy"]) for s in seeds])
        same = abs(train) <= SAME_TRAIN_POINTS  # either side may train further: |SB - LB|
        level = paired.level([test])
        if level == "pass" and not same:
            level = "partial"  # a lower test accuracy, but not at the same training accuracy
        units.append(paired.unit(name, network, [test], level,
                          f"{name}: {paired.describe(test)}; training accuracy SB - LB {train:+.2f} points "
                          f"({'within' if same else 'more than'} {SAME_TRAIN_POINTS:g}: "
                          f"{'the same' if same else 'not the same'} training accuracy){note}"))
    return verdict(1, units, records, notes, empty="no SB/LB pair of runs")


def _not_computed(wanted: set, found: set, kind: str) -> str | None:
    """The cap of a claim whose evidence lacks a `kind` (a space, a path)."""
    missing = sorted(wanted - found)
    return f"not computed: {', '.join(missing)} {kind}" if missing else None


def _phi(record: dict) -> float | None:
    return None if record["failed"] or record["phi"] is None else float(record["phi"])


def _sharpness_loss(record: dict) -> tuple[float, str]:
    """The loss beside a sharpness result: its recorded f, else the run's final training loss."""
    return paired.loss((record.get("record") or {}).get("f_x"), record.get("train_loss"))


def claim2(results: list[dict]) -> dict:
    """Verdict on claim 2 from sharpness_results() (each may carry its run's `train_loss`)."""
    cells: dict = {}
    for r in results:
        if r.get("diverged_run"):  # as in the tables: a diverged run has no minimiser to measure
            continue
        cells.setdefault((r["network"], r["dataset_label"], r["space"], r["epsilon"]), {}) \
            .setdefault(r["regime"], {})[r["seed"]] = r
    units, notes = [], []
    for (network, label, space, eps), sides in sorted(cells.items()):
        name = f"{network} ({label}) {space} eps {eps:g}"
        sb, lb = sides.get("sb", {}), sides.get("lb", {})
        failed = sum(r["failed"] for side in sides.values() for r in side.values())
        note = f"; {failed} failed solve(s) left out" if failed else ""
        seeds = [s for s in sorted(set(sb) & set(lb)) if _phi(sb[s]) is not None and _phi(lb[s]) is not None]
        if not seeds:
            notes.append(f"{name}: no SB/LB pair of results{note}")
            continue
        test = paired.paired([paired.log_ratio(_phi(lb[s]), _phi(sb[s])) for s in seeds],
                             paired.SHARP_FACTOR, "sharpness LB / SB", "ratio")
        loss = paired.side_losses([_sharpness_loss(sb[s]) for s in seeds], [_sharpness_loss(lb[s]) for s in seeds])
        units.append(paired.unit(name, network, [test], paired.level([test]),
                          f"{name}: {paired.describe(test)}; {loss}{note}"
                          + paired.cap_words([(results_lib.at_cap(sb[s]["record"]), results_lib.at_cap(lb[s]["record"]))
                                             for s in seeds])))
    cap = _not_computed({"full", "random"}, {r["space"] for r in results}, "space")
    return verdict(2, units, results, notes, cap, "no sharpness results")


def claim3(rows: list[dict]) -> dict:
    """Verdict on claim 3 from landscape_rows() (each may carry f_sb and f_lb, the training
    cross-entropy at alpha 0 and 1), the seeds of one network and path together."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["network"], r["data"], r["path"]), []).append(r)
    units, notes = [], []
    for (network, label, path), items in groups.items():
        name = f"{network} ({label}) {path}"
        test = paired.paired([paired.log_ratio(r["rise_lb"], r["rise_sb"]) for r in items], STEEP_FACTOR,
                             "train xent rise at the LB end / at the SB end", "ratio")
        paper = float(items[0].get("paper_rise_ratio", math.nan))
        loss = paired.losses([r.get("f_sb") for r in items], [r.get("f_lb") for r in items],
                             source="train cross-entropy at alpha 0 and 1 of the plot")
        if test["n"] == 0:
            notes.append(f"{name}: no curve with finite rises at both ends")
            continue
        units.append(paired.unit(name, network, [test], paired.level([test]),
                          f"{name}, seed(s) {', '.join(str(r['seed']) for r in items)}: {paired.describe(test)}"
                          + (f" (the paper's curve: {paper:.3g})" if math.isfinite(paper) else "")
                          + f"; {loss}"))
    cap = _not_computed({"linear", "curvilinear"}, {r["path"] for r in rows}, "path")
    return verdict(3, units, rows, notes, cap, "no parametric-plot results")


def with_curve_losses(rows: list[dict], loaded: results_lib.Results) -> list[dict]:
    """landscape_rows() with f_sb and f_lb: each curve's training cross-entropy at alpha 0 and 1."""
    ends = {str(c.csv.relative_to(loaded.root)): [float(np.interp(a, c.columns["alpha"], c.columns["train_xent"]))
                                                  for a in (0.0, 1.0)] for c in loaded.curves}
    return [{**r, **dict(zip(("f_sb", "f_lb"), ends.get(r["csv"], [math.nan, math.nan])))} for r in rows]


# Claim 4: the batch-size sweep -------------------------------------------------------------------------
PAPER_THRESHOLD = {"C1": 500, "F2": 15000}  # PAPER.md claim 4


def claim4(rows: list[dict]) -> dict:
    """Verdict on claim 4 from sweep.seed_points() (one row per run), per trial on the unscaled
    curve (the paper's protocol); the rule is VERDICT_RULES' claim 4."""
    trials: dict = {}
    for row in rows:
        if row["lr_scaling"] == "none":
            trials.setdefault((row["network"], row["data"]), []).append(row)
    units, notes, records, caps = [], [], [], set()
    for (network, label), items in trials.items():
        name = f"{network} ({label})"
        ok = [r for r in items if not r["diverged"] and math.isfinite(r["test"])]
        batches = sorted({r["batch_size"] for r in ok})
        diverged = sorted({r["batch_size"] for r in items} - set(batches))
        note = f"; every seed diverged at batch {', '.join(map(str, diverged))}" if diverged else ""
        if len(batches) < sweep.MIN_BATCH_SIZES:
            notes.append(f"{name}: {len(batches)} batch sizes with results, at least {sweep.MIN_BATCH_SIZES} are "
                         f"needed for a trend{note}")
            continue
        small, large = batches[0], batches[-1]
        by_seed: dict = {}
        for r in ok:
            by_seed.setdefault(r["seed"], {})[r["batch_size"]] = r
        seeds = [s for s in sorted(by_seed) if small in by_seed[s] and large in by_seed[s]]
        ends = [(by_seed[s][small], by_seed[s][large]) for s in seeds]
        if not ends:
            notes.append(f"{name}: no seed has results at both batch {small} and {large}{note}")
            continue
        records += items
        accuracy = paired.paired([a["test"] - b["test"] for a, b in ends], paired.accuracy_margin(network),
                                 f"test accuracy at batch {small} minus at {large}")
        train_change = _mean([b["train"] - a["train"] for a, b in ends])
        keys = sweep.sharpness_columns(ok)
        key = next((k for k in keys if any(math.isfinite(r.get(k, math.nan)) for pair in ends for r in pair)), None)
        if key:
            what = f"{sweep.sharpness_label(key)} at batch {large} / at {small}"
            sharp = paired.paired([paired.log_ratio(b.get(key, math.nan), a.get(key, math.nan)) for a, b in ends],
                                  paired.SHARP_FACTOR, what, "ratio")
            f_key = results_lib.f_column(key)
            pairs = [(a, b) for a, b in ends if all(math.isfinite(r.get(key, math.nan)) for r in (a, b))]
            loss = "; " + paired.side_losses([paired.loss(a.get(f_key), a.get("train_loss")) for a, _ in pairs],
                                      [paired.loss(b.get(f_key), b.get("train_loss")) for _, b in pairs],
                                      (f"batch {small}", f"batch {large}"))
        else:
            sharp, loss = paired.not_computed("sharpness", paired.SHARP_FACTOR, "ratio"), ""
            caps.add("sharpness not computed")
        level = paired.level([accuracy, sharp])
        undertrained = math.isfinite(train_change) and train_change < -SAME_TRAIN_POINTS
        if level == "pass" and undertrained:
            level = "partial"  # the fall may be under-training at a fixed epoch budget, not a gap
        rho_acc = _mean(iterate_tables.spearman(sorted(b), [b[x]["test"] for x in sorted(b)]) for b in by_seed.values())
        rho_phi = _mean(iterate_tables.spearman(sorted(b), [b[x].get(key, math.nan) for x in sorted(b)])
                        for b in by_seed.values()) if key else math.nan
        means = [{"batch_size": b, "test_mean": _mean(r["test"] for r in ok if r["batch_size"] == b)} for b in batches]
        paper = PAPER_THRESHOLD.get(network)
        units.append(paired.unit(
            name, network, [accuracy, sharp], level,
            f"{name}, batch {small}-{large} ({len(batches)} sizes): {paired.describe(accuracy)} (mean rho "
            f"{rho_acc:+.2f}); training accuracy change {train_change:+.2f} points"
            + (f" (a fall of more than {SAME_TRAIN_POINTS:g}: the largest batches are not trained as far, so the test "
               "drop is not only a generalization gap)" if undertrained else "")
            + f"; {paired.describe(sharp)}" + (f" (mean rho {rho_phi:+.2f})" if key else "") + loss
            + f"; {sweep.drop_text(sweep.largest_drop(means))}"
            + (f" (paper: threshold about {paper})" if paper else "")
            + note))
    cap = "; ".join(sorted(caps)) or None
    return verdict(4, units, records, notes, cap, NOT_RUN[4])


# Claims 5-7: their modules judge, with the same paired tests -------------------------------------------
def claim5(rows: list[dict]) -> dict:
    """Verdict on claim 5 from warmstart.rows() (rule: warmstart.RULE)."""
    units, notes = warmstart.judge(rows)
    return verdict(5, units, rows, notes, empty=NOT_RUN[5])


def claim6(rows: list[dict]) -> dict:
    """Verdict on claim 6 from iterate_tables.rows() (rule: iterate_tables.RULE)."""
    units, notes = iterate_tables.judge(rows)
    return verdict(6, units, rows, notes, empty=NOT_RUN[6])


def claim7(rows: list[dict]) -> dict:
    """Verdict on claim 7 from remedy_tables.seed_rows() of both remedies (rule: remedy_tables.RULE)."""
    units, notes = remedy_tables.claim7(rows)
    return verdict(7, units, rows, notes, empty=NOT_RUN[7])


def claim_rows(loaded: results_lib.Results) -> dict:
    """The rows claims 5-7 are judged on, which the report's sections show too (computed once):
    warmstart.rows, iterate_tables.rows, remedy_tables.rows of each remedy and their seeds."""
    return {"warmstart": warmstart.rows(loaded), "iterates": iterate_tables.rows(loaded),
            "remedies": {remedy: remedy_tables.rows(loaded, remedy) for remedy in remedy_tables.TABLES},
            "remedy_seeds": [row for remedy in remedy_tables.TABLES for row in remedy_tables.seed_rows(loaded, remedy)]}


def verdicts(loaded: results_lib.Results, rows: dict | None = None) -> list[dict]:
    """The seven claims' verdicts on a loaded results folder (rules in VERDICT_RULES); `rows`:
    claim_rows(loaded), when the caller has them already."""
    rows = rows if rows is not None else claim_rows(loaded)
    # Claims 1-3 are about the SB/LB pair: sweep runs (and their scaled learning rates) stay out.
    pair_runs = [r.metrics for r in loaded.runs if r.regime in compare.REGIMES]
    train_loss = {(r.network, r.dataset, r.regime, r.seed): r.metrics.get("train_loss") for r in loaded.runs}
    pair_sharpness = [{**r, "train_loss": train_loss.get((r["network"], r["dataset"], r["regime"], r["seed"]))}
                      for r in compare.sharpness_results(loaded) if r["regime"] in compare.REGIMES]
    return [claim1(pair_runs), claim2(pair_sharpness),
            claim3(with_curve_losses(compare.landscape_rows(loaded), loaded)), claim4(sweep.seed_points(loaded)),
            claim5(rows["warmstart"]), claim6(rows["iterates"]), claim7(rows["remedy_seeds"])]
