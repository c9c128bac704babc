"""REPORT.md of one results directory: published vs produced, figures, verdicts and provenance.

Built from files only, read once by `results.load` (each run's metrics.json, env.json,
history.csv; sharpness and noise JSON; landscape CSV/JSON), which refuses runs of different
protocols: `python -m replication report RESULTS_DIR` never trains or evaluates a model, so the
report can be rebuilt at any time and changes only when the results do. Writes
RESULTS_DIR/REPORT.md and RESULTS_DIR/tables/<name>.{md,csv,tex}; the arithmetic lives in
`compare` and `sweep`, the claims and their rules in `verdicts` (Keskar et al. 2017: Table 2
accuracy, Tables 3-4 sharpness, Figures 3, 4 and 7, the seven claims of PAPER.md).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from replication import storage
from replication.analysis import (compare, hessian_tables, iterate_tables, landscape_figures, matched_tables,
                                  remedy_tables, results, sweep, verdicts, warmstart)

VERDICT_MARK = {"reproduced": "**reproduced**", "partly reproduced": "**partly reproduced**",
                "not reproduced": "**not reproduced**", "not run": "not run"}  # inconclusive: as it is


def build(results_dir) -> Path:
    """Write RESULTS_DIR/REPORT.md (and tables/) from the result files; returns its path. A
    batch-size study folder gets its own one-page report (replication/analysis/batchsize_report.py)."""
    root = Path(results_dir)
    from replication.analysis import batchsize_report

    if batchsize_report.is_study(root):
        return batchsize_report.write_report(root)
    loaded = results.load(root)  # ResultsError names what is missing or mixed
    runs = loaded.runs
    profiles = sorted({r.metrics.get("profile", root.name) for r in runs})
    parts = [f"# Replication report: profile {', '.join(profiles)}\n",
             "Keskar et al., \"On Large-Batch Training for Deep Learning: Generalization Gap and Sharp "
             "Minima\", ICLR 2017 (arXiv:1609.04836), replicated in Keras 3 (on TensorFlow or JAX: each run's "
             "backend and device are in the provenance at the end). Every number below is read from the files in this directory (provenance at the end); rebuild with "
             f"`python -m replication report {root}`.\n"]
    claim_rows = verdicts.claim_rows(loaded)
    parts.append(_verdict_section(root, verdicts.verdicts(loaded, claim_rows)))
    parts.append(_table_section(root, "table2", "Table 2: accuracy (%)", compare.table2(loaded),
                                compare.table2_markdown, "Differences are ours minus the paper's, in "
                                "points and in the paper's standard deviations."))
    parts.append(_sharpness_section(loaded))
    parts.append(_figure_section(loaded))
    parts.append(_sweep_section(loaded))
    parts.append(_warmstart_section(loaded, claim_rows["warmstart"]))
    parts.append(_iterates_section(loaded, claim_rows["iterates"]))
    # Runs that kept every epoch (measure/matched.py, measure/budget.py): "" where none did.
    parts += [matched_tables.matched_section(loaded), matched_tables.stopping_section(loaded),
              matched_tables.budget_section(loaded)]
    parts.append(_hessian_section(loaded))
    for remedy, (name, _, _, title) in remedy_tables.TABLES.items():
        rows = claim_rows["remedies"][remedy]
        if rows:
            parts.append(_table_section(root, name, title, rows, remedy_tables.markdown, remedy_tables.NOTE))
    parts.append(_differences_section([r.metrics for r in runs if r.regime in compare.REGIMES],
                                      [r.metrics for r in runs if r.regime not in compare.REGIMES]))
    parts.append(_provenance_section(loaded))
    path = root / "REPORT.md"
    storage.atomic_write_text(path, "\n".join(p for p in parts if p))
    return path


# Sections ---------------------------------------------------------------------------------------
def _verdict_section(root: Path, judged: list[dict]) -> str:
    rows = [{"claim": v["claim"], "verdict": v["verdict"], "scope": v["scope"] or "-",
             "statement": v["statement"]} for v in judged]
    table = markdown_table(rows, {"claim": "claim", "statement": "the paper says",
                                  "verdict": "verdict", "scope": "scope"},
                           format_cell=lambda k, v: VERDICT_MARK.get(v, v) if k == "verdict" else v)
    _write(root, "verdicts", [{k: v for k, v in verdict.items() if k != "tests"} for verdict in judged], table,
           "Verdicts on the claims of Keskar et al. (2017)")
    tests = [t for v in judged for t in v["tests"]]
    if tests:
        columns = {"claim": "claim", "unit": "unit", "what": "measure", "test": "test", "n": "n", "agree": "agree",
                   "p": "p", "effect": "effect", "low": "95% low", "high": "95% high", "min": "min", "max": "max",
                   "margin": "margin", "direction": "direction", "kind": "kind", "result": "result"}
        _write(root, "verdict_tests", [{k: t[k] for k in columns} for t in tests], markdown_table(tests, columns),
               "The paired tests behind the verdicts")
    evidence = "\n".join(f"- Claim {v['claim']} ({v['verdict']}):"
                         + "".join(f"\n  - {item}" for item in v["reason"].split(" | ")) for v in judged)
    files = (" Every test's numbers: [verdict_tests.csv](tables/verdict_tests.csv) (effect and interval as "
             "ratios for sharpness and curvature).") if tests else ""
    return ("## Verdicts\n\n" + table + "\nEvidence (per unit: each test with its seeds, sign-test p, effect "
            "with its 95% t interval and the seeds' range, margin and result; for sharpness, the training loss of "
            "both sides)." + files + "\n\n" + evidence + "\n\n### Rules\n\n" + verdicts.VERDICT_RULES)


def _table_section(root: Path, name: str, title: str, rows: list[dict], to_markdown,
                   note: str = "") -> str:
    if not rows:
        return ""
    markdown = to_markdown(rows)
    _write(root, name, rows, markdown, title)
    return (f"## {title}\n\n{markdown}\nFiles: [{name}.csv](tables/{name}.csv) (every number, "
            f"with the paper's beside it), [{name}.tex](tables/{name}.tex). {note}\n")


def _sharpness_section(loaded: results.Results) -> str:
    """Tables 3 and 4, for the spaces that have sharpness results."""
    spaces = {space for run in loaded.runs for space, _ in run.sharpness}
    out = []
    for space, name, title in (("full", "table3", "Table 3: sharpness, full space"),
                               ("random", "table4", "Table 4: sharpness, random subspace (p = 100)")):
        if space in spaces:
            out.append(_table_section(loaded.root, name, title, compare.table_sharpness(loaded, space),
                                      compare.table_sharpness_markdown,
                                      "Sharpness in the paper's units (Metric 2.1, x100); the CSV has "
                                      "our mean over the paper's."))
    return "\n".join(out)


def _figure_section(loaded: results.Results) -> str:
    root, rows = loaded.root, compare.landscape_rows(loaded)
    if not rows:
        return ""
    for curve in loaded.curves:  # figures are drawn from the curve files; redraw any that are missing
        if not landscape_figures.drawn(curve.csv):
            landscape_figures.draw(curve.csv, curve.meta, curve.columns)
    columns = {"network": "network", "data": "data", "seed": "seed", "figure": "figure",
               "published_curve": "compared with",
               "rise_sb": "rise at SB end", "rise_lb": "rise at LB end", "rise_ratio": "LB/SB",
               "paper_rise_ratio": "paper LB/SB", "mad_test_acc_pct": "MAD test acc (points)",
               "mad_train_xent": "MAD train xent", "mad_test_xent": "MAD test xent"}
    table = markdown_table(rows, columns)
    _write(root, "figures", rows, table, "Parametric plots (Figures 3 and 7), ours vs published")
    images = "\n".join(
        f"### {r['network']} seed {r['seed']}, {r['path']} path ({r['figure']})\n\n"
        f"![{r['network']} {r['path']} seed {r['seed']}]({r['png']})\n\n"
        f"[PDF]({Path(r['png']).with_suffix('.pdf')}) · [CSV]({r['csv']}) · batch norm: {r['batchnorm']}\n"
        for r in rows)
    return ("## Figures 3 and 7: the loss between the SB and LB minimisers\n\n"
            f"Rise at an end a = (f(a - h) + f(a + h)) / 2 - f(a) of the training cross-entropy, "
            f"h = {compare.RISE_STEP}; LB/SB is their ratio (the paper's curves: \"paper LB/SB\"). "
            "MAD = mean absolute difference from the published curve over alpha (ours interpolated "
            "onto its alphas). Thin light lines in the figures are the published curves (data: "
            "the paper's, which may differ from ours; see each row's data).\n\n"
            + table + "\nFiles: [figures.csv](tables/figures.csv), [figures.tex](tables/figures.tex).\n\n"
            + images)


def _warmstart_section(loaded: results.Results, rows: list[dict]) -> str:
    """Figure 5: piggyback LB runs from the SB iterates (warmstart.rows)."""
    if not rows:
        return ""
    table = markdown_table(*warmstart.table(rows))
    _write(loaded.root, "figure5", rows, table, "Warm-starting LB from SB iterates (Figure 5), ours")
    return warmstart.section(loaded.root, rows, table)


def _iterates_section(loaded: results.Results, rows: list[dict]) -> str:
    """Figure 6: sharpness along the kept iterates of the SB and LB runs (iterate_tables.rows)."""
    if not rows:
        return ""
    table = markdown_table(*iterate_tables.table(rows))
    _write(loaded.root, "figure6", rows, table, "Sharpness along the iterates (Figure 6), ours")
    return iterate_tables.section(loaded.root, rows, table, markdown_table(*iterate_tables.trend_table(rows)))


def _hessian_section(loaded: results.Results) -> str:
    """Beyond the paper (issue 14): SB vs LB by every curvature measure, with spreads, and whether
    each ordering survives Dinh et al.'s reparametrisations (hessian_tables)."""
    title = "## Do SB and LB minimisers differ by every measure?\n\n"
    rows = hessian_tables.rows(loaded)
    if not rows:
        return (title + f"No Hessian results for SB/LB pairs in this folder: `{hessian_tables.COMMAND}` on "
                "each SB and LB run (or `make hessian-quick` for the quick profile) produces them.\n")
    table = markdown_table(*hessian_tables.table(rows))
    _write(loaded.root, "hessian", rows, table, "SB vs LB by every curvature measure, with spreads")
    images = "\n".join(f"### {name}: filter-normalised slices\n\n![{name}]({png.relative_to(loaded.root)})\n\n"
                       f"[PDF]({png.with_suffix('.pdf').relative_to(loaded.root)})\n"
                       for name, png in hessian_tables.figures(loaded))
    return (title + "Beyond Keskar et al. (2017): the top eigenvalue and trace of the Hessian of f, Metric 2.1, "
            "and the filter-normalised rise (Li et al. 2018: r(t) = (f(x + t d) + f(x - t d)) / 2 - f(x) "
            "along random directions d whose every filter has the norm of x's, biases and batch-norm "
            "parameters left out), each as mean ± sample std over its independent draws (n) at one "
            "minimiser." + (" \"order survives\" applies Dinh et al. (2017)'s function-preserving "
                            "transformations to either minimiser alone: \"no\" means a network computing the same "
                            "function can be made to reverse the SB/LB order by that measure."
                            if any(key.startswith("survives_") for row in rows for key in row) else "")
            + "\n\n"
            + table + "\n" + hessian_tables.training_loss_summary(rows) + " "
            + hessian_tables.separation_summary(rows)
            + "\n\nFiles: [hessian.csv](tables/hessian.csv), [hessian.tex](tables/hessian.tex); each "
            "run's `hessian/*.json` holds every draw, setting and cost:\n\n"
            + markdown_table(hessian_tables.costs(loaded)) + "\n" + images)


def _sweep_section(loaded: results.Results) -> str:
    """Figure 4 (batch-size sweep): a table of every point, a figure per trial (drawn from the
    files each time), and how the scaled learning rates compare where they were run."""
    root = loaded.root
    rows = sweep.points(loaded)
    if not rows:
        return ""
    sharp = sweep.sharpness_columns(rows)
    table_rows = []
    for r in rows:
        out = {"network": r["network"], "data": r["data"], "lr_scaling": r["lr_scaling"],
               "batch_size": r["batch_size"], "learning_rate": f"{r['learning_rate']:.3g}",
               "runs": r["runs"], "seeds": f"{r['seeds']} ({r['diverged']})",
               "test": compare.cell(r["test_mean"], r["test_std"]),
               "paper_test": compare.cell(r["paper_test_acc_pct"], math.nan),
               "train": compare.cell(r["train_mean"], r["train_std"])}
        if not math.isnan(r["noise_scale_mean"]):
            out["noise"] = compare.cell(r["noise_scale_mean"], r["noise_scale_std"], digits=0)
        for key in sharp:
            failed = r.get(key + "_failed", 0)
            out[key] = compare.phi_cell(r.get(key + "_mean", math.nan), r.get(key + "_std", math.nan)) + (
                f" ({failed} failed)" if failed else "")
            if "paper_" + key in r:  # the published curve (full space only)
                out["paper_" + key] = compare.cell(r["paper_" + key], math.nan)
        table_rows.append(out)
    columns = {"network": "network", "data": "data", "lr_scaling": "lr scaling", "batch_size": "batch",
               "learning_rate": "lr", "runs": "runs", "seeds": "seeds (diverged)", "test": "test acc %",
               "paper_test": "paper test acc %", "train": "train acc %"}
    for key in sharp:
        columns[key] = sweep.sharpness_label(key)
        if any("paper_" + key in t for t in table_rows):
            columns["paper_" + key] = "paper"
    if any("noise" in t for t in table_rows):
        columns["noise"] = "B_simple at the minimiser"
    table = markdown_table(table_rows, columns)
    _write(root, "figure4", rows, table, "Batch-size sweep (Figure 4), ours beside the published curve")
    images = []
    for network, dataset, label in dict.fromkeys((r["network"], r["dataset"], r["data"]) for r in rows):
        stem = root / f"{network}_{dataset}" / "sweep" / "figure4"
        sweep.plot([r for r in rows if (r["network"], r["dataset"]) == (network, dataset)], stem)
        png = stem.with_suffix(".png").relative_to(root)
        images.append(f"### {network} on {label}\n\n![{network} Figure 4]({png})\n\n"
                      f"[PDF]({png.with_suffix('.pdf')})\n")
    return ("## Figure 4: test accuracy and sharpness against the batch size\n\n"
            "Every run of a trial starts from the same x0; SB and LB runs are points of the unscaled "
            "curve. \"paper\" is the published Figure 4 curve at our batch size (linear interpolation; "
            "only C1 and F2 were published, and only inside the published range). Learning-rate "
            "scaling (sqrt, linear: lr = the config's learning_rate x (batch / SB batch)^(1/2 or 1); "
            "the SB run is a point of every curve) goes beyond the paper, which kept lr fixed. Mean ± sample std over seeds; diverged runs are counted, not "
            "averaged.\n\n" + table
            + "\nFiles: [figure4.csv](tables/figure4.csv), [figure4.tex](tables/figure4.tex).\n\n"
            + _noise_text(loaded, rows) + "\n".join(images))


def _noise_text(loaded: results.Results, rows: list[dict]) -> str:
    """The gradient noise scale beside the sweep: what it predicts and where our accuracy fell."""
    at_x0 = sweep.noise_at_x0(loaded)
    if not at_x0 and all(math.isnan(r["noise_scale_mean"]) for r in rows):
        return ""
    lines = ["**Gradient noise scale** (beyond the paper): B_simple = tr(Sigma) / |G|^2 (McCandlish et "
             "al. 2018), estimated from mini-batch gradients of the SB batch size on the sharpness "
             "examples (replication/measure/noise.py). McCandlish et al. find that batches up to about this "
             "size train almost as efficiently per example as small ones, and larger ones with "
             "diminishing returns, and that it tends to grow as training proceeds; it is given at x0 and at "
             "each minimiser (table column).", ""]
    for (network, label), values in at_x0.items():
        mean, std, n = results.summarize(values)
        mine = [r for r in rows if r["network"] == network and r["data"] == label]
        drop = sweep.largest_drop([r for r in mine if r["lr_scaling"] == "none"])
        lines.append(f"- {network} ({label}): B_simple at x0 = {compare.cell(mean, std, digits=0)} "
                     f"({n} seed{'s' if n > 1 else ''}); {growth_text(mean, [r['noise_scale_mean'] for r in mine])}; "
                     f"{sweep.drop_text(drop)} (unscaled curve).")
    return "\n".join(lines) + "\n\n"


def growth_text(at_x0: float, at_minimisers: list[float]) -> str:
    """Whether B_simple grew from x0 to the minimisers, from the numbers: at every one, none, or some."""
    finals = [v for v in at_minimisers if math.isfinite(v)]
    if not finals or not math.isfinite(at_x0):
        return "not measured at the minimisers"
    larger = sum(v > at_x0 for v in finals)
    span = f"{min(finals):.0f}-{max(finals):.0f}" if len(finals) > 1 else f"{finals[0]:.0f}"
    if larger == len(finals):
        return f"larger at every minimiser ({span}): it grew during training"
    if larger == 0:
        return f"smaller at every minimiser ({span}): it did not grow during training"
    return f"larger at {larger} of {len(finals)} minimisers ({span}): it did not grow at every batch size"


def _differences_section(runs: list[dict], sweep_runs: list[dict] = ()) -> str:
    """Why our numbers may differ from the published ones: this profile's deviations (from the
    run files; the SB/LB runs, then what only the sweep runs add), then the differences every run
    of this project has from the authors' setup."""
    everything = [*runs, *sweep_runs]
    deviations = sorted({d for r in runs for d in r["deviations"]})
    labels = sorted({r["dataset_label"] for r in everything})
    batchnorm = sorted({r["batchnorm"] for r in everything})
    lines = ["## Why our numbers may differ from the paper's", "",
             f"Data: {', '.join(labels)}. Batch norm: {', '.join(batchnorm)}.", "",
             "Departures from the paper's protocol in the SB and LB runs:", ""]
    lines += [f"- {d}" for d in deviations] or ["- none"]
    extra = sorted({d for r in sweep_runs for d in r["deviations"]} - set(deviations))
    if sweep_runs:
        lines += ["", "Added by the other runs (the batch-size sweep, remedies, piggyback runs: their "
                  "figures and tables only):", ""]
        lines += [f"- {d}" for d in extra] or ["- nothing beyond the above"]
    lines += ["", "Differences every run of this project has from the authors' setup:", "",
              "- Keras 3 on TensorFlow 2 or JAX (float32; on a GPU, training's matrix products in TF32, "
              "each backend's default) instead of Keras 1 on Theano: the same protocol gives different "
              "random draws and rounding, so single runs differ (and x0 differs between backends).",
              "- Under batch statistics (Keras 1 mode=2), every evaluation depends on how examples are "
              "grouped into batches of the evaluation size; we evaluate in the dataset's stored order "
              "(a fixed random order), the authors in theirs.",
              "- The paper trains \"until the loss function ceased to improve\" without saying how that "
              "was detected; we use the explicit rule in each run's config (`stopping`, `epochs`).",
              "- The authors' sharpness code was never released: the distribution of A, the start point "
              "and the data used for f are our documented choices (docs/method.md, Sharpness).", ""]
    return "\n".join(lines)


def _provenance_section(loaded: results.Results) -> str:
    root = loaded.root
    run_rows = []
    for run in loaded.runs:
        env = run.env
        run_rows.append({
            "run": str(run.path.relative_to(root)), "config": str((run.path / "config.yaml").relative_to(root)),
            "git_commit": _commit(env),
            "device": _by_process(env, lambda e: e.get("device", "unknown")),
            "versions": _by_process(env, _versions), "start": env.get("start_time", "?"), "end": env.get("end_time", "?"),
            "epochs": run.metrics["epochs_run"], "train_seconds": round(run.train_seconds, 1)})
    text = ["## Provenance\n",
            "Every Table 2 number is the mean (sample std, ddof=1) over the SB and LB runs below "
            "(sweep runs, b<batch>, feed Figure 4 only); each run "
            "directory holds its resolved config.yaml, env.json, history.csv and metrics.json. "
            "train_seconds is the sum of the epochs' wall times in history.csv (training and "
            "evaluation, over any resumptions).\n",
            markdown_table(run_rows, {"run": "run", "config": "config", "git_commit": "git commit",
                                      "device": "hardware", "versions": "software", "start": "start",
                                      "end": "end", "epochs": "epochs", "train_seconds": "train s"},
                           format_cell=lambda k, v: f"[{v}]({v})" if k == "config" else v)]
    landscape_rows = []
    for curve in loaded.curves:
        meta = curve.meta
        env = meta.get("environment", {})
        landscape_rows.append({
            "curve": str(curve.csv.relative_to(root)),
            "runs": f"{curve.sb.path.relative_to(root)} + {curve.lb.path.relative_to(root)}",
            "x0": meta["x0_sha256"][:12], "examples": f"{meta['settings']['train_examples']} train / "
                                                      f"{meta['settings']['test_examples']} test",
            "git_commit": _commit(env),
            "device": env.get("device", "unknown"), "wall_seconds": meta.get("wall_seconds")})
    if landscape_rows:
        text += ["\nParametric plots (each CSV's JSON sidecar holds the full provenance and settings):\n",
                 markdown_table(landscape_rows, {k: k.replace("_", " ") for k in landscape_rows[0]})]
    sharpness = compare.sharpness_results(loaded)
    if sharpness:
        text += ["\nSharpness results (one JSON per run, space and epsilon; failed solves are "
                 "reported, never counted as 0):\n",
                 markdown_table([_sharpness_provenance(s, root) for s in sharpness])]
    return "\n".join(text)


# Rendering --------------------------------------------------------------------------------------
def markdown_table(rows: list[dict], columns: dict[str, str] | None = None, format_cell=None) -> str:
    """A Markdown table of `rows` ({key: header} picks and names the columns)."""
    if not rows:
        return "(none)\n"
    columns = columns or {k: k for k in rows[0]}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key in columns:
            value = row.get(key, "")
            value = format_cell(key, value) if format_cell else value
            cells.append(_format(value).replace("|", "\\|").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 0.01 or abs(value) >= 1e4 else f"{value:.2f}"
    return str(value)


def markdown_to_latex(markdown: str, caption: str) -> str:
    """The first Markdown table of `markdown` as a LaTeX table (booktabs); notes become the caption."""
    lines = markdown.splitlines()
    table = [line for line in lines if line.startswith("|")]
    notes = " ".join(line for line in lines if line and not line.startswith("|"))
    rows = [[_latex_escape(c.strip()) for c in line.strip().strip("|").split(" | ")]
            for line in table if not set(line) <= set("|-: ")]
    if not rows:
        return ""
    out = ["\\begin{table}[ht]", "\\centering", "\\small",
           "\\begin{tabular}{" + "l" * len(rows[0]) + "}", "\\toprule",
           " & ".join(rows[0]) + " \\\\", "\\midrule"]
    out += [" & ".join(row) + " \\\\" for row in rows[1:]]
    out += ["\\bottomrule", "\\end{tabular}",
            f"\\caption{{{_latex_escape(caption + ('. ' + notes if notes else ''))}}}", "\\end{table}"]
    return "\n".join(out) + "\n"


LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#",
                 "_": "\\_", "{": "\\{", "}": "\\}", "~": "\\~{}", "^": "\\^{}",
                 "±": "$\\pm$", "→": "$\\to$"}


def _latex_escape(text: str) -> str:
    text = text.replace("\\|", "|").replace("**", "")
    return re.sub("|".join(map(re.escape, LATEX_SPECIAL)), lambda m: LATEX_SPECIAL[m.group()], text)


def _write(root: Path, name: str, rows: list[dict], markdown: str, caption: str) -> None:
    compare.write_table(root, name, rows, markdown)
    storage.atomic_write_text(root / "tables" / f"{name}.tex", markdown_to_latex(markdown, caption))


def _sharpness_provenance(result: dict, root: Path) -> dict:
    record = result["record"]
    env = record.get("environment", {})
    return {"file": str(Path(result["path"]).relative_to(root)), "phi": result["phi"], "failed": result["failed"],
            "examples": record.get("num_examples", "?"), "iterations": record.get("iterations", "?"),
            "git commit": _commit(env), "device": env.get("device", "unknown"),
            "wall seconds": record.get("wall_seconds", "?")}


def _commit(env: dict) -> str:
    return _by_process(env, lambda e: str(e.get("git_commit", "unknown"))[:12] + (" (dirty)" if e.get("git_dirty") else ""))


def _by_process(env: dict, describe) -> str:
    """describe(env) of the process that finished a run; for a resumed run whose earlier processes
    (train._resumed) differ in it, which epochs each made."""
    last = describe(env)
    earlier = [(p["first_epoch"], p["last_epoch"], describe(p)) for p in env.get("earlier_processes", [])]
    if all(value == last for *_, value in earlier):
        return last
    spans = [f"epochs {first}-{end}: {value}" for first, end, value in earlier]
    return f"{last} (epochs {env['resumed_after_epoch'] + 1} on; " + "; ".join(spans) + ")"


def _versions(env: dict) -> str:
    # "tensorflow": results made before the JAX port, which ran on TensorFlow only.
    parts = [f"python {env['python']}"] if "python" in env else []
    parts += [env["backend_version"]] if "backend_version" in env else \
        [f"tensorflow {env['tensorflow']}"] if "tensorflow" in env else []
    parts += [f"{k} {env[k]}" for k in ("keras", "numpy") if k in env]
    return ", ".join(parts) or "unknown"

