"""REPLICATION_DATA_PARALLEL=1: Keras' DataParallel under JAX (backend.distribution) trains the same
run as one device, with batch norm's statistics over the global batch. Two devices on the CPU
come from XLA_FLAGS=--xla_force_host_platform_device_count=2, which JAX reads when it starts: so
everything runs in subprocesses."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from conftest import ROOT, cli, one_error_line
from replication import backend

pytestmark = [pytest.mark.backend,
              pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="needs jax installed")]

TWO_DEVICES = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
RECORD = {"distribution": "keras.distribution.DataParallel", "devices": 2}


def _float64(tmp_path) -> dict:
    """Keras and JAX in float64 (a keras.json of its own: Keras reads floatx from no variable)."""
    home = tmp_path / "keras-home"
    home.mkdir(exist_ok=True)
    (home / "keras.json").write_text(json.dumps({"floatx": "float64", "backend": "jax", "epsilon": 1e-7,
                                                 "image_data_format": "channels_last"}))
    return {"KERAS_HOME": str(home), "JAX_ENABLE_X64": "1"}


def _history(run) -> list[dict]:
    with open(run / "history.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def _weights(path) -> dict:
    out = {}
    with h5py.File(path) as handle:
        handle.visititems(lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return out


def test_two_devices_train_the_run_one_device_trains(tiny_config, tmp_path):
    """The TINY run (F1, synthetic_mnist, batch 32 = 16 per device, 26 Adam steps), in float64, on
    one device and with the switch on two (interrupted after epoch 1 and resumed: a checkpoint
    loads into replicated variables), agrees to relative 1e-9 in every history number and 1e-9
    in every final weight.

    Why float64 and 1e-9: the two programs differ only in the order of float additions (the
    gradient's sum over the batch and batch norm's moments as two partial sums plus a cross-device
    sum). In float32 that rounding is amplified by the training itself, as any rounding is: an
    activation within rounding of ReLU's kink switches its derivative, and Adam divides gradients
    whose true value is 0 (a Dense bias before batch norm) or nearly 0 by their own size, turning
    rounding into steps of up to the learning rate. At 2^-53 neither happens, so the same function
    shows as the same numbers to 1e-9. Batch-norm statistics taken per device instead (ghost batch
    norm over the two halves of each batch) would be another function, not a rounding difference."""
    config = tiny_config(results_dir=str(tmp_path / "one"))
    env = {**TWO_DEVICES, **_float64(tmp_path)}
    one = cli("train", config, "--regime", "sb", env={**env, backend.DATA_PARALLEL_VARIABLE: "0"}, check=True)
    one = ROOT / one.stdout.strip().splitlines()[-1]

    config = tiny_config(results_dir=str(tmp_path / "two"))
    parallel = {**env, backend.DATA_PARALLEL_VARIABLE: "1"}
    killed = cli("train", config, "--regime", "sb", env={**parallel, "REPLICATION_KILL_AT": "epoch:1:end"})
    assert killed.returncode != 0
    two = cli("train", config, "--regime", "sb", env=parallel, check=True)
    assert "resuming after epoch 1" in two.stderr
    two = ROOT / two.stdout.strip().splitlines()[-1]

    assert "data_parallel" not in json.loads((one / "env.json").read_text())
    assert json.loads((two / "env.json").read_text())["data_parallel"] == RECORD
    first, second = _history(one), _history(two)
    assert len(first) == len(second) == 2
    for a, b in zip(first, second):
        assert b == pytest.approx(a, rel=1e-9, abs=0)
    first, second = _weights(one / "final.weights.h5"), _weights(two / "final.weights.h5")
    assert first.keys() == second.keys() and first
    for name in first:
        assert first[name].dtype == np.float64, name  # the comparison is the float64 one it claims
        np.testing.assert_allclose(second[name], first[name], rtol=0, atol=1e-9, err_msg=name)



def test_env_json_records_the_process_that_finished_the_run(tiny_config):
    """A run begun with the switch and resumed without it trained its last epoch on one device:
    its env.json says so (no stale data_parallel record), as it names the last process's device."""
    config = tiny_config()
    killed = cli("train", config, "--regime", "sb",
                 env={**TWO_DEVICES, backend.DATA_PARALLEL_VARIABLE: "1", "REPLICATION_KILL_AT": "epoch:1:end"})
    assert killed.returncode != 0
    run = config.parent / "results" / "F1_synthetic_mnist" / "sb" / "seed0"
    assert json.loads((run / "env.json").read_text())["data_parallel"] == RECORD
    cli("train", config, "--regime", "sb", env={**TWO_DEVICES, backend.DATA_PARALLEL_VARIABLE: ""}, check=True)
    assert (run / "metrics.json").exists() and "data_parallel" not in json.loads((run / "env.json").read_text())


BATCH_NORM_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from replication import backend, models
    record = backend.distribution(8, 8)
    import jax, keras

    distribution = keras.distribution.distribution()
    rng = np.random.default_rng(0)
    # two halves of the batch with different means and spreads: per-half statistics are far from global ones
    x = np.concatenate([rng.normal(0, 1, (4, 6)), rng.normal(5, 2, (4, 6))]).astype("float32")
    sharded = jax.device_put(x, distribution.get_data_layout(x.shape).backend_layout)
    out = {"record": record, "shards": sorted(tuple(s.data.shape) for s in sharded.addressable_shards)}
    layer = models.BatchStatNormalization()
    model = keras.Sequential([keras.Input((6,)), layer])
    forward = jax.jit(lambda trainable, inputs: model.stateless_call(trainable, [], inputs, training=True)[0])
    trainable = [v.value for v in model.trainable_variables]
    out["sharded"] = np.asarray(forward(trainable, sharded)).tolist()
    out["unsharded"] = np.asarray(forward(trainable, x)).tolist()
    out["variable_devices"] = len(model.trainable_variables[0].value.sharding.device_set)

    # Keras' own training step, which splits fit's batch over the devices itself: the moving
    # statistics of Keras' batch norm take the batch's mean and variance (learning rate 0)
    moving = keras.Sequential([keras.Input((6,)), keras.layers.BatchNormalization(momentum=0.5)])
    moving.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    moving.fit(x, np.zeros_like(x), batch_size=8, epochs=1, shuffle=False, verbose=0)
    bn = moving.layers[0]
    out["moving_mean"] = np.asarray(bn.moving_mean.value).tolist()
    out["moving_variance"] = np.asarray(bn.moving_variance.value).tolist()
    print(json.dumps(out))
""")


def test_batch_norm_statistics_are_the_global_batchs():
    """A batch whose two halves have different means, split over two devices: the training-mode
    forward pass of BatchStatNormalization (the paper's batch statistics) equals the unsharded
    one and normalisation by the whole batch's mean and variance, and Keras' fit step under the
    distribution updates BatchNormalization's moving statistics by the global mean and variance.
    Per-device statistics would be off by more than 1 (checked on the same batch: the test can fail)."""
    env = {**os.environ, **TWO_DEVICES, backend.DATA_PARALLEL_VARIABLE: "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", BATCH_NORM_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["record"] == RECORD and out["variable_devices"] == 2
    assert out["shards"] == [[4, 6], [4, 6]]  # the batch really is split, half per device

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (4, 6)), rng.normal(5, 2, (4, 6))]).astype("float32").astype(np.float64)

    def normalised(values):
        return (values - values.mean(0)) / np.sqrt(values.var(0) + 1e-3)  # models.BN_EPSILON; gamma 1, beta 0

    global_stats = normalised(x)
    per_device = np.concatenate([normalised(x[:4]), normalised(x[4:])])
    assert np.abs(per_device - global_stats).max() > 1  # the batch tells the two apart
    # float32 rounding of values of size ~10: 1e-5
    np.testing.assert_allclose(out["sharded"], global_stats, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["sharded"], out["unsharded"], rtol=0, atol=1e-5)

    # momentum 0.5 from mean 0, variance 1: half the batch's mean; (1 + the batch's variance) / 2
    np.testing.assert_allclose(out["moving_mean"], x.mean(0) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["moving_variance"], (1 + x.var(0)) / 2, rtol=1e-5)
    per_device_variance = (x[:4].var(0) + x[4:].var(0)) / 2
    assert np.abs((1 + per_device_variance) / 2 - (1 + x.var(0)) / 2).min() > 1


@pytest.mark.parametrize("overrides, extra, problem", [
    ({"sb_batch_size": 31}, {}, "batch size 31"),
    ({"train_subset": 401}, {}, "the last batch of 401 examples: 17"),
    ({}, {backend.DATA_PARALLEL_VARIABLE: "yes"}, "is not a switch"),
    ({}, {"KERAS_BACKEND": "tensorflow"}, "needs the JAX backend"),
])
def test_a_run_the_switch_cannot_split_is_refused_before_anything_is_written(tiny_config, tmp_path, overrides,
                                                                           extra, problem):
    if extra.get("KERAS_BACKEND") == "tensorflow" and not importlib.util.find_spec("tensorflow"):
        pytest.skip("needs tensorflow installed")
    config = tiny_config(**overrides)
    env = {**TWO_DEVICES, backend.DATA_PARALLEL_VARIABLE: "1", **extra}
    result = cli("train", config, "--regime", "sb", env=env)
    assert problem in one_error_line(result.returncode, result.stderr)
    assert not (tmp_path / "results").exists()
