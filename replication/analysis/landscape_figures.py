"""The parametric plots' figures (Figures 3 and 7 of Keskar et al. 2017), drawn from the files that
measure/landscape.py writes: ours in the paper's style beside the published curves."""

from __future__ import annotations

from pathlib import Path

from replication import storage
from replication.analysis import compare, results


def drawn(csv_path) -> bool:
    """Whether both figures of the curve at `csv_path` exist."""
    return all(Path(csv_path).with_suffix(suffix).exists() for suffix in (".png", ".pdf"))


def plot(csv_path) -> tuple[Path, Path]:
    """Draw `csv_path` from its files (the CSV and its JSON sidecar); see draw()."""
    csv_path = Path(csv_path)
    return draw(csv_path, storage.read_json(csv_path.with_suffix(".json")), results.read_curve(csv_path))


def draw(csv_path: Path, meta, ours) -> tuple[Path, Path]:
    """The curve of `csv_path` (its sidecar `meta`, its columns `ours`) in the paper's style beside
    the published curves, as .png and .pdf beside the CSV.

    Left axis: cross-entropy (blue); right axis: accuracy % (red); solid train, dashed test.
    Published curves are thin and light.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, xent_axis = pyplot.subplots(figsize=(6.4, 4.4))
    acc_axis = xent_axis.twinx()
    for label, ref_path in compare.published_figures(meta["network"], meta["path"]).items():
        ref = results.read_curve(ref_path)
        style = dict(linewidth=0.8, alpha=0.45, linestyle=":" if label == "official code" else None)
        xent_axis.plot(ref["alpha"], ref["train_xent"], color="tab:blue", **style, label=f"{label} (thin)")
        xent_axis.plot(ref["alpha"], ref["test_xent"], color="tab:blue", **{**style, "linestyle": "--"})
        acc_axis.plot(ref["alpha"], ref["train_acc_pct"], color="tab:red", **style)
        acc_axis.plot(ref["alpha"], ref["test_acc_pct"], color="tab:red", **{**style, "linestyle": "--"})
    xent_axis.plot(ours["alpha"], ours["train_xent"], color="tab:blue", linewidth=2, label="train")
    xent_axis.plot(ours["alpha"], ours["test_xent"], color="tab:blue", linewidth=2, linestyle="--",
                   label="test")
    acc_axis.plot(ours["alpha"], ours["train_acc_pct"], color="tab:red", linewidth=2)
    acc_axis.plot(ours["alpha"], ours["test_acc_pct"], color="tab:red", linewidth=2, linestyle="--")
    xent_axis.set_xlabel(r"$\alpha$")
    xent_axis.set_ylabel("Cross Entropy", color="tab:blue")
    acc_axis.set_ylabel("Accuracy (%)", color="tab:red")
    xent_axis.tick_params(axis="y", colors="tab:blue")
    acc_axis.tick_params(axis="y", colors="tab:red")
    acc_axis.set_ylim(-1, 101)
    xent_axis.set_xlim(min(ours["alpha"]), max(ours["alpha"]))
    xent_axis.legend(loc="center left", fontsize=7, frameon=False)
    xent_axis.set_title(f"{meta['network']} on {meta['dataset_label']}, seed {meta['seed']}: "
                        f"{meta['path']} path ({meta['figure']})\nBN: {meta['batchnorm_mode']}", fontsize=8)
    figure.tight_layout()
    return storage.save_figure(figure, csv_path)

