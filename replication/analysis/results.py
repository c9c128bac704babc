"""One view of a results folder: every file read once, and never runs of two protocols averaged.

`load(results_dir)` reads every finished run (metrics.json, env.json, history.csv), the files
of each measure registered in measure/registry.py (sharpness/*.json, noise/*.json, hessian/*.json,
with the filter-normalised slices hessian/*.csv) and every parametric-plot curve (landscape CSV and
its JSON sidecar) once, into frozen records; the tables, figures, verdicts and the report all read
the returned `Results`. Before anything is compared, it refuses (ResultsError: one line naming
both files, the key, both values and the fix):

- two runs of one network and dataset made under different protocols. A run's protocol is its
  resolved config less what differs by design between the runs of a trial (the seed, the regime,
  the regime's batch size, a sweep run's scaled learning rate) and the keys that do not change
  training (`rundir.NON_TRAINING_KEYS`), plus the backend that trained it. So an SB/LB pair made
  with different `--set` values, or one seed trained for other epochs, is never averaged.
- two sharpness (or noise-scale) results of one trial and (space, epsilon) (or point) computed
  with different settings (training examples, iterations, p, start, backend, ...), so that every
  cell of Tables 3-4 and Figure 4, and every SB/LB ratio, compares like with like;
- a measurement that is not of its run: a sharpness or noise file recorded for another network,
  regime, seed or batch norm, a noise scale at x0 of another x0, a parametric plot whose runs are
  not in the folder or whose x0, batch norm, evaluation batch or final weights are not theirs;
- a number no result can hold (VALUE_RULES, HISTORY_COLUMNS, SLICE_COLUMNS, CURVE_COLUMNS: an
  accuracy outside [0, 100], a negative phi (y = 0 is feasible, so phi >= 0), loss or time, a
  fractional or non-positive count, a NaN or inf anywhere but a diverged run's losses), a key the
  tables read missing, or text where a number belongs: the file, the key, the value and its fix;
- a run whose identity its files contradict (IDENTITY_RULE): its directory names another
  network, dataset, regime or seed than its metrics.json, config.yaml or env.json record, or its
  backend differs between them, or it is a run already counted under another directory.

Every table then averages seeds by one rule, `over_seeds` (diverged runs, failed and missing
measurements counted and left out), and names its columns from one vocabulary (`sharpness_column`,
`Summary.columns`: e.g. lb_phi_full_eps0.001_mean).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from replication import regimes, rundir, storage
from replication import config as config_lib
from replication.errors import UserError
from replication.measure import registry

FIX = "delete one set, or put them in separate results_dir"
# Runs made before the JAX port name no backend: they ran on TensorFlow.
DEFAULT_BACKEND = "tensorflow"
# Keys of a measurement's recorded settings that differ by design between runs.
PER_RUN_SETTINGS = ("weights_digest", "adam_state_sha256")  # the point measured, and its Adam state


class ResultsError(UserError, RuntimeError):
    """A results directory is missing, unreadable, holds no finished runs, or mixes protocols."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One record of a registered measure in a run: `<run>/sharpness/<space>_eps<eps>.json`, ..."""

    path: Path
    record: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run directory, read once."""

    path: Path
    metrics: Mapping[str, Any]          # metrics.json
    env: Mapping[str, Any]              # env.json ({} if absent)
    train_seconds: float                # sum of history.csv's epoch wall times
    backend: str                        # the Keras backend that trained it
    protocol: Mapping[str, Any]         # what every run of its trial must share
    sharpness: Mapping[tuple[str, float], Measurement]  # (space, epsilon) -> result, file order
    noise: Mapping[str, Measurement]    # point ("initial", "final") -> result
    # hessian.py's results: name (top_eigenvalue, trace, filter_landscape, ...) -> result, and the
    # filter-normalised slices (filter_landscape_1d, _2d) -> their CSV rows
    hessian: Mapping[str, Measurement] = dataclasses.field(default_factory=dict)
    slices: Mapping[str, list] = dataclasses.field(default_factory=dict)
    history: tuple = ()                 # history.csv's rows, checked (empty if absent)
    # Every registered measure's records by its name (measure/registry.py): sharpness, noise and
    # hessian above are the same mappings under the names the tables use.
    measurements: Mapping[str, Mapping[Any, Measurement]] = dataclasses.field(default_factory=dict)

    @property
    def network(self) -> str:
        return self.metrics["network"]

    @property
    def dataset(self) -> str:
        return self.metrics["dataset"]

    @property
    def regime(self) -> str:
        return self.metrics["regime"]

    @property
    def spec(self) -> regimes.RunSpec | None:
        """What the run's name says (regimes.RunSpec); None for a name no run has any more."""
        return regimes.parse_or_none(self.regime)

    @property
    def seed(self) -> int:
        return int(self.metrics["seed"])

    @property
    def diverged(self) -> bool:
        return bool(self.metrics["diverged"])


@dataclasses.dataclass(frozen=True)
class Curve:
    """A finished parametric plot (Figure 3 or 7): its CSV as float columns, its JSON sidecar,
    and the SB and LB runs of this folder it was drawn between."""

    csv: Path
    meta: Mapping[str, Any]
    columns: Mapping[str, np.ndarray]
    sb: Run
    lb: Run


@dataclasses.dataclass(frozen=True)
class Results:
    """Everything below one results directory; see load()."""

    root: Path
    runs: tuple[Run, ...]       # sorted by path
    curves: tuple[Curve, ...]   # sorted by CSV path

    def trials(self) -> dict[tuple[str, str], dict[str, list[Run]]]:
        """{(network, dataset): {regime: [runs, by seed]}} in a stable order."""
        out: dict = {}
        for run in self.runs:
            out.setdefault((run.network, run.dataset), {}).setdefault(run.regime, []).append(run)
        return dict(sorted(out.items()))


def load(results_dir) -> Results:
    """Read `results_dir` once and check it (module docstring); ResultsError names what is wrong."""
    root = Path(results_dir)
    runs = tuple(_read_run(path) for path in _run_directories(root))
    _check_not_counted_twice(runs)
    _check_protocols(runs)
    _check_measurements(runs)
    by_path = {run.path: run for run in runs}
    curves = tuple(curve for csv_path in sorted(root.glob("*/landscape/seed*_*.csv"))
                   if (curve := _read_curve(csv_path, by_path)) is not None)
    return Results(root, runs, curves)


# The column vocabulary of every table ---------------------------------------------------------------
# One name means one thing in every CSV and table built from a folder; a name is made of these parts:
#   phi_<space>_eps<epsilon>  one run's sharpness (Metric 2.1) at (space, epsilon): sharpness_column("phi", ...);
#                             f_<space>_eps<epsilon> the f(x) recorded with it (f_column)
#   <role>_<quantity>         whose it is: sb_, lb_, plain_lb_, paper_ (the published value), ...
#   <quantity>_<statistic>    the quantity over the seeds of a group (over_seeds, Summary.columns):
#                             mean, std, n (values averaged), failed, missing; a row's `seeds` and
#                             `diverged` count the group's runs and those left out for diverging
def at_cap(record: Mapping) -> bool:
    """Did every solve of a sharpness result end at its iteration limit (status 1)? Its phi is then
    the best f the inexact solve reached: a lower bound on max f over C_eps. No solves recorded: False."""
    return all(s.get("status") == 1 for s in record.get("solves") or [{}])


def sharpness_column(prefix: str, space: str, epsilon: float) -> str:
    """'<prefix>_<space>_eps<epsilon>', e.g. sharpness_column("phi", "full", 1e-3) -> 'phi_full_eps0.001'."""
    return f"{prefix}_{space}_eps{epsilon:g}"


def f_column(key: str) -> str:
    """The column of the f recorded with a sharpness column: 'phi_full_eps0.001' -> 'f_full_eps0.001'."""
    return "f_" + key.removeprefix("phi_")


def sharpness_setting(key: str, prefix: str) -> tuple[str, str]:
    """The (space, epsilon as written) of a `sharpness_column` key, with or without a statistic:
    'phi_full_eps0.001' and 'phi_full_eps0.001_mean' -> ('full', '0.001')."""
    space, epsilon = key.removeprefix(prefix + "_").split("_eps", 1)
    return space, epsilon.split("_", 1)[0]  # `:g` writes no "_" into an epsilon


def sharpness_columns(rows: list[dict], prefix: str) -> list[str]:
    """The `sharpness_column(prefix, ...)` quantities named in `rows`, whether as a run's value or as
    statistics over seeds ('phi_full_eps0.001_mean', _std, _failed, ...): full space at eps 1e-3 first
    (the paper's headline measure), then the full space before random subspaces, larger epsilons first."""
    keys = {sharpness_column(prefix, space, float(epsilon)) for r in rows for k in r
            if k.startswith(prefix + "_") and "_eps" in k for space, epsilon in [sharpness_setting(k, prefix)]}

    def order(key):
        space, epsilon = sharpness_setting(key, prefix)
        return key != sharpness_column(prefix, "full", 1e-3), space != "full", space, -float(epsilon)

    return sorted(keys, key=order)


# Seeds: the one rule for a quantity over the runs of a group -------------------------------------------
FAILED = "failed"  # what a value function of over_seeds returns for a measurement that failed
STATISTICS = ("mean", "std", "n", "failed", "missing")
MEAN_STD = ("mean", "std")


@dataclasses.dataclass(frozen=True)
class Summary:
    """A quantity over the runs (one per seed) of a group: the mean and sample std (ddof 1, nan below
    two values) of the n values kept, and every run left out, counted by why: diverged, failed (its
    measurement failed) or missing (not measured). seeds = n + diverged + failed + missing."""

    mean: float
    std: float
    n: int
    seeds: int
    diverged: int
    failed: int
    missing: int

    def columns(self, name: str, statistics=STATISTICS) -> dict:
        """The table columns '<name>_<statistic>': columns("test", MEAN_STD) -> {"test_mean": .., "test_std": ..}."""
        return {f"{name}_{statistic}": getattr(self, statistic) for statistic in statistics}


def over_seeds(runs, value: Callable) -> Summary:
    """`value` over the runs of one group (its seeds), by the rule of every table: a diverged run has
    no minimiser to measure, so it is counted and left out before `value` is asked; value(run) is a
    number, FAILED (counted, never averaged as 0) or None (not measured; a NaN counts as one too).
    A run is a `Run` or one run's row (a mapping with its 'diverged')."""
    kept = [run for run in runs if not (run["diverged"] if isinstance(run, Mapping) else run.diverged)]
    values = [value(run) for run in kept]
    failed = sum(isinstance(v, str) and v == FAILED for v in values)
    mean, std, n = summarize([float(v) for v in values if v is not None and not isinstance(v, str)])
    return Summary(mean, std, n, len(runs), len(runs) - len(kept), failed, len(kept) - failed - n)


def summarize(values) -> tuple[float, float, int]:
    """(mean, sample std or nan, n) of the finite values: the arithmetic of over_seeds."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), std, len(values)


def sharpness_value(run: Run, space: str, epsilon: float):
    """over_seeds' value of a sharpness column: the run's phi at (space, epsilon), FAILED where its
    solve failed, None where it was not measured."""
    measurement = run.sharpness.get((space, epsilon))
    if measurement is None:
        return None
    record = measurement.record
    return FAILED if record["failed"] or record["phi"] is None else float(record["phi"])


def read_curve(path) -> dict[str, np.ndarray]:
    """A curve CSV (ours or a published one) as {column: float array}."""
    return _float_columns(storage.read_csv(path))


def _float_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    return {column: np.array([float(row[column]) for row in rows]) for column in (rows[0] if rows else {})}


# Reading ------------------------------------------------------------------------------------------
def _run_directories(root: Path) -> list[Path]:
    """Finished run directories (those with metrics.json) below `root`."""
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


def _frozen(mapping: dict) -> Mapping:
    return types.MappingProxyType(mapping)


def _read_run(path: Path) -> Run:
    metrics = storage.read_json(path / "metrics.json")
    check_values(path / "metrics.json", metrics, REQUIRED["metrics"])
    diverged = metrics["diverged"]
    for key in ("train_loss", "test_loss"):  # only a diverged run may end on a non-finite loss
        if not diverged and key in metrics and not math.isfinite(metrics[key]):
            raise _impossible(path / "metrics.json", key, metrics[key],
                              "a finite number >= 0 (the run did not diverge)")
    env = storage.read_json(path / "env.json") if (path / "env.json").exists() else {}
    check_values(path / "env.json", env)
    history = storage.read_csv(path / "history.csv") if (path / "history.csv").exists() else []
    seconds = _check_history(path / "history.csv", history, metrics)
    resolved = metrics.get("resolved_config") or {}
    if not isinstance(resolved, Mapping) or not isinstance(resolved.get("run", {}), Mapping):
        raise _impossible(path / "metrics.json", "resolved_config", resolved, "the run's config, with its run entry")
    backend = resolved.get("run", {}).get("backend") or env.get("backend") or DEFAULT_BACKEND
    _check_identity(path, metrics, env, resolved)
    metrics = {**metrics, "deviations": _current_deviations(path, metrics["deviations"], resolved)}
    measurements = {measure.name: _read_measurements(path, measure)
                    for measure in registry.MEASURES.values() if measure.files}
    hessian = measurements.get("hessian", {})
    # The slices belong to a finished filter_landscape record (its JSON is written after them).
    slices = {file.stem: _check_columns(file, storage.read_csv(file), SLICE_COLUMNS)
              for file in sorted(path.glob("hessian/*.csv")) if "filter_landscape" in hessian}
    return Run(path, _frozen(metrics), _frozen(env), seconds, backend,
               _frozen(protocol(metrics["regime"], resolved, backend)), measurements.get("sharpness", _frozen({})),
               measurements.get("noise", _frozen({})), hessian, _frozen(slices), tuple(history), _frozen(measurements))


# What runs made before config_lib.iterate_deviation recorded for a run that kept every epoch's
# iterate: not a departure from Figure 6, while measuring only the matched ones (told by the
# resolved config or, for runs older than iterate_measure, by measure/matched.py's summary) is.
_OLD_EVERY_EPOCH = re.compile(r"iterates kept at every epoch of (\d+)")


def _current_deviations(path: Path, recorded, resolved: Mapping) -> list:
    """A run's recorded deviations, with an older run's iterate wording replaced by today's."""
    out = []
    for text in recorded if isinstance(recorded, list) else [recorded]:
        old = _OLD_EVERY_EPOCH.fullmatch(text) if isinstance(text, str) else None
        if old is None:
            out.append(text)
            continue
        epochs = int(old.group(1))
        # measure/matched.summary_path, not imported: that module brings in the training stack
        matched = resolved.get("iterate_measure") == "matched" or (path / "iterates" / "matched.json").exists()
        if (now := config_lib.iterate_deviation(tuple(range(1, epochs + 1)), epochs, matched)):
            out.append(now)
    return out


def _read_measurements(path: Path, measure: registry.Measure) -> Mapping:
    """The records of `measure` in the run directory `path`, in file order, by measure.key."""
    out = {}
    for file in sorted(path.glob(measure.files)):
        record = _read_measurement(file, measure)
        out[measure.key(file, record)] = Measurement(file, _frozen(record))
    return _frozen(out)


def protocol(regime: str, resolved: dict, backend: str) -> dict:
    """What a run computed, as far as it must be shared by every run of its trial: its resolved
    config less the keys that do not change training and the per-run ones ("run": regime, seed,
    batch size), the learning rate of a scaled sweep run and the epochs of a piggyback run taken back
    to the config's, and the backend that trained it (which replaces the config's optional backend
    pin). A key a run's config did not have yet (an older run) counts as its default."""
    filled = config_lib.with_defaults(resolved)
    # Kept iterates change what a run directory holds, not what it computed.
    out = {key: filled[key] for key in sorted(filled)
           if key not in (*rundir.NON_TRAINING_KEYS, *rundir.RUN_FILE_KEYS, "run", "backend")}
    # A piggyback run (Figure 5) trains its own epochs from an iterate of the trial's SB run.
    warm_start = resolved.get("run", {}).get("warm_start")
    spec = regimes.parse_or_none(regime)
    kind = spec.kind if spec else None
    if kind == "warm_start" and warm_start:
        out["epochs"] = warm_start["trial_epochs"]
    if kind == "sweep" and spec.scaling != "none" and isinstance(out.get("learning_rate"), float):
        factor = (spec.batch / out["sb_batch_size"]) ** regimes.LR_SCALINGS[spec.scaling]
        out["learning_rate"] = float(f"{out['learning_rate'] / factor:.12g}")
    if kind == "study" and isinstance(out.get("learning_rate"), float):  # a batch-size study run's own rate
        exponent = regimes.LR_SCALINGS[resolved.get("batch_size_study", {}).get("lr_scaling", "sqrt")]
        factor = (spec.batch / out["sb_batch_size"]) ** exponent * spec.multiplier
        out["learning_rate"] = float(f"{out['learning_rate'] / factor:.12g}")
    if kind == "compare":  # a fair-comparison run: its name states these
        for key in config_lib.COMPARE_RUN_KEYS:
            out.pop(key, None)
    out["backend"] = backend
    return out


def _read_curve(csv_path: Path, runs: dict[Path, Run]) -> Curve | None:
    """The curve at `csv_path` with its runs, or None while its JSON sidecar (written last) is absent."""
    json_path = csv_path.with_suffix(".json")
    if not json_path.exists():
        return None
    meta, rows = storage.read_json(json_path), storage.read_csv(csv_path)  # damaged files first, then values
    check_values(json_path, meta, REQUIRED["curve"])
    _check_columns(csv_path, rows, CURVE_COLUMNS, required=tuple(CURVE_COLUMNS))
    trial, seed = csv_path.parent.parent, meta["seed"]
    pair = {regime: runs.get(trial / regime / f"seed{seed}") for regime in regimes.REGIMES}
    missing = [str(trial / regime / f"seed{seed}") for regime, run in pair.items() if run is None]
    if missing:
        raise ResultsError(f"{csv_path} was computed from runs that are not finished in this folder "
                           f"({', '.join(missing)}): delete {csv_path.with_suffix('')}.* or train "
                           "those runs and run the landscape step again")
    if "deviations" in meta:  # its trial's, recorded when it was computed: reworded as its SB run's are
        sb = pair["sb"]
        meta = {**meta, "deviations": _current_deviations(sb.path, meta["deviations"],
                                                          sb.metrics.get("resolved_config") or {})}
    curve = Curve(csv_path, _frozen(meta), _frozen(_float_columns(rows)), pair["sb"], pair["lb"])
    _check_curve(curve)
    return curve


# Checks -------------------------------------------------------------------------------------------
def _first_difference(a: Mapping, b: Mapping) -> str | None:
    return next((key for key in sorted({*a, *b}) if a.get(key) != b.get(key)), None)


def _check_protocols(runs: tuple[Run, ...]) -> None:
    """Every run of a (network, dataset) has the protocol of the first one. A fair-comparison run
    of the batch-size study has no learning rate, epochs, stopping or ghost batch of its trial (its
    name states its own): it is compared on the keys it has, against a run that has them all."""
    first: dict[tuple[str, str], Run] = {}
    for run in sorted(runs, key=lambda r: -len(r.protocol)):
        reference = first.setdefault((run.network, run.dataset), run)
        key = _first_difference({k: v for k, v in reference.protocol.items() if k in run.protocol}, run.protocol)
        if key is not None:
            raise ResultsError(
                f"runs {reference.path} and {run.path} of {run.network} on {run.dataset} were made "
                f"under different protocols ('{key}' is {reference.protocol.get(key)!r} in the first, "
                f"{run.protocol.get(key)!r} in the second), so they cannot be averaged or compared: {FIX}")


def _measurement_settings(record: Mapping) -> dict:
    """The settings a measurement was made with, less the per-run ones (its weights). Results made
    before the JAX port name no backend (TensorFlow); before settings were recorded, the record's own
    keys say how it was made."""
    settings = {key: record.get(key) for key in ("iterations", "start", "restarts", "subset", "p",
                                                 "num_examples", "batch_size", "batches") if key in record}
    settings.update({k: _without_per_run(v) for k, v in record.get("settings", {}).items()
                     if k not in PER_RUN_SETTINGS})
    settings.setdefault("backend", DEFAULT_BACKEND)
    return settings


def _without_per_run(value):
    """A setting less the per-run keys at any depth (a reparametrisation nests its measures' settings)."""
    if isinstance(value, Mapping):
        return {k: _without_per_run(v) for k, v in value.items() if k not in PER_RUN_SETTINGS}
    return value


def _check_measurements(runs: tuple[Run, ...]) -> None:
    """Each measurement is of its run, and one trial's measurements of one kind share their settings."""
    first: dict[tuple, Measurement] = {}
    for run in runs:
        items = [((name, *key) if isinstance(key, tuple) else (name, key), m)
                 for name, records in run.measurements.items() for key, m in records.items()]
        for kind, measurement in items:
            _check_owner(run, measurement)
            reference = first.setdefault((run.network, run.dataset, *kind), measurement)
            ours, theirs = _measurement_settings(reference.record), _measurement_settings(measurement.record)
            key = _first_difference(ours, theirs)
            if key is not None:
                raise ResultsError(
                    f"{reference.path} and {measurement.path} were measured with different settings "
                    f"('{key}' is {ours.get(key)!r} in the first, {theirs.get(key)!r} in the second), so "
                    f"they cannot be averaged or compared: recompute one of them with --force, or {FIX}")


def _check_owner(run: Run, measurement: Measurement) -> None:
    record = measurement.record
    recorded = {"network": record.get("network"), "regime": record.get("regime"),
                "seed": record.get("run_seed"), "batchnorm": record.get("batchnorm")}
    actual = {"network": run.network, "regime": run.regime, "seed": run.seed,
              "batchnorm": run.metrics.get("batchnorm")}
    eval_batch = record.get("settings", {}).get("eval_batch_size")
    if eval_batch is not None:
        recorded["eval_batch_size"], actual["eval_batch_size"] = eval_batch, run.metrics.get("eval_batch_size")
    if measurement.path.parent.name == "noise" and measurement.path.stem == "initial":
        recorded["x0"] = record.get("settings", {}).get("weights_digest")
        actual["x0"] = run.metrics.get("x0_sha256")
    key = next((k for k in recorded if recorded[k] is not None and recorded[k] != actual[k]), None)
    if key is not None:
        raise ResultsError(f"{measurement.path} is not a measurement of the run it lies in ('{key}' is "
                           f"{recorded[key]!r} there, {actual[key]!r} in {run.path}/metrics.json): "
                           f"delete it and measure the run again")


def _check_curve(curve: Curve) -> None:
    """A curve must be of its runs: the same x0, batch norm and evaluation batch, and the final
    weights they hold now (runs without weights, as in a fresh clone, cannot be checked for these)."""
    settings = curve.meta.get("settings", {})
    for regime, run in (("sb", curve.sb), ("lb", curve.lb)):
        recorded = {"x0_sha256": curve.meta.get("x0_sha256"), "batchnorm": settings.get("batchnorm"),
                    "eval_batch_size": settings.get("eval_batch_size")}
        for key, value in recorded.items():
            if value is not None and value != run.metrics.get(key):
                raise ResultsError(
                    f"{curve.csv} was computed with {key} {value!r}, but its {regime.upper()} run {run.path} "
                    f"has {run.metrics.get(key)!r}: delete {curve.csv.with_suffix('')}.* and run the "
                    "landscape step (or make) again")
        weights = run.path / "final.weights.h5"
        expected = settings.get(f"{regime}_final_sha256")
        if expected and weights.is_file() and storage.sha256_file(weights) != expected:
            raise ResultsError(f"{curve.csv} was computed from other {regime.upper()} weights than "
                               f"{weights} holds now: delete {curve.csv.with_suffix('')}.* and run "
                               "the landscape step (or make) again")


# Values: what a number read from a result file may be ----------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rule:
    """What a value under a key may be: `what` says it in words, `test` decides. A list holds values
    of its key's rule; a mapping is allowed where `section` (its keys are then checked by their own
    rules, or all by `each`)."""

    what: str
    test: Callable[[Any], bool]
    section: bool = False
    each: "Rule | None" = None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(low: float | None = None, high: float | None = None, *, above: bool = False, integer: bool = False,
           none: bool = False, nonfinite: bool = False, section: bool = False) -> Rule:
    """A number (a whole one if `integer`, finite unless `nonfinite`) in [low, high] (low excluded if
    `above`); None too if `none`."""
    text = lambda x: str(x) if isinstance(x, int) else f"{x:g}"  # noqa: E731
    what = "a whole number" if integer else "a number" if nonfinite else "a finite number"
    if low is not None and high is not None:
        what += f" in [{text(low)}, {text(high)}]"
    elif low is not None:
        what += f" {'>' if above else '>='} {text(low)}"
    what += " (or NaN, inf)" if nonfinite else ""
    what += " or null" if none else ""

    def test(value) -> bool:
        if value is None:
            return none
        if not _is_number(value) or (integer and not isinstance(value, int)):
            return False
        if not math.isfinite(value):
            return nonfinite
        return (low is None or (value > low if above else value >= low)) and (high is None or value <= high)

    return Rule(what, test, section)


BOOLEAN = Rule("true or false", lambda value: isinstance(value, bool))
TEXT = Rule("text", lambda value: isinstance(value, str))
COUNT, INDEX = number(1, integer=True), number(0, integer=True)
SEED = number(0, 2 ** 32 - 1, integer=True)  # train.train's range
NONNEGATIVE, FINITE, POSITIVE = number(0), number(), number(0, above=True)
PERCENT = number(0, 100)                     # an accuracy in %
LOSS = number(0, nonfinite=True)             # non-finite only in a diverged run (checked beside)
TIME = number(0, none=True)                  # seconds; null where a solve failed before timing
# Every key a result file the loader reads may hold, at any depth, and what its value may be. Keys
# without a rule (text, digests, settings' names) are not numbers the tables read.
VALUE_RULES: dict[str, Rule] = {
    **dict.fromkeys(("network", "dataset", "dataset_label", "regime", "kind", "backend", "deviations",
                     "stopped", "x0_sha256", "batchnorm", "batchnorm_mode", "figure"), TEXT),
    "profile": Rule("text or null", lambda value: value is None or isinstance(value, str)),
    "space": Rule("'full' or 'random'", lambda value: value in ("full", "random")),
    **dict.fromkeys(("diverged", "failed", "converged", "invariant_subspace", "resolved", "git_dirty",
                     "diverged_run", "xla", "deterministic_ops", "lower_bound"), BOOLEAN),
    **dict.fromkeys(("seed", "run_seed"), SEED),
    "a_seed": number(0, 2 ** 32 - 1, integer=True, none=True),  # null in the full space
    **dict.fromkeys(("batch_size", "eval_batch_size", "num_train", "num_test", "epochs_run", "num_examples",
                     "batches", "products", "iterations_limit", "restarts", "evaluations", "examples",
                     "batches_per_pass", "run_batch_size", "iterate_epoch", "train_examples", "test_examples",
                     "kept_iterates", "points", "grid", "dim", "n", "probes", "first_epoch", "last_epoch",
                     "resumed_after_epoch"), COUNT),
    "block_rows": number(1, integer=True, none=True),
    **dict.fromkeys(("function_evaluations", "draws", "draw", "restart", "predictions_changed", "converged_draws"),
                    INDEX),
    "diverged_epoch": number(1, integer=True, none=True),
    "p": number(1, integer=True, none=True),           # null in the full space
    "subset": number(1, integer=True, none=True),      # null: every example
    "iterations": number(0, integer=True, none=True),  # a setting, or a solve's own count (null: failed)
    **dict.fromkeys(("train_loss", "test_loss"), LOSS),
    **dict.fromkeys(("train_accuracy", "test_accuracy"), PERCENT),
    # Metric 2.1: phi = (max f(x + Ay) - f(x)) / (1 + f(x)) * 100 >= 0, since y = 0 is feasible
    **dict.fromkeys(("phi", "phi_std", "f_x", "max_f", "solver_final_f"), number(0, none=True)),
    "phi_values": NONNEGATIVE,
    **dict.fromkeys(("epsilon", "factor", "tol", "step", "span"), POSITIVE),
    # B_simple = tr(Sigma) / |G|^2 with tr(Sigma) >= 0; null where |G|^2's estimate is not positive
    **dict.fromkeys(("b_simple", "b_simple_standard_error", "trace_sigma"), number(0, none=True)),
    "grad_norm_sq": number(none=True),
    # Hessian: an eigenvalue or trace of either sign, errors and spreads >= 0
    "eigenvalue": number(section=True), "trace": number(section=True),  # sections in a reparametrisation
    **dict.fromkeys(("lowest_ritz_value", "rise", "values"), FINITE),
    "per_draw": number(section=True),                  # a draw's result, or its value
    **dict.fromkeys(("residual", "lowest_residual", "x_norm", "direction_norms", "epsilon_effect"), NONNEGATIVE),
    **dict.fromkeys(("standard_error", "std"), number(0, none=True)),
    "mean": number(none=True),
    "max_abs_probability_change": number(0, 1),
    "rises": Rule("a mapping of t to finite numbers", lambda value: False, section=True, each=FINITE),
    "ratio_after_to_before": Rule("a mapping of measures to finite numbers or nulls", lambda value: False,
                                  section=True, each=number(none=True)),
    "moved": Rule("a mapping of measures to true, false or null", lambda value: False, section=True,
                  each=Rule("true, false or null", lambda value: value is None or isinstance(value, bool))),
}
# Subtrees whose values are not results: the host, the config (config.py validates it), a
# measurement's settings (compared across runs instead, by _check_measurements; a required one is
# checked by its rule) and the batch-size study's target summary (its reader, batchsize_report, checks it).
NOT_RESULTS = ("environment", "resolved_config", "settings", "config_sharpness", "target")
# Keys the tables read with [] from each kind of file: one missing is named, never a KeyError (a
# measure's records: its `required`, measure/registry.py).
REQUIRED = {
    "metrics": ("network", "dataset", "dataset_label", "regime", "seed", "batch_size", "epochs_run", "diverged",
                "train_accuracy", "test_accuracy", "deviations"),
    "curve": ("network", "dataset", "dataset_label", "seed", "path", "figure", "batchnorm_mode"),
}
# CSV columns: history.csv, the filter-normalised slices (hessian/*.csv), the parametric-plot curves.
HISTORY_COLUMNS = {"epoch": COUNT, "seconds": TIME, "train_loss": LOSS, "test_loss": LOSS,
                   "train_accuracy": PERCENT, "test_accuracy": PERCENT}
SLICE_COLUMNS = {"draw": INDEX, "t": FINITE, "a": FINITE, "b": FINITE, "loss": NONNEGATIVE,
                 "accuracy": number(0, 1)}  # a fraction here
CURVE_COLUMNS = {"alpha": FINITE, "train_xent": NONNEGATIVE, "test_xent": NONNEGATIVE,
                 "train_acc_pct": PERCENT, "test_acc_pct": PERCENT}


def rule_for(key: str) -> Rule | None:
    """The rule of a key (VALUE_RULES; any time in seconds is >= 0), or None for a key that is no number."""
    if key in VALUE_RULES:
        return VALUE_RULES[key]
    if key == "seconds" or key.endswith("_seconds") or "_seconds_" in key:
        return TIME
    return None


def _impossible(path: Path, where: str, value, what: str) -> ResultsError:
    return ResultsError(f"{path}: {where} is {value!r}, which no result can be (expected {what}): "
                        f"{storage.repair(path)}")


def check_values(path: Path, record: Mapping, required=()) -> None:
    """Every key of `record` (a JSON result file at `path`) obeys its rule, and the `required` keys
    (dotted for nested ones) are there; else ResultsError naming the file, the key, the value and the fix."""
    for key in required:
        value = record
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise ResultsError(f"{path}: no '{key}', which every such file has: {storage.repair(path)}")
            value = value[part]
        if "." in key and (rule := rule_for(part)) is not None:  # one the walk below may not reach
            _walk(path, value, rule, key)
    _walk(path, record, Rule("a mapping", lambda value: False, section=True), "")


def _walk(path: Path, value, rule: Rule | None, where: str) -> None:
    if isinstance(value, Mapping):
        if rule is not None and not rule.section:
            raise _impossible(path, where, dict(value), rule.what)
        for key, item in value.items():
            if key not in NOT_RESULTS:
                child = rule.each if rule is not None and rule.each else rule_for(str(key))
                _walk(path, item, child, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(path, item, rule, f"{where}[{index}]")
    elif rule is not None and not rule.test(value):
        raise _impossible(path, where, value, rule.what)


def _parse(text: str):
    """A CSV cell as the number it holds (int if whole), else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text


def _check_columns(path: Path, rows: list[dict], columns: Mapping[str, Rule], required=()) -> list[dict]:
    """Every cell of the `columns` a CSV has obeys its rule, and the `required` columns are there."""
    header = set(rows[0]) if rows else set(required)
    if missing := [column for column in required if column not in header]:
        raise ResultsError(f"{path}: no column {missing[0]!r}, which every such file has: {storage.repair(path)}")
    for number_, row in enumerate(rows, start=1):
        for column, rule in columns.items():
            if column in row and not rule.test(_parse(row[column])):
                raise _impossible(path, f"row {number_}'s {column}", row[column], rule.what)
    return rows


def _read_measurement(path: Path, measure: registry.Measure) -> dict:
    """A measure's record, its values checked and the keys it requires (by file-stem prefix) there."""
    record = storage.read_json(path)
    required = next((keys for prefix, keys in measure.required.items() if path.stem.startswith(prefix)), ())
    check_values(path, record, required)
    if measure.name == "sharpness" and not record["failed"] and record["phi"] is None:
        raise _impossible(path, "phi", None, "a finite number >= 0, since the solve did not fail")
    return record


def _check_history(path: Path, rows: list[dict], metrics: Mapping) -> float:
    """history.csv's values (HISTORY_COLUMNS), its epochs rising to metrics.json's epochs_run, and a
    non-finite loss only in a diverged run; returns the sum of its epochs' wall times."""
    if not rows:
        return 0.0
    _check_columns(path, rows, HISTORY_COLUMNS, required=("epoch",))
    epochs = [_parse(row["epoch"]) for row in rows]
    if any(later <= earlier for earlier, later in zip(epochs, epochs[1:])) or epochs[-1] != metrics["epochs_run"]:
        raise ResultsError(f"{path}: its epochs ({', '.join(map(str, epochs))}) do not rise to the "
                           f"{metrics['epochs_run']} epochs metrics.json records: {storage.repair(path)}")
    for number_, row in enumerate(rows, start=1):
        for column in ("train_loss", "test_loss"):
            if column in row and not metrics["diverged"] and not math.isfinite(_parse(row[column])):
                raise _impossible(path, f"row {number_}'s {column}", row[column],
                                  "a finite number >= 0 (the run did not diverge)")
    return sum(float(row["seconds"]) for row in rows if "seconds" in row)


# Identity: a run is the run its directory names, and it is counted once --------------------------------
IDENTITY_RULE = (
    "a run directory <results>/<network>_<dataset>/<regime>/seed<N> holds the run its files record: the "
    "network, dataset, regime, seed and backend of metrics.json (and of its resolved config), config.yaml "
    "and env.json agree with each other and with the path, and config.yaml is the config metrics.json "
    "resolved (every key both have); and a run is counted once: every seed draws its own x0, so two seeds "
    "of one trial never record the same x0 (x0_sha256), and two seeds of one regime never record the same "
    "training (every loss and accuracy of history.csv)")
# The facts of a run that each of its files may record, as (file, where in that file).
_FACTS = {"network": (("metrics.json", "network"), ("metrics.json", "resolved_config.network"),
                      ("config.yaml", "network")),
          "dataset": (("metrics.json", "dataset"), ("metrics.json", "resolved_config.dataset"),
                      ("config.yaml", "dataset")),
          "regime": (("metrics.json", "regime"), ("metrics.json", "resolved_config.run.regime"),
                     ("config.yaml", "run.regime")),
          "seed": (("metrics.json", "seed"), ("metrics.json", "resolved_config.run.seed"),
                   ("config.yaml", "run.seed"), ("env.json", "seed")),
          "backend": (("metrics.json", "resolved_config.run.backend"), ("config.yaml", "run.backend"),
                      ("env.json", "backend"))}


def _get(record: Mapping, dotted: str):
    for part in dotted.split("."):
        if not isinstance(record, Mapping) or part not in record:
            return None
        record = record[part]
    return record


def _check_identity(path: Path, metrics: Mapping, env: Mapping, resolved: Mapping) -> None:
    """IDENTITY_RULE within one run directory; ResultsError names both places and the fix."""
    trial, seed = f"{metrics['network']}_{metrics['dataset']}", f"seed{metrics['seed']}"
    home = path.parents[2] / trial / metrics["regime"] / seed
    moved = (f"a run copied or moved into another run's folder is not that run: move {path} to {home} if "
             "it is the run its files record, else delete it")
    named = {"network and dataset": (path.parent.parent.name, trial), "regime": (path.parent.name, metrics["regime"]),
             "seed": (path.name, seed)}
    for what, (directory, recorded) in named.items():
        if directory != recorded:
            raise ResultsError(f"{path}/metrics.json records {what} {recorded!r}, but its directory says "
                               f"{directory!r}: {moved}")
    config = storage.read_yaml(path / "config.yaml") if (path / "config.yaml").exists() else {}
    files = {"metrics.json": metrics, "config.yaml": config, "env.json": env}
    for fact, places in _FACTS.items():
        found = [(f"{name} ({where})", value) for name, where in places
                 if (value := _get(files[name], where)) is not None]
        if any(value != found[0][1] for _, value in found):
            (first, a), (second, b) = found[0], next(item for item in found if item[1] != found[0][1])
            raise ResultsError(f"{path}: {first} records {fact} {a!r}, {second} {b!r}: the files of two runs "
                               f"were mixed (copied or hand-edited): delete {path} and train it again")
    # config.yaml is the config metrics.json resolved, less where it lives (results_dir); a key only
    # one of them has is one the other's run predates (a resumed run keeps its first config.yaml).
    key = next((k for k in sorted(set(config) & set(resolved) - {"results_dir"}) if config[k] != resolved[k]), None)
    if key is not None:
        raise ResultsError(f"{path}: config.yaml has {key} {config[key]!r}, but metrics.json's resolved config "
                           f"{resolved[key]!r}: the files of two runs were mixed (copied or hand-edited): "
                           f"delete {path} and train it again")


def _training_record(run: Run) -> tuple | None:
    """Every loss and accuracy of the run's history.csv, as written (None without such columns)."""
    columns = [c for c in ("train_loss", "train_accuracy", "test_loss", "test_accuracy") if run.history
               and c in run.history[0]]
    return tuple(tuple(row[c] for c in columns) for row in run.history) if columns else None


def _check_not_counted_twice(runs: tuple[Run, ...]) -> None:
    """IDENTITY_RULE across runs: no two seeds of a trial share an x0 or, in one regime, a training."""
    x0_of: dict[tuple, Run] = {}
    training_of: dict[tuple, Run] = {}
    for run in runs:
        trial = (run.network, run.dataset)
        for owners, key, what in ((x0_of, (trial, run.metrics.get("x0_sha256")),
                                   "start from the same x0, and every seed draws its own"),
                                  (training_of, (trial, run.regime, _training_record(run)),
                                   "hold the same training, loss for loss")):
            if key[-1] is None:
                continue
            other = owners.setdefault(key, run)
            if other.seed != run.seed:
                raise ResultsError(
                    f"{other.path} and {run.path} record seeds {other.seed} and {run.seed} but {what}: one of them "
                    f"is a copy of the other seed's run, which would be counted twice: delete the copy (the x0 "
                    f"record {run.path.parents[1] / 'x0'}/seed<N>*.json names the seed that drew the x0)")
