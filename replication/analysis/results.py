"""One view of a results folder: every file read once, and never runs of two protocols averaged.

`load(results_dir)` reads every finished run (metrics.json, env.json, history.csv), its
measurements (sharpness/*.json, noise/*.json, hessian/*.json and the filter-normalised slices
hessian/*.csv) and every parametric-plot curve (landscape CSV and its JSON sidecar) once, into frozen records; the tables, figures, verdicts and the report all read
the returned `Results`. Before anything is compared, it refuses (ResultsError: one line naming
both files, the key, both values and the fix):

- two runs of one network and dataset made under different protocols. A run's protocol is its
  resolved config less what differs by design between the runs of a trial (the seed, the regime,
  the regime's batch size, a sweep run's scaled learning rate) and the keys that do not change
  training (`train.NON_TRAINING_KEYS`), plus the backend that trained it. So an SB/LB pair made
  with different `--set` values, or one seed trained for other epochs, is never averaged.
- two sharpness (or noise-scale) results of one trial and (space, epsilon) (or point) computed
  with different settings (training examples, iterations, p, start, backend, ...), so that every
  cell of Tables 3-4 and Figure 4, and every SB/LB ratio, compares like with like;
- a measurement that is not of its run: a sharpness or noise file recorded for another network,
  regime, seed or batch norm, a noise scale at x0 of another x0, a parametric plot whose runs are
  not in the folder or whose x0, batch norm, evaluation batch or final weights are not theirs.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from replication import storage, train
from replication import config as config_lib

FIX = "delete one set, or put them in separate results_dir"
# Runs made before the JAX port name no backend: they ran on TensorFlow.
DEFAULT_BACKEND = "tensorflow"
# Keys of a measurement's recorded settings that differ by design between runs.
PER_RUN_SETTINGS = ("weights_digest",)


class ResultsError(RuntimeError):
    """A results directory is missing, unreadable, holds no finished runs, or mixes protocols."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measurement file of a run: `<run>/sharpness/<space>_eps<eps>.json` or `<run>/noise/<point>.json`."""

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
    _check_protocols(runs)
    _check_measurements(runs)
    by_path = {run.path: run for run in runs}
    curves = tuple(curve for csv_path in sorted(root.glob("*/landscape/seed*_*.csv"))
                   if (curve := _read_curve(csv_path, by_path)) is not None)
    return Results(root, runs, curves)


# Sharpness columns: how a (space, epsilon) sharpness is named in the tables built from a folder.
def sharpness_column(prefix: str, space: str, epsilon: float) -> str:
    """'<prefix>_<space>_eps<epsilon>', e.g. sharpness_column("phi", "full", 1e-3) -> 'phi_full_eps0.001'."""
    return f"{prefix}_{space}_eps{epsilon:g}"


def sharpness_setting(key: str, prefix: str) -> tuple[str, str]:
    """The (space, epsilon as written) of a `sharpness_column` key: 'phi_full_eps0.001' -> ('full', '0.001')."""
    space, epsilon = key.removeprefix(prefix + "_").split("_eps")
    return space, epsilon


def sharpness_columns(rows: list[dict], prefix: str) -> list[str]:
    """The `sharpness_column(prefix, ...)` columns present in `rows` (not their _std, _failed and
    _missing companions): full space at eps 1e-3 first (the paper's headline measure), then the
    full space before random subspaces, larger epsilons first."""
    keys = {k for r in rows for k in r
            if k.startswith(prefix + "_") and not k.endswith(("_std", "_failed", "_missing"))}

    def order(key):
        space, epsilon = sharpness_setting(key, prefix)
        return key != sharpness_column(prefix, "full", 1e-3), space != "full", space, -float(epsilon)

    return sorted(keys, key=order)


def read_curve(path) -> dict[str, np.ndarray]:
    """A curve CSV (ours or a published one) as {column: float array}."""
    rows = storage.read_csv(path)
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
    env = storage.read_json(path / "env.json") if (path / "env.json").exists() else {}
    history = storage.read_csv(path / "history.csv") if (path / "history.csv").exists() else []
    resolved = metrics.get("resolved_config", {})
    backend = resolved.get("run", {}).get("backend") or env.get("backend") or DEFAULT_BACKEND
    sharpness = {}
    for file in sorted(path.glob("sharpness/*.json")):
        record = storage.read_json(file)
        sharpness[(record["space"], float(record["epsilon"]))] = Measurement(file, _frozen(record))
    noise = {file.stem: Measurement(file, _frozen(storage.read_json(file)))
             for file in sorted(path.glob("noise/*.json"))}
    hessian = {file.stem: Measurement(file, _frozen(storage.read_json(file)))
               for file in sorted(path.glob("hessian/*.json"))}
    # The slices belong to a finished filter_landscape record (its JSON is written after them).
    slices = {file.stem: storage.read_csv(file) for file in sorted(path.glob("hessian/*.csv"))
              if "filter_landscape" in hessian}
    return Run(path, _frozen(metrics), _frozen(env), sum(float(h.get("seconds") or 0) for h in history),
               backend, _frozen(protocol(metrics["regime"], resolved, backend)), _frozen(sharpness),
               _frozen(noise), _frozen(hessian), _frozen(slices))


def protocol(regime: str, resolved: dict, backend: str) -> dict:
    """What a run computed, as far as it must be shared by every run of its trial: its resolved
    config less the keys that do not change training and the per-run ones ("run": regime, seed,
    batch size), the learning rate of a scaled sweep run and the epochs of a piggyback run taken back
    to the config's, and the backend that trained it (which replaces the config's optional backend
    pin). A key a run's config did not have yet (an older run) counts as its default."""
    defaults = config_lib.defaults()
    # Kept iterates change what a run directory holds, not what it computed.
    out = {key: resolved.get(key, defaults.get(key)) for key in sorted({*resolved, *defaults})
           if key not in (*train.NON_TRAINING_KEYS, *train.RUN_FILE_KEYS, "run", "backend")}
    # A piggyback run (Figure 5) trains its own epochs from an iterate of the trial's SB run.
    warm_start = resolved.get("run", {}).get("warm_start")
    if config_lib.parse_warm_start(regime) is not None and warm_start:
        out["epochs"] = warm_start["trial_epochs"]
    point = config_lib.parse_regime(regime)
    if point and point[1] != "none" and isinstance(out.get("learning_rate"), float):
        factor = (point[0] / out["sb_batch_size"]) ** config_lib.LR_SCALINGS[point[1]]
        out["learning_rate"] = float(f"{out['learning_rate'] / factor:.12g}")
    study = config_lib.parse_study_regime(regime)
    if study and isinstance(out.get("learning_rate"), float):  # a batch-size study run's own rate
        exponent = config_lib.LR_SCALINGS[resolved.get("batch_size_study", {}).get("lr_scaling", "sqrt")]
        factor = (study[0] / out["sb_batch_size"]) ** exponent * study[1]
        out["learning_rate"] = float(f"{out['learning_rate'] / factor:.12g}")
    if config_lib.parse_compare_regime(regime):  # a fair-comparison run: its name states these
        for key in config_lib.COMPARE_RUN_KEYS:
            out.pop(key, None)
    out["backend"] = backend
    return out


def _read_curve(csv_path: Path, runs: dict[Path, Run]) -> Curve | None:
    """The curve at `csv_path` with its runs, or None while its JSON sidecar (written last) is absent."""
    json_path = csv_path.with_suffix(".json")
    if not json_path.exists():
        return None
    meta = storage.read_json(json_path)
    trial, seed = csv_path.parent.parent, meta["seed"]
    pair = {regime: runs.get(trial / regime / f"seed{seed}") for regime in config_lib.REGIMES}
    missing = [str(trial / regime / f"seed{seed}") for regime, run in pair.items() if run is None]
    if missing:
        raise ResultsError(f"{csv_path} was computed from runs that are not finished in this folder "
                           f"({', '.join(missing)}): delete {csv_path.with_suffix('')}.* or train "
                           "those runs and run the landscape step again")
    curve = Curve(csv_path, _frozen(meta), _frozen(read_curve(csv_path)), pair["sb"], pair["lb"])
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
        items = [(("sharpness", *key), m) for key, m in run.sharpness.items()]
        items += [(("noise", point), m) for point, m in run.noise.items()]
        items += [(("hessian", name), m) for name, m in run.hessian.items()]
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

