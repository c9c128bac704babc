"""Published vs produced: the paper's tables beside ours, cell by cell.

The published numbers are package data (`replication/reference/`, source in SOURCE.md). Ours come
from a loaded results folder (`results.load`: the run and measurement files, read once, with runs of
different protocols refused), never from memory of a run. Diverged runs are counted and shown,
never averaged in (`results.over_seeds`, the one rule of every table, whose column names these
tables use). Standard deviations are sample standard deviations (ddof=1) over seeds; with one seed
there is none and the table says so.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from replication import storage
from replication.analysis import results as results_lib

REFERENCE = Path(__file__).resolve().parent.parent / "reference"  # replication/reference
REGIMES = ("sb", "lb")


def published(table: str) -> dict[str, dict[str, float]]:
    """Rows of a published table (e.g. 'table2_accuracy'), keyed by network."""
    with open(REFERENCE / "paper_tables" / f"{table}.csv", newline="") as handle:
        return {row.pop("network"): {k: float(v) for k, v in row.items()}
                for row in csv.DictReader(handle)}


def cell(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def phi_cell(mean: float, std: float, digits: int = 2) -> str:
    """`cell` for sharpness: at least `digits` decimals, and enough for 3 significant figures of a
    mean below 0.1 (Metric 2.1 at a flat minimiser is 1e-4 and below, which 2 decimals print as 0.00)."""
    if not math.isnan(mean) and 0 < abs(mean) < 0.1:
        digits = max(digits, min(8, 2 - math.floor(math.log10(abs(mean)))))
    return cell(mean, std, digits)


def z_score(ours: float, paper_mean: float, paper_std: float) -> float:
    """Difference from the published mean in published standard deviations (nan if std is 0)."""
    return (ours - paper_mean) / paper_std if paper_std > 0 else math.nan


def table2(loaded: results_lib.Results) -> list[dict]:
    """Table 2: train and test accuracy (%) per network and regime, beside the paper."""
    paper = published("table2_accuracy")
    rows = []
    for network, regime, runs, row in _regime_groups(loaded):
        row["epochs"] = max(r.metrics["epochs_run"] for r in runs)
        for split in ("train", "test"):
            accuracy = results_lib.over_seeds(runs, lambda run: run.metrics[f"{split}_accuracy"])
            p_mean = paper[network][f"{split}_{regime}_mean"]
            p_std = paper[network][f"{split}_{regime}_std"]
            row.update({**accuracy.columns(split, results_lib.MEAN_STD),
                        f"paper_{split}_mean": p_mean, f"paper_{split}_std": p_std,
                        f"{split}_diff_points": accuracy.mean - p_mean,
                        f"{split}_diff_paper_std": z_score(accuracy.mean, p_mean, p_std)})
        rows.append(row)
    return rows


def _regime_groups(loaded: results_lib.Results):
    """(network, regime, runs, the row's common cells) per network and regime."""
    for (network, _), by_regime in loaded.trials().items():
        for regime in REGIMES:
            runs = by_regime.get(regime, [])
            if not runs:
                continue
            first = runs[0].metrics
            yield network, regime, runs, {
                "network": network, "data": first["dataset_label"], "regime": regime.upper(),
                "batch_size": first["batch_size"], "seeds": len(runs), "diverged": sum(r.diverged for r in runs),
                "deviations": "; ".join(first["deviations"]) or "none"}


def table2_markdown(rows: list[dict]) -> str:
    lines = ["| network | data | regime | batch | seeds (diverged) | epochs | train acc % | paper train % "
             "| test acc % | paper test % | test diff (points / paper std) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['data']} | {r['regime']} | {r['batch_size']} | {r['seeds']} "
            f"({r['diverged']}) | {r['epochs']} | {cell(r['train_mean'], r['train_std'])} | "
            f"{cell(r['paper_train_mean'], r['paper_train_std'])} | {cell(r['test_mean'], r['test_std'])} | "
            f"{cell(r['paper_test_mean'], r['paper_test_std'])} | "
            f"{r['test_diff_points']:+.2f} / {r['test_diff_paper_std']:+.1f} |")
    notes = sorted({r["deviations"] for r in rows})
    lines += ["", "Deviations from the paper's protocol: " + " | ".join(notes)]
    return "\n".join(lines) + "\n"


# Tables 3 and 4: sharpness (Metric 2.1) in the full space and in random subspaces (p = 100).
SHARPNESS_TABLES = {"full": "table3_sharpness_full_space", "random": "table4_sharpness_random_subspace_p100"}
SHARPNESS_EPSILONS = {"eps1e-3": 1e-3, "eps5e-4": 5e-4}  # the published tables' column tags


def table_sharpness(loaded: results_lib.Results, space: str) -> list[dict]:
    """Table 3 (space "full") or 4 ("random"): phi, mean ± std over seeds, beside the paper.

    From each run's `sharpness/<space>_eps<eps>.json` (the loader has checked that one trial's
    results share their settings), over seeds by `results.over_seeds`: diverged runs, failed solves
    and runs with no result are counted in their own columns and never averaged in."""
    paper = published(SHARPNESS_TABLES[space])
    rows = []
    for network, regime, runs, row in _regime_groups(loaded):
        settings = set()
        for tag, epsilon in SHARPNESS_EPSILONS.items():
            key = results_lib.sharpness_column("phi", space, epsilon)
            phi = results_lib.over_seeds(runs, lambda run: results_lib.sharpness_value(run, space, epsilon))
            records = [r.sharpness[(space, epsilon)].record for r in runs
                       if not r.diverged and (space, epsilon) in r.sharpness]
            settings |= {f"p={r['p']}, " * (space == "random") + f"{r['iterations']} L-BFGS-B "
                         f"iterations, start {r['start']}, f on {r['num_examples']} examples"
                         for r in records}
            p_mean, p_std = paper[network][f"{tag}_{regime}_mean"], paper[network][f"{tag}_{regime}_std"]
            # A solve that ended at its iteration cap (status 1; the paper's inexact 10-iteration
            # solve) reports the best f it reached: a lower bound on max f over C_eps.
            capped = sum(results_lib.at_cap(r) for r in records if not r["failed"])
            row.update({**phi.columns(key, ("mean", "std", "n")), f"{key}_at_cap": capped,
                        **phi.columns(key, ("failed", "missing")),
                        f"paper_{key}_mean": p_mean, f"paper_{key}_std": p_std,
                        f"{key}_ratio_to_paper": phi.mean / p_mean if p_mean else math.nan})
        row["settings"] = " | ".join(sorted(settings)) or "none computed"
        rows.append(row)
    return rows


def table_sharpness_markdown(rows: list[dict]) -> str:
    lines = ["| network | data | regime | batch | seeds (diverged) | phi, eps 1e-3 | paper | "
             "solved (at cap) / failed / missing | phi, eps 5e-4 | paper | solved (at cap) / failed / missing |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{phi_cell(r[f'{k}_mean'], r[f'{k}_std'])} | {cell(r[f'paper_{k}_mean'], r[f'paper_{k}_std'])} | "
                 f"{r[f'{k}_n']} ({r[f'{k}_at_cap']}) / {r[f'{k}_failed']} / {r[f'{k}_missing']}"
                 for k in results_lib.sharpness_columns([r], "phi")]
        lines.append(f"| {r['network']} | {r['data']} | {r['regime']} | {r['batch_size']} | {r['seeds']} "
                     f"({r['diverged']}) | " + " | ".join(cells) + " |")
    lines += ["", "Sharpness settings: " + " | ".join(sorted({r["settings"] for r in rows})),
              "", "At cap: solves that ended at their iteration limit (the paper's inexact solve) report the "
              "largest f they reached, a lower bound on the maximum over C_eps; where measured, the section "
              "\"The solver's budget\" says how far more iterations go.",
              "", "Deviations from the paper's protocol: " + " | ".join(sorted({r["deviations"] for r in rows}))]
    return "\n".join(lines) + "\n"


def write_table(results_dir, name: str, rows: list[dict], markdown: str) -> tuple[Path, Path]:
    out = Path(results_dir) / "tables"
    storage.atomic_write_csv(out / f"{name}.csv", rows)
    storage.atomic_write_text(out / f"{name}.md", markdown)
    return out / f"{name}.md", out / f"{name}.csv"


# Figures 3 and 7: our curves beside the published ones (claim 3's verdict is in verdicts.py).
FIGURE_COLUMNS = ("train_xent", "test_xent", "train_acc_pct", "test_acc_pct")
RISE_STEP = 0.125             # one step of the paper's alpha grid, linspace(-1, 2, 25)


def published_figures(network: str, path: str) -> dict[str, Path]:
    """Published curves of Figure 3 (path "linear") or 7 ("curvilinear"): {label: CSV path}.

    The official repository's C1-C4 figures are the same curves as paper Figure 3(c)-(f)."""
    figure = "figure3" if path == "linear" else "figure7"
    out = {}
    paper = REFERENCE / "paper_figures" / f"{figure}_{network}.csv"
    if paper.exists():
        out[f"paper {'Figure 3' if path == 'linear' else 'Figure 7'}"] = paper
    official = REFERENCE / "official_figures" / f"{network}.csv"
    if path == "linear" and official.exists():
        out["official code"] = official
    return out


def end_rise(curve: dict, at: float, column: str = "train_xent", step: float = RISE_STEP) -> float:
    """(f(at - step) + f(at + step)) / 2 - f(at), f linearly interpolated between grid points."""
    alpha, f = curve["alpha"], curve[column]
    if at - step < alpha.min() - 1e-9 or at + step > alpha.max() + 1e-9:
        return math.nan
    value = lambda x: float(np.interp(x, alpha, f))  # noqa: E731
    return (value(at - step) + value(at + step)) / 2 - value(at)


def rise_ratio(rise_lb: float, rise_sb: float) -> float:
    """How many times more f rises at the LB end than at the SB end (inf if the SB end is flat)."""
    if math.isnan(rise_lb) or math.isnan(rise_sb):
        return math.nan
    if rise_sb > 0:
        return rise_lb / rise_sb
    return math.inf if rise_lb > 0 else math.nan


def curve_distance(ours: dict, paper: dict) -> dict[str, float]:
    """Mean absolute difference per column over the published alphas that our grid covers
    (ours linearly interpolated onto them), and the number of alphas compared."""
    inside = (paper["alpha"] >= ours["alpha"].min() - 1e-9) & (paper["alpha"] <= ours["alpha"].max() + 1e-9)
    out = {"alphas_compared": int(inside.sum())}
    for column in FIGURE_COLUMNS:
        ours_there = np.interp(paper["alpha"][inside], ours["alpha"], ours[column])
        difference = np.abs(ours_there - paper[column][inside])
        out[f"mad_{column}"] = float(np.mean(difference)) if inside.any() else math.nan
    return out


def landscape_rows(loaded: results_lib.Results) -> list[dict]:
    """One row per finished landscape curve (the loader has checked it is of its runs): the end
    rises of ours and of the published curve, and the mean absolute differences between them."""
    rows = []
    for curve in loaded.curves:
        meta, ours = curve.meta, curve.columns
        row = {"network": meta["network"], "dataset": meta["dataset"], "data": meta["dataset_label"],
               "seed": meta["seed"], "path": meta["path"], "figure": meta["figure"],
               "batchnorm": meta["batchnorm_mode"], "csv": str(curve.csv.relative_to(loaded.root)),
               "png": str(curve.csv.with_suffix(".png").relative_to(loaded.root)),
               "rise_sb": end_rise(ours, 0.0), "rise_lb": end_rise(ours, 1.0)}
        row["rise_ratio"] = rise_ratio(row["rise_lb"], row["rise_sb"])
        published = published_figures(meta["network"], meta["path"])
        paper_path = next(iter(published.values()), None)
        # For C1-C4 the paper's Figure 3 curve is the official repository's figure, point for point.
        row["published_curve"] = " = ".join(published) if paper_path else "none published"
        paper = results_lib.read_curve(paper_path) if paper_path else None
        row["paper_rise_sb"] = end_rise(paper, 0.0) if paper else math.nan
        row["paper_rise_lb"] = end_rise(paper, 1.0) if paper else math.nan
        row["paper_rise_ratio"] = rise_ratio(row["paper_rise_lb"], row["paper_rise_sb"])
        distance = curve_distance(ours, paper) if paper else {}
        row["alphas_compared"] = distance.get("alphas_compared", 0)
        for column in FIGURE_COLUMNS:
            row[f"mad_{column}"] = distance.get(f"mad_{column}", math.nan)
        row["deviations"] = "; ".join(meta.get("deviations", [])) or "none"
        rows.append(row)
    order = {"linear": 0, "curvilinear": 1}
    return sorted(rows, key=lambda r: (r["network"], r["dataset"], order.get(r["path"], 2), r["seed"]))


def sharpness_results(loaded: results_lib.Results) -> list[dict]:
    """Every run's sharpness results, labelled with the run (`record`: the whole JSON)."""
    return [{"network": run.network, "dataset": run.dataset, "dataset_label": run.metrics["dataset_label"],
             "regime": run.regime, "seed": run.seed, "space": space, "epsilon": epsilon,
             "phi": m.record.get("phi"), "failed": bool(m.record.get("failed")), "diverged_run": run.diverged,
             "deviations": run.metrics["deviations"], "path": str(m.path), "record": m.record}
            for run in loaded.runs for (space, epsilon), m in run.sharpness.items()]
