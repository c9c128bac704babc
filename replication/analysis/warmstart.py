"""Warm-starting LB from SB iterates: Figure 5 and claim 5 of Keskar et al. (2017).

Figure 5 (PAPER.md "Figures") trains SB for 100 epochs keeping every epoch's iterate, then from
each iterate an LB run ("piggyback LB", fresh Adam, the LB batch) for 100 epochs, and plots
against the SB epochs k: the SB test accuracy at iterate k, the piggyback LB's final test accuracy
and its sharpness (Metric 2.1, full space, eps 1e-3 and 5e-4). Claim 5: warm-starting LB from SB
iterates helps only after enough SB epochs, and the piggyback LB minimiser is then flatter.

A config's `warm_start` section (config.WarmStartConfig) adds the piggyback runs lb-from-sb<k>,
one per kept iterate of the SB run of each seed; they are ordinary runs (train.piggyback_start
gives them their start), measured by `python -m replication sharpness RUN`. The point at k = 0 is
the LB run from x0: the plain LB run when the piggyback runs train as many epochs as it did, else
lb-from-sb0 (Config.warm_start_points).

Symbols -> code: k is `sb_epochs`; the SB test accuracy at x_k is the SB run's history.csv row k
(x0, k = 0, is not evaluated by training: left out); the piggyback LB's test accuracy and phi are
its metrics.json and sharpness/*.json (`piggyback_test_accuracy`, `phi_<space>_eps<eps>`).
Everything here reads files only (results.load): `rows`, `points` (seeds averaged), `judge`
(claim 5's rule, RULE), `plot` and `section` (ours above the published curves, which exist for C1
and F2 only: replication/reference/paper_figures/figure5_*).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from replication import storage
from replication.analysis import compare, iterate_tables, paired
from replication.analysis import results as results_lib

MIN_POINTS = 3         # SB-epoch points (0 included) a trial needs
PUBLISHED = ("C1", "F2")
CURVES = ("sb_test_acc_pct", "piggyback_lb_test_acc_pct", "lb_sharpness_eps1e-3", "lb_sharpness_eps5e-4")
# Our sharpness column -> the published curve of the same space and epsilon (Figure 5: full space).
PUBLISHED_SHARPNESS = {"phi_full_eps0.001": "lb_sharpness_eps1e-3", "phi_full_eps0.0005": "lb_sharpness_eps5e-4"}
RULE = f"""\
- Claim 5, per network and data, on the piggyback LB runs (one per SB epoch count k, k = 0 being
  the LB run from x0; at least {MIN_POINTS} values of k, 0 among them; diverged runs and failed solves left
  out): helps: the piggyback test accuracy at the largest k minus at k = 0, margin the accuracy
  margin; flatter: log(phi at the largest k / phi at k = 0) (full space at eps 1e-3, else the
  first computed), predicted negative, margin a geometric-mean ratio below 1/{paired.SHARP_FACTOR:g}.
  The mean Spearman rho over seeds against k, and how many SB epochs are "enough" (the least k whose mean
  gain is half the largest k's), are reported, not judged.
"""


# Rows -------------------------------------------------------------------------------------------
def rows(loaded) -> list[dict]:
    """One row per piggyback run (trial, seed, SB epochs k), k = 0 included: network, dataset,
    data, seed, sb_epochs, sb_test_accuracy (SB's history at epoch k; nan at 0), the piggyback
    run's test and train accuracy, lb_epochs, diverged, phi_<space>_eps<eps> (nan where not
    computed or failed) with _failed flags, deviations, run. [] without piggyback runs.
    ResultsError if a piggyback run did not start from the SB iterate that lies where it says."""
    if not isinstance(loaded, results_lib.Results):
        loaded = results_lib.load(loaded)
    out = []
    for (network, dataset), by_regime in loaded.trials().items():
        piggyback = {}
        for runs in by_regime.values():
            for run in runs:
                if run.spec and run.spec.kind == "warm_start":
                    piggyback.setdefault(run.seed, {})[run.spec.sb_epoch] = run
        for seed, by_k in piggyback.items():
            sb = next((r for r in by_regime.get("sb", []) if r.seed == seed), None)
            epochs = {int(r.metrics["resolved_config"]["epochs"]) for r in by_k.values()}
            lb = next((r for r in by_regime.get("lb", []) if r.seed == seed), None)
            # The plain LB run is the point at 0 SB epochs when it trained as long as the piggyback runs.
            if 0 not in by_k and lb is not None and {int(lb.metrics["resolved_config"]["epochs"])} == epochs:
                by_k[0] = lb
            history = {}
            if sb is not None and (sb.path / "history.csv").exists():
                history = {int(h["epoch"]): float(h["test_accuracy"])
                           for h in storage.read_csv(sb.path / "history.csv")}
            for k, run in sorted(by_k.items()):
                if k and sb is not None:
                    _check_start(run, sb, k)
                out.append(_row(run, k, history.get(k, math.nan), sb, loaded.root))
    # Every row gets every column (one CSV header) that a piggyback run has: the plain LB run
    # standing for k = 0 may have more (the random subspace), which Figure 5 does not show.
    own = [r for r in out if "/lb/" not in f"/{r['run']}"]
    keys = iterate_tables.phi_keys(own) or iterate_tables.phi_keys(out)
    return [{**{k: v for k, v in r.items() if k not in ("deviations", "run") and not k.startswith(("phi_", "f_"))},
             **{c: r.get(c, math.nan if not c.endswith("_failed") else 0)
                for key in keys for c in (key, key + "_failed", results_lib.f_column(key))},
             "deviations": r["deviations"], "run": r["run"]} for r in out]


def _row(run: results_lib.Run, k: int, sb_test: float, sb, root: Path) -> dict:
    metrics = run.metrics
    row = {"network": run.network, "dataset": run.dataset, "data": metrics["dataset_label"], "seed": run.seed,
           "sb_epochs": k, "sb_test_accuracy": sb_test,
           "piggyback_test_accuracy": math.nan if run.diverged else float(metrics["test_accuracy"]),
           "piggyback_train_accuracy": math.nan if run.diverged else float(metrics["train_accuracy"]),
           "piggyback_train_loss": math.nan if run.diverged else float(metrics.get("train_loss", math.nan)),
           "lb_epochs": int(metrics["epochs_run"]), "diverged": int(run.diverged)}
    for (space, epsilon), measurement in run.sharpness.items():
        key = iterate_tables.phi_key(space, epsilon)
        record = measurement.record
        ok = not record["failed"] and record["phi"] is not None and not run.diverged
        row[key] = float(record["phi"]) if ok else math.nan
        row[key + "_failed"] = 0 if ok else 1
        row[results_lib.f_column(key)] = float(record["f_x"]) if ok and record.get("f_x") is not None else math.nan
    # The SB run's deviations and the piggyback runs' in one line (each run's metrics.json names
    # its own start): one list for the verdict's scope, not one line per run.
    own = [d for d in metrics.get("deviations") or [] if not d.startswith("piggyback LB run")]
    deviations = {*own, *((sb.metrics.get("deviations") or []) if sb else []),
                  f"piggyback LB runs of {row['lb_epochs']} epochs from the SB run's kept iterates (paper: 100 "
                  "LB epochs from each of 100 SB epochs)"}
    row["deviations"] = "; ".join(sorted(deviations))
    row["run"] = str(run.path.relative_to(root))
    return row


def _check_start(run: results_lib.Run, sb: results_lib.Run, k: int) -> None:
    """A piggyback run started from SB's iterate of epoch k as SB holds it now (where the weights
    are here: a fresh clone has none)."""
    recorded = run.metrics.get("warm_start") or {}
    iterate = sb.path / "iterates" / f"epoch{k}.weights.h5"
    expected = recorded.get("start_file_sha256")
    if recorded.get("sb_epoch") != k:
        raise results_lib.ResultsError(
            f"{run.path}/metrics.json records no start at SB's epoch {k} (warm_start is {recorded!r}): delete "
            f"{run.path} and train it again")
    if expected and iterate.is_file() and storage.sha256_file(iterate) != expected:
        raise results_lib.ResultsError(
            f"{run.path} started from other weights than {iterate} holds now (the SB run was trained again): "
            f"delete {run.path} and train it again (make rebuilds it)")


def points(rows: list[dict]) -> list[dict]:
    """Seeds averaged by `results.over_seeds` (a diverged piggyback run is counted and left out of
    every column of its point), one row per (trial, SB epochs): network, dataset, data, sb_epochs,
    seeds, diverged, sb_test_mean/std, test_mean/std (the piggyback runs'), train_mean/std, and each
    sharpness column's mean, std and failed count (phi_..._mean, _std, _failed); paper_<curve> from
    the published curve at that k (C1 and F2 only; nan elsewhere)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["network"], r["dataset"], r["data"], r["sb_epochs"]), []).append(r)
    keys = iterate_tables.phi_keys(rows)
    published = {n: published_figure5(n) for n in {r["network"] for r in rows}}
    out = []
    for (network, dataset, label, k), items in groups.items():
        point = {"network": network, "dataset": dataset, "data": label, "sb_epochs": k, "seeds": len(items),
                 "diverged": sum(r["diverged"] for r in items)}
        for column, name in (("sb_test_accuracy", "sb_test"), ("piggyback_test_accuracy", "test"),
                             ("piggyback_train_accuracy", "train")):
            point.update(results_lib.over_seeds(items, lambda r: r[column]).columns(name, results_lib.MEAN_STD))
        for key in keys:  # a row's phi is nan where its solve failed (its _failed flag) or was not made
            phi = results_lib.over_seeds(items, lambda r: results_lib.FAILED if r[key + "_failed"] else r[key])
            point.update(phi.columns(key, ("mean", "std", "failed")))
        curves = published[network]
        for name in CURVES:
            curve = curves.get(name)
            at = np.flatnonzero(curve["sb_epochs"] == k) if curve else []
            point["paper_" + name] = float(curve[name][at[0]]) if len(at) else math.nan
        out.append(point)
    return sorted(out, key=lambda p: (p["network"], p["dataset"], p["sb_epochs"]))


@functools.lru_cache(maxsize=None)  # package data, read once; callers do not modify it
def published_figure5(network: str) -> dict[str, dict[str, np.ndarray]]:
    """{curve name: {"sb_epochs": xs, name: ys}} of the paper's Figure 5 for `network` (names:
    sb_test_acc_pct, piggyback_lb_test_acc_pct, lb_sharpness_eps1e-3, lb_sharpness_eps5e-4);
    {} for the networks it does not show (all but C1 and F2)."""
    out = {}
    for name in CURVES:
        path = compare.REFERENCE / "paper_figures" / f"figure5_{network}_{name}.csv"
        if path.exists():
            out[name] = results_lib.read_curve(path)
    return out


# Claim 5 ----------------------------------------------------------------------------------------
def enough(ks, accuracy) -> float:
    """How many SB epochs are "enough": the least k (ks ascending, 0 first) at which the test
    accuracy has made half its gain from k = 0 to the largest k; nan if there is no gain."""
    gain = accuracy[-1] - accuracy[0]
    if not (math.isfinite(gain) and gain > 0):
        return math.nan
    return next(k for k, a in zip(ks, accuracy) if a - accuracy[0] >= gain / 2)


def judge(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Claim 5 per network and data, by RULE, paired by seed: (units, paired.unit's dicts;
    notes on the trials not judged, with why)."""
    units, notes = [], []
    by_trial: dict = {}
    for r in rows:
        by_trial.setdefault((r["network"], r["data"]), []).append(r)
    for (network, label), items in by_trial.items():
        name = f"{network} ({label})"
        ok = [r for r in items if math.isfinite(r["piggyback_test_accuracy"])]
        ks = sorted({r["sb_epochs"] for r in ok})
        if len(ks) < MIN_POINTS or ks[0] != 0:
            notes.append(f"{name}: piggyback results at SB epochs {', '.join(map(str, ks)) or 'none'}; at least "
                         f"{MIN_POINTS} values of k, 0 (the LB run from x0) among them, are needed")
            continue
        top = ks[-1]
        by_seed: dict = {}
        for r in ok:
            by_seed.setdefault(r["seed"], {})[r["sb_epochs"]] = r
        ends = [(b[0], b[top]) for _, b in sorted(by_seed.items()) if 0 in b and top in b]
        gain = paired.paired([b["piggyback_test_accuracy"] - a["piggyback_test_accuracy"] for a, b in ends],
                             paired.accuracy_margin(network), f"piggyback LB test accuracy at k = {top} minus at k = 0")
        keys = [k for k in iterate_tables.phi_keys(ok) if any(math.isfinite(r[k]) for pair in ends for r in pair)]
        key = keys[0] if keys else None
        if key:
            measured = [(a, b) for a, b in ends if math.isfinite(a[key]) and math.isfinite(b[key])]
            flatter = paired.paired([paired.log_ratio(b[key], a[key]) for a, b in measured], paired.SHARP_FACTOR,
                                    f"{iterate_tables.phi_label(key)} at k = {top} / at k = 0", "ratio", -1)
            failed = sum(int(r.get(key + "_failed", 0)) for r in items)
            loss = paired.side_losses(
                [paired.loss(a.get(results_lib.f_column(key)), a["piggyback_train_loss"]) for a, _ in measured],
                [paired.loss(b.get(results_lib.f_column(key)), b["piggyback_train_loss"]) for _, b in measured],
                ("k = 0", f"k = {top}"))
            sharp_text = (f"{paired.describe(flatter)} (mean rho against k "
                          f"{_mean_rho(by_seed, key):+.2f}" + (f"; {failed} failed solve(s) left out" if failed else "")
                          + f"); {loss}")
        else:
            flatter = paired.not_computed("sharpness", paired.SHARP_FACTOR, "ratio", -1)
            sharp_text = "sharpness not computed"
        level = paired.level([gain, flatter])
        means = [float(np.mean([r["piggyback_test_accuracy"] for r in ok if r["sb_epochs"] == k])) for k in ks]
        half = enough(ks, means)
        sb_top = [r["sb_test_accuracy"] for r in ok if r["sb_epochs"] == top and math.isfinite(r["sb_test_accuracy"])]
        units.append(paired.unit(
            name, network, [gain, flatter], level,
            f"{name}, SB epochs 0-{top} ({len(ks)} values of k): {paired.describe(gain)} (mean rho against k "
            f"{_mean_rho(by_seed, 'piggyback_test_accuracy'):+.2f}"
            + (f"; half the mean gain by {half:g} SB epochs" if math.isfinite(half) else "")
            + (f"; SB itself at {top} epochs: {np.mean(sb_top):.2f}%" if sb_top else "") + "); "
            + sharp_text + _paper_text(network, top)))
    return units, notes


def _mean_rho(by_seed: dict, column: str) -> float:
    """Spearman rho of `column` against k, averaged over the seeds that have it (nan if none)."""
    rhos = [iterate_tables.spearman(sorted(b), [b[k][column] for k in sorted(b)]) for b in by_seed.values()]
    rhos = [r for r in rhos if math.isfinite(r)]
    return float(np.mean(rhos)) if rhos else math.nan


def _paper_text(network: str, k: int) -> str:
    curves = published_figure5(network)
    if not curves:
        return ""
    acc, phi = curves["piggyback_lb_test_acc_pct"], curves["lb_sharpness_eps1e-3"]
    at = lambda curve, name: float(np.interp(k, curve["sb_epochs"], curve[name]))  # noqa: E731
    return (f" (paper, 0 -> {k} SB epochs: {at(acc, 'piggyback_lb_test_acc_pct'):.2f}% at {k} from "
            f"{acc['piggyback_lb_test_acc_pct'][0]:.2f}%; sharpness eps 1e-3 "
            f"{phi['lb_sharpness_eps1e-3'][0]:.3g} -> "
            f"{at(phi, 'lb_sharpness_eps1e-3'):.3g})")


# Figure and report section ----------------------------------------------------------------------
def plot(rows: list[dict], stem: Path) -> tuple[Path, Path]:
    """Figure 5 for one trial: test accuracy (SB at iterate k, piggyback LB from it) and the
    piggyback LB's sharpness against the SB epochs k; ours on top, the published curves below
    (this network's; none for networks the paper did not show: ours only, said in the title).
    Writes `stem`.png and `stem`.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    network, label = rows[0]["network"], rows[0]["data"]
    published = published_figure5(network)
    figure, axes = pyplot.subplots(2 if published else 1, 2, figsize=(10, 7.5 if published else 4), squeeze=False)
    mine = points(rows)
    ks = [p["sb_epochs"] for p in mine]
    accuracy, sharp = axes[0]
    for name, text, color in (("sb_test", "SB at iterate k", "tab:blue"),
                              ("test", "piggyback LB from it", "tab:red")):
        accuracy.errorbar(ks, [p[f"{name}_mean"] for p in mine], yerr=[p[f"{name}_std"] for p in mine],
                          color=color, marker="o", markersize=3, linewidth=1, capsize=2, label=text)
    for key in iterate_tables.phi_keys(mine):
        if not key.startswith("phi_full"):
            continue
        sharp.plot(ks, [p[key + "_mean"] for p in mine], marker="o", markersize=3, linewidth=1,
                   linestyle="-" if key.endswith("eps0.001") else "--", color="tab:red",
                   label=f"piggyback LB, {iterate_tables.phi_label(key)}")
    seeds = "/".join(map(str, sorted({p["seeds"] for p in mine})))
    accuracy.set_title(f"ours: test accuracy ({seeds} seed(s))", fontsize=8)
    sharp.set_title("ours: sharpness of the piggyback LB minimiser", fontsize=8)
    if published:
        paper_accuracy, paper_sharp = axes[1]
        for name, text, color in (("sb_test_acc_pct", "SB", "tab:blue"),
                                  ("piggyback_lb_test_acc_pct", "piggyback LB", "tab:red")):
            curve = published[name]
            paper_accuracy.plot(curve["sb_epochs"], curve[name], color=color, linewidth=0.8, label=text)
        for name, style in (("lb_sharpness_eps1e-3", "-"), ("lb_sharpness_eps5e-4", "--")):
            curve = published[name]
            paper_sharp.plot(curve["sb_epochs"], curve[name], color="tab:red", linestyle=style, linewidth=0.8,
                             label=f"piggyback LB, eps {name.rsplit('eps', 1)[1]}")
        paper_accuracy.set_title("published Figure 5: test accuracy", fontsize=8)
        paper_sharp.set_title("published Figure 5: piggyback LB sharpness (full space)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("test accuracy (%)", fontsize=8)
        row[1].set_ylabel("sharpness (Metric 2.1)", fontsize=8)
        row[1].set_yscale("log")
        for axis in row:
            axis.set_xlabel("SB epochs before the LB run (k)", fontsize=8)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=6, frameon=False)
    figure.suptitle(f"{network} on {label}: Figure 5 (warm-starting LB from SB iterates)"
                    + ("" if published else f"; no published curve for {network} (the paper shows C1 and F2)"),
                    fontsize=9)
    figure.tight_layout()
    return storage.save_figure(figure, stem)


def table(rows: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """(rows, {key: header}) of the report's Figure 5 table: one row per trial and SB epoch count."""
    mine = points(rows)
    columns = {"network": "network", "data": "data", "sb_epochs": "SB epochs k", "seeds": "seeds",
               "sb_test": "SB test acc % at k", "test": "piggyback LB test acc %",
               "paper_test": "paper", "train": "piggyback LB train acc %"}
    keys = iterate_tables.phi_keys(mine)
    out = []
    for p in mine:
        row = {k: p[k] for k in ("network", "data", "sb_epochs", "seeds")}
        row["sb_test"] = compare.cell(p["sb_test_mean"], p["sb_test_std"])
        row["test"] = compare.cell(p["test_mean"], p["test_std"]) + (
            f" ({p['diverged']} diverged)" if p["diverged"] else "")
        row["paper_test"] = compare.cell(p["paper_piggyback_lb_test_acc_pct"], math.nan)
        row["train"] = compare.cell(p["train_mean"], p["train_std"])
        for key in keys:
            failed = p[key + "_failed"]
            row[key] = compare.phi_cell(p[key + "_mean"], p[key + "_std"], digits=3) + (f" ({failed} failed)" if failed else "")
            published = PUBLISHED_SHARPNESS.get(key)
            if published:
                row["paper_" + key] = compare.cell(p["paper_" + published], math.nan, digits=3)
        out.append(row)
    for key in keys:
        columns[key] = iterate_tables.phi_label(key)
        if any(r.get("paper_" + key, "n/a") != "n/a" for r in out):
            columns["paper_" + key] = "paper"
    if all(r["paper_test"] == "n/a" for r in out):
        del columns["paper_test"]  # no published curve for this network (or these k)
    return out, columns


def section(root, rows: list[dict], table_markdown: str) -> str:
    """The report's Figure 5 section (figures drawn from `rows` into
    <root>/<network>_<dataset>/warmstart/figure5.{png,pdf}); the table comes rendered."""
    images = iterate_tables.figures_per_network(root, rows, "warmstart", "figure5", plot)
    lb_epochs = sorted({r["lb_epochs"] for r in rows})
    return ("## Figure 5: warm-starting LB from SB iterates\n\n"
            "From the SB run's iterate after k epochs, an LB run (\"piggyback LB\": fresh Adam, the LB batch, "
            f"{'/'.join(map(str, lb_epochs))} epochs here; the paper's 100 from each of 100 SB epochs); k = 0 is the "
            "LB run from x0. SB test acc at k is the SB run's own (history.csv; x0 is not evaluated, so none at 0). "
            "Sharpness is the piggyback LB minimiser's (Metric 2.1; piggyback runs are measured in the full space "
            "only, as Figure 5 shows). \"paper\" is the published Figure 5 at the same k (C1 and F2 only). Mean ± "
            "sample std over seeds. Rule: see Verdicts (claim 5).\n\n"
            + table_markdown + "\nFiles: [figure5.csv](tables/figure5.csv) (one row per run), "
            "[figure5.tex](tables/figure5.tex).\n\n" + "\n".join(images))
