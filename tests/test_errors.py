"""The bad-input catalogue: each case asserts the exact error, a non-zero exit, and that nothing
was written. Cases run through `replication.__main__.main` (what the CLI runs); two run as real
subprocesses to prove the exit status."""

import errno
import gzip
import os
import re
import tempfile

import numpy as np
import pytest
import yaml

from conftest import TINY, cli
from replication import backend
from replication import __main__ as entry
from replication import data, storage, train

CONFIG_CASES = [
    # (id, config changes, expected message)
    ("unknown-key", {"epochz": 3}, r"unknown config key 'epochz'"),
    ("unknown-nested-key", {"sharpness": {"iters": 3}}, r"unknown config key 'sharpness.iters'"),
    ("wrong-type", {"epochs": "ten"}, r"bad value 'ten' for 'epochs': expected int"),
    ("bool-for-int", {"epochs": True}, r"bad value True for 'epochs': expected int"),
    ("wrong-type-bool", {"jit_compile": 3}, r"bad value 3 for 'jit_compile': expected bool"),
    ("list-expected", {"seeds": 3}, r"bad value 3 for 'seeds': expected a list"),
    ("section-not-mapping", {"sharpness": 3}, r"'sharpness' must be a mapping"),
    ("batch-size-zero", {"sb_batch_size": 0}, r"bad value 0 for 'sb_batch_size': must be >= 1"),
    ("negative-epsilon", {"sharpness": {"epsilons": [-1e-3]}},
     r"bad value -0.001 for 'sharpness.epsilons': each epsilon must be a finite number > 0"),
    ("infinite-float", {"adam_epsilon": float("inf")}, r"bad value inf for 'adam_epsilon': must be a finite number"),
    ("nan-float", {"learning_rate": float("nan")}, r"bad value nan for 'learning_rate': must be a finite number"),
    ("infinite-float-string", {"learning_rate": "inf"}, r"bad value 'inf' for 'learning_rate': must be a finite number"),
    ("infinite-epsilon", {"sharpness": {"epsilons": [float("inf")]}},
     r"bad value inf for 'sharpness.epsilons': must be a finite number"),
    ("seed-too-large", {"seeds": [2 ** 32]}, r"bad value 4294967296 for 'seeds': seeds must be in \[0, 2\*\*32\)"),
    ("alpha-grid-one-point", {"landscape": {"points": 1}},
     r"bad value 1 for 'landscape.points': an alpha grid needs at least 2 points"),
    ("alpha-range-reversed", {"landscape": {"alpha_min": 2.0, "alpha_max": -1.0}},
     r"'landscape.alpha_max': must be greater than landscape.alpha_min"),
    ("unknown-network", {"network": "F9"}, r"bad value 'F9' for 'network': use one of"),
    ("unknown-dataset", {"dataset": "imagenet"}, r"bad value 'imagenet' for 'dataset': use one of"),
    ("network-dataset-mismatch", {"network": "C1"},
     r"bad value 'synthetic_mnist' for 'dataset': network C1 takes"),
    ("bad-batchnorm", {"batchnorm": "ghost"}, r"bad value 'ghost' for 'batchnorm'"),
    ("bad-stopping", {"stopping": "never"}, r"bad value 'never' for 'stopping'"),
    ("learning-rate-zero", {"learning_rate": 0}, r"bad value 0.0 for 'learning_rate': must be > 0"),
    ("beta-out-of-range", {"beta_2": 1.0}, r"bad value 1.0 for 'beta_2': must be in \[0, 1\)"),
    ("repeated-seeds", {"seeds": [1, 1]}, r"'seeds': seeds repeat"),
    ("negative-seed", {"seeds": [-1]}, r"bad value -1 for 'seeds': seeds must be in \[0, 2\*\*32\)"),
    ("no-seeds", {"seeds": []}, r"'seeds': give at least one seed"),
    ("bad-space", {"sharpness": {"spaces": ["diagonal"]}}, r"'sharpness.spaces': use 'full' or 'random'"),
    ("bad-start", {"sharpness": {"start": "middle"}}, r"'sharpness.start': use 'zero' or 'random'"),
    ("profile-with-slash", {"profile": "a/b"}, r"'profile': a non-empty name without '/'"),
    ("sweep-batch-zero", {"sweep": {"batch_sizes": [0]}},
     r"bad value 0 for 'sweep.batch_sizes': each batch size must be >= 1"),
    ("sweep-batches-repeat", {"sweep": {"batch_sizes": [64, 64]}}, r"'sweep.batch_sizes': batch sizes repeat"),
    ("sweep-noise-batches", {"sweep": {"noise_batches": 2}},
     r"bad value 2 for 'sweep.noise_batches': the noise-scale estimate needs at least 3 mini-batches"),
    ("sweep-bad-scaling", {"sweep": {"batch_sizes": [64], "lr_scalings": ["cubic"]}},
     r"bad value 'cubic' for 'sweep.lr_scalings': use one of \('none', 'sqrt', 'linear'\)"),
    ("missing-required", {"network": None}, r"bad value None for 'network': expected str"),
]


def run_main(capsys, *argv):
    code = entry.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def write_config(tmp_path, changes):
    data_ = {**TINY, "results_dir": str(tmp_path / "results")}
    for key, value in changes.items():
        if isinstance(value, dict) and key in ("sharpness", "landscape", "sweep"):
            data_[key] = {**data_.get(key, {}), **value}
        else:
            data_[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data_))
    return path


@pytest.mark.parametrize("changes,message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_refused_and_writes_nothing(tmp_path, capsys, changes, message):
    path = write_config(tmp_path, changes)
    code, err = run_main(capsys, "train", path)
    assert code == 2
    assert err.startswith(f"error: {path}: ")
    assert re.search(message, err), err
    assert not (tmp_path / "results").exists()


def test_config_file_problems(tmp_path, capsys):
    code, err = run_main(capsys, "train", tmp_path / "missing.yaml")
    assert code == 2 and "missing.yaml: config file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [F1\n")
    code, err = run_main(capsys, "train", bad)
    assert code == 2 and "bad.yaml: not valid YAML" in err
    bad.write_text("- F1\n- mnist\n")
    code, err = run_main(capsys, "train", bad)
    assert code == 2 and "the top level must be a mapping" in err
    good = write_config(tmp_path, {})
    code, err = run_main(capsys, "train", good, "--set", "epochs")
    assert code == 2 and "--set 'epochs': expected key=value" in err
    code, err = run_main(capsys, "train", good, "--set", "epochs=0")
    assert code == 2 and "(--set epochs=0): bad value 0 for 'epochs': must be >= 1" in err
    code, err = run_main(capsys, "train", good, "--set", "seeds=[1")
    assert code == 2 and "(--set seeds=[1): the value is not valid YAML" in err and err.count("\n") == 1
    code, err = run_main(capsys, "train", good, "--set", "adam_epsilon=.inf")
    assert code == 2 and "bad value inf for 'adam_epsilon': must be a finite number" in err
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00network: F1\n")
    code, err = run_main(capsys, "train", binary)
    assert code == 2 and "binary.yaml: not a text (UTF-8) file" in err and err.count("\n") == 1
    for seed in ("-1", str(2 ** 32)):
        code, err = run_main(capsys, "train", good, "--seed", seed)
        assert code == 2 and f"seed {seed} is out of range" in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_sharpness_flags_are_checked_before_anything_is_measured(tmp_path, capsys):
    path = write_config(tmp_path, {"epochs": 1, "train_subset": 200, "test_subset": 100})
    assert run_main(capsys, "train", path, "--regime", "sb")[0] == 0
    run = tmp_path / "results" / "F1_synthetic_mnist" / "sb" / "seed0"
    for flag, message in (("inf", "must be a finite number > 0"), ("0", "must be a finite number > 0"),
                          ("nan", "must be a finite number > 0")):
        code, err = run_main(capsys, "sharpness", run, "--epsilon", flag)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, err = run_main(capsys, "sharpness", run, "--space", "random", "--dim", str(10 ** 8))
    assert code == 2 and "needs p <= n" in err and err.count("\n") == 1, err
    assert not (run / "sharpness").exists() or not list((run / "sharpness").glob("*.json"))


def test_batch_larger_than_the_training_set(tmp_path, capsys):
    path = write_config(tmp_path, {"sb_batch_size": 401})
    code, err = run_main(capsys, "train", path, "--regime", "sb", "--seed", "0")
    assert code == 2
    assert "sb_batch_size 401 is larger than the training set (400 examples)" in err
    assert not list((tmp_path / "results").rglob("*.json"))


def fashion_config(tmp_path, directory):
    return write_config(tmp_path, {"dataset": "fashion_mnist", "data_dir": str(directory)})


def test_missing_data_directory(tmp_path, capsys):
    code, err = run_main(capsys, "train", fashion_config(tmp_path, tmp_path / "nowhere"))
    assert code == 2
    assert "nowhere for fashion_mnist does not exist" in err and "dataset-fashion-mnist" in err
    assert not (tmp_path / "results").exists()


def test_corrupt_data_file(tmp_path, capsys):
    directory = tmp_path / "fm"
    directory.mkdir()
    for name in data.IDX_FILES:
        (directory / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01x"))
    code, err = run_main(capsys, "train", fashion_config(tmp_path, directory))
    assert code == 2 and "train-images-idx3-ubyte.gz: checksum mismatch" in err


def test_truncated_data_file(tmp_path, capsys):
    directory = tmp_path / "fm"
    directory.mkdir()
    for name in data.IDX_FILES:
        (directory / name).write_bytes(gzip.compress(b"\x00" * 100)[:20])
    code, err = run_main(capsys, "train", fashion_config(tmp_path, directory))
    assert code == 2 and "not a valid gzip file" in err


def test_timit_problems(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = write_config(tmp_path, {"network": "F2", "dataset": "timit", "data_dir": str(tmp_path)})
    code, err = run_main(capsys, "train", path)
    assert code == 2 and "timit.npz not found" in err and "360" in err
    np.savez(tmp_path / "timit.npz", x_train=rng.random((4, 360)))
    code, err = run_main(capsys, "train", path)
    assert code == 2 and "missing array 'y_train'" in err
    np.savez(tmp_path / "timit.npz", x_train=rng.random((4, 360)), y_train=np.array([0, 1, 2, -1]),
             x_test=rng.random((1, 360)), y_test=np.array([0]))
    code, err = run_main(capsys, "train", path)
    assert code == 2 and "labels out of range [0, 1973) (found -1..2)" in err


def test_results_directory_problems(tmp_path, capsys):
    code, err = run_main(capsys, "table2", tmp_path / "absent")
    assert code == 2 and "absent does not exist: train runs first" in err
    (tmp_path / "empty").mkdir()
    code, err = run_main(capsys, "table2", tmp_path / "empty")
    assert code == 2 and "no finished runs (metrics.json)" in err
    code, err = run_main(capsys, "report", tmp_path / "empty")
    assert code == 2 and "no finished runs (metrics.json)" in err


def test_unfinished_run_directory(tmp_path, capsys):
    code, err = run_main(capsys, "sharpness", tmp_path)
    assert code == 2 and "is not a finished run directory (no metrics.json)" in err
    with pytest.raises(train.RunError, match="train it first"):
        train.load_run(tmp_path)


@pytest.mark.parametrize("code_,message", [(errno.ENOSPC, "no space left on the device"),
                                           (errno.EROFS, "cannot write here (permission denied or read-only)"),
                                           (errno.EACCES, "cannot write here (permission denied or read-only)")])
def test_disk_full_and_read_only_leave_nothing(tmp_path, monkeypatch, code_, message):
    # Simulated: the tests run as root on CI, where permission bits do not stop writes.
    def fail(*args, **kwargs):
        raise OSError(code_, os.strerror(code_))

    target = tmp_path / "out" / "metrics.json"
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(storage.StorageError, match=re.escape(message)):
        storage.atomic_write_json(target, {"a": 1})
    assert list((tmp_path / "out").iterdir()) == []  # no temp file, no partial file
    monkeypatch.setattr(tempfile, "mkstemp", fail)
    with pytest.raises(storage.StorageError, match=re.escape(message)):
        storage.atomic_write_json(target, {"a": 1})


def test_read_only_results_directory_for_real(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits; the simulated test above covers it")
    (tmp_path / "ro").mkdir(mode=0o555)
    path = write_config(tmp_path, {"results_dir": str(tmp_path / "ro" / "results")})
    code, err = run_main(capsys, "train", path)
    assert code == 2 and "cannot write here" in err


def _out_of_memory_error():
    """The backend's own out-of-memory error type (XLA's, under JAX, is not importable by name)."""
    if backend.name() == "tensorflow":
        import tensorflow as tf

        return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    return type("XlaRuntimeError", (RuntimeError,), {})("RESOURCE_EXHAUSTED: Out of memory allocating")


def test_out_of_memory_suggests_a_smaller_evaluation_batch(tmp_path, capsys, monkeypatch):
    from replication import objective

    error = _out_of_memory_error()

    def oom(self, flat=None):
        raise error

    monkeypatch.setattr(objective.Objective, "evaluate", oom)
    code, err = run_main(capsys, "train", write_config(tmp_path, {}), "--regime", "sb")
    assert code == 2
    assert f"out of device memory ({type(error).__name__})" in err and "lower eval_batch_size" in err
    assert not list((tmp_path / "results").rglob("metrics.json"))


def test_errors_exit_non_zero_from_a_real_process(tmp_path):
    path = write_config(tmp_path, {"epochz": 1})
    result = cli("train", path)
    assert result.returncode == 2 and "unknown config key 'epochz'" in result.stderr
    assert "Traceback" not in result.stderr
    result = cli("table2", tmp_path / "absent")
    assert result.returncode == 2 and "does not exist" in result.stderr
