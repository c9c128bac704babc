"""Published vs produced: the paper's tables beside ours, cell by cell.

The published numbers are package data (`replication/reference/`, source in SOURCE.md). Ours are
read from finished run directories only (metrics.json), never from memory of a run. Diverged runs
are counted and shown, never averaged in. Standard deviations are sample standard deviations
(ddof=1) over seeds; with one seed there is none and the table says so.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from replication import storage

REFERENCE = Path(__file__).resolve().parent / "reference"
REGIMES = ("sb", "lb")


class ResultsError(RuntimeError):
    """A results directory is missing, unreadable or holds no finished runs."""


def published(table: str) -> dict[str, dict[str, float]]:
    """Rows of a published table (e.g. 'table2_accuracy'), keyed by network."""
    with open(REFERENCE / "paper_tables" / f"{table}.csv", newline="") as handle:
        return {row.pop("network"): {k: float(v) for k, v in row.items()}
                for row in csv.DictReader(handle)}


def find_runs(results_dir: str | Path) -> list[Path]:
    """Finished run directories (those with metrics.json) below `results_dir`."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultsError(f"results directory {root} does not exist: train runs first "
                           "(`make quick` or `python -m replication train CONFIG`)")
    try:
        runs = sorted(p.parent for p in root.glob("*/*/seed*/metrics.json"))
    except OSError as err:
        raise ResultsError(f"results directory {root} cannot be read: {err}") from None
    if not runs:
        raise ResultsError(f"no finished runs (metrics.json) under {root}: train runs first")
    return runs


def collect(results_dir) -> list[dict]:
    return [{**storage.read_json(p / "metrics.json"), "path": str(p)} for p in find_runs(results_dir)]


def summarize(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std or nan, n) of the finite values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), std, len(values)


def cell(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def z_score(ours: float, paper_mean: float, paper_std: float) -> float:
    """Difference from the published mean in published standard deviations (nan if std is 0)."""
    return (ours - paper_mean) / paper_std if paper_std > 0 else math.nan


def groups(runs: list[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """{(network, dataset): {regime: [metrics...]}} in a stable order."""
    out: dict = {}
    for run in runs:
        out.setdefault((run["network"], run["dataset"]), {}).setdefault(run["regime"], []).append(run)
    return dict(sorted(out.items()))


def table2(results_dir) -> list[dict]:
    """Table 2: train and test accuracy (%) per network and regime, beside the paper."""
    paper = published("table2_accuracy")
    rows = []
    for network, regime, runs, ok, row in _regime_groups(results_dir):
        row["epochs"] = max(r["epochs_run"] for r in runs)
        for split in ("train", "test"):
            mean, std, _ = summarize([r[f"{split}_accuracy"] for r in ok])
            p_mean = paper[network][f"{split}_{regime}_mean"]
            p_std = paper[network][f"{split}_{regime}_std"]
            row.update({f"{split}_mean": mean, f"{split}_std": std,
                        f"paper_{split}_mean": p_mean, f"paper_{split}_std": p_std,
                        f"{split}_diff_points": mean - p_mean,
                        f"{split}_diff_paper_std": z_score(mean, p_mean, p_std)})
        rows.append(row)
    return rows


def _regime_groups(results_dir):
    """(network, regime, runs, non-diverged runs, the row's common cells) per network and regime."""
    for (network, _), by_regime in groups(collect(results_dir)).items():
        for regime in REGIMES:
            runs = by_regime.get(regime, [])
            if not runs:
                continue
            ok = [r for r in runs if not r["diverged"]]
            yield network, regime, runs, ok, {
                "network": network, "data": runs[0]["dataset_label"], "regime": regime.upper(),
                "batch_size": runs[0]["batch_size"], "seeds": len(runs), "diverged": len(runs) - len(ok),
                "deviations": "; ".join(runs[0]["deviations"]) or "none"}


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
SHARPNESS_EPSILONS = {"eps1e-3": 1e-3, "eps5e-4": 5e-4}


def table_sharpness(results_dir, space: str) -> list[dict]:
    """Table 3 (space "full") or 4 ("random"): phi, mean ± std over seeds, beside the paper.

    Read from `<run>/sharpness/<space>_eps<eps>.json`. Diverged runs, failed solves and runs with
    no result are counted in their own columns and never averaged in."""
    from replication import sharpness

    paper = published(SHARPNESS_TABLES[space])
    rows = []
    for network, regime, _, ok, row in _regime_groups(results_dir):
        settings = set()
        for tag, epsilon in SHARPNESS_EPSILONS.items():
            paths = [sharpness.result_path(r["path"], space, epsilon) for r in ok]
            results = [storage.read_json(p) for p in paths if p.exists()]
            solved = [r for r in results if not r["failed"]]
            settings |= {f"p={r['p']}, " * (space == "random") + f"{r['iterations']} L-BFGS-B "
                         f"iterations, start {r['start']}, f on {r['num_examples']} examples"
                         for r in results}
            mean, std, _ = summarize([r["phi"] for r in solved])
            p_mean, p_std = paper[network][f"{tag}_{regime}_mean"], paper[network][f"{tag}_{regime}_std"]
            row.update({f"{tag}_mean": mean, f"{tag}_std": std, f"{tag}_solved": len(solved),
                        f"{tag}_failed": len(results) - len(solved),
                        f"{tag}_missing": len(paths) - len(results),
                        f"paper_{tag}_mean": p_mean, f"paper_{tag}_std": p_std,
                        f"{tag}_ratio_to_paper": mean / p_mean if p_mean else math.nan})
        row["settings"] = " | ".join(sorted(settings)) or "none computed"
        rows.append(row)
    return rows


def table_sharpness_markdown(rows: list[dict]) -> str:
    lines = ["| network | data | regime | batch | seeds (diverged) | phi, eps 1e-3 | paper | "
             "solved / failed / missing | phi, eps 5e-4 | paper | solved / failed / missing |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{cell(r[f'{t}_mean'], r[f'{t}_std'])} | {cell(r[f'paper_{t}_mean'], r[f'paper_{t}_std'])} | "
                 f"{r[f'{t}_solved']} / {r[f'{t}_failed']} / {r[f'{t}_missing']}" for t in SHARPNESS_EPSILONS]
        lines.append(f"| {r['network']} | {r['data']} | {r['regime']} | {r['batch_size']} | {r['seeds']} "
                     f"({r['diverged']}) | " + " | ".join(cells) + " |")
    lines += ["", "Sharpness settings: " + " | ".join(sorted({r["settings"] for r in rows})),
              "", "Deviations from the paper's protocol: " + " | ".join(sorted({r["deviations"] for r in rows}))]
    return "\n".join(lines) + "\n"


def write_table(results_dir, name: str, rows: list[dict], markdown: str) -> tuple[Path, Path]:
    out = Path(results_dir) / "tables"
    storage.atomic_write_csv(out / f"{name}.csv", rows)
    storage.atomic_write_text(out / f"{name}.md", markdown)
    return out / f"{name}.md", out / f"{name}.csv"


# Figures 3 and 7, and a verdict for each of the paper's claims ------------------------------------
# Kept below the tables on purpose: report.py renders these; the rules are documented in VERDICT_RULES.
from replication import config as config_lib  # noqa: E402  (appended section)

FIGURE_COLUMNS = ("train_xent", "test_xent", "train_acc_pct", "test_acc_pct")
RISE_STEP = 0.125             # one step of the paper's alpha grid, linspace(-1, 2, 25)
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
    5: "no warm-start / piggyback runs (Figure 5) in these results; the package has no command for it yet",
    6: "no sharpness along training iterates (Figure 6) in these results; the package has no "
       "command for it yet",
    7: "no augmentation / conservative / adversarial runs (Tables 6, 7) in these results; "
       "the package has no command for them yet",
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
  the training cross-entropy, h = {RISE_STEP} (one step of the paper's grid; a finite-difference
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
- Claims 5-7: not run (no command for these experiments yet).
"""


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


def read_curve(path) -> dict[str, np.ndarray]:
    rows = storage.read_csv(path)
    return {c: np.array([float(r[c]) for r in rows]) for c in ("alpha", *FIGURE_COLUMNS)}


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


def _check_landscape_weights(csv_path: Path, meta: dict) -> None:
    """A curve drawn from other weights than its runs hold now (a run retrained after the plot) is
    refused; runs without weights (a fresh clone: git keeps no weights) cannot be checked."""
    for regime in ("sb", "lb"):
        weights = Path(meta[f"{regime}_run"]) / "final.weights.h5"
        expected = meta.get("settings", {}).get(f"{regime}_final_sha256")
        if expected and weights.is_file() and storage.sha256_file(weights) != expected:
            raise ResultsError(f"{csv_path} was computed from other {regime.upper()} weights than "
                               f"{weights} holds now: delete {csv_path.with_suffix('')}.* and run "
                               "the landscape step (or make) again")


def landscape_rows(results_dir) -> list[dict]:
    """One row per finished landscape curve (CSV + JSON sidecar) below `results_dir`: the end
    rises of ours and of the published curve, and the mean absolute differences between them."""
    root = Path(results_dir)
    rows = []
    for csv_path in sorted(root.glob("*/landscape/seed*_*.csv")):
        if not csv_path.with_suffix(".json").exists():
            continue
        meta = storage.read_json(csv_path.with_suffix(".json"))
        _check_landscape_weights(csv_path, meta)
        ours = read_curve(csv_path)
        row = {"network": meta["network"], "dataset": meta["dataset"], "data": meta["dataset_label"],
               "seed": meta["seed"], "path": meta["path"], "figure": meta["figure"],
               "batchnorm": meta["batchnorm_mode"], "csv": str(csv_path.relative_to(root)),
               "png": str(csv_path.with_suffix(".png").relative_to(root)),
               "rise_sb": end_rise(ours, 0.0), "rise_lb": end_rise(ours, 1.0)}
        row["rise_ratio"] = rise_ratio(row["rise_lb"], row["rise_sb"])
        published = published_figures(meta["network"], meta["path"])
        paper_path = next(iter(published.values()), None)
        # For C1-C4 the paper's Figure 3 curve is the official repository's figure, point for point.
        row["published_curve"] = " = ".join(published) if paper_path else "none published"
        paper = read_curve(paper_path) if paper_path else None
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


def sharpness_results(results_dir) -> list[dict]:
    """Every `<run_dir>/sharpness/*.json` below `results_dir`, labelled with its run."""
    out = []
    for run in collect(results_dir):
        for path in sorted(Path(run["path"]).glob("sharpness/*.json")):
            result = storage.read_json(path)
            out.append({"network": run["network"], "dataset": run["dataset"],
                        "dataset_label": run["dataset_label"], "regime": run["regime"],
                        "seed": run["seed"], "space": result["space"], "epsilon": float(result["epsilon"]),
                        "phi": result.get("phi"), "failed": bool(result.get("failed")),
                        "diverged_run": bool(run["diverged"]),
                        "deviations": run["deviations"], "path": str(path)})
    return out


def _overall(levels: list[str], cap: str | None = None) -> str:
    """Per-unit levels ("pass", "partial", "fail") -> a verdict; `cap` names what was not run."""
    if not levels:
        return "not run"
    if all(level == "pass" for level in levels):
        return "partly reproduced" if cap else "reproduced"
    if all(level == "fail" for level in levels):
        return "not reproduced"
    return "partly reproduced"


# Deviations that do not bear on a claim (a run's list names every later measurement's settings).
UNRELATED = {1: ("sharpness", "parametric plots"), 2: ("parametric plots",), 3: ("sharpness",),
             4: ("parametric plots",)}


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
    """Verdict on claim 1 from table2() rows; `runs` (collect()) give the scope (VERDICT_RULES)."""
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
    return _verdict(1, _overall(levels), list(runs), evidence, "no SB/LB pair of runs")


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
                  and r["phi"] is not None] for g in REGIMES}
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
    missing = sorted({"full", "random"} - {r["space"] for r in results})
    cap = f"not computed: {', '.join(missing)} space" if missing else None
    if cap and levels:
        evidence.append(cap)
    return _verdict(2, _overall(levels, cap), results, evidence, "no sharpness results")


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
    missing = sorted({"linear", "curvilinear"} - {r["path"] for r in rows})
    cap = f"not computed: {', '.join(missing)} path" if missing else None
    if cap and levels:
        evidence.append(cap)
    return _verdict(3, _overall(levels, cap), rows, evidence, "no parametric-plot results")


def _verdict(claim: int, verdict: str, records: list[dict], evidence: list[str], empty: str) -> dict:
    ignore = UNRELATED.get(claim, ())
    scope = qualifier(records, ignore) if records and verdict != "not run" else ""
    if scope:
        evidence = [*evidence, deviations_text(records, ignore)]
    return {"claim": claim, "statement": CLAIMS[claim], "verdict": verdict, "scope": scope,
            "reason": " | ".join(evidence) if evidence else empty}


def verdicts(results_dir) -> list[dict]:
    """The seven claims' verdicts from the files below `results_dir` (rules in VERDICT_RULES)."""
    from replication import sweep

    # Claims 1-3 are about the SB/LB pair: sweep runs (and their scaled learning rates) stay out.
    pair_runs = [r for r in collect(results_dir) if r["regime"] in REGIMES]
    pair_sharpness = [r for r in sharpness_results(results_dir) if r["regime"] in REGIMES]
    out = [claim1(table2(results_dir), pair_runs), claim2(pair_sharpness),
           claim3(landscape_rows(results_dir)), sweep.claim4(sweep.points(results_dir))]
    out += [{"claim": c, "statement": CLAIMS[c], "verdict": "not run", "scope": "", "reason": NOT_RUN[c]}
            for c in (5, 6, 7)]
    return out
