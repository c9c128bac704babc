"""The two backends: the same saved run gives the same numbers on TensorFlow and JAX, JAX runs
without TensorFlow, A is the same for a seed everywhere, and compiled passes read the current
batch-norm statistics (jax.jit would freeze captured ones)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cli
from replication import backend, models, objective, rundir, train
from replication import config as config_lib
from replication.measure import sharpness

pytestmark = pytest.mark.backend

needs_both = pytest.mark.skipif(
    not (importlib.util.find_spec("jax") and importlib.util.find_spec("tensorflow")),
    reason="needs both tensorflow and jax installed")


def _backend_cli(name, *args):
    return cli(*args, env={"KERAS_BACKEND": name})


@needs_both
def test_one_saved_run_gives_the_same_numbers_on_both_backends(tiny_config):
    config_path = tiny_config(epochs=1, sharpness={"iterations": 3})
    result = _backend_cli("tensorflow", "train", config_path, "--regime", "sb")
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    records = {}
    for name in ("tensorflow", "jax"):
        result = _backend_cli(name, "evaluate", run_dir)
        assert result.returncode == 0, result.stderr
        records[name] = json.loads((run_dir / "evaluations" / f"{name}.json").read_text())
    tf_record, jax_record = records["tensorflow"], records["jax"]
    assert tf_record["environment"]["backend"] == "tensorflow" and jax_record["environment"]["backend"] == "jax"
    for key in ("train_loss", "test_loss", "gradient_norm"):
        assert jax_record[key] == pytest.approx(tf_record[key], rel=1e-5), key
    for key, examples in (("train_accuracy", "train_examples"), ("test_accuracy", "test_examples")):
        # at most one example flips at a float32 tie: one example of that accuracy's own set
        assert abs(jax_record[key] - tf_record[key]) <= 100 / tf_record[examples] + 1e-9, key
    assert jax_record["phi"] == pytest.approx(tf_record["phi"], rel=1e-3)
    assert "abs. difference" in result.stdout  # the printed table sets both side by side


def _numbers(history_csv: str) -> list[list[str]]:
    rows = [line.split(",") for line in history_csv.splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if "seconds" not in name and "time" not in name]
    return [[row[i] for i in keep] for row in rows]


def _without_cache_variables() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "REPLICATION_CACHE")}


@needs_both
def test_jax_runs_without_importing_tensorflow_and_keeps_compiled_programs(tiny_config, tmp_path):
    config_path = tiny_config(epochs=1)
    script = ("import sys; from replication.__main__ import main; "
              f"code = main(['train', {str(config_path)!r}, '--regime', 'sb']); "
              "print('exit', code, 'tensorflow' in sys.modules)")
    cache = tmp_path / "cache"
    # every compilation is cached (by default only those of a second or more: a GPU's)
    env = {**_without_cache_variables(), "KERAS_BACKEND": "jax", "REPLICATION_CACHE": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    histories, entries = [], []
    for attempt in ("cache empty", "cache warm"):
        shutil.rmtree(config_path.parent / "results", ignore_errors=True)
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "exit 0 False"
        record = json.loads(next((config_path.parent / "results").rglob("env.json")).read_text())
        assert record["backend"] == "jax" and record["backend_version"].startswith("jax ")
        assert record["compilation_cache"] == str(cache / "jax") and any((cache / "jax").iterdir())
        histories.append(next((config_path.parent / "results").rglob("history.csv")).read_text())
        entries.append(sorted(p.name for p in (cache / "jax").iterdir()))
    # the second process compiled nothing new, and what it read back trains to the same numbers
    assert entries[1] == entries[0]
    assert _numbers(histories[1]) == _numbers(histories[0])


def test_only_jax_gets_a_compilation_cache_and_a_users_own_wins(tmp_path):
    script = "import os, replication.backend; print(os.environ.get('JAX_COMPILATION_CACHE_DIR'))"
    for extra, expected in (({"KERAS_BACKEND": "jax", "REPLICATION_CACHE": str(tmp_path)}, str(tmp_path / "jax")),
                            ({"KERAS_BACKEND": "jax", "JAX_COMPILATION_CACHE_DIR": "/mine"}, "/mine"),
                            ({"KERAS_BACKEND": "tensorflow"}, "None")):
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                                env={**_without_cache_variables(), **extra}, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == expected


def test_random_subspace_is_a_numpy_draw_and_its_products_match_it():
    a = sharpness.RandomSubspace(50, 4, seed=3, block_rows=16)
    expected = np.concatenate([np.random.default_rng([3, i]).standard_normal((rows, 4), dtype=np.float32)
                               for i, rows in enumerate((16, 16, 16, 2))])
    np.testing.assert_array_equal(a.dense(), expected)  # the same A on every backend and device
    y = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(a.matvec(y)), expected @ y, rtol=1e-6)
    g = np.linspace(-1, 1, 50).astype(np.float32)
    np.testing.assert_allclose(np.asarray(a.rmatvec(g)), g @ expected, rtol=1e-5, atol=1e-6)


def test_compiled_gradients_through_max_pooling_run_once_training_turned_on_op_determinism():
    # the batch-size study trains (TensorFlow's op determinism on), then measures the noise scale of
    # C1 (max pooling) in the same process: TensorFlow refused to compile MaxPool's gradient for XLA
    backend.setup_determinism(0)
    keras = backend._keras()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.MaxPooling2D(),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    f = objective.Objective(model, rng.normal(size=(20, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, 20), 10)
    loss, gradient = f.value_and_gradient(f.get_flat())
    assert np.isfinite(loss) and np.all(np.isfinite(keras.ops.convert_to_numpy(gradient)))
    if backend.name() == "tensorflow":
        from tensorflow.python.framework import config as tf_config

        assert tf_config.is_op_determinism_enabled()  # on again after the pass, as training left it


def test_compiled_passes_read_the_current_batchnorm_statistics():
    model = models.build("F1", (28, 28, 1), 10, "moving_average")
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    f = objective.Objective(model, x, y, batch_size=32)
    before, _ = f.evaluate()
    mean = next(v for v in model.non_trainable_variables if "moving_mean" in v.path)
    mean.assign(np.full(mean.shape, 5.0, np.float32))
    after, _ = f.evaluate()
    fresh, _ = objective.Objective(model, x, y, batch_size=32).evaluate()
    assert after != before and after == pytest.approx(fresh, rel=1e-6)
    loss, _ = f.value_and_gradient(f.get_flat())
    assert float(loss) == pytest.approx(after, rel=1e-5)


def test_a_profile_bound_to_the_other_backend_is_refused(tiny_config, capsys):
    other = "jax" if backend.name() == "tensorflow" else "tensorflow"
    from replication import __main__ as entry

    code = entry.main(["train", str(tiny_config(backend=other)), "--regime", "sb"])
    err = capsys.readouterr().err
    assert code == 2 and f"set KERAS_BACKEND={other}" in err and err.count("\n") == 1


def test_check_on_the_other_backend_names_keras_backend_not_deleting_runs(tiny_config, capsys):
    # `make PROFILE` runs check first: on the wrong backend it used to report every finished run as
    # "made by another config" and advise deleting it.
    other = "jax" if backend.name() == "tensorflow" else "tensorflow"
    from replication import __main__ as entry

    train.train(config_lib.load(tiny_config(epochs=1)), "sb", 0)
    capsys.readouterr()  # the training's own log
    code = entry.main(["check", str(tiny_config(epochs=1, backend=other))])
    err = capsys.readouterr().err
    assert code == 2 and f"set KERAS_BACKEND={other}" in err and "delete" not in err and err.count("\n") == 1


def test_run_records_its_backend_and_a_run_from_the_other_backend_is_refused(tiny_config, tmp_path):
    config = config_lib.load(tiny_config(epochs=1))
    path = train.train(config, "sb", 0)
    assert json.loads((path / "env.json").read_text())["backend"] == backend.name()
    saved = config_lib.yaml.safe_load((path / "config.yaml").read_text())
    assert saved["run"]["backend"] == backend.name()
    saved["run"]["backend"] = "jax" if backend.name() == "tensorflow" else "tensorflow"
    (path / "config.yaml").write_text(config_lib.yaml.safe_dump(saved))
    (path / "metrics.json").unlink()  # unfinished: the next request would resume it
    with pytest.raises(rundir.RunError, match="made by another config"):
        train.train(config, "sb", 0)
