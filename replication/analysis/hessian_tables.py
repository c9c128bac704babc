"""Do SB and LB minimisers differ by every measure? The report section of issue 14 (beyond Keskar
et al. 2017), from the results of `python -m replication hessian` as `results.load` read them.

Per network, data and seed with hessian results for both SB and LB, one row per measure:
- SB and LB: mean ± sample std (ddof 1) over the draws of what the estimate draws (hessian.py: the
  Lanczos start, the Hutchinson probes, Metric 2.1's A, the filter-normalised directions), and n;
  full-space Metric 2.1 draws nothing (one deterministic solve, read from a reparametrisation
  record, which holds it as "before").
- a top eigenvalue some of whose Lanczos draws did not converge is a lower bound on lambda_max
  (hessian.py): its cell reads ">= mean ..." and says how many draws converged; its LB/SB ratio is
  then a bound too (">=" when only LB's value is one, "<=" when only SB's, "n/a" when both), and no
  draws-to-separate or order-survives verdict is drawn from it. `lanczos_summary` says, for every
  pair, how many draws converged.
- Metric 2.1 (random subspace, full space): how many solves of SB and of LB stopped at their
  iteration cap (each then a lower bound on the maximum) or kept no status (made before it was kept;
  the full space then reads it from the run's own solve where that is the same solve). Its LB/SB is
  the ratio of the paper's 10-iteration values; an order before or after a transformation counts
  only where it is established (x > y needs y's solve to have ended before its cap), else "not
  established".
- LB/SB: the ratio of the means.
- draws to separate (SEPARATION_RULE): the smallest n >= 2 at which SB's and LB's intervals
  mean ± 2 std / sqrt(n) no longer overlap, taking each measure's sample std over the draws made
  as its spread; "-" where nothing is drawn, "n/a" with fewer than two draws.
- survives <kind>: whether LB stays on the same side of SB when the function-preserving
  transformation (reparametrize.py, factor a) is applied to either minimiser alone; the values
  compared are each record's "before" and "after" (draw 0 of lambda_max and tr(H), the mean over
  the same directions of the filter-normalised rise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from replication.analysis import results as results_lib

COMMAND = "python -m replication hessian RUN_DIR"
SEPARATION_RULE = ("smallest n >= 2 with |mean_LB - mean_SB| > 2 (std_SB + std_LB) / sqrt(n), the stds "
                   "measured over this run's draws (intervals mean ± 2 std / sqrt(n) apart)")
# (row label, record name or prefix, key of the value in a reparametrisation record's before/after)
MEASURES = (("top eigenvalue of H", "top_eigenvalue", "top_eigenvalue"),
            ("trace of H (Hutchinson)", "trace", "trace"),
            ("Metric 2.1, random subspace", "sharpness_random_eps", None),
            ("Metric 2.1, full space", "reparametrization_", "phi_full"),
            ("filter-normalised rise r(t)", "filter_landscape", "filter_rise"))
VALUE_KEYS = {"top_eigenvalue": "eigenvalue", "trace": "trace", "phi_full": "phi", "filter_rise": "rise"}


def draws_to_separate(sb: dict, lb: dict) -> int | None | str:
    """SEPARATION_RULE for two spreads ({"mean", "std", "draws"}); None when the stds are unknown,
    "never" when the means are equal."""
    if sb["std"] is None or lb["std"] is None:
        return None
    gap, width = abs(lb["mean"] - sb["mean"]), 2 * (sb["std"] + lb["std"])
    if width == 0:
        return 2 if gap > 0 else "never"
    if gap == 0:
        return "never"
    return max(2, math.floor((width / gap) ** 2) + 1)


def _records(run: results_lib.Run, prefix: str) -> list[dict]:
    return [m.record for name, m in sorted(run.hessian.items()) if name.startswith(prefix)]


def _reparametrizations(run: results_lib.Run) -> dict[str, dict]:
    return {r["kind"]: r for r in _records(run, "reparametrization_")}


def _spread(run: results_lib.Run, prefix: str) -> tuple[dict | None, str, list | None]:
    """(spread, detail, solves) of one measure of one run; None if not measured. `solves`: the
    Metric 2.1 records whose iteration cap the row counts (None for the other measures)."""
    records = _records(run, prefix)
    if not records:
        return None, "", None
    record = records[0]
    if prefix == "reparametrization_":
        phi = _solve_before(run, record)
        return {"mean": phi["phi"], "std": None, "draws": 0}, f"eps {record['settings']['epsilon']:g}", [phi]
    if prefix == "filter_landscape":
        return record["spread"], f"t = {record['step']:g}", None
    if prefix == "sharpness_random_eps":
        return (record["spread"], f"eps {record['settings']['epsilon']:g}, p {record['settings']['p']}",
                list(record.get("per_draw") or []))
    return record["spread"], "", None


def _solve_before(run: results_lib.Run, record: Mapping) -> Mapping:
    """A transformation record's full-space Metric 2.1 before it. Records made before solves kept
    their status say nothing of the cap; then the run's own full-space solve is used where it is the
    same solve: the same weights (digest), epsilon, iterations and subset, one restart, and the same
    phi to the bit (it records whether it stopped at its cap)."""
    phi, settings = record["before"]["phi_full"], record["settings"]
    own = run.sharpness.get(("full", settings["epsilon"]))
    if "solves" in phi or own is None:
        return phi
    mine = own.record.get("settings") or {}
    same = (mine.get("weights_digest") is not None and mine.get("weights_digest") == settings.get("weights_digest")
            and mine.get("iterations") == settings.get("sharpness_iterations")
            and mine.get("subset") == settings.get("subset") and mine.get("restarts") == 1
            and own.record.get("phi") == phi["phi"])
    return own.record if same else phi


def _cap_words(sb: list | None, lb: list | None) -> str:
    """How many Metric 2.1 solves of SB and of LB stopped at their iteration cap (a lower bound on the
    maximum, as in results.at_cap), or that their records do not say (made before the status was
    kept); "" for measures without a cap."""
    if sb is None and lb is None:
        return ""
    counts = {}
    for regime, solved in (("SB", sb), ("LB", lb)):
        if solved and all(isinstance(d, Mapping) and "solves" in d for d in solved):
            counts[regime] = (sum(results_lib.at_cap(d) for d in solved), len(solved))
        elif solved is not None:
            counts[regime] = None
    if all(c is None for c in counts.values()):
        return "iteration cap not recorded: each may be a lower bound"
    parts = [f"{regime} {f'{c[0]} of {c[1]}' if c else 'not recorded'}" for regime, c in counts.items()]
    bounds = any(c is None or c[0] for c in counts.values())
    return "at the iteration cap: " + ", ".join(parts) + (" (lower bounds)" if bounds else "")


def lanczos(run: results_lib.Run) -> tuple[int, int] | None:
    """(draws converged, draws) of the run's top eigenvalue; None if not measured or if its draws do
    not record convergence (hand-made records)."""
    record = run.hessian.get("top_eigenvalue")
    draws = [d for d in (record.record.get("per_draw") or []) if isinstance(d, dict)] if record else []
    if not draws or any("converged" not in d for d in draws):
        return None
    return sum(bool(d["converged"]) for d in draws), len(draws)


def _is_bound(counts: tuple[int, int] | None) -> bool:
    return counts is not None and counts[0] < counts[1]


def _cell(s: dict | None, counts: tuple[int, int] | None = None) -> str:
    if s is None or s["mean"] is None:
        return "not measured"
    if _is_bound(counts):  # the mean of Ritz values below lambda_max
        spread = f" ± {s['std']:.2g}" if s["std"] is not None else ""
        return (f">= {s['mean']:.4g}{spread} (lower bound: Lanczos converged in {counts[0]} of {counts[1]} "
                "draws)")
    if s["draws"] == 0:
        return f"{s['mean']:.4g} (no draw)"
    if s["std"] is None:
        return f"{s['mean']:.4g} (1 draw)"
    return f"{s['mean']:.4g} ± {s['std']:.2g} (n = {s['draws']})"


def _ratio_cell(ratio: float, sb_bound: bool, lb_bound: bool) -> float | str:
    """LB/SB, or the bound it is where one value is a lower bound: LB's true value can only be
    larger (the ratio too: ">="), SB's too (the ratio smaller: "<=")."""
    if math.isnan(ratio) or not (sb_bound or lb_bound):
        return ratio
    if sb_bound and lb_bound:
        return "n/a (both lower bounds)"
    return f"{'>=' if lb_bound else '<='} {ratio:.2f}"


def _survives(sb: results_lib.Run, lb: results_lib.Run, key: str, kind: str) -> str:
    """Whether LB stays on its side of SB when `kind` is applied to either minimiser alone."""
    records = _reparametrizations(sb).get(kind), _reparametrizations(lb).get(kind)
    if key is None or None in records:
        return "not measured"
    if key == "top_eigenvalue" and not all(r[side][key].get("converged", True) for r in records
                                           for side in ("before", "after")):
        return "not judged: a lower bound (Lanczos did not converge)"
    value = VALUE_KEYS[key]
    (sb_before, sb_after), (lb_before, lb_after) = (
        (r["before"][key][value], r["after"][key][value]) for r in records)
    if None in (sb_before, sb_after, lb_before, lb_after):
        return "not measured"
    if key == "phi_full":
        return _survives_capped(*(_solve_before(run, r) for run, r in zip((sb, lb), records)),
                                *(r["after"][key] for r in records))
    sharper = lb_before > sb_before
    flips = []
    if (lb_after > sb_before) != sharper:
        flips.append(f"transformed LB {lb_after:.3g} vs SB {sb_before:.3g}")
    if (lb_before > sb_after) != sharper:
        flips.append(f"LB {lb_before:.3g} vs transformed SB {sb_after:.3g}")
    return "yes" if not flips else "no: " + "; ".join(flips)


def _exact(solve: Mapping) -> bool:
    """A Metric 2.1 solve known to have ended before its iteration cap: its phi is the maximum it
    found, not a lower bound (one that hit the cap, or whose status was not kept, may be)."""
    return "solves" in solve and not results_lib.at_cap(solve)


def _ordered(x: Mapping, y: Mapping) -> tuple[bool, bool]:
    """(phi_x > phi_y, whether that is established): each phi can only be a lower bound, so x > y is
    known only when y's solve is exact, and x < y only when x's is."""
    greater = x["phi"] > y["phi"]
    return greater, _exact(y) if greater else _exact(x)


def _survives_capped(sb_before: Mapping, lb_before: Mapping, sb_after: Mapping, lb_after: Mapping) -> str:
    """_survives for full-space Metric 2.1, whose values may be lower bounds: an order (before, or
    after a transformation) counts only where it is established (_ordered); otherwise "not
    established", with how many of the four solves stopped at their cap or kept no status."""
    sharper, known = _ordered(lb_before, sb_before)
    pairs = [(f"transformed LB {lb_after['phi']:.3g} vs SB {sb_before['phi']:.3g}", _ordered(lb_after, sb_before)),
             (f"LB {lb_before['phi']:.3g} vs transformed SB {sb_after['phi']:.3g}", _ordered(lb_before, sb_after))]
    flips = [words for words, (greater, sure) in pairs if greater != sharper and sure and known]
    if flips:
        return "no: " + "; ".join(flips)
    if known and all(sure and greater == sharper for _, (greater, sure) in pairs):
        return "yes"
    solves = (sb_before, lb_before, sb_after, lb_after)
    capped = sum("solves" in p and results_lib.at_cap(p) for p in solves)
    unrecorded = sum("solves" not in p for p in solves)
    counted = ", ".join(part for part in (f"{capped} of 4 solves at their iteration cap" if capped else "",
                                          f"{unrecorded} of 4 with no record of it" if unrecorded else "") if part)
    unsure = [words for words, (greater, _) in pairs if greater != sharper]
    return (f"not established ({counted}; a capped phi is a lower bound)"
            + (": " + "; ".join(unsure) if unsure else ""))


def rows(loaded: results_lib.Results) -> list[dict]:
    """One row per (network, data, seed, measure) whose SB and LB runs both have hessian results."""
    out = []
    for (network, dataset), regimes in loaded.trials().items():
        by_seed = {regime: {run.seed: run for run in regimes.get(regime, []) if run.hessian}
                   for regime in ("sb", "lb")}
        for seed in sorted(set(by_seed["sb"]) & set(by_seed["lb"])):
            sb, lb = by_seed["sb"][seed], by_seed["lb"][seed]
            kinds = sorted({*_reparametrizations(sb), *_reparametrizations(lb)})
            f_sb, f_lb = _f_measured(sb), _f_measured(lb)
            factors = {r["factor"] for run in (sb, lb) for r in _reparametrizations(run).values()}
            for label, prefix, key in MEASURES:
                (s_sb, detail, solves_sb), (s_lb, _, solves_lb) = _spread(sb, prefix), _spread(lb, prefix)
                detail = "; ".join(part for part in (detail, _cap_words(solves_sb, solves_lb)) if part)
                if s_sb is None and s_lb is None:
                    continue
                counts = (lanczos(sb), lanczos(lb)) if prefix == "top_eigenvalue" else (None, None)
                bound = tuple(map(_is_bound, counts))
                ratio = (s_lb["mean"] / s_sb["mean"] if s_sb and s_lb and s_sb["mean"] not in (None, 0)
                         and s_lb["mean"] is not None else math.nan)
                separate = draws_to_separate(s_sb, s_lb) if s_sb and s_lb and s_sb["draws"] and s_lb["draws"] \
                    else None
                # LB's lower bound above SB's value, or LB's value below SB's lower bound, still orders them.
                sharper = None if math.isnan(ratio) or all(bound) else ratio > 1
                if (bound[0] and sharper) or (bound[1] and sharper is False):
                    sharper = None
                row = {"network": network, "dataset": dataset, "data": sb.metrics.get("dataset_label", dataset),
                       "seed": seed, "measure": label + (f" ({detail})" if detail else ""), "sb_f": f_sb, "lb_f": f_lb,
                       "sb": _cell(s_sb, counts[0]), "lb": _cell(s_lb, counts[1]), "sb_mean": s_sb and s_sb["mean"],
                       "sb_std": s_sb and s_sb["std"], "lb_mean": s_lb and s_lb["mean"],
                       "lb_std": s_lb and s_lb["std"], "draws": s_sb and s_sb["draws"],
                       "sb_lower_bound": bound[0], "lb_lower_bound": bound[1],
                       **{f"{regime}_lanczos_converged": f"{c[0]} of {c[1]}" if c else None
                          for regime, c in zip(("sb", "lb"), counts)},
                       "ratio": _ratio_cell(ratio, *bound), "lb_sharper": sharper,
                       "draws_to_separate": "-" if s_sb and s_sb["draws"] == 0 else
                       "n/a (lower bound)" if any(bound) else ("n/a" if separate is None else separate),
                       "factor": ", ".join(f"{f:g}" for f in sorted(factors))}
                for kind in kinds:
                    row[f"survives_{kind}"] = _survives(sb, lb, key, kind)
                out.append(row)
    return out


def table(table_rows: list[dict]) -> tuple[list[dict], dict]:
    """(rows, {key: header}) for report.markdown_table."""
    columns = {"network": "network", "data": "data", "seed": "seed", "measure": "measure", "sb": "SB",
               "lb": "LB", "ratio": "LB/SB", "draws_to_separate": "draws to separate"}
    kinds = sorted({key[len("survives_"):] for row in table_rows for key in row if key.startswith("survives_")})
    factor = table_rows[0]["factor"] if table_rows else ""
    columns.update({f"survives_{kind}": f"order survives {kind} (a = {factor})" for kind in kinds})
    return table_rows, columns


def figures(loaded: results_lib.Results) -> list[tuple[str, Path]]:
    """For each SB/LB pair with filter-normalised slices: the pair's figure (SB and LB 1-D slices on
    one axis, a 2-D contour each), drawn from the slices read by the loader; [(title, png path)]."""
    from replication.measure import filter_landscape

    out = []
    for (network, dataset), regimes in loaded.trials().items():
        pairs = {regime: {run.seed: run for run in regimes.get(regime, [])
                          if {"filter_landscape_1d", "filter_landscape_2d"} <= set(run.slices)}
                 for regime in ("sb", "lb")}
        for seed in sorted(set(pairs["sb"]) & set(pairs["lb"])):
            runs = {regime.upper(): (pairs[regime][seed].slices["filter_landscape_1d"],
                                     pairs[regime][seed].slices["filter_landscape_2d"]) for regime in ("sb", "lb")}
            stem = loaded.root / f"{network}_{dataset}" / "hessian" / f"seed{seed}_filter_landscape"
            png, _ = filter_landscape.draw(stem, runs)
            out.append((f"{network} seed {seed}", png))
    return out


def separation_summary(table_rows: list[dict]) -> str:
    """How many draws a stable SB/LB comparison needs, measure by measure (one sentence), then
    whether every top eigenvalue converged (lanczos_summary)."""
    drawn = [r for r in table_rows if isinstance(r["draws_to_separate"], int)]
    lanczos_text = lanczos_summary(table_rows)
    if not drawn:
        return ("No measure was drawn more than once, so the draws a stable comparison needs are unknown."
                + (" " + lanczos_text if lanczos_text else ""))
    worst = max(drawn, key=lambda r: r["draws_to_separate"])
    parts = ", ".join(f"{r['measure']} {r['draws_to_separate']}" for r in drawn)
    return (f"Draws needed for SB's and LB's intervals to separate ({SEPARATION_RULE}): {parts}; so "
            f"{worst['draws_to_separate']} draw(s) per estimate suffice for every drawn measure here "
            f"(the most: {worst['measure']}, {worst['network']} seed {worst['seed']})."
            + (" " + lanczos_text if lanczos_text else ""))


def _f_measured(run: results_lib.Run) -> float | None:
    """The training cross-entropy f at the weights the Hessian measures were made at, on the examples
    they used: the filter-normalised slices' f(x), else the random-subspace solve's first f_x."""
    for name, measurement in sorted(run.hessian.items()):
        record = measurement.record
        value = record.get("f_x") if name == "filter_landscape" else (
            (record.get("per_draw") or [{}])[0].get("f_x") if name.startswith("sharpness_random_eps") else None)
        if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            return float(value)
    return None


def training_loss_summary(table_rows: list[dict]) -> str:
    """Where each pair was compared: its SB and LB training cross-entropy (the rows' sb_f, lb_f) and
    whether they are matched (within matched.MATCH_FACTOR of each other), since a sharpness ordering
    means little at unequal f."""
    from replication.measure import matched

    parts, unmatched = [], 0
    pairs = {(r["network"], r["seed"]): (r["sb_f"], r["lb_f"]) for r in table_rows}
    for (network, seed), (f_sb, f_lb) in pairs.items():
        if f_sb is None or f_lb is None:
            parts.append(f"{network} seed {seed}: f not recorded")
            continue
        ratio = f_lb / f_sb if f_sb > 0 else math.inf
        matched_here = 1 / matched.MATCH_FACTOR <= ratio <= matched.MATCH_FACTOR
        unmatched += not matched_here
        parts.append(f"{network} seed {seed} at f = {f_sb:.3g} (SB) and {f_lb:.3g} (LB), LB/SB {ratio:.3g}, "
                     + ("matched" if matched_here else "not matched"))
    text = ("Each minimiser is its run's final weights, at the training cross-entropy f it reached on the "
            f"measured examples: {'; '.join(parts)} (matched: within a factor {matched.MATCH_FACTOR:g}).")
    if unmatched:
        text += (" Where f is not matched, an ordering here compares points at different stages of training, not "
                 "minimisers alike; the section \"Sharpness at matched training loss\", where measured, compares "
                 "Metric 2.1 and lambda_max at equal f.")
    return text


def lanczos_summary(table_rows: list[dict]) -> str:
    """One sentence on the convergence of every top eigenvalue in the table ("" if none records it)."""
    rows = [r for r in table_rows if r["measure"] == MEASURES[0][0]
            and (r["sb_lanczos_converged"] is not None or r["lb_lanczos_converged"] is not None)]
    if not rows:
        return ""
    bounds = [f"{r['network']} seed {r['seed']} {regime.upper()} ({r[f'{regime}_lanczos_converged']} draws "
              "converged)" for r in rows for regime in ("sb", "lb") if r[f"{regime}_lower_bound"]]
    if not bounds:
        return ("Lanczos converged (residual of the top Ritz pair <= tol |theta|) in every draw of every top "
                "eigenvalue here, so each is lambda_max to within its residual.")
    return (f"Lanczos did not converge in every draw of {'; '.join(bounds)}: those top eigenvalues are lower "
            "bounds on lambda_max (marked >=), not estimates of it; rerun `python -m replication hessian` with "
            "more --iterations.")


def costs(loaded: results_lib.Results) -> list[dict]:
    """What each hessian result cost: H v products or f evaluations, and wall seconds."""
    out = []
    for run in loaded.runs:
        for name, measurement in sorted(run.hessian.items()):
            r = measurement.record
            draws = [d for d in r.get("per_draw") or [] if isinstance(d, dict)]
            work = ""
            if draws and "products" in draws[0]:
                work = f"{sum(d['products'] for d in draws)} H v products"
            elif draws and "function_evaluations" in draws[0]:
                work = f"{sum(d['function_evaluations'] for d in draws)} passes of f and its gradient"
            elif "evaluations" in r:
                work = f"{r['evaluations']} evaluations of f"
            elif "after" in r:  # a reparametrisation: each measure again at the new point
                after = r["after"]
                products = sum(after.get(key, {}).get("products", 0) for key in ("top_eigenvalue", "trace"))
                passes = after.get("phi_full", {}).get("function_evaluations", 0)
                work = f"{products} H v products, {passes} passes of f and its gradient"
            env = r.get("environment", {})
            out.append({"file": str(measurement.path.relative_to(loaded.root)), "work": work,
                        "examples": r.get("num_examples"), "wall_seconds": r.get("wall_seconds"),
                        "device": env.get("device", "unknown"),
                        "git_commit": str(env.get("git_commit", "unknown"))[:12]
                        + (" (dirty)" if env.get("git_dirty") else "")})
    return out
