"""Batch-size sweep: Figure 4 and claim 4 of Keskar et al. (2017), and learning-rate scaling.

Figure 4 (PAPER.md "Figures") plots test accuracy and sharpness (eps 1e-3 and 5e-4) against the
batch size after training, for F2 and C1; claim 4 says accuracy falls and sharpness rises with
the batch size, sharply past a threshold (about 500 for C1, 15000 for F2). A config's `sweep`
section adds one run per batch size to each trial (`b<batch>`, same x0 and protocol as SB and LB);
`sweep.lr_scalings` adds runs whose learning rate grows with the batch (`b<batch>-sqrt`,
`b<batch>-linear`), which the paper did not try and later work recommends.

A point of the sweep is every finished run of a trial at one (batch size, scaling). SB and LB
runs are points of the unscaled curve (the same protocol), so a sweep config need not repeat
them. Everything here comes from a loaded results folder (`results.load`: metrics.json,
sharpness and noise JSON); nothing is trained.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from replication import regimes, storage
from replication.analysis import compare
from replication.analysis import results as results_lib

# Published Figure 4 curves (package data): only C1 and F2 were published.
FIGURE4_COLUMNS = ("test_acc_pct", "sharpness_eps1e-3", "sharpness_eps5e-4")
MIN_BATCH_SIZES = 3


def published_figure4(network: str) -> dict[str, dict[str, np.ndarray]]:
    """{column: {"batch_size": xs, "value": ys}} of the paper's Figure 4 for `network` (or {})."""
    out = {}
    for column in FIGURE4_COLUMNS:
        path = compare.REFERENCE / "paper_figures" / f"figure4_{network}_{column}.csv"
        if path.exists():
            rows = storage.read_csv(path)
            value_key = next(k for k in rows[0] if k != "batch_size")
            out[column] = {"batch_size": np.array([float(r["batch_size"]) for r in rows]),
                           "value": np.array([float(r[value_key]) for r in rows])}
    return out


def published_at(curve: dict | None, batch: float) -> float:
    """The published curve at `batch` (linear interpolation), nan outside its range or if absent."""
    if not curve or not curve["batch_size"].min() <= batch <= curve["batch_size"].max():
        return math.nan
    return float(np.interp(batch, curve["batch_size"], curve["value"]))


def sharpness_label(key: str) -> str:
    """'phi_full_eps0.001' -> 'full-space sharpness, eps 0.001'."""
    space, epsilon = results_lib.sharpness_setting(key, "phi")
    return f"{space}-space sharpness, eps {epsilon}"


def sharpness_columns(rows: list[dict]) -> list[str]:
    """The sharpness quantities of `rows` (phi_<space>_eps<eps>), full space at eps 1e-3 first
    (`results.sharpness_columns`); a point's row has them as <key>_mean, _std, _failed, _missing."""
    return results_lib.sharpness_columns(rows, "phi")


def _groups(loaded: results_lib.Results) -> dict[tuple, dict[int, results_lib.Run]]:
    """{(network, dataset, lr scaling, batch size): {seed: run}} of every trial that has sweep runs,
    in table order; a sweep run at the SB or LB batch size stands for that seed's SB or LB run."""
    runs = loaded.runs
    def sweep_point(run):  # its spec if it is a sweep run, else None
        return run.spec if run.spec and run.spec.kind == "sweep" else None

    swept = {(r.network, r.dataset) for r in runs if sweep_point(r)}
    scalings: dict = {trial: {"none"} for trial in swept}
    for r in runs:
        if point := sweep_point(r):
            scalings[(r.network, r.dataset)].add(point.scaling)
    groups: dict[tuple, dict[int, results_lib.Run]] = {}
    # Sweep runs first, so that a sweep run at the SB or LB batch size stands for that seed.
    for run in sorted(runs, key=lambda r: sweep_point(r) is None):
        if (run.network, run.dataset) not in swept:
            continue
        point = sweep_point(run)
        if point is not None:
            keys = [(point.scaling, point.batch)]
        elif run.regime == "sb":  # the reference batch: every scaling's factor is 1 there
            keys = [(scaling, int(run.metrics["batch_size"])) for scaling in scalings[(run.network, run.dataset)]]
        elif run.regime == "lb":
            keys = [("none", int(run.metrics["batch_size"]))]
        else:
            continue
        for scaling, batch in keys:
            groups.setdefault((run.network, run.dataset, scaling, batch), {}).setdefault(run.seed, run)
    order = list(regimes.LR_SCALINGS)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.index(kv[0][2]), kv[0][3])))


def points(loaded: results_lib.Results) -> list[dict]:
    """One row per (trial, lr scaling, batch size) of every trial that has sweep runs: test/train
    accuracy, each sharpness computed (phi_<space>_eps<eps>) and the noise scale over seeds
    (`results.over_seeds`: diverged runs and failed solves counted, never averaged in), beside the
    published Figure 4 value at that batch size where the paper has one (unscaled curve only)."""
    runs = loaded.runs
    groups = _groups(loaded)
    measured = sorted({key for run in runs for key in run.sharpness})
    published = {network: published_figure4(network) for network, _, _, _ in groups}  # read each CSV once
    rows = []
    for (network, dataset, scaling, batch), by_seed in groups.items():
        members = list(by_seed.values())
        test = results_lib.over_seeds(members, lambda run: run.metrics["test_accuracy"])
        train = results_lib.over_seeds(members, lambda run: run.metrics["train_accuracy"])
        regimes = sorted({r.regime for r in members})
        first = members[0].metrics
        row = {"network": network, "dataset": dataset, "data": first["dataset_label"],
               "lr_scaling": scaling, "batch_size": batch,
               "learning_rate": float(first["resolved_config"].get("learning_rate", math.nan)),
               "runs": "+".join(regimes), "seeds": test.seeds, "diverged": test.diverged,
               **test.columns("test", results_lib.MEAN_STD), **train.columns("train", results_lib.MEAN_STD)}
        for space, epsilon in measured:  # every row gets every column (one CSV header)
            phi = results_lib.over_seeds(members, lambda run: results_lib.sharpness_value(run, space, epsilon))
            key = results_lib.sharpness_column("phi", space, epsilon)
            row.update(phi.columns(key, ("mean", "std", "failed", "missing")))
        noise = results_lib.over_seeds(members, lambda run: _b_simple(run, "final"))
        row.update(noise.columns("noise_scale", ("mean", "std", "n")))
        paper = published[network] if scaling == "none" else {}
        row["paper_test_acc_pct"] = published_at(paper.get("test_acc_pct"), batch)
        # The published Figure 4 curves are of the full space.
        for column, epsilon in (("sharpness_eps1e-3", 1e-3), ("sharpness_eps5e-4", 5e-4)):
            key = "paper_" + results_lib.sharpness_column("phi", "full", epsilon)
            row[key] = published_at(paper.get(column), batch)
        row["deviations"] = "; ".join(sorted({d for r in members for d in r.metrics["deviations"]})) or "none"
        rows.append(row)
    return rows


def seed_points(loaded: results_lib.Results) -> list[dict]:
    """One row per run of every sweep point (claim 4 pairs them by seed: a seed's runs share x0):
    network, dataset, data, lr_scaling, batch_size, seed, diverged, test, train (accuracy %),
    train_loss (final), phi_<space>_eps<eps> (nan where diverged, failed or not computed) and
    f_<space>_eps<eps> (the f recorded with it), deviations."""
    measured = sorted({key for run in loaded.runs for key in run.sharpness})
    rows = []
    for (network, dataset, scaling, batch), by_seed in _groups(loaded).items():
        for seed, run in by_seed.items():
            metrics = run.metrics
            row = {"network": network, "dataset": dataset, "data": metrics["dataset_label"], "lr_scaling": scaling,
                   "batch_size": batch, "seed": seed, "diverged": run.diverged,
                   "test": math.nan if run.diverged else float(metrics["test_accuracy"]),
                   "train": math.nan if run.diverged else float(metrics["train_accuracy"]),
                   "train_loss": math.nan if run.diverged else float(metrics.get("train_loss", math.nan))}
            for space, epsilon in measured:
                measurement = run.sharpness.get((space, epsilon))
                phi = results_lib.sharpness_value(run, space, epsilon)
                ok = isinstance(phi, float) and not run.diverged
                row[results_lib.sharpness_column("phi", space, epsilon)] = phi if ok else math.nan
                f_x = measurement.record.get("f_x") if measurement else None
                row[results_lib.sharpness_column("f", space, epsilon)] = math.nan if f_x is None else float(f_x)
            row["deviations"] = list(metrics["deviations"])
            rows.append(row)
    return rows


def _b_simple(run: results_lib.Run, point: str) -> float | None:
    measurement = run.noise.get(point)
    return measurement.record.get("b_simple") if measurement else None


def noise_at_x0(loaded: results_lib.Results) -> dict[tuple[str, str], list[float]]:
    """{(network, data label): B_simple at x0 of each seed} from the SB runs' noise/initial.json."""
    out: dict = {}
    for run in loaded.runs:
        value = _b_simple(run, "initial") if run.regime == "sb" else None
        if value is not None:
            out.setdefault((run.network, run.metrics["dataset_label"]), []).append(float(value))
    return out


def largest_drop(rows: list[dict]) -> tuple[int, int, float] | None:
    """The consecutive batch sizes between which mean test accuracy falls most (a, b, points; the
    points are negative if it never falls)."""
    pairs = sorted((r["batch_size"], r["test_mean"]) for r in rows if math.isfinite(r["test_mean"]))
    drops = [(a, b, va - vb) for (a, va), (b, vb) in zip(pairs, pairs[1:])]
    return max(drops, key=lambda d: d[2]) if drops else None


def drop_text(drop: tuple[int, int, float] | None) -> str:
    """largest_drop() in words, by its sign: a drop, or that test accuracy never falls."""
    if drop is None:
        return "fewer than two batch sizes with a test accuracy"
    if drop[2] > 0:
        return f"largest test-accuracy drop {drop[2]:.2f} points between batch {drop[0]} and {drop[1]}"
    return "mean test accuracy does not fall between any two consecutive batch sizes"


def plot(rows: list[dict], stem: Path) -> tuple[Path, Path]:
    """Figure 4 for one trial: test accuracy (left) and sharpness (right) against the batch size,
    one line per lr scaling, error bars = seed std; the paper's curves thin and light. Writes
    `stem`.png and `stem`.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    network, label = rows[0]["network"], rows[0]["data"]
    published = published_figure4(network)
    figure, (acc_axis, sharp_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    styles = {"none": "-", "sqrt": "--", "linear": ":"}
    markers = {"none": "o", "sqrt": "s", "linear": "^"}
    for column, axis, name in (("test_acc_pct", acc_axis, "paper"), ("sharpness_eps1e-3", sharp_axis,
                               "paper eps 1e-3"), ("sharpness_eps5e-4", sharp_axis, "paper eps 5e-4")):
        if column in published:
            axis.plot(published[column]["batch_size"], published[column]["value"], color="grey",
                      linewidth=0.8, alpha=0.5, linestyle="-" if "5e-4" not in column else "--",
                      label=f"{name} (thin)")
    keys = sharpness_columns(rows)
    colors = {k: c for k, c in zip(keys, ("tab:red", "tab:orange", "tab:purple", "tab:brown"))}
    for scaling in regimes.LR_SCALINGS:
        mine = sorted((r for r in rows if r["lr_scaling"] == scaling), key=lambda r: r["batch_size"])
        if not mine:
            continue
        batches = [r["batch_size"] for r in mine]
        acc_axis.errorbar(batches, [r["test_mean"] for r in mine],
                          yerr=[0 if math.isnan(r["test_std"]) else r["test_std"] for r in mine],
                          color="tab:blue", linestyle=styles[scaling], marker=markers[scaling], capsize=3,
                          label=f"ours, lr scaling {scaling}")
        for key in keys:
            values = [r.get(key + "_mean", math.nan) for r in mine]
            sharp_axis.plot(batches, values, color=colors[key], linestyle=styles[scaling], marker=markers[scaling],
                            label=f"{sharpness_label(key)}, lr {scaling}")
    for axis in (acc_axis, sharp_axis):
        axis.set_xscale("log")
        axis.set_xlabel("batch size")
        axis.legend(fontsize=7, frameon=False)
    acc_axis.set_ylabel("test accuracy (%)")
    sharp_axis.set_ylabel("sharpness (Metric 2.1)")
    sharp_axis.set_yscale("log")
    figure.suptitle(f"{network} on {label}: Figure 4 (batch-size sweep)", fontsize=9)
    figure.tight_layout()
    return storage.save_figure(figure, stem)
