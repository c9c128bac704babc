"""Experiment configuration: YAML -> validated, frozen dataclasses.

A YAML file holds only what differs from the defaults below (the defaults are the paper's
protocol, PAPER.md "Training protocol"). Unknown keys and bad values are errors that name the key,
the value and the file; `--set key=value` overrides use the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from pathlib import Path

import yaml

from replication import data, regimes
from replication.errors import UserError

NETWORKS = ("F1", "F2", "C1", "C2", "C3", "C4")
DATASETS = tuple(data.DATASETS)
# The dataset each network was trained on in the paper (Table 1); anything else is a stand-in.
PAPER_DATASET = {"F1": "mnist", "F2": "timit", "C1": "cifar10", "C2": "cifar10",
                 "C3": "cifar100", "C4": "cifar100"}
# Datasets whose inputs and classes fit each network: those shaped like its paper dataset.
COMPATIBLE = {network: tuple(name for name, spec in data.DATASETS.items()
                             if (spec.input_shape, spec.num_classes) ==
                             (data.DATASETS[paper].input_shape, data.DATASETS[paper].num_classes))
              for network, paper in PAPER_DATASET.items()}
# Characters a results_dir cannot hold: make's rules and their shell commands name it unquoted.
UNSAFE_PATH = re.compile(r"""[\s#$%:;=&|<>()'"`*?\[\]\\]""")
BATCHNORM = ("batch_statistics", "moving_average")
BACKENDS = ("tensorflow", "jax")
STOPPING = ("fixed", "plateau", "target")
ITERATE_MEASURES = ("all", "matched")
PAPER_EPOCHS = 100
PAPER_SEEDS = 5


class ConfigError(UserError, ValueError):
    """A configuration value or file is invalid; the message names key, value and file."""


@dataclasses.dataclass(frozen=True)
class SharpnessConfig:
    """Metric 2.1 settings (PAPER.md "Sharpness")."""

    epsilons: tuple[float, ...] = (1e-3, 5e-4)
    spaces: tuple[str, ...] = ("full", "random")
    dim: int = 100                 # p, columns of A in the random subspace
    iterations: int = 10           # L-BFGS-B iterations (the paper's inexact solve)
    start: str = "zero"            # y0: "zero" (natural) or "random" (uniform in the box)
    restarts: int = 1              # independent solves; >1 only makes sense with start=random
    subset: int | None = None      # training examples used for f; None = the whole training set
    seed: int = 0                  # seed of A and of random starts

    def validate(self, where: str) -> None:
        for e in self.epsilons:
            _check(math.isfinite(e) and e > 0, "sharpness.epsilons", e, where,
                   "each epsilon must be a finite number > 0")
        _check(len(self.epsilons) > 0, "sharpness.epsilons", self.epsilons, where, "give at least one")
        for s in self.spaces:
            _check(s in ("full", "random"), "sharpness.spaces", s, where, "use 'full' or 'random'")
        _check(self.dim >= 1, "sharpness.dim", self.dim, where, "must be >= 1")
        _check(self.iterations >= 1, "sharpness.iterations", self.iterations, where, "must be >= 1")
        _check(self.start in ("zero", "random"), "sharpness.start", self.start, where,
               "use 'zero' or 'random'")
        _check(self.restarts >= 1, "sharpness.restarts", self.restarts, where, "must be >= 1")
        _check(self.subset is None or self.subset >= 1, "sharpness.subset", self.subset, where,
               "must be >= 1 or null")
        # NumPy's generators (A, random starts) take seeds in [0, 2**32): a negative one failed
        # with a traceback at the first random-subspace solve.
        _check(0 <= self.seed < 2 ** 32, "sharpness.seed", self.seed, where, "must be in [0, 2**32)")


@dataclasses.dataclass(frozen=True)
class LandscapeConfig:
    """Parametric plots (Figures 3 and 7)."""

    points: int = 25
    alpha_min: float = -1.0
    alpha_max: float = 2.0
    # Only for batchnorm=moving_average: "interpolate" the moving statistics along the path like
    # every other variable, or "recompute" them from training batches at each point.
    moving_statistics: str = "interpolate"
    subset: int | None = None      # training examples evaluated; None = all

    def validate(self, where: str) -> None:
        _check(self.points >= 2, "landscape.points", self.points, where,
               "an alpha grid needs at least 2 points")
        _check(self.alpha_max > self.alpha_min, "landscape.alpha_max", self.alpha_max, where,
               "must be greater than landscape.alpha_min")
        _check(self.moving_statistics in ("interpolate", "recompute"),
               "landscape.moving_statistics", self.moving_statistics, where,
               "use 'interpolate' or 'recompute'")
        _check(self.subset is None or self.subset >= 1, "landscape.subset", self.subset, where,
               "must be >= 1 or null")


NOISE_DEFINITIONS = ("evaluation", "training")  # sweep.noise_definition (docs/noise-scale.md)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Batch-size sweep (PAPER.md Figure 4, claim 4), optionally with the learning rate scaled.

    Each (batch size, scaling) is one more run of the trial, from the same x0 as SB and LB, named
    `b<batch>` (scaling "none", the paper's fixed learning rate) or `b<batch>-<scaling>`. Scaling
    goes beyond the paper: "linear" is Goyal et al. (2017)'s rule for SGD, "sqrt" the square-root
    rule argued for Adam (Hoffer et al. 2017; Malladi et al. 2022), both relative to sb_batch_size.
    """

    batch_sizes: tuple[int, ...] = ()          # empty: no sweep
    lr_scalings: tuple[str, ...] = ("none",)
    # Gradient noise scale (replication/measure/noise.py): mini-batches of sb_batch_size drawn per
    # estimate, at x0 and at every minimiser of a config with a sweep.
    noise_batches: int = 100
    # Which definition of the noise scale (docs/noise-scale.md; measure/noise.py): "evaluation",
    # the estimator every committed study used (dropout off, Adam's v from the same batches), or
    # "training" (dropout on, batch norm as trained, Adam's v_hat from the optimizer's own state).
    noise_definition: str = "evaluation"

    def validate(self, where: str) -> None:
        for b in self.batch_sizes:
            _check(b >= 1, "sweep.batch_sizes", b, where, "each batch size must be >= 1")
        _check(len(set(self.batch_sizes)) == len(self.batch_sizes), "sweep.batch_sizes",
               self.batch_sizes, where, "batch sizes repeat")
        _check(len(self.lr_scalings) >= 1, "sweep.lr_scalings", self.lr_scalings, where,
               f"give at least one of {tuple(regimes.LR_SCALINGS)}")
        for s in self.lr_scalings:
            _check(s in regimes.LR_SCALINGS, "sweep.lr_scalings", s, where, f"use one of {tuple(regimes.LR_SCALINGS)}")
        _check(len(set(self.lr_scalings)) == len(self.lr_scalings), "sweep.lr_scalings",
               self.lr_scalings, where, "scalings repeat")
        _check(self.noise_batches >= 3, "sweep.noise_batches", self.noise_batches, where,
               "the noise-scale estimate needs at least 3 mini-batches")
        _check(self.noise_definition in NOISE_DEFINITIONS, "sweep.noise_definition", self.noise_definition,
               where, f"use one of {NOISE_DEFINITIONS} (docs/noise-scale.md)")


TARGET_METRICS = ("train_loss", "train_error")


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """A run stops at a target (stopping: target; Shallue et al. 2019, "steps to result"): every
    `every_steps` optimizer steps it measures `metric` on the first `eval_subset` training examples
    (data.measurement_subset's fixed order) and stops at the first check that meets `value` (train_loss: mean
    cross-entropy <= value; train_error: error in % <= value), or after `max_steps` steps (target
    not reached). With `every_examples`, the interval is every_examples / batch steps instead (at
    least 1), so every batch size has about the same resolution in examples and checks are not
    most of a small batch's time. The checks are written to <run>/target.csv (replication/target.py)."""

    metric: str = "train_loss"
    value: float | None = None             # None: no target (stopping must not be "target")
    every_steps: int = 10
    every_examples: int | None = None      # set: check every max(1, round(every_examples / batch)) steps
    eval_subset: int = 5000
    max_steps: int = 20000
    # Looser values of the same metric met on the way to `value` (issue 25 item 4: B_crit per
    # target): the first check meeting each is recorded, and the weights and Adam state there are
    # kept (<run>/targets/), so the noise scale can be measured where each target is met.
    milestones: tuple[float, ...] = ()

    def validate(self, where: str) -> None:
        _check(self.metric in TARGET_METRICS, "target.metric", self.metric, where,
               f"use one of {TARGET_METRICS}")
        _check(self.value is None or self.value > 0, "target.value", self.value, where,
               "must be > 0 (a loss, or an error in %), or null")
        _check(self.metric != "train_error" or self.value is None or self.value < 100, "target.value", self.value,
               where, "train_error is in % (e.g. 10 for 90% accuracy): use a value below 100")
        _check(self.every_steps >= 1, "target.every_steps", self.every_steps, where, "must be >= 1")
        _check(self.every_examples is None or self.every_examples >= 1, "target.every_examples",
               self.every_examples, where, "must be >= 1 or null")
        _check(self.eval_subset >= 1, "target.eval_subset", self.eval_subset, where, "must be >= 1")
        _check(self.max_steps >= 1, "target.max_steps", self.max_steps, where, "must be >= 1")
        _check(all(m > 0 for m in self.milestones) and len(set(self.milestones)) == len(self.milestones),
               "target.milestones", self.milestones, where, "milestones must be > 0 and must not repeat")
        _check(self.value is not None or not self.milestones, "target.milestones", self.milestones, where,
               "milestones are met on the way to target.value: set target.value")
        _check(self.value is None or all(m > self.value for m in self.milestones), "target.milestones",
               self.milestones, where, f"each milestone must be looser than target.value {self.value} (larger: "
               "the run stops at target.value, so a tighter milestone is never met)")
        _check(self.metric != "train_error" or all(m < 100 for m in self.milestones), "target.milestones",
               self.milestones, where, "train_error is in %: use values below 100")

    def values(self) -> tuple[float, ...]:
        """Every target a run records steps to, loosest first: the milestones, then `value`."""
        return (*sorted(self.milestones, reverse=True), self.value) if self.value is not None else ()


@dataclasses.dataclass(frozen=True)
class BatchSizeStudyConfig:
    """Steps to a target against the batch size (replication/experiments/batchsize.py): each batch size trains
    runs `b<batch>-x<multiplier>` whose learning rate is the `lr_scaling` rule's value at that
    batch (learning_rate x (batch / sb_batch_size) ** exponent) times each multiplier of the grid;
    where the best multiplier sits at an edge of the grid, the grid grows on that side by the
    grid's own ratio, at most `max_extensions` times per side (Shallue et al. 2019)."""

    batch_sizes: tuple[int, ...] = ()          # empty: no study
    lr_scaling: str = "sqrt"
    lr_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_extensions: int = 3
    bootstrap: int = 1000                      # resamples of the batch sizes for B_crit's interval
    # Generalisation once steps and learning rate are fair (issue 13 item 3; batchsize.compare_plan):
    # at each of these batch sizes (each one of batch_sizes, whose best rate it uses), runs of
    # (a) `compare_epochs` at the fixed learning_rate, (b) as many epochs at the tuned rate, (c) the
    # tuned rate for as many steps as the smallest of them takes in (b), (d) (c) with ghost batch
    # norm over virtual batches of compare_ghost_batch_size; each minimiser's sharpness is measured.
    compare_batch_sizes: tuple[int, ...] = ()  # empty: no comparison
    compare_epochs: int = 10
    compare_ghost_batch_size: int | None = None  # None: no (d)

    def validate(self, where: str) -> None:
        for b in self.batch_sizes:
            _check(b >= 1, "batch_size_study.batch_sizes", b, where, "each batch size must be >= 1")
        _check(len(set(self.batch_sizes)) == len(self.batch_sizes), "batch_size_study.batch_sizes",
               self.batch_sizes, where, "batch sizes repeat")
        _check(self.lr_scaling in regimes.LR_SCALINGS, "batch_size_study.lr_scaling", self.lr_scaling, where,
               f"use one of {tuple(regimes.LR_SCALINGS)}")
        grid = self.lr_multipliers
        _check(len(grid) >= 2, "batch_size_study.lr_multipliers", grid, where,
               "give at least 2 multipliers (a grid has two edges)")
        _check(all(m > 0 for m in grid) and list(grid) == sorted(set(grid)),
               "batch_size_study.lr_multipliers", grid, where, "multipliers must be > 0 and increasing")
        _check(self.max_extensions >= 0, "batch_size_study.max_extensions", self.max_extensions, where,
               "must be >= 0")
        _check(self.bootstrap >= 0, "batch_size_study.bootstrap", self.bootstrap, where, "must be >= 0")
        for b in self.compare_batch_sizes:
            _check(b in self.batch_sizes, "batch_size_study.compare_batch_sizes", b, where,
                   "each must be one of batch_size_study.batch_sizes (its tuned learning rate comes from there)")
        _check(len(set(self.compare_batch_sizes)) == len(self.compare_batch_sizes),
               "batch_size_study.compare_batch_sizes", self.compare_batch_sizes, where, "batch sizes repeat")
        _check(self.compare_epochs >= 1, "batch_size_study.compare_epochs", self.compare_epochs, where,
               "must be >= 1")
        _check(self.compare_ghost_batch_size is None or self.compare_ghost_batch_size >= 1,
               "batch_size_study.compare_ghost_batch_size", self.compare_ghost_batch_size, where,
               "must be >= 1 or null")

    def multipliers(self) -> tuple[float, ...]:
        """Every multiplier a run may have: the grid, then up to max_extensions more on each side,
        each one grid ratio (second / first, last / second-last) beyond the edge; a grid of exact
        powers of sqrt(n) through 1 (6 digits allowed) extends by exact powers of its last ratio."""
        grid = self.lr_multipliers
        low, high = grid[1] / grid[0], grid[-1] / grid[-2]
        below = [grid[0] / low ** k for k in range(self.max_extensions, 0, -1)]
        above = [grid[-1] * high ** k for k in range(1, self.max_extensions + 1)]
        # A grid of powers of sqrt(n) through 1 written to 6 digits ([0.707107, 1, 1.41421]): its
        # ladder is the exact powers, so an extension is x2, not x1.99999 of the rounded edge.
        ratio = math.sqrt(round(high * high))
        if ratio > 1 and 1.0 in grid and all(abs(ratio ** round(math.log(m, ratio)) / m - 1) < 1e-5 for m in grid):
            first, last = round(math.log(grid[0], ratio)), round(math.log(grid[-1], ratio))
            below = [ratio ** (first - k) for k in range(self.max_extensions, 0, -1)]
            above = [ratio ** (last + k) for k in range(1, self.max_extensions + 1)]
        return tuple(float(f"{m:.6g}") for m in (*below, *grid, *above))


# What a fair-comparison run's name sets for it (Config.for_regime), so not its trial's protocol.
COMPARE_RUN_KEYS = ("learning_rate", "epochs", "stopping", "ghost_batch_size")


AUGMENTED_IN_PAPER = ("C1", "C2", "C3", "C4")  # Table 6
FILL_MODES = ("nearest", "reflect", "wrap", "constant")
INTERPOLATIONS = ("nearest", "bilinear")


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Data augmentation (Table 6; section 4, appendix E): with `enabled`, every seed also trains the runs
    sb-augmented and lb-augmented, from the trial's x0, on randomly flipped, rotated and shifted
    training images; evaluation, sharpness and the plots use the images as they are. The defaults
    are the paper's; fill and interpolation follow Keras 1's ImageDataGenerator (nearest pixel;
    the paper does not say)."""

    enabled: bool = False
    horizontal_flip: bool = True
    rotation_degrees: float = 10.0     # uniform in [-10, 10] degrees
    translation: float = 0.2           # uniform in [-0.2, 0.2] of the height and of the width
    fill_mode: str = "nearest"
    interpolation: str = "nearest"

    def validate(self, where: str) -> None:
        _check(0 <= self.rotation_degrees <= 180, "augmentation.rotation_degrees", self.rotation_degrees,
               where, "must be in [0, 180]")
        _check(0 <= self.translation < 1, "augmentation.translation", self.translation, where,
               "a fraction of the image size in [0, 1)")
        _check(self.fill_mode in FILL_MODES, "augmentation.fill_mode", self.fill_mode, where,
               f"use one of {FILL_MODES}")
        _check(self.interpolation in INTERPOLATIONS, "augmentation.interpolation", self.interpolation,
               where, f"use one of {INTERPOLATIONS}")
        _check(not self.enabled or self.horizontal_flip or self.rotation_degrees or self.translation,
               "augmentation.enabled", self.enabled, where,
               "turn on at least one of horizontal_flip, rotation_degrees, translation")

    def deviations(self) -> list[str]:
        paper = (self.horizontal_flip, self.rotation_degrees, self.translation) == (True, 10.0, 0.2)
        return [] if paper else [
            f"augmentation: flips {'on' if self.horizontal_flip else 'off'}, rotations up to "
            f"{self.rotation_degrees:g} degrees, shifts up to {self.translation:g} (paper: on, 10, 0.2)"]


@dataclasses.dataclass(frozen=True)
class ConservativeConfig:
    """Conservative training (Table 7, appendix E.2): with `enabled`, every seed also trains the runs
    sb-conservative and lb-conservative, from the trial's x0: each outer step approximately solves
    min_x mean_batch f_i(x) + (proximal_lambda / 2) ||x - x_k||^2 with `inner_steps` Adam steps on
    its batch (x_k: the weights at the start of the outer step)."""

    enabled: bool = False
    proximal_lambda: float = 1e-3      # the paper's lambda
    inner_steps: int = 3

    def validate(self, where: str) -> None:
        _check(self.proximal_lambda >= 0, "conservative.proximal_lambda", self.proximal_lambda, where,
               "must be >= 0")
        _check(self.inner_steps >= 1, "conservative.inner_steps", self.inner_steps, where, "must be >= 1")

    def deviations(self) -> list[str]:
        return [] if (self.proximal_lambda, self.inner_steps) == (1e-3, 3) else [
            f"conservative training with lambda {self.proximal_lambda:g} and {self.inner_steps} inner "
            "Adam steps (paper: 1e-3 and 3)"]


def _option(default, help: str):
    """A section key that is also its measure command's option: `help` is the option's help text."""
    return dataclasses.field(default=default, metadata={"help": help})


# The Hessian command's measures and reparametrisations (hessian.MEASURES, reparametrize.KINDS;
# a test checks they agree), here so that a config is checked before Keras loads.
HESSIAN_MEASURES = ("eigenvalue", "trace", "sharpness", "filter", "reparametrization")
REPARAMETRIZATIONS = ("batchnorm", "relu")


@dataclasses.dataclass(frozen=True)
class HessianConfig:
    """Beyond the paper (issue 14; replication/measure/hessian.py, filter_landscape.py): with `enabled`,
    `make` also measures each SB and LB run's Hessian (top eigenvalue, trace), Metric 2.1 over draws
    of A, filter-normalised slices, and how each moves under Dinh et al.'s reparametrisations. The
    other keys are the `hessian` command's options, whose defaults these are."""

    # Each key's help is its `hessian` command-line option's (__main__ builds the options from these).
    enabled: bool = False
    measures: tuple[str, ...] = _option(HESSIAN_MEASURES, "which measures")
    kinds: tuple[str, ...] = _option(REPARAMETRIZATIONS, "the reparametrisations")
    draws: int = _option(3, "independent draws of v0, probes, A and filter directions per estimate")
    iterations: int = _option(100, "Lanczos iterations at most, one H v each")
    tol: float = _option(1e-3, "Lanczos stop: residual of the top Ritz pair <= tol |theta|")
    probes: int = _option(20, "Hutchinson probes per draw")
    seed: int = _option(0, "seed of v0, the probes and the filter directions; A uses sharpness.seed + draw")
    factor: float = _option(10.0, "the reparametrisation's scale a")
    epsilon: float = _option(1e-3, "Metric 2.1's epsilon")
    points: int = _option(41, "filter-normalised 1-D slice: points of t in [-span, span]")
    grid: int = _option(11, "filter-normalised 2-D slice: grid x grid points")
    span: float = _option(1.0, "filter-normalised slices: the largest |t|")

    def validate(self, where: str) -> None:
        for key, known in (("measures", HESSIAN_MEASURES), ("kinds", REPARAMETRIZATIONS)):
            values = getattr(self, key)
            _check(len(values) >= 1 and set(values) <= set(known) and len(set(values)) == len(values),
                   f"hessian.{key}", values, where, f"give one or more of {', '.join(known)}, each once")
        for key, low, rule in (("draws", 1, ">= 1"), ("iterations", 1, ">= 1"),
                               ("probes", 2, ">= 2 (a standard error needs two)"),
                               ("points", 3, ">= 3 (t = 0 and both sides)"),
                               ("grid", 2, ">= 2")):
            _check(getattr(self, key) >= low, f"hessian.{key}", getattr(self, key), where, f"must be {rule}")
        _check(0 <= self.seed < 2 ** 32, "hessian.seed", self.seed, where, "must be in [0, 2**32)")
        for key in ("tol", "factor", "epsilon", "span"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value > 0, f"hessian.{key}", value, where,
                   "must be a finite number > 0")


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
    """Warm starts (Figure 5, claim 5; PAPER.md "Figures"): with `enabled`, every seed also trains
    one "piggyback" LB run per kept iterate of its SB run (keep_iterates, keep_every), named
    lb-from-sb<k> for the iterate of epoch k: from those weights, with fresh Adam, the LB batch and
    the config's learning rate, for `epochs` epochs (None: the config's `epochs`, the paper's 100
    after 100). The point at 0 SB epochs starts from x0: that is the plain LB run when `epochs` is
    the config's (the same x0, Adam, batch and shuffles), else one more run, lb-from-sb0."""

    enabled: bool = False
    epochs: int | None = None

    def validate(self, where: str) -> None:
        _check(self.epochs is None or self.epochs >= 1, "warm_start.epochs", self.epochs, where,
               "must be >= 1 or null (null: the config's epochs)")


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment: a network trained on a dataset under the SB and LB regimes, several seeds."""

    network: str
    dataset: str
    profile: str = "paper"                 # names results/<profile>/ and the report
    description: str = ""
    data_dir: str | None = None            # offline directory with the standard files; None = TFDS
    train_subset: int | None = None        # first N examples of a fixed shuffle; None = all
    test_subset: int | None = None
    batchnorm: str = "batch_statistics"    # the paper's Keras 1 mode=2, or "moving_average"
    # Ghost batch norm (Hoffer et al. 2017): in training, batch statistics over each consecutive
    # chunk of this many examples of a batch (models.BatchStatNormalization virtual_batch_size); None: the whole batch.
    ghost_batch_size: int | None = None
    sb_batch_size: int = 256
    lb_batch_size: int | None = None       # None = 10% of the training set (the paper's LB)
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    adam_epsilon: float = 1e-8             # Keras 1's default; tf.keras would use 1e-7
    stopping: str = "fixed"                # "fixed": exactly `epochs`; "plateau": <= `epochs`
    epochs: int = PAPER_EPOCHS
    patience: int = 5                      # plateau: epochs without train-loss improvement
    min_delta: float = 1e-4                # plateau: improvement smaller than this does not count
    eval_batch_size: int = 5000            # the paper evaluated in batches of 5000
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    jit_compile: bool = False              # TensorFlow: XLA for the training step; JAX: always XLA
    # Iterates (Figure 6): the weights at the end of these epochs, and of every keep_every-th,
    # are kept as <run>/iterates/epoch<N>.weights.h5. Nothing is kept unless asked.
    keep_iterates: tuple[int, ...] = ()
    keep_every: int | None = None
    # Which kept iterates `make` measures: "all" (Figure 6: f and phi at each), or "matched" (only
    # those nearest the training-loss levels and the plateau rule's stops: measure/matched.py).
    iterate_measure: str = "all"
    backend: str | None = None             # the Keras backend this profile must run on; None = either
    results_dir: str | None = None         # None = results/<profile> (resolved when the config is built)
    sharpness: SharpnessConfig = SharpnessConfig()
    landscape: LandscapeConfig = LandscapeConfig()
    sweep: SweepConfig = SweepConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    conservative: ConservativeConfig = ConservativeConfig()
    target: TargetConfig = TargetConfig()
    batch_size_study: BatchSizeStudyConfig = BatchSizeStudyConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    hessian: HessianConfig = HessianConfig()

    def __post_init__(self):
        # Resolved once, here, so make's rules, the trainer, the loader and to_dict all read one path.
        if self.results_dir is None:
            object.__setattr__(self, "results_dir", f"results/{self.profile}")

    def validate(self, where: str) -> "Config":
        _check(self.network in NETWORKS, "network", self.network, where, f"use one of {NETWORKS}")
        _check(self.dataset in DATASETS, "dataset", self.dataset, where, f"use one of {DATASETS}")
        _check(self.dataset in COMPATIBLE[self.network], "dataset", self.dataset, where,
               f"network {self.network} takes {COMPATIBLE[self.network]}")
        _check(self.batchnorm in BATCHNORM, "batchnorm", self.batchnorm, where, f"use one of {BATCHNORM}")
        _check(self.stopping in STOPPING, "stopping", self.stopping, where, f"use one of {STOPPING}")
        _check(self.ghost_batch_size is None or self.batchnorm == "batch_statistics", "ghost_batch_size",
               self.ghost_batch_size, where, "ghost batch norm replaces batch-statistics normalisation: "
               "use batchnorm: batch_statistics or ghost_batch_size: null")
        for key in ("train_subset", "test_subset", "lb_batch_size", "ghost_batch_size"):
            value = getattr(self, key)
            _check(value is None or value >= 1, key, value, where, "must be >= 1 or null")
        for key in ("sb_batch_size", "epochs", "patience", "eval_batch_size"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), where, "must be >= 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, where, "must be > 0")
        for key in ("beta_1", "beta_2"):
            _check(0 <= getattr(self, key) < 1, key, getattr(self, key), where, "must be in [0, 1)")
        _check(self.adam_epsilon > 0, "adam_epsilon", self.adam_epsilon, where, "must be > 0")
        _check(self.min_delta >= 0, "min_delta", self.min_delta, where, "must be >= 0")
        _check(len(self.seeds) >= 1, "seeds", self.seeds, where, "give at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", self.seeds, where, "seeds repeat")
        for s in self.seeds:
            _check(0 <= s < 2 ** 32, "seeds", s, where, "seeds must be in [0, 2**32)")
        _check(self.backend is None or self.backend in BACKENDS, "backend", self.backend, where,
               f"use one of {BACKENDS} or null")
        _check(bool(self.profile) and "/" not in self.profile, "profile", self.profile, where,
               "a non-empty name without '/'")
        for e in self.keep_iterates:
            _check(1 <= e <= self.epochs, "keep_iterates", e, where,
                   f"each epoch must be in [1, epochs] = [1, {self.epochs}]")
        _check(len(set(self.keep_iterates)) == len(self.keep_iterates), "keep_iterates",
               self.keep_iterates, where, "epochs repeat")
        _check(self.keep_every is None or 1 <= self.keep_every <= self.epochs, "keep_every",
               self.keep_every, where, f"must be in [1, epochs] = [1, {self.epochs}] or null")
        _check(self.iterate_measure in ITERATE_MEASURES, "iterate_measure", self.iterate_measure, where,
               f"use one of {ITERATE_MEASURES}")
        _check(self.iterate_measure != "matched" or self.keep_every == 1, "iterate_measure",
               self.iterate_measure, where, "matched points need every epoch's iterate: set keep_every: 1")
        self.sharpness.validate(where)
        self.landscape.validate(where)
        self.sweep.validate(where)
        self.augmentation.validate(where)
        self.conservative.validate(where)
        self.hessian.validate(where)
        self.target.validate(where)
        self.batch_size_study.validate(where)
        _check(self.stopping != "target" or self.target.value is not None, "stopping", self.stopping, where,
               "stopping 'target' needs target.value (the training loss or error to reach)")
        self.warm_start.validate(where)
        _check(not self.warm_start.enabled or bool(self.kept_epochs()), "warm_start.enabled", True, where,
               "piggyback runs start from the SB run's kept iterates: give keep_iterates or keep_every")
        _check(not self.augmentation.enabled or len(data.DATASETS[self.dataset].input_shape) == 3,
               "augmentation.enabled", True, where, f"{self.dataset} is not an image dataset "
               f"(inputs {data.DATASETS[self.dataset].input_shape}): augmentation flips, rotates and "
               "shifts images")
        for b in self.sweep.batch_sizes:  # these would train an exact copy of the SB or LB run
            _check(b != self.sb_batch_size, "sweep.batch_sizes", b, where,
                   "the SB batch size is already a point of every curve (scaling is 1 there)")
            _check(b != self.lb_batch_size or "none" not in self.sweep.lr_scalings, "sweep.batch_sizes",
                   b, where, "the LB batch size is already a point of the unscaled curve")
        return self

    def kept_epochs(self) -> tuple[int, ...]:
        """The epochs whose end-of-epoch weights a run keeps: keep_iterates and every multiple of
        keep_every up to `epochs`, in order (a run stopped earlier keeps those it reached)."""
        every = range(self.keep_every, self.epochs + 1, self.keep_every) if self.keep_every else ()
        return tuple(sorted({*self.keep_iterates, *every}))

    # The runs of this config, each a RunSpec (replication/regimes.py), and what each one trains
    # with: its config, batch and deviations. The caller parses a run's name once; nothing here does.
    def sweep_runs(self) -> list[regimes.RunSpec]:
        """The sweep, batch sizes in order, each scaling in turn."""
        return [regimes.sweep(b, s) for s in self.sweep.lr_scalings for b in sorted(self.sweep.batch_sizes)]

    def remedy_runs(self) -> list[regimes.RunSpec]:
        """The enabled remedies: sb-<remedy>, lb-<remedy> for each."""
        return [regimes.remedy(base, remedy) for remedy in regimes.REMEDIES if getattr(self, remedy).enabled
                for base in regimes.REGIMES]

    def warm_start_epochs(self) -> int:
        """Epochs of each piggyback run (warm_start.epochs, else the config's)."""
        return self.warm_start.epochs or self.epochs

    def warm_start_points(self) -> dict[int, regimes.RunSpec]:
        """{SB epochs: the run that is the piggyback LB run from there} of the warm start (Figure 5),
        SB epochs in order; 0 is x0: the plain LB run when the piggyback runs train as many epochs
        as it does, else lb-from-sb0. {} unless warm_start.enabled."""
        if not self.warm_start.enabled:
            return {}
        zero = regimes.pair("lb") if self.warm_start_epochs() == self.epochs else regimes.warm_start(0)
        return {0: zero, **{k: regimes.warm_start(k) for k in self.kept_epochs()}}

    def warm_start_runs(self) -> list[regimes.RunSpec]:
        """The piggyback runs this config adds (not the plain LB run)."""
        return [spec for spec in self.warm_start_points().values() if spec.kind == "warm_start"]

    def runs(self) -> list[regimes.RunSpec]:
        """Every run of one seed: SB, LB, the sweep, the remedies, then the warm starts. (The
        batch-size study decides its runs as it goes: experiments/batchsize.py.)"""
        return [*map(regimes.pair, regimes.REGIMES), *self.sweep_runs(), *self.remedy_runs(),
                *self.warm_start_runs()]

    def regimes(self) -> list[str]:
        """The names of runs(), as their directories are named."""
        return [spec.name for spec in self.runs()]

    def warm_start_settings(self, spec: regimes.RunSpec) -> dict | None:
        """What a piggyback run starts from and for how long (its run entry in config.yaml records
        this, so a finished one made with other settings is refused); None for any other run."""
        if spec.kind != "warm_start":
            return None
        return {"from_regime": "sb" if spec.sb_epoch else "x0", "sb_epoch": spec.sb_epoch,
                "epochs": self.warm_start_epochs(), "trial_epochs": self.epochs}

    def remedy_settings(self, spec: regimes.RunSpec) -> dict | None:
        """What a remedy run trains with ({"remedy": name, **its section}; its run entry in
        config.yaml records this, so a finished remedy run made with other settings is refused);
        None for any other run."""
        if spec.remedy is None:
            return None
        section = dataclasses.asdict(getattr(self, spec.remedy))
        section.pop("enabled")
        return {"remedy": spec.remedy, **section}

    def for_regime(self, spec: regimes.RunSpec) -> "Config":
        """The config the run `spec` trains with, once checked to be a run of this config: a scaled
        sweep run and a study run get their learning rate, a fair-comparison run its rate, epochs
        and ghost batch, a piggyback run warm_start's epochs; the others train with this config."""
        self._check_run(spec)
        if spec.kind == "study":
            return dataclasses.replace(self, learning_rate=self.learning_rate * self.study_lr_factor(spec))
        if spec.kind == "compare":
            rate = self.learning_rate if spec.multiplier is None else \
                self.learning_rate * self.study_lr_factor(spec)
            return dataclasses.replace(self, learning_rate=rate, epochs=spec.epochs, stopping="fixed",
                                       keep_iterates=(), keep_every=None, ghost_batch_size=spec.ghost)
        if spec.kind == "warm_start":
            # A piggyback run trains warm_start's epochs and adds no runs or iterates of its own.
            return dataclasses.replace(self, epochs=self.warm_start_epochs(), keep_iterates=(), keep_every=None,
                                       warm_start=dataclasses.replace(self.warm_start, enabled=False))
        if spec.kind == "sweep" and spec.scaling != "none":
            factor = (spec.batch / self.sb_batch_size) ** regimes.LR_SCALINGS[spec.scaling]
            return dataclasses.replace(self, learning_rate=self.learning_rate * factor)
        return self

    def study_lr_factor(self, spec: regimes.RunSpec) -> float:
        """A study (or tuned fair-comparison) run's learning rate / learning_rate: the scaling
        rule's factor at its batch times its multiplier."""
        return (spec.batch / self.sb_batch_size) ** regimes.LR_SCALINGS[self.batch_size_study.lr_scaling] \
            * spec.multiplier

    def run_deviations(self, spec: regimes.RunSpec) -> list[str]:
        """deviations() of the run `spec`: a run with its own learning rate says it, a remedy run
        how its remedy departs from the paper's, a piggyback run where it starts."""
        scaled = self.for_regime(spec)
        if spec.kind == "warm_start":
            start = f"SB's iterate of epoch {spec.sb_epoch}" if spec.sb_epoch else "x0"
            return [*scaled.deviations(),
                    f"piggyback LB run (Figure 5) from {start} of a {self.epochs}-epoch SB run, for "
                    f"{scaled.epochs} epochs (paper: 100 LB epochs from each of 100 SB epochs)"]
        if spec.kind == "remedy":
            extra = getattr(self, spec.remedy).deviations()
            if spec.remedy == "augmentation" and self.network not in AUGMENTED_IN_PAPER:
                extra.insert(0, f"data augmentation on {self.network}: the paper augments "
                             f"{', '.join(AUGMENTED_IN_PAPER)} only (Table 6)")
            return [*self.deviations(), *extra]
        if scaled is self:
            return self.deviations()
        rule = self.batch_size_study.lr_scaling
        if spec.kind == "compare":
            rate = (f"the fixed learning rate {scaled.learning_rate:.3g}" if spec.multiplier is None else
                    f"learning rate {scaled.learning_rate:.3g} ({spec.multiplier:g} x the {rule} "
                    f"rule's value at batch {spec.batch}, the batch-size study's best)")
            return [*scaled.deviations(), f"{rate}; fair-comparison run of the batch-size study"]
        if spec.kind == "study":
            return [*self.deviations(), f"learning rate {scaled.learning_rate:.3g} ({spec.multiplier:g} x the "
                    f"{rule} rule's value at batch {spec.batch}; batch-size study run)"]
        return [*self.deviations(), f"learning rate {scaled.learning_rate:.3g} ({spec.scaling}-scaled with "
                f"batch {spec.batch} from {self.learning_rate:g} at {self.sb_batch_size}; sweep run)"]

    def _check_run(self, spec: regimes.RunSpec) -> None:
        """ConfigError unless `spec` is a run of this config: one of runs(), or a run of the
        batch-size study (a batch and multiplier it may train) or of its fair comparison."""
        study = self.batch_size_study
        if spec.kind == "study":
            if spec.batch in study.batch_sizes and spec.multiplier in study.multipliers():
                return
            raise ConfigError(f"unknown regime {spec.name!r}: a batch-size study run needs a batch in "
                              f"batch_size_study.batch_sizes {list(study.batch_sizes)} and a "
                              f"multiplier in {list(study.multipliers())}")
        if spec.kind == "compare":
            if spec.batch in study.compare_batch_sizes and spec.ghost in (None, study.compare_ghost_batch_size) \
                    and (spec.multiplier is None or spec.multiplier in study.multipliers()):
                return
            raise ConfigError(f"unknown regime {spec.name!r}: a fair-comparison run needs a batch in "
                              f"batch_size_study.compare_batch_sizes {list(study.compare_batch_sizes)}, a "
                              f"multiplier in {list(study.multipliers())} and ghost batch "
                              f"{study.compare_ghost_batch_size}")
        if spec not in self.runs():
            def listed(kind: str, specs: list) -> str:
                return f", or a {kind} run of this config: {', '.join(s.name for s in specs)}" if specs else ""

            sweep = listed("sweep", self.sweep_runs()) or " (this config has no sweep.batch_sizes)"
            raise ConfigError(f"unknown regime {spec.name!r}: use sb or lb{sweep}"
                              f"{listed('remedy', self.remedy_runs())}{listed('piggyback', self.warm_start_runs())}")

    def batch_size(self, spec: regimes.RunSpec, num_train: int) -> int:
        """SB: 256; LB: 10% of the training set unless set (PAPER.md "Training protocol"); a run
        that names its batch (sweep, study, fair comparison): that one; a remedy run: its base
        regime's (sb-augmented: SB's); a piggyback run: LB's. (for_regime checks the run.)"""
        ten_percent = max(1, round(num_train / 10))  # TIMIT: 72133, as the paper prints
        size = spec.batch or (self.sb_batch_size if spec.base == "sb" else self.lb_batch_size or ten_percent)
        if size > num_train:
            what = f"{spec.base}_batch_size {size}" if spec.batch is None else f"the batch {size} of {spec.name}"
            raise ConfigError(f"{what} is larger than the training set ({num_train} examples): "
                              "lower it or use a larger train_subset")
        return size

    def deviations(self) -> list[str]:
        """Every way this config departs from the paper's protocol, said out loud in results."""
        out = []
        if self.dataset != PAPER_DATASET[self.network]:
            out.append(f"dataset {self.dataset} instead of the paper's {PAPER_DATASET[self.network]}")
        if self.train_subset:
            out.append(f"training set reduced to {self.train_subset} examples")
        if self.test_subset:
            out.append(f"test set reduced to {self.test_subset} examples")
        if self.batchnorm != "batch_statistics":
            out.append("batch norm with moving averages (the paper normalised with batch statistics)")
        if self.ghost_batch_size:
            out.append(f"ghost batch norm in training: statistics over virtual batches of {self.ghost_batch_size} "
                       "(Hoffer et al. 2017; the paper normalised with the whole batch's)")
        if self.epochs != PAPER_EPOCHS or self.stopping != "fixed":
            rule = f"{self.epochs} epochs" if self.stopping == "fixed" else (
                f"plateau stopping (patience {self.patience}, at most {self.epochs} epochs)"
                if self.stopping == "plateau" else
                f"stopped at a target ({self.target.metric} <= {self.target.value:g} on "
                f"{self.target.eval_subset} training examples, checked every "
                f"{self.target.every_examples or self.target.every_steps} "
                f"{'examples' if self.target.every_examples else 'steps'}, at most {self.target.max_steps} steps)")
            out.append(f"{rule} instead of the figures' {PAPER_EPOCHS}")
        if len(self.seeds) != PAPER_SEEDS:
            out.append(f"{len(self.seeds)} seed(s) instead of {PAPER_SEEDS}")
        if self.sb_batch_size != 256:
            out.append(f"SB batch {self.sb_batch_size} instead of 256")
        if self.lb_batch_size is not None:
            out.append(f"LB batch fixed at {self.lb_batch_size} instead of 10% of the training set")
        if (self.learning_rate, self.beta_1, self.beta_2, self.adam_epsilon) != (1e-3, 0.9, 0.999, 1e-8):
            out.append("Adam hyper-parameters differ from Keras 1 defaults")
        if self.eval_batch_size != 5000:
            out.append(f"evaluation batch {self.eval_batch_size} instead of 5000")
        if self.sharpness.subset:
            out.append(f"sharpness on {self.sharpness.subset} training examples, not the whole set")
        if self.sharpness.iterations != 10:
            out.append(f"sharpness with {self.sharpness.iterations} L-BFGS-B iterations instead of 10")
        if self.landscape.subset:
            out.append(f"parametric plots on {self.landscape.subset} training examples")
        if (iterates := iterate_deviation(self.kept_epochs(), self.epochs, self.iterate_measure == "matched")):
            out.append(iterates)
        return out

    def check_subsets(self, num_train: int, num_test: int) -> None:
        """Every subset key asks for at most the examples there are: a larger one would use them
        all while results said the set was reduced."""
        in_use = min(num_train, self.train_subset or num_train)
        for key, size, available, which in (
                ("train_subset", self.train_subset, num_train, "training set"),
                ("test_subset", self.test_subset, num_test, "test set"),
                ("sharpness.subset", self.sharpness.subset, in_use, "training set in use"),
                ("landscape.subset", self.landscape.subset, in_use, "training set in use")):
            if size is not None and size > available:
                raise ConfigError(f"{key} {size} is larger than the {self.dataset} {which} ({available} "
                                  "examples): lower it, or set it to null to use them all")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def iterate_deviation(kept: tuple[int, ...], epochs: int, matched: bool) -> str | None:
    """How a run's iterates depart from Figure 6's, which has a point at about every epoch; None
    where they do not (every epoch kept and measured). It starts with "iterates", which the claims
    that use no iterates leave out (analysis/verdicts.UNRELATED). The loader rewords what older runs
    recorded with it (analysis/results.py), so the same run reads the same in every report."""
    if not kept:
        return None
    if len(kept) < epochs:
        return (f"iterates kept at epochs {', '.join(map(str, kept))} of {epochs} "
                "(Figure 6 has a point at about every epoch)")
    if matched:
        return (f"iterates kept at every epoch of {epochs}, but Figure 6's sharpness measured only at those "
                "nearest the matched training-loss levels and at the plateau stops (the paper has a point "
                "at about every epoch)")
    return None


def _check(ok: bool, key: str, value, where: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: bad value {value!r} for '{key}': {fix}")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(cls, data: dict, where: str, prefix: str = ""):
    """Build dataclass `cls` from `data`, type-checking every field against its annotation."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown config key '{prefix}{unknown[0]}' "
                          f"(known keys: {', '.join(prefix + k for k in fields)})")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _coerce(hint, value, where, key + ".")
        else:
            kwargs[name] = _convert(hint, value, key, where)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required config key '{prefix}{missing[0]}'")
    return cls(**kwargs)


def _convert(hint, value, key: str, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: bad value {value!r} for '{key}': expected a list")
        return tuple(_convert(args[0], v, key, where) for v in value)
    if hint is float and not isinstance(value, bool):
        number = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # inf passes every "> 0" check below
                raise ConfigError(f"{where}: bad value {value!r} for '{key}': must be a finite number")
            return number
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: bad value {value!r} for '{key}': expected {hint.__name__}")


def _set_dotted(data: dict, dotted: str, raw: str, where: str) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: cannot set '{dotted}': '{k}' is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: the value is not valid YAML ({str(err).splitlines()[0]}): "
                          "quote it or fix its syntax") from None


def load(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Config:
    """Read and validate a YAML config, applying `key=value` overrides (dotted keys allowed)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text (UTF-8) file: give a YAML config") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}: fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys to values")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), raw, f"{where} (--set {item})")
    if overrides:
        where = f"{where} (--set {' --set '.join(overrides)})"
    return _paths_checked(_coerce(Config, data, where).validate(where), where)


def _paths_checked(config: Config, where: str) -> Config:
    """`config` with `~` in results_dir expanded (data.load expands data_dir the same way), once
    both paths are usable: not empty, and a results_dir that make's rules can name unquoted."""
    for key in ("results_dir", "data_dir"):
        _check(getattr(config, key) != "", key, "", where, "give a directory (an empty path would "
               "mean the current one)" + ("; null downloads through TFDS" if key == "data_dir" else ""))
    results_dir = os.path.expanduser(config.results_dir)
    _check(not UNSAFE_PATH.search(results_dir), "results_dir", results_dir, where,
           "use a path without spaces or any of # $ % : ; = & | < > ( ) ' \" ` * ? [ ] \\ (make's rules "
           "and commands name it unquoted)")
    return dataclasses.replace(config, results_dir=results_dir)


def defaults() -> dict:
    """Every key's default as to_dict() writes it (tuples as lists, sections as mappings): what a
    run whose resolved config predates a key is taken to have had."""
    return {f.name: _plain(dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default) else f.default)
            for f in dataclasses.fields(Config) if f.default is not dataclasses.MISSING}


def with_defaults(resolved: dict) -> dict:
    """A run's resolved config with every key it predates at its default, a section's keys too (a
    run made before target.milestones existed had none)."""
    out = {}
    for key, default in {**defaults(), **{k: None for k in resolved if k not in defaults()}}.items():
        value = resolved.get(key, default)
        out[key] = {**default, **value} if isinstance(default, dict) and isinstance(value, dict) else value
    return out


def from_dict(data: dict, where: str = "<dict>") -> Config:
    return _coerce(Config, data, where).validate(where)


def dump(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
