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
    for (network, dataset), by_regime in groups(collect(results_dir)).items():
        for regime in REGIMES:
            runs = by_regime.get(regime, [])
            if not runs:
                continue
            ok = [r for r in runs if not r["diverged"]]
            row = {"network": network, "data": runs[0]["dataset_label"], "regime": regime.upper(),
                   "batch_size": runs[0]["batch_size"], "seeds": len(runs),
                   "diverged": len(runs) - len(ok), "epochs": max(r["epochs_run"] for r in runs)}
            for split in ("train", "test"):
                mean, std, _ = summarize([r[f"{split}_accuracy"] for r in ok])
                p_mean = paper[network][f"{split}_{regime}_mean"]
                p_std = paper[network][f"{split}_{regime}_std"]
                row.update({f"{split}_mean": mean, f"{split}_std": std,
                            f"paper_{split}_mean": p_mean, f"paper_{split}_std": p_std,
                            f"{split}_diff_points": mean - p_mean,
                            f"{split}_diff_paper_std": z_score(mean, p_mean, p_std)})
            row["deviations"] = "; ".join(runs[0]["deviations"]) or "none"
            rows.append(row)
    return rows


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


def write_table(results_dir, name: str, rows: list[dict], markdown: str) -> tuple[Path, Path]:
    out = Path(results_dir) / "tables"
    storage.atomic_write_csv(out / f"{name}.csv", rows)
    storage.atomic_write_text(out / f"{name}.md", markdown)
    return out / f"{name}.md", out / f"{name}.csv"
