"""Sharpness along the training iterates, read from files: Figure 6 and claim 6 of Keskar et al.
(2017).

Figure 6 (PAPER.md "Figures") plots, for one SB and one LB run, the sharpness (Metric 2.1, eps
1e-3 and 5e-4) of the iterate x_k against the training cross-entropy f(x_k); claim 6 says that as
the loss falls, sharpness grows for LB and falls for SB. measure/iterates.py writes the
measurements into each run directory; this module reads them: `rows` (one per measured iterate),
`trends` and `judge` (claim 6's rule, RULE), `plot` and `section` (the report's Figure 6, ours above
the published curves). Published curves exist for C1 and F2 only (replication/reference/paper_figures/figure6_*).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from replication import regimes, storage
from replication.measure import iterates
from replication.analysis import compare, paired
from replication.analysis import results as results_lib

TREND = 0.5          # |Spearman rho| that counts as a trend along the iterates (claim 6's rule)
MIN_ITERATES = 3     # iterates with finite values a run needs for its rho
PUBLISHED = ("C1", "F2")
RULE = f"""\
- Claim 6, per network and data: for each run, Spearman rho of the sharpness of its kept iterates
  against the training cross-entropy f at those iterates (f on the sharpness examples; full space
  at eps 1e-3, else the first computed space and epsilon; failed solves left out; a run needs at
  least {MIN_ITERATES} iterates with finite values). LB: rho predicted negative (sharpness grows as the loss
  falls), margin a mean rho below -{TREND}; SB: rho predicted positive (sharpness falls with the loss),
  margin a mean rho above {TREND}. Not run when no run kept iterates.
"""


# Rows ---------------------------------------------------------------------------------
def phi_key(space: str, epsilon: float) -> str:
    return results_lib.sharpness_column("phi", space, epsilon)


def phi_label(key: str) -> str:
    """'phi_full_eps0.001' -> 'full space, eps 0.001'."""
    space, epsilon = results_lib.sharpness_setting(key, "phi")
    return f"{space} space, eps {epsilon}"


def phi_keys(rows: list[dict]) -> list[str]:
    """The sharpness columns of `rows`, full space at eps 1e-3 first (`results.sharpness_columns`)."""
    return results_lib.sharpness_columns(rows, "phi")


def rows(loaded: results_lib.Results | str | Path) -> list[dict]:
    """Figure 6's points: one row per measured iterate of every SB and LB run of a results folder
    (`results.load`'s, or a path to load), in run and epoch order. Columns: network, dataset, data,
    regime, seed, epoch, train_xent, train_accuracy (f and accuracy on the sharpness examples),
    history_train_loss (the whole training set, history.csv), phi_<space>_eps<eps> (nan where not
    measured or failed; phi_..._failed 1 for a failed solve), deviations, run. Refuses
    (ResultsError) a measurement that is not of its run or iterate, and two of one trial made with
    different settings."""
    if not isinstance(loaded, results_lib.Results):
        loaded = results_lib.load(loaded)
    out, first = [], {}
    for run in loaded.runs:
        if run.regime not in regimes.REGIMES:
            continue
        history = {}
        if iterates.kept(run.metrics) and (run.path / "history.csv").exists():  # only runs that kept iterates
            history = {int(r["epoch"]): float(r["train_loss"]) for r in storage.read_csv(run.path / "history.csv")}
        for epoch in iterates.kept(run.metrics):
            if not iterates.xent_path(run.path, epoch).exists():
                continue  # not measured yet
            xent = storage.read_json(iterates.xent_path(run.path, epoch))
            records = [(iterates.xent_path(run.path, epoch), xent, "xent")]
            row = {"network": run.network, "dataset": run.dataset, "data": run.metrics["dataset_label"],
                   "regime": run.regime, "seed": run.seed, "epoch": epoch,
                   "train_xent": float(xent["train_xent"]), "train_accuracy": float(xent["train_accuracy"]),
                   "history_train_loss": history.get(epoch, math.nan)}
            for file in sorted((run.path / "iterates").glob(f"sharpness_epoch{epoch}_*.json")):
                record = storage.read_json(file)
                key = phi_key(record["space"], float(record["epsilon"]))
                records.append((file, record, key))
                ok = not record["failed"] and record["phi"] is not None
                row[key] = float(record["phi"]) if ok else math.nan
                row[key + "_failed"] = 0 if ok else 1
                # A solve that stopped at its iteration cap: phi is a lower bound on the maximum.
                row[key + "_capped"] = int(ok and results_lib.at_cap(record))
            for file, record, kind in records:
                _check_owner(run, epoch, file, record)
                _check_settings(first, (run.network, run.dataset, kind), file, record)
            row["deviations"] = "; ".join(run.metrics.get("deviations") or []) or "none"
            row["run"] = str(run.path.relative_to(loaded.root))
            out.append(row)
    keys = phi_keys(out)  # every row gets every column (CSV), nan where a trial lacks one
    columns = [k for key in keys for k in (key, key + "_failed", key + "_capped")]
    return [{**{k: v for k, v in r.items() if k not in ("deviations", "run")},
             **{c: r.get(c, 0 if c.endswith(("_failed", "_capped")) else math.nan) for c in columns},
             "deviations": r["deviations"], "run": r["run"]} for r in out]


def _check_owner(run: results_lib.Run, epoch: int, file: Path, record: dict) -> None:
    recorded = {"network": record.get("network"), "regime": record.get("regime"),
                "seed": record.get("run_seed"), "epoch": record.get("iterate_epoch")}
    actual = {"network": run.network, "regime": run.regime, "seed": run.seed, "epoch": epoch}
    key = next((k for k in recorded if recorded[k] != actual[k]), None)
    if key is not None:
        raise results_lib.ResultsError(
            f"{file} is not a measurement of the iterate it lies beside ('{key}' is {recorded[key]!r} there, "
            f"{actual[key]!r} for {run.path} epoch {epoch}): delete it and rerun "
            f"`python -m replication iterates {run.path}`")


def _check_settings(first: dict, kind: tuple, file: Path, record: dict) -> None:
    """One trial's measurements of one kind share their settings (less the weights measured)."""
    settings = {k: v for k, v in record.get("settings", {}).items() if k != "weights_digest"}
    reference_file, reference = first.setdefault(kind, (file, settings))
    key = next((k for k in sorted({*reference, *settings}) if reference.get(k) != settings.get(k)), None)
    if key is not None:
        raise results_lib.ResultsError(
            f"{reference_file} and {file} were measured with different settings ('{key}' is "
            f"{reference.get(key)!r} in the first, {settings.get(key)!r} in the second), so they cannot be "
            f"compared: rerun `python -m replication iterates RUN --force` on one, or {results_lib.FIX}")


@functools.lru_cache(maxsize=None)  # package data, read once; callers do not modify it
def published_figure6(network: str) -> dict[tuple[str, float], dict[str, np.ndarray]]:
    """{(regime, epsilon): {"train_xent": xs, "sharpness": ys}} of the paper's Figure 6 (full
    space) for `network`; {} for the networks it does not show (all but C1 and F2)."""
    out = {}
    for regime in regimes.REGIMES:
        for label, epsilon in (("1e-3", 1e-3), ("5e-4", 5e-4)):
            path = compare.REFERENCE / "paper_figures" / f"figure6_{network}_{regime}_eps{label}.csv"
            if path.exists():
                curve = results_lib.read_curve(path)
                out[regime, epsilon] = {"train_xent": curve["train_xent"], "sharpness": curve["sharpness"]}
    return out


def spearman(xs, ys) -> float:
    """Spearman rho of ys against xs over the finite pairs (Pearson's r of their average ranks, as
    scipy.stats.spearmanr; written out because the verdicts' simulations call it a million times);
    nan with fewer than MIN_ITERATES of them or a constant side."""
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < MIN_ITERATES or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return math.nan
    rx, ry = (_ranks([pair[i] for pair in pairs]) for i in (0, 1))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, tied values sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


@functools.lru_cache(maxsize=None)
def paper_rho(network: str, regime: str, epsilon: float) -> float:
    """Spearman rho of the published Figure 6 curve (full space), nan where none is published."""
    paper = published_figure6(network).get((regime, epsilon))
    return spearman(paper["train_xent"], paper["sharpness"]) if paper else math.nan


def trends(rows: list[dict]) -> list[dict]:
    """rho (sharpness against f along the iterates) per run and sharpness column: network, dataset,
    data, regime, seed, key, rho, iterates (finite pairs), failed (failed solves), paper_rho (the
    published curve of this network, regime and epsilon, full space only; nan where none)."""
    out = []
    runs: dict = {}
    for r in rows:
        runs.setdefault((r["network"], r["dataset"], r["data"], r["regime"], r["seed"]), []).append(r)
    for (network, dataset, label, regime, seed), items in runs.items():
        for key in phi_keys(items):
            xs = [r["train_xent"] for r in items]
            ys = [r.get(key, math.nan) for r in items]
            space, epsilon = key.removeprefix("phi_").split("_eps")
            out.append({"network": network, "dataset": dataset, "data": label, "regime": regime, "seed": seed,
                        "key": key, "rho": spearman(xs, ys),
                        "iterates": sum(math.isfinite(x) and math.isfinite(y) for x, y in zip(xs, ys)),
                        "failed": sum(int(r.get(key + "_failed", 0)) for r in items),
                        "capped": sum(int(r.get(key + "_capped", 0)) for r in items),
                        "paper_rho": paper_rho(network, regime, float(epsilon)) if space == "full" else math.nan})
    return out


def judge(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Claim 6 per network and data, by RULE, one rho per run (seed): (units, paired.unit's dicts;
    notes on the trials not judged, with why)."""
    units, notes = [], []
    by_trial: dict = {}
    for t in trends(rows):
        by_trial.setdefault((t["network"], t["data"]), []).append(t)
    for (network, label), items in by_trial.items():
        name = f"{network} ({label})"
        finite = [t for t in items if math.isfinite(t["rho"])]
        keys = phi_keys([{t["key"]: 0.0} for t in finite])
        if not keys:
            counts = ", ".join(f"{t['regime'].upper()} seed {t['seed']} {phi_label(t['key'])}: {t['iterates']}"
                               for t in items)
            notes.append(f"{name}: fewer than {MIN_ITERATES} iterates with finite sharpness and loss in every run "
                         f"({counts}), or a constant column")
            continue
        key = keys[0]
        tests, parts = [], []
        for regime, direction in (("lb", -1), ("sb", 1)):
            mine = [t for t in items if t["regime"] == regime and t["key"] == key]
            test = paired.paired([t["rho"] for t in mine], TREND,
                                 f"{regime.upper()}: Spearman rho of sharpness against f", "rho", direction)
            tests.append(test)
            paper = next((t["paper_rho"] for t in mine), math.nan)
            failed = sum(t["failed"] for t in mine)
            capped, solved = sum(t["capped"] for t in mine), sum(t["iterates"] for t in mine)
            parts.append(paired.describe(test) + (f" ({failed} failed solve(s) left out)" if failed else "")
                         + (f" ({capped} of {solved} iterate solves at their iteration cap: those phi are lower "
                            "bounds, which rho ranks as values)" if capped else "")
                         + (f" (paper {paper:+.2f})" if math.isfinite(paper) else ""))
        last = {regime: [_last_f(rows, network, label, regime, seed) for seed in
                         sorted({t["seed"] for t in items if t["regime"] == regime})] for regime in regimes.REGIMES}
        loss = paired.losses(last["sb"], last["lb"], source="f on the sharpness examples at the last measured iterate")
        others = "; ".join(f"{t['regime'].upper()} seed {t['seed']} {phi_label(t['key'])} rho {t['rho']:+.2f}"
                           for t in finite if t["key"] != key)
        units.append(paired.unit(name, network, tests, paired.level(tests),
                                 f"{name}, sharpness ({phi_label(key)}) against training cross-entropy along the "
                                 f"iterates: {'; '.join(parts)}; {loss}" + (f" [also: {others}]" if others else "")))
    return units, notes


def _last_f(rows: list[dict], network: str, label: str, regime: str, seed: int) -> float:
    """f at the last measured iterate of one run."""
    mine = [r for r in rows if (r["network"], r["data"], r["regime"], r["seed"]) == (network, label, regime, seed)]
    return max(mine, key=lambda r: r["epoch"])["train_xent"] if mine else math.nan


# Figure and report section --------------------------------------------------------------------------
def plot(rows: list[dict], stem: Path) -> tuple[Path, Path]:
    """Figure 6 for one trial: sharpness against the training cross-entropy along the iterates, SB
    (left) and LB (right); ours on top (one line per space and epsilon, epochs written at the
    points), the published curves below (this network's; for a network the paper did not show,
    C1's and F2's, labelled as such). Writes `stem`.png and `stem`.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    network, label = rows[0]["network"], rows[0]["data"]
    published = published_figure6(network)
    shown = {network: published} if published else {n: published_figure6(n) for n in PUBLISHED}
    figure, axes = pyplot.subplots(2, 2, figsize=(10, 7.5))
    keys = phi_keys(rows)  # colour: the space; line style: the epsilon
    colors = {key: "tab:red" if key.startswith("phi_full") else "tab:purple" for key in keys}
    for column, regime in enumerate(regimes.REGIMES):
        ours, paper_axis = axes[0][column], axes[1][column]
        mine = [r for r in rows if r["regime"] == regime]
        for seed in sorted({r["seed"] for r in mine}):
            points = sorted((r for r in mine if r["seed"] == seed), key=lambda r: r["epoch"])
            for key, color in colors.items():
                xs, ys = [r["train_xent"] for r in points], [r.get(key, math.nan) for r in points]
                ours.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1,
                          linestyle="-" if key.endswith("eps0.001") else "--",
                          label=f"{phi_label(key)}, seed {seed}")
                if key == keys[0]:
                    for r, x, y in zip(points, xs, ys):
                        if math.isfinite(y):
                            ours.annotate(str(r["epoch"]), (x, y), fontsize=6, xytext=(2, 2),
                                          textcoords="offset points")
        ours.set_title(f"ours: {network} on {label}, {regime.upper()} (numbers: epochs)", fontsize=8)
        for name, curves in shown.items():
            for (curve_regime, epsilon), curve in curves.items():
                if curve_regime == regime:
                    paper_axis.plot(curve["train_xent"], curve["sharpness"], linewidth=0.8,
                                    linestyle="-" if epsilon == 1e-3 else "--",
                                    label=f"{name}, eps {epsilon:g}")
        what = "this network" if published else "not this network: the paper shows C1 and F2 only"
        paper_axis.set_title(f"published Figure 6, {regime.upper()} ({what})", fontsize=8)
        for axis in (ours, paper_axis):
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.invert_xaxis()  # training proceeds to the right
            axis.set_xlabel("training cross-entropy (training proceeds to the right)", fontsize=8)
            axis.set_ylabel("sharpness (Metric 2.1)", fontsize=8)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=6, frameon=False)
    figure.suptitle(f"{network} on {label}: Figure 6 (sharpness along the iterates)", fontsize=9)
    figure.tight_layout()
    return storage.save_figure(figure, stem)


def table(rows: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """(rows, {key: header}) of the report's Figure 6 table: every measured iterate."""
    columns = {"network": "network", "data": "data", "regime": "regime", "seed": "seed", "epoch": "epoch",
               "train_xent": "train xent (f)", "train_accuracy": "train acc %",
               "history_train_loss": "train loss (whole set)"}
    columns.update({key: phi_label(key) for key in phi_keys(rows)})
    return [{k: (r["regime"].upper() if k == "regime" else r.get(k)) for k in columns} for r in rows], columns


def trend_table(rows: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """(rows, {key: header}) of the report's rho table: one row per run and sharpness column."""
    columns = {"network": "network", "data": "data", "regime": "regime", "seed": "seed",
               "sharpness": "sharpness", "rho": "Spearman rho vs f", "iterates": "iterates",
               "failed": "failed solves", "capped": "solves at the iteration cap", "paper_rho": "paper rho"}
    return [{**t, "regime": t["regime"].upper(), "sharpness": phi_label(t["key"])} for t in trends(rows)], columns


def figures_per_network(root, rows: list[dict], folder: str, name: str, draw) -> list[str]:
    """Draw `draw(rows of one network and data, stem)` into <root>/<network>_<dataset>/<folder>/<name>
    for each network and data in `rows`; the report's Markdown for each (heading, PNG, PDF link)."""
    root = Path(root)
    images = []
    for network, dataset, label in dict.fromkeys((r["network"], r["dataset"], r["data"]) for r in rows):
        stem = root / f"{network}_{dataset}" / folder / name
        draw([r for r in rows if (r["network"], r["dataset"]) == (network, dataset)], stem)
        png = stem.with_suffix(".png").relative_to(root)
        images.append(f"### {network} on {label}\n\n![{network} {name.replace('figure', 'Figure ')}]({png})\n\n"
                      f"[PDF]({png.with_suffix('.pdf')})\n")
    return images


def section(root, rows: list[dict], table_markdown: str, trend_markdown: str) -> str:
    """The report's Figure 6 section (figures drawn from `rows` into
    <root>/<network>_<dataset>/iterates/figure6.{png,pdf}); the tables come rendered."""
    images = figures_per_network(root, rows, "iterates", "figure6", plot)
    return ("## Figure 6: sharpness along the iterates\n\n"
            "Each kept iterate x_k (end of epoch k) of the SB and LB runs, measured with the runs' sharpness "
            "settings: train xent (f) is the mean training cross-entropy on the sharpness examples (the f of "
            "Metric 2.1), train loss (whole set) the same on the run's whole training set (history.csv). The "
            "paper's Figure 6 is C1 and F2 with a point at about every epoch; \"paper rho\" is Spearman's rho of "
            "its published curve (full space) where this network has one. Rule: see Verdicts (claim 6).\n\n"
            + trend_markdown + "\n" + table_markdown
            + "\nFiles: [figure6.csv](tables/figure6.csv), [figure6.tex](tables/figure6.tex).\n\n"
            + "\n".join(images))
