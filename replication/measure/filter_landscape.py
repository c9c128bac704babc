"""Filter-normalised loss landscapes around one minimiser (Li, Xu, Taylor, Studer and Goldstein
2018, "Visualizing the Loss Landscape of Neural Nets", section 4). Beyond Keskar et al. (2017),
whose parametric plots (landscape.py; Figure 3) interpolate between the SB and the LB minimiser: issue 14.

Symbols -> code: x the minimiser (objective order: every trainable variable, flattened), f the
same f as Metric 2.1 and the Hessian measures (hessian._Context: the run's `sharpness.subset`
training examples, its batch-norm semantics and evaluation batches), d a direction (DIRECTION).

- Filter normalisation: d starts as a Gaussian draw g over all of x; in every variable with two
  or more axes (a Dense kernel (in, out), a Conv2D kernel (h, w, in, out)) each filter, the slice
  along the last axis (one output unit or output channel), is rescaled to the norm of the same
  filter of x: d_j = g_j |x_j| / (|g_j| + 1e-10) (Li et al.'s code adds the same 1e-10). Every
  one-axis variable (biases, batch-norm gamma and beta) gets d = 0, as Li et al. do by default
  ("biasbn" ignored): their scale is not what the normalisation is about, and zero keeps them at x.
- Slices: f(x + t d) at t in linspace(-span, span, points) for each of `draws` directions (1-D),
  and f(x + a d1 + b d2) on a grid x grid square of the same span (2-D; d1, d2 are the directions
  of draws 0 and 1, so the 2-D slice's axes are those two 1-D curves).
- Scalar for tables: the rise r(t) = (f(x + t d) + f(x - t d)) / 2 - f(x) at t in RISE_STEPS
  (headline HEADLINE_STEP), mean and sample std over the draws. Averaging +t and -t cancels the
  first-order term, which is not zero at a minimiser reached by a finite number of steps.
- Why it should resist Dinh et al.'s reparametrisations: a transformation that multiplies whole
  filters by positive factors (reparametrize.py: both kinds) scales each filter of d with its
  filter of x, so x' + t d' = D (x + t d) and f'(x' + t d') = f(x + t d) exactly (the batch-norm
  epsilon aside). hessian.py measures it rather than assuming it.
Cost: one forward pass of f per point: draws x (points - 1) + 1 for the 1-D slices, grid^2 - 1
more for the 2-D slice (its centre is f(x)); no gradients.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

REFERENCE = ("Li, Xu, Taylor, Studer and Goldstein (2018), Visualizing the Loss Landscape of Neural Nets, "
             "filter normalisation")
DIRECTION = ("g = NumPy default_rng([seed, index, 3]).standard_normal(n) (float64); each filter (the last "
             "axis of a variable with >= 2 axes) rescaled to |x_filter| / (|g_filter| + 1e-10); one-axis "
             "variables (biases, batch-norm gamma and beta) 0")
RISE = "r(t) = (f(x + t d) + f(x - t d)) / 2 - f(x)"
RISE_STEPS = (0.25, 0.5, 1.0)
HEADLINE_STEP = 0.5
COLUMNS_1D = ["draw", "t", "loss", "accuracy"]
COLUMNS_2D = ["a", "b", "loss", "accuracy"]


def direction(shapes, x, seed: int, index: int) -> np.ndarray:
    """The filter-normalised direction number `index` at x (DIRECTION): float64, length n, for the
    variables of `shapes` (objective order) holding the flat x."""
    x = np.asarray(x, np.float64)
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != len(x):
        raise ValueError(f"x has {len(x)} entries, the variables {sum(sizes)}")
    d = np.random.default_rng([seed, index, 3]).standard_normal(len(x))
    start = 0
    for shape, size in zip(shapes, sizes):
        piece = slice(start, start + size)
        if len(shape) < 2:
            d[piece] = 0.0
        else:
            g, w = d[piece].reshape(-1, shape[-1]), x[piece].reshape(-1, shape[-1])
            d[piece] = (g * (np.linalg.norm(w, axis=0) / (np.linalg.norm(g, axis=0) + 1e-10))).ravel()
        start += size
    return d


def steps(span: float, points: int) -> np.ndarray:
    """The slice's grid of t: linspace(-span, span, points)."""
    return np.linspace(-span, span, points)


class Slicer:
    """f along directions from x, each point evaluated once (the rises reuse the 1-D slices' points
    and the 2-D slice reuses f(x)). `objective` needs evaluate(flat) -> (f, accuracy)."""

    def __init__(self, objective, x):
        self.objective, self.x = objective, np.asarray(x, np.float64)
        self.evaluations = 0
        self._seen = {}

    def at(self, *terms) -> tuple[float, float]:
        """(f, accuracy) at x + sum(coefficient * d) for (coefficient, key, d) in terms; a key names
        its direction, so the same point is evaluated once."""
        key = tuple(sorted((round(float(c), 12), k) for c, k, _ in terms if c != 0))
        if key not in self._seen:
            point = self.x + sum((c * d for c, _, d in terms if c != 0), np.zeros_like(self.x))
            loss, accuracy = self.objective.evaluate(point.astype(np.float32))
            if not math.isfinite(loss):
                raise ArithmeticError(f"f is not finite at {key}")
            self._seen[key] = (float(loss), float(accuracy))
            self.evaluations += 1
        return self._seen[key]

    def line(self, key, d, ts) -> list[dict]:
        """The 1-D slice f(x + t d) at each t."""
        return [{"t": float(t), **dict(zip(("loss", "accuracy"), self.at((t, key, d))))} for t in ts]

    def plane(self, d1, d2, ts) -> list[dict]:
        """The 2-D slice f(x + a d1 + b d2) on ts x ts (keys 0 and 1: the 1-D directions of draws 0, 1)."""
        return [{"a": float(a), "b": float(b), **dict(zip(("loss", "accuracy"), self.at((a, 0, d1), (b, 1, d2))))}
                for b in ts for a in ts]

    def rise(self, key, d, t: float) -> float:
        """r(t) along d (RISE)."""
        return (self.at((t, key, d))[0] + self.at((-t, key, d))[0]) / 2 - self.at()[0]


def rises(slicer: Slicer, directions: list, rise_steps=RISE_STEPS) -> dict:
    """{"t=<t>": [r(t) per direction]} for each t of rise_steps."""
    return {f"t={t:g}": [slicer.rise(key, d, t) for key, d in enumerate(directions)] for t in rise_steps}


def figure_stem(csv_path) -> Path:
    return Path(csv_path).with_name("filter_landscape")


def _curves(rows) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for draw in sorted({int(float(r["draw"])) for r in rows}):
        mine = [r for r in rows if int(float(r["draw"])) == draw]
        out[draw] = (np.array([float(r["t"]) for r in mine]), np.array([float(r["loss"]) for r in mine]))
    return out


def _grid(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.array(sorted({float(r["a"]) for r in rows}))
    b = np.array(sorted({float(r["b"]) for r in rows}))
    z = np.full((len(b), len(a)), np.nan)
    for r in rows:
        z[np.searchsorted(b, float(r["b"])), np.searchsorted(a, float(r["a"]))] = float(r["loss"])
    return a, b, z


def draw(stem, runs: dict) -> tuple[Path, Path]:
    """One figure from the CSV rows of one or more runs, {label: (1-D rows, 2-D rows)}: left, every
    run's 1-D slices on one axis (one colour per run, one line per draw); right, one 2-D contour
    per run on a shared colour scale. Written as stem.png and stem.pdf."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from replication import storage

    figure, axes = pyplot.subplots(1, 1 + len(runs), figsize=(4.2 * (1 + len(runs)), 3.8), squeeze=False)
    axes = axes[0]
    planes = {label: _grid(rows_2d) for label, (_, rows_2d) in runs.items()}
    levels = np.linspace(min(np.nanmin(z) for _, _, z in planes.values()),
                         max(np.nanmax(z) for _, _, z in planes.values()), 21)
    for colour, (label, (rows_1d, _)) in zip(("tab:blue", "tab:red", "tab:green", "tab:purple"), runs.items()):
        for draw_index, (t, loss) in _curves(rows_1d).items():
            axes[0].plot(t, loss, color=colour, linewidth=1.2, alpha=0.8, label=label if draw_index == 0 else None)
    axes[0].set_xlabel("t (filter-normalised direction)")
    axes[0].set_ylabel("training cross-entropy f(x + t d)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8, frameon=False)
    for axis, (label, (a, b, z)) in zip(axes[1:], planes.items()):
        contour = axis.contourf(a, b, z, levels=levels, cmap="viridis")
        axis.contour(a, b, z, levels=levels, colors="white", linewidths=0.3)
        axis.set_title(label, fontsize=8)
        axis.set_xlabel("a (d1)")
        axis.set_ylabel("b (d2)")
        axis.set_aspect("equal")
    figure.colorbar(contour, ax=list(axes[1:]), shrink=0.85, label="f(x + a d1 + b d2)")
    figure.suptitle("Filter-normalised slices (Li et al. 2018); one curve per direction", fontsize=9)
    return storage.save_figure(figure, stem)
