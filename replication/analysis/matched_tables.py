"""Three report sections for runs that kept every epoch (measure/matched.py, measure/budget.py):

1. Sharpness at matched training loss: for each level L of the training cross-entropy, the SB and
   LB iterates nearest L (within measure/matched.MATCH_FACTOR), their measured f and phi, and the
   LB/SB ratio per seed. At equal f the ratio says what the batch size does to sharpness; at the
   final points (Keskar et al.'s Tables 3-4) it mixes that with how far each run trained. Where
   `matched --lambda-max` measured it, the Hessian's top eigenvalue at the same iterates too, a
   Lanczos that stopped at its cap marked as the lower bound it is (">="), and so its ratio.
2. The stopping rule: phi where `stopping: plateau` (patience P) would have stopped each run
   (its iterate at that epoch), beside the fixed 100 epochs, against Table 3's cells.
3. The solver's budget: phi at the final weights with 10 (the paper's), 50 and 200 L-BFGS-B
   iterations and from random starts; a solve that stopped at its cap is a lower bound.

Every number is read from the measurement files (iterates/xent_epoch<N>.json,
iterates/sharpness_epoch<N>_*.json, iterates/lambda_epoch<N>.json, iterates/matched.json,
sharpness/budget/*.json), each checked before use; the selection in matched.json is only a label.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from replication import storage
from replication.analysis import compare
from replication.analysis import results as results_lib
from replication.measure import budget, iterates, matched



def _number(record: dict, key: str, file: Path, low: float = 0.0) -> float:
    """record[key] as a finite float >= low, else ResultsError naming the file."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise results_lib.ResultsError(f"{file}: '{key}' is {value!r}, not a finite number >= {low:g}: delete the "
                                       "file and measure it again")
    return float(value)


def _point(run, epoch: int, space: str, epsilon: float) -> dict | None:
    """f and phi measured at a run's kept iterate, or None if not measured (or the solve failed)."""
    xent_file = iterates.xent_path(run.path, epoch)
    phi_file = iterates.sharpness_path(run.path, epoch, space, epsilon)
    if not (xent_file.exists() and phi_file.exists()):
        return None
    xent, record = storage.read_json(xent_file), storage.read_json(phi_file)
    for file, found in ((xent_file, xent.get("iterate_epoch")), (phi_file, record.get("iterate_epoch"))):
        if found != epoch:
            raise results_lib.ResultsError(f"{file} records epoch {found!r}, not {epoch}: delete it and run "
                                           f"`python -m replication matched {run.path}` again")
    if record.get("failed") or record.get("phi") is None:
        return None
    return {"epoch": epoch, "f": _number(xent, "train_xent", xent_file),
            "phi": _number(record, "phi", phi_file), "capped": results_lib.at_cap(record),
            "lambda_max": _lambda_max(run, epoch, xent)}


def _lambda_max(run, epoch: int, xent: dict) -> dict | None:
    """lambda_max at a kept iterate ({"value", "lower_bound"}), None if not measured; refused if it was
    measured at other weights than f and phi (the same f is the point of measuring it here)."""
    path = matched.lambda_path(run.path, epoch)
    if not path.exists():
        return None
    record = matched.read_lambda(path, epoch, run.path)
    if record.get("settings", {}).get("weights_digest") != xent.get("settings", {}).get("weights_digest"):
        raise results_lib.ResultsError(f"{path} was measured at other weights than "
                                       f"{iterates.xent_path(run.path, epoch)}: run `python -m replication "
                                       f"matched {run.path} --lambda-max --force`")
    return {"value": float(record["eigenvalue"]), "lower_bound": record["lower_bound"]}


def _pairs(loaded) -> dict[tuple, dict]:
    """(network, dataset, seed) -> {"sb": run, "lb": run} for the plain runs that ran matched."""
    pairs: dict[tuple, dict] = {}
    for run in loaded.runs:
        if run.regime in ("sb", "lb") and matched.summary_path(run.path).exists():
            pairs.setdefault((run.network, run.dataset, run.seed), {})[run.regime] = run
    return {k: v for k, v in pairs.items() if len(v) == 2}


def matched_rows(loaded, space: str = "full", epsilon: float = 1e-3) -> list[dict]:
    """One row per (network, seed, level) and per seed's final points: SB and LB epoch, f, phi, and
    whether both iterates are within MATCH_FACTOR of the level (`matched`)."""
    out = []
    for (network, dataset, seed), pair in sorted(_pairs(loaded).items()):
        summary = storage.read_json(matched.summary_path(pair["sb"].path))
        levels = [*summary.get("levels", matched.LEVELS), "final"]
        histories = {regime: storage.read_csv(run.path / "history.csv") for regime, run in pair.items()}
        for level in levels:
            row = {"network": network, "seed": seed, "level": level}
            for regime, run in pair.items():
                history = histories[regime]
                epoch = len(history) if level == "final" else matched.nearest_epoch(history, float(level))
                point = _point(run, epoch, space, epsilon) if epoch else None
                row[regime] = point
            sb, lb = row["sb"], row["lb"]
            row["ratio"] = lb["phi"] / sb["phi"] if sb and lb and sb["phi"] > 0 else math.nan
            sb_lambda, lb_lambda = (point and point["lambda_max"] for point in (sb, lb))
            row["lambda_ratio"] = (lb_lambda["value"] / sb_lambda["value"] if sb_lambda and lb_lambda
                                   and sb_lambda["value"] > 0 else math.nan)
            row["f_ratio"] = lb["f"] / sb["f"] if sb and lb and sb["f"] > 0 else math.nan
            row["matched"] = level != "final" and sb is not None and lb is not None
            out.append(row)
    return out


def _fmt(point: dict | None, with_lambda: bool = False) -> str:
    if point is None:
        return "not reached"
    text = f"epoch {point['epoch']}: f {point['f']:.3g}, phi {point['phi']:.3g}{' (cap)' if point['capped'] else ''}"
    if with_lambda:
        found = point["lambda_max"]
        text += (", lambda_max not measured" if found is None else
                 f", lambda_max {'>= ' if found['lower_bound'] else ''}{found['value']:.3g}")
    return text


def _lambda_ratio(row: dict) -> str:
    """LB/SB of lambda_max, or the bound it is where a side is a lower bound: LB's true value can only
    be larger (the ratio too: ">="), SB's too (the ratio smaller: "<="); nothing follows from two."""
    sb, lb = (row[regime] and row[regime]["lambda_max"] for regime in ("sb", "lb"))
    if not math.isfinite(row["lambda_ratio"]):
        return "-"
    if sb["lower_bound"] and lb["lower_bound"]:
        return "n/a (both lower bounds)"
    if sb["lower_bound"] or lb["lower_bound"]:
        return f"{'>=' if lb['lower_bound'] else '<='} {row['lambda_ratio']:.3g}"
    return _ratio(row["lambda_ratio"])


def matched_section(loaded, space: str = "full", epsilon: float = 1e-3) -> str:
    """The report's matched-loss section, or "" when no SB/LB pair ran `matched`."""
    rows = matched_rows(loaded, space, epsilon)
    if not rows:
        return ""
    # lambda_max only where some point has it: a report without it reads as before.
    with_lambda = any(r[regime] and r[regime]["lambda_max"] for r in rows for regime in ("sb", "lb"))
    lambda_note = (" lambda_max: the Hessian's top eigenvalue at the same iterate and f (Lanczos from one start "
                   "vector); \">=\": Lanczos stopped at its iteration cap, so the value is a lower bound, and an "
                   "LB/SB ratio with one is a bound (\">=\" or \"<=\"), with two none (n/a).") if with_lambda else ""
    lines = ["## Sharpness at matched training loss\n",
             f"Metric 2.1 ({space} space, eps {epsilon:g}) at the SB and LB iterates nearest each level of the "
             f"training cross-entropy f (within a factor {matched.MATCH_FACTOR:g}: else 'not reached'), and at "
             "the final points, which are not at equal f. f is the measured training cross-entropy on the "
             "sharpness examples at that iterate. \"(cap)\": every solve stopped at its iteration cap, so phi "
             f"is a lower bound on the maximum (see the solver's budget).{lambda_note}\n",
             "| seed | level | SB | LB | LB f / SB f | LB phi / SB phi |" +
             (" LB lambda_max / SB lambda_max |" if with_lambda else ""),
             "|---|---|---|---|---|---|" + ("---|" if with_lambda else "")]
    for r in rows:
        level = "final (not matched)" if r["level"] == "final" else f"f ~ {r['level']:g}"
        lines.append(f"| {r['seed']} | {level} | {_fmt(r['sb'], with_lambda)} | {_fmt(r['lb'], with_lambda)} | "
                     f"{_ratio(r['f_ratio'])} | {_ratio(r['ratio'])} |" +
                     (f" {_lambda_ratio(r)} |" if with_lambda else ""))
    lines += ["", answer(rows), ""]
    return "\n".join(lines)


def _ratio(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}"


def _per_level(by_level: dict) -> list[str]:
    """'f ~ <level>: <geometric mean>x (n = <seeds>, range a-b)' per level, the highest level first."""
    parts = []
    for level, ratios in sorted(by_level.items(), reverse=True):
        g = math.exp(float(np.mean(np.log(ratios))))
        spread = f", range {min(ratios):.3g}-{max(ratios):.3g}" if len(ratios) > 1 else ""
        parts.append(f"f ~ {level:g}: {g:.3g}x (n = {len(ratios)} seed{'s' if len(ratios) > 1 else ''}{spread})")
    return parts


def _direction(ratios: list[float], capped: bool = False) -> str:
    """Which way LB/SB points at the matched points; `capped`: every phi is a capped solve's, so the
    order is of two lower bounds and no ordering of the maxima follows."""
    above, below = (("LB's capped phi exceeded SB's", "LB's capped phi was below SB's") if capped
                    else ("LB was sharper than SB", "LB was flatter than SB"))
    if all(x > 1 for x in ratios):
        text = f"{above} at every matched level and seed"
    elif all(x < 1 for x in ratios):
        text = f"{below} at every matched level and seed"
    else:
        text = f"{above} at {sum(x > 1 for x in ratios)} of {len(ratios)} matched points and flatter at the others"
    return text + (" (both lower bounds: no ordering of the maxima follows)" if capped else "")


def answer(rows: list[dict]) -> str:
    """The plain-words answer, chosen by what the matched rows show: per level, the LB/SB ratio
    over seeds (geometric mean, range, n), and whether LB was sharper at every matched level; the
    same for lambda_max where it was measured."""
    by_level: dict = {}
    for r in rows:
        if r["matched"] and math.isfinite(r["ratio"]):
            by_level.setdefault(r["level"], []).append(r["ratio"])
    if not by_level:
        return ("**At equal training loss:** not measured: no level was reached by both SB and LB "
                "within the matching factor.")
    all_ratios = [x for v in by_level.values() for x in v]
    seeds = {r["seed"] for r in rows if r["matched"]}
    caution = (" One seed: an observation, not a finding." if len(seeds) < 2 else "")
    both = sum(r["matched"] and math.isfinite(r["ratio"]) and r["sb"]["capped"] and r["lb"]["capped"] for r in rows)
    if both:  # phi of a capped solve is a lower bound: a ratio of two is bounded in neither direction
        caution += (f" At {both} of {len(all_ratios)} matched points both solves stopped at their iteration cap: "
                    "each phi is a lower bound, so their ratio is bounded in neither direction (the solver's "
                    "budget section shows how far short of the maximum a capped solve can be).")
    # With both phi capped at every point, the order is of two lower bounds: said before any ratio.
    order = _direction(all_ratios, capped=bool(all_ratios) and both == len(all_ratios))
    return (f"**At equal training loss:** {order}. LB phi / SB phi: " + "; ".join(_per_level(by_level))
            + "." + caution + _lambda_answer(rows))


def _lambda_answer(rows: list[dict]) -> str:
    """lambda_max's LB/SB ratios at the matched points, from converged Lanczos runs only: unlike a
    capped phi, a converged lambda_max is a measurement, so its ratio is one too (issue 22 item 4)."""
    by_level: dict = {}
    bounded = 0
    for r in rows:
        sides = [r.get(regime) and r[regime].get("lambda_max") for regime in ("sb", "lb")]
        if not (r["matched"] and all(sides) and math.isfinite(r.get("lambda_ratio", math.nan))):
            continue
        if any(side["lower_bound"] for side in sides):
            bounded += 1
        else:
            by_level.setdefault(r["level"], []).append(r["lambda_ratio"])
    if not by_level and not bounded:
        return ""
    text = " **By lambda_max** (the Hessian's top eigenvalue at the same weights)"
    if by_level:
        ratios = [x for v in by_level.values() for x in v]
        text += (f", from Lanczos runs that converged on both sides, so these ratios are measured, not bounded: "
                 f"{_direction(ratios)}. LB lambda_max / SB lambda_max: " + "; ".join(_per_level(by_level)) + ".")
    else:
        text += ": no matched point where Lanczos converged on both sides."
    if bounded:
        text += (f" {bounded} matched point{'s' if bounded > 1 else ''} where Lanczos stopped at its cap on a "
                 "side (a lower bound) left out of these ratios.")
    return text


def stopping_rows(loaded, space: str = "full", epsilon: float = 1e-3) -> list[dict]:
    """Per (network, seed, regime, rule): the epoch the rule stops at, f and phi there. Rules: each
    patience of matched.json (plateau; `plateaued` False when the loss never stopped improving and
    the run went to its last epoch), and "fixed" (the run's last epoch)."""
    out = []
    for (network, dataset, seed), pair in sorted(_pairs(loaded).items()):
        for regime, run in pair.items():
            history = storage.read_csv(run.path / "history.csv")
            rules = [("fixed", len(history), True)]
            for point in storage.read_json(matched.summary_path(run.path)).get("points", []):
                for reason in point["why"]:
                    if found := re.fullmatch(r"plateau patience (\d+)( \(max_epochs\))?", reason):
                        rules.append((f"plateau, patience {found[1]}", point["epoch"], found[2] is None))
            for rule, epoch, plateaued in rules:
                point = _point(run, epoch, space, epsilon)
                out.append({"network": network, "seed": seed, "regime": regime, "rule": rule, "epoch": epoch,
                            "diverged": run.diverged, "plateaued": plateaued,
                            "test_accuracy": float(history[epoch - 1]["test_accuracy"]),
                            **({"f": point["f"], "phi": point["phi"], "capped": point["capped"]} if point else
                               {"f": math.nan, "phi": math.nan, "capped": False})})
    return out


def _rule_order(item) -> tuple:
    """fixed first, then plateau rules by patience (numerically: 2 before 10), SB before LB."""
    (network, rule, regime), _ = item
    patience = int(found[0]) if (found := re.search(r"\d+", rule)) else 0
    return (network, rule != "fixed", patience, regime != "sb")


def _published_table3(network: str) -> dict | None:
    """Table 3's row for `network` (full space: eps<e>_<sb|lb>_<mean|std>), None if unpublished."""
    return compare.published("table3_sharpness_full_space").get(network)


def stopping_section(loaded, space: str = "full", epsilon: float = 1e-3) -> str:
    rows = stopping_rows(loaded, space, epsilon)
    if not rows:
        return ""
    lines = ["## The stopping rule: fixed epochs or a plateau\n",
             "The paper trains \"until the loss function ceased to improve\"; its figures use 100 epochs. A "
             "run stopped by `stopping: plateau` (no improvement of the training loss by min_delta for "
             "`patience` epochs) is the fixed run's iterate at that epoch (shuffles and dropout depend on "
             "(seed, epoch) only; tests/test_matched.py checks it on a real run), so each rule is measured on "
             f"kept iterates. Metric 2.1, {space} space, eps {epsilon:g}; mean +- sd over seeds.\n",
             "| rule | regime | n | stop epoch (range) | train f | test accuracy | phi | Table 3 in our 95% interval |",
             "|---|---|---|---|---|---|---|---|"]
    published = _published_table3(rows[0]["network"])
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["network"], r["rule"], r["regime"]), []).append(r)
    for (network, rule, regime), group in sorted(groups.items(), key=_rule_order):
        f, accuracy, phi = (results_lib.over_seeds(group, lambda g: g[column])
                            for column in ("f", "test_accuracy", "phi"))
        epochs = [g["epoch"] for g in group]
        never = sum(not g["plateaued"] for g in group)
        note = f" ({never} never plateaued)" if never else ""
        lines.append(f"| {rule}{note} | {regime.upper()} | {len(group)} | {min(epochs)}-{max(epochs)} | "
                     f"{_mean_sd(f)} | {_mean_sd(accuracy)} | "
                     f"{_mean_sd(phi)}{' (cap)' if any(g['capped'] for g in group) else ''} | "
                     f"{_inside(phi, (published or {}).get(f'{_eps(epsilon)}_{regime}_mean'))} |")
    if published:
        e = _eps(epsilon)
        lines += ["", f"Table 3 ({rows[0]['network']}, full space, eps {epsilon:g}, 5 seeds): SB "
                  f"{published.get(e + '_sb_mean', math.nan):g} +- {published.get(e + '_sb_std', math.nan):g}, "
                  f"LB {published.get(e + '_lb_mean', math.nan):g} +- {published.get(e + '_lb_std', math.nan):g}."]
    lines.append("")
    return "\n".join(lines)


def _eps(epsilon: float) -> str:
    """The reference tables' column prefix: 1e-3 -> "eps1e-3", 5e-4 -> "eps5e-4"."""
    mantissa, exponent = f"{epsilon:.0e}".split("e")
    return f"eps{mantissa}e{int(exponent)}"


def _inside(summary: results_lib.Summary, published: float | None) -> str:
    """Is the published mean inside the 95% t-interval of our mean over seeds? ("n < 2" with one seed)."""
    from scipy import stats

    if published is None:
        return "no published cell"
    if summary.n < 2:
        return f"n = {summary.n}: no interval"
    mean, se = summary.mean, summary.std / math.sqrt(summary.n)
    half = float(stats.t.ppf(0.975, summary.n - 1)) * se
    where = "yes" if abs(published - mean) <= half else "no"
    return f"{where} ({mean - half:.3g} to {mean + half:.3g})"


def _mean_sd(summary: results_lib.Summary) -> str:
    if summary.n == 0:
        return "-"
    if summary.n == 1:
        return f"{summary.mean:.3g}"
    return f"{summary.mean:.3g} +- {summary.std:.2g}"


def budget_rows(loaded) -> list[dict]:
    """One row per budget file of every run: regime, seed, space, eps, iterations, start, phi, how
    the solves ended."""
    out = []
    for run in loaded.runs:
        folder = run.path / "sharpness" / "budget"
        for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = storage.read_json(file)
            phi = None if record.get("failed") or record.get("phi") is None else _number(record, "phi", file)
            out.append({"network": run.network, "regime": run.regime, "seed": run.seed,
                        "space": record.get("space"), "epsilon": record.get("epsilon"),
                        "iterations": int(_number(record, "iterations", file, 1)), "start": record.get("start"),
                        "restarts": int(_number(record, "restarts", file, 1)),
                        "f_x": _number(record, "f_x", file), "phi": phi, "capped": results_lib.at_cap(record),
                        "statuses": [s.get("message", "") for s in record.get("solves", [])],
                        "seconds": record.get("wall_seconds")})
    return sorted(out, key=lambda r: (r["network"], r["seed"], r["regime"], r["space"], r["start"], r["iterations"]))


def budget_section(loaded) -> str:
    rows = budget_rows(loaded)
    if not rows:
        return ""
    lines = ["## The solver's budget\n",
             "phi at the final weights with the paper's 10 L-BFGS-B iterations from y = 0 (what Tables 3-4 "
             "use, as the paper does), with 50 and 200, and with 10 from random starts in the box (the largest "
             "f of the starts). Any point of the box bounds the maximum from below, so a larger value with "
             "more iterations shows how far the paper's inexact solve is from the maximum it estimates; a "
             "solve that ended at its cap (\"cap\") is a lower bound.\n",
             "| seed | regime | space, eps | solve | f(x) | phi | phi / phi at 10 its | how it ended |",
             "|---|---|---|---|---|---|---|---|"]
    base = {(r["seed"], r["regime"], r["space"], r["epsilon"]): r["phi"] for r in rows
            if r["iterations"] == min(budget.ITERATIONS) and r["start"] == "zero"}
    for r in rows:
        solve = f"{r['iterations']} its from " + ("y = 0" if r["start"] == "zero" else f"{r['restarts']} random starts")
        reference = base.get((r["seed"], r["regime"], r["space"], r["epsilon"]))
        ratio = r["phi"] / reference if r["phi"] is not None and reference else math.nan
        ended = "cap (lower bound)" if r["capped"] else "stopped before its cap"
        lines.append(f"| {r['seed']} | {r['regime'].upper()} | {r['space']}, {r['epsilon']:g} | {solve} | "
                     f"{r['f_x']:.3g} | {'failed' if r['phi'] is None else format(r['phi'], '.4g')} | "
                     f"{_ratio(ratio)} | {ended} |")
    lines.append("")
    lines += budget_order(rows)
    return "\n".join(lines)


def budget_order(rows: list[dict]) -> list[str]:
    """SB and LB at each equal budget (budget_rows, solves from y = 0), one line per seed, space and
    eps: LB phi / SB phi per budget, and whether their order depends on the budget."""
    phi = {(r["seed"], r["regime"], r["space"], r["epsilon"], r["iterations"]): r["phi"] for r in rows
           if r["start"] == "zero" and r["phi"]}
    lines = []
    for seed, space, epsilon in sorted({(k[0], k[2], k[3]) for k in phi}):
        pairs = [(n, phi[(seed, "lb", space, epsilon, n)] / phi[(seed, "sb", space, epsilon, n)])
                 for n in sorted({k[4] for k in phi}) if (seed, "lb", space, epsilon, n) in phi
                 and (seed, "sb", space, epsilon, n) in phi]
        if not pairs:
            continue
        words = ", ".join(f"{n} its {_ratio(ratio)}" for n, ratio in pairs)
        sides = [ratio > 1 for _, ratio in pairs]
        flips = len(set(sides)) > 1  # any two budgets, not only the first and the last
        first = pairs[0][0]
        other = next(n for n, ratio in pairs if (ratio > 1) != sides[0]) if flips else None
        lines.append(f"LB phi / SB phi at the same budget (seed {seed}, {space}, eps {epsilon:g}): {words}"
                     + (f": which of the two is sharper depends on the budget ({first} and {other} "
                        "iterations give opposite orders), so a comparison at one budget alone does not say which "
                        "minimiser is sharper." if flips else
                        f": the same order at {'both budgets' if len(pairs) == 2 else f'all {len(pairs)} budgets'} "
                        "measured.") + "\n")
    return lines
