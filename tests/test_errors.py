"""The bad-input catalogue: each case asserts the exact error as the one stderr line, exit status 2
(`conftest.one_error_line`), and that nothing was written. Cases run through
`replication.__main__.main` (what the CLI runs); a few run as real processes: the exit status,
Ctrl-C, and TensorFlow's start-up chatter, which only a process of its own shows."""

import errno
import gzip
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, TINY, cli, one_error_line
from replication import backend, data, rundir, storage
from replication import __main__ as entry

pytestmark = pytest.mark.backend

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
    line = one_error_line(code, err)
    assert line.startswith(f"error: {path}: ")
    assert re.search(message, line), line
    assert not (tmp_path / "results").exists()


def test_config_file_problems(tmp_path, capsys):
    code, err = run_main(capsys, "train", tmp_path / "missing.yaml")
    assert "missing.yaml: config file not found" in one_error_line(code, err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [F1\n")
    code, err = run_main(capsys, "train", bad)
    assert "bad.yaml: not valid YAML" in one_error_line(code, err)
    bad.write_text("- F1\n- mnist\n")
    code, err = run_main(capsys, "train", bad)
    assert "the top level must be a mapping" in one_error_line(code, err)
    good = write_config(tmp_path, {})
    code, err = run_main(capsys, "train", good, "--set", "epochs")
    assert "--set 'epochs': expected key=value" in one_error_line(code, err)
    code, err = run_main(capsys, "train", good, "--set", "epochs=0")
    assert "(--set epochs=0): bad value 0 for 'epochs': must be >= 1" in one_error_line(code, err)
    code, err = run_main(capsys, "train", good, "--set", "seeds=[1")
    assert "(--set seeds=[1): the value is not valid YAML" in one_error_line(code, err)
    code, err = run_main(capsys, "train", good, "--set", "adam_epsilon=.inf")
    assert "bad value inf for 'adam_epsilon': must be a finite number" in one_error_line(code, err)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00network: F1\n")
    code, err = run_main(capsys, "train", binary)
    assert "binary.yaml: not a text (UTF-8) file" in one_error_line(code, err)
    for seed in ("-1", str(2 ** 32)):
        code, err = run_main(capsys, "train", good, "--seed", seed)
        assert f"seed {seed} is out of range" in one_error_line(code, err)
    assert not (tmp_path / "results").exists()


def test_sharpness_flags_are_checked_before_anything_is_measured(tmp_path, capsys):
    path = write_config(tmp_path, {"epochs": 1, "train_subset": 200, "test_subset": 100})
    assert run_main(capsys, "train", path, "--regime", "sb")[0] == 0
    run = tmp_path / "results" / "F1_synthetic_mnist" / "sb" / "seed0"
    for flag, message in (("inf", "must be a finite number > 0"), ("0", "must be a finite number > 0"),
                          ("nan", "must be a finite number > 0")):
        code, err = run_main(capsys, "sharpness", run, "--epsilon", flag)
        assert message in one_error_line(code, err)
    code, err = run_main(capsys, "sharpness", run, "--space", "random", "--dim", str(10 ** 8))
    assert "needs p <= n" in one_error_line(code, err)
    assert not (run / "sharpness").exists() or not list((run / "sharpness").glob("*.json"))


def test_batch_larger_than_the_training_set(tmp_path, capsys):
    path = write_config(tmp_path, {"sb_batch_size": 401})
    code, err = run_main(capsys, "train", path, "--regime", "sb", "--seed", "0")
    assert "sb_batch_size 401 is larger than the training set (400 examples)" in one_error_line(code, err)
    assert not list((tmp_path / "results").rglob("*.json"))


def fashion_config(tmp_path, directory):
    return write_config(tmp_path, {"dataset": "fashion_mnist", "data_dir": str(directory)})


def test_missing_data_directory(tmp_path, capsys):
    code, err = run_main(capsys, "train", fashion_config(tmp_path, tmp_path / "nowhere"))
    line = one_error_line(code, err)
    assert "nowhere for fashion_mnist does not exist" in line and "dataset-fashion-mnist" in line
    assert not (tmp_path / "results").exists()


def test_corrupt_data_file(tmp_path, capsys):
    directory = tmp_path / "fm"
    directory.mkdir()
    for name in data.IDX_FILES:
        (directory / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01x"))
    code, err = run_main(capsys, "train", fashion_config(tmp_path, directory))
    assert "train-images-idx3-ubyte.gz: checksum mismatch" in one_error_line(code, err)


def test_truncated_data_file(tmp_path, capsys):
    directory = tmp_path / "fm"
    directory.mkdir()
    for name in data.IDX_FILES:
        (directory / name).write_bytes(gzip.compress(b"\x00" * 100)[:20])
    code, err = run_main(capsys, "train", fashion_config(tmp_path, directory))
    assert "not a valid gzip file" in one_error_line(code, err)


def test_timit_problems(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = write_config(tmp_path, {"network": "F2", "dataset": "timit", "data_dir": str(tmp_path)})
    code, err = run_main(capsys, "train", path)
    line = one_error_line(code, err)
    assert "timit.npz not found" in line and "360" in line
    np.savez(tmp_path / "timit.npz", x_train=rng.random((4, 360)))
    code, err = run_main(capsys, "train", path)
    assert "missing array 'y_train'" in one_error_line(code, err)
    np.savez(tmp_path / "timit.npz", x_train=rng.random((4, 360)), y_train=np.array([0, 1, 2, -1]),
             x_test=rng.random((1, 360)), y_test=np.array([0]))
    code, err = run_main(capsys, "train", path)
    assert "labels out of range [0, 1973) (found -1..2)" in one_error_line(code, err)


def test_results_directory_problems(tmp_path, capsys):
    code, err = run_main(capsys, "table2", tmp_path / "absent")
    assert "absent does not exist: train runs first" in one_error_line(code, err)
    (tmp_path / "empty").mkdir()
    code, err = run_main(capsys, "table2", tmp_path / "empty")
    assert "no finished runs (metrics.json)" in one_error_line(code, err)
    code, err = run_main(capsys, "report", tmp_path / "empty")
    assert "no finished runs (metrics.json)" in one_error_line(code, err)


def test_unfinished_run_directory(tmp_path, capsys):
    code, err = run_main(capsys, "sharpness", tmp_path)
    assert "is not a finished run directory (no metrics.json)" in one_error_line(code, err)
    with pytest.raises(rundir.RunError, match="train it first"):
        rundir.load_run(tmp_path)


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
    assert list((tmp_path / "out").iterdir()) == []


# Calls that write a file, and open() modes that do: outside replication/storage.py each would skip
# the temporary file, fsync and rename that make a result file atomic.
WRITERS = {"write_text", "write_bytes", "savefig", "save_weights", "save", "savez", "savez_compressed", "to_csv",
           "dump", "writerow", "writerows"}
SHUTIL = {"copy", "copyfile", "copy2", "copytree", "move"}


def _direct_writes(source: str) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        if isinstance(func, ast.Attribute) and owner != "storage" and (
                func.attr in WRITERS or (owner == "shutil" and func.attr in SHUTIL)):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
        is_open = (isinstance(func, ast.Name) and func.id == "open") or (
            isinstance(func, ast.Attribute) and func.attr == "open" and not (
                isinstance(func.value, ast.Name) and func.value.id in ("os", "tarfile", "Image")))
        mode = node.args[1] if isinstance(func, ast.Name) and len(node.args) > 1 else (
            node.args[0] if isinstance(func, ast.Attribute) and node.args else
            next((k.value for k in node.keywords if k.arg == "mode"), None))
        if is_open and isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_every_result_file_goes_through_storages_atomic_writers():
    # guarantees.md: "every result file is written atomically"; the test above proves the writers,
    # this one that nothing in the package writes a file around them.
    package = Path(storage.__file__).parent
    direct = {str(path.relative_to(package)): found for path in sorted(package.rglob("*.py"))
              if path.name != "storage.py" and (found := _direct_writes(path.read_text()))}
    assert direct == {}
    # The scan finds what it looks for.
    assert len(_direct_writes("p.write_text('x')\nopen(p, 'w')\nnp.save(p, a)\np.open('a')\nfig.savefig(p)\n"
                              "shutil.copy(a, b)\nstorage.atomic_write_text(p, 'x')\nopen(p)\nx.copy()\n")) == 6


def test_read_only_results_directory_for_real(tmp_path, capsys):
    """A folder the operating system refuses: a mode-0555 one, or, for root (whom permission bits do
    not stop, as on CI), one under /sys, where the kernel refuses every new directory."""
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        results_dir = tmp_path / "ro" / "results"
    else:
        results_dir = Path("/sys/replication-test/results")
        try:
            results_dir.parent.mkdir()
        except OSError as err:  # refused, as it should be, unless for another reason (no /sys at all)
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                pytest.skip(f"/sys refuses a new directory with {errno.errorcode[err.errno]}, not a permission error")
        else:
            results_dir.parent.rmdir()
            pytest.skip("this root may write under /sys; the simulated test above covers it")
    path = write_config(tmp_path, {"results_dir": str(results_dir)})
    code, err = run_main(capsys, "train", path)
    assert "cannot write here" in one_error_line(code, err)


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
    line = one_error_line(code, err)
    assert f"out of device memory ({type(error).__name__})" in line and "lower eval_batch_size" in line
    assert not list((tmp_path / "results").rglob("metrics.json"))


def test_errors_exit_non_zero_from_a_real_process(tmp_path):
    path = write_config(tmp_path, {"epochz": 1})
    result = cli("train", path)
    assert "unknown config key 'epochz'" in one_error_line(result.returncode, result.stderr)
    result = cli("table2", tmp_path / "absent")
    assert "does not exist" in one_error_line(result.returncode, result.stderr)


# Data -------------------------------------------------------------------------------------------
def _idx_files(directory, monkeypatch, n_train=6, n_train_labels=6, damage=None):
    """Four Fashion-MNIST-named IDX files, registered as genuine; `damage` flips eight bytes in the
    middle of the train images' deflate stream (its gzip header stays valid)."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 4, (n_train, 28, 28)), rng.integers(0, 10, n_train_labels),
              rng.integers(0, 4, (2, 28, 28)), rng.integers(0, 10, 2)]
    sums = {}
    for name, array in zip(data.IDX_FILES, arrays):
        raw = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) \
            + array.astype(np.uint8).tobytes()
        packed = bytearray(gzip.compress(raw))
        if damage and name == data.IDX_FILES[0]:
            middle = len(packed) // 2
            packed[middle:middle + 8] = bytes(b ^ 0xFF for b in packed[middle:middle + 8])
        (directory / name).write_bytes(bytes(packed))
        sums[name] = {"md5": "-", "content_sha256": hashlib.sha256(raw).hexdigest()}
    monkeypatch.setitem(data.IDX_CHECKSUMS, "fashion_mnist", sums)


def test_a_damaged_gzip_stream_names_the_file(tmp_path, capsys, monkeypatch):
    _idx_files(tmp_path, monkeypatch, damage=True)
    code, err = run_main(capsys, "train", fashion_config(tmp_path, tmp_path))
    line = one_error_line(code, err)
    assert f"{tmp_path / data.IDX_FILES[0]}: not a valid gzip file" in line and line.endswith("re-download it")
    assert not (tmp_path / "results").exists()


def test_idx_labels_that_do_not_match_the_images(tmp_path, capsys, monkeypatch):
    _idx_files(tmp_path, monkeypatch, n_train_labels=5)
    code, err = run_main(capsys, "train", fashion_config(tmp_path, tmp_path))
    assert (f"{tmp_path / data.IDX_FILES[1]}: y_train has shape (5,), expected (6,), one label per input"
            in one_error_line(code, err))
    assert not (tmp_path / "results").exists()


TIMIT_CASES = [
    ("labels-2d", {"y_train": np.zeros((6, 2), int)}, "y_train has shape (6, 2), expected (6,), one label per input"),
    ("labels-too-few", {"y_test": np.zeros(1, int)}, "y_test has shape (1,), expected (2,), one label per input"),
    ("labels-float", {"y_train": np.arange(6) + 0.5},
     "y_train holds float64 values: labels must be integers in [0, 1973)"),
    ("inputs-wrong-width", {"x_test": np.zeros((2, 39))}, "x_test has shape (2, 39), expected (N, 360)"),
    ("truncated", "truncated", "not a readable .npz"),
]


@pytest.mark.parametrize("changes,message", [c[1:] for c in TIMIT_CASES], ids=[c[0] for c in TIMIT_CASES])
def test_timit_arrays_of_the_wrong_shape_or_type(tmp_path, capsys, changes, message):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((6, 360)), "y_train": np.arange(6), "x_test": rng.random((2, 360)),
              "y_test": np.arange(2)}
    np.savez(tmp_path / "timit.npz", **{**arrays, **(changes if isinstance(changes, dict) else {})})
    if changes == "truncated":
        packed = (tmp_path / "timit.npz").read_bytes()
        (tmp_path / "timit.npz").write_bytes(packed[:len(packed) // 2])
    path = write_config(tmp_path, {"network": "F2", "dataset": "timit", "data_dir": str(tmp_path)})
    code, err = run_main(capsys, "train", path)
    line = one_error_line(code, err)
    assert f"{tmp_path / 'timit.npz'}: {message}" in line and "expected timit.npz with arrays" in line
    assert not (tmp_path / "results").exists()


SUBSET_CASES = [  # synthetic_mnist has 2000 training and 500 test examples; TINY uses 400 of them
    ({"train_subset": 2001}, "train_subset 2001 is larger than the synthetic_mnist training set (2000 examples)"),
    ({"test_subset": 501},
     "test_subset 501 is larger than the synthetic_mnist test set (500 examples)"),
    ({"sharpness": {"subset": 401}},
     "sharpness.subset 401 is larger than the synthetic_mnist training set in use (400 examples)"),
    ({"landscape": {"subset": 401}},
     "landscape.subset 401 is larger than the synthetic_mnist training set in use (400 examples)"),
]


@pytest.mark.parametrize("changes,message", SUBSET_CASES, ids=[m.split()[0] for _, m in SUBSET_CASES])
def test_a_subset_larger_than_the_data_is_refused(tmp_path, capsys, changes, message):
    # Today's alternative: the whole set is used while the results say "reduced to 2001 examples".
    code, err = run_main(capsys, "train", write_config(tmp_path, changes))
    assert f"error: {message}: lower it, or set it to null to use them all" == one_error_line(code, err)
    assert not (tmp_path / "results").exists()


# Paths ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,message", [
    ("results_dir", "with space/results", "use a path without spaces"),
    ("results_dir", "with\ttab/results", "use a path without spaces"),
    ("results_dir", "a:b/results", "use a path without spaces or any of # $ % :"),
    ("results_dir", "", "give a directory (an empty path would mean the current one)"),
    ("data_dir", "", "give a directory (an empty path would mean the current one); null downloads through TFDS"),
], ids=["space", "tab", "colon", "empty", "empty-data-dir"])
def test_paths_make_cannot_use_are_refused(tmp_path, capsys, monkeypatch, key, value, message):
    monkeypatch.chdir(tmp_path)  # were a relative results_dir used, it would appear here
    path = write_config(tmp_path, {key: value})
    code, err = run_main(capsys, "train", path)
    line = one_error_line(code, err)
    assert f"bad value {value!r} for '{key}': {message}" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_home_in_results_dir_is_expanded_in_runs_and_make_rules(tmp_path, capsys, monkeypatch):
    from replication import config as config_lib

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_config(tmp_path, {"results_dir": "~/results"})
    assert config_lib.load(path).results_dir == str(tmp_path / "home" / "results")
    assert entry.main(["make-rules", "--name", "t", str(path)]) == 0
    rules = capsys.readouterr().out
    assert f"{tmp_path / 'home' / 'results'}/F1_synthetic_mnist/sb/seed0/metrics.json:" in rules
    assert "~" not in rules


# Damaged or missing files of a run directory ----------------------------------------------------
@pytest.fixture(scope="module")
def finished_pair(tmp_path_factory):
    """A finished tiny SB/LB pair (one epoch), copied by each case before it damages a file."""
    root = tmp_path_factory.mktemp("pair")
    path = write_config(root, {"epochs": 1, "train_subset": 200, "test_subset": 100})
    assert entry.main(["train", str(path)]) == 0
    return root


def _unfinished(run):
    """The run as a kill after its first epoch leaves it (no checkpoint: that run had finished)."""
    (run / "metrics.json").unlink()
    (run / "final.weights.h5").unlink()


RUN_FILE_CASES = [
    # (id, file under the trial directory, damage, command, fix the line gives, prepare the run)
    ("metrics-truncated-sharpness", "sb/seed0/metrics.json", "truncate", ["sharpness", "{run}"], "train", None),
    ("metrics-garbage-table2", "sb/seed0/metrics.json", "garbage", ["table2", "{results}"], "train", None),
    ("metrics-truncated-train", "lb/seed0/metrics.json", "truncate", ["train", "{config}", "--regime", "lb"],
     "train", None),
    ("config-yaml-missing-check", "sb/seed0/config.yaml", "delete", ["check", "{config}"], "train", None),
    ("config-yaml-truncated-train", "sb/seed0/config.yaml", "truncate", ["train", "{config}", "--regime", "sb"],
     "train", None),
    ("env-garbage-report", "sb/seed0/env.json", "garbage", ["report", "{results}"], "train", None),
    ("history-truncated-table2", "lb/seed0/history.csv", "truncate", ["table2", "{results}"], "train", None),
    ("history-truncated-resume", "sb/seed0/history.csv", "truncate", ["train", "{config}", "--regime", "sb"],
     "train", _unfinished),
    ("checkpoint-missing-resume", "sb/seed0/checkpoint-1.weights.h5", "delete",
     ["train", "{config}", "--regime", "sb"], "train", _unfinished),
    ("final-weights-truncated-evaluate", "sb/seed0/final.weights.h5", "truncate", ["evaluate", "{run}"], "train",
     None),
    ("final-weights-missing-sharpness", "sb/seed0/final.weights.h5", "delete", ["sharpness", "{run}"], "train", None),
    ("final-weights-garbage-landscape", "lb/seed0/final.weights.h5", "garbage", ["landscape", "{config}"], "train",
     None),
    ("initial-weights-garbage-noise", "sb/seed0/initial.weights.h5", "garbage",
     ["noise", "{run}", "--point", "initial"], "train", None),
    ("sharpness-garbage-table3", "sb/seed0/sharpness/full_eps0.001.json", "garbage", ["table3", "{results}"],
     "sharpness {run}", None),
    ("sharpness-garbage-sharpness", "sb/seed0/sharpness/full_eps0.001.json", "garbage",
     ["sharpness", "{run}", "--space", "full", "--epsilon", "0.001"], "sharpness {run}", None),
    ("noise-garbage-noise", "sb/seed0/noise/final.json", "garbage", ["noise", "{run}"],
     "noise {run} --point final", None),
    ("landscape-json-garbage-report", "landscape/seed0_linear.json", "garbage", ["report", "{results}"],
     "landscape CONFIG", None),
    ("landscape-csv-garbage-table2", "landscape/seed0_linear.csv", "garbage", ["table2", "{results}"],
     "landscape CONFIG", None),
]


def _files(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"}


@pytest.mark.parametrize("name,damage,command,fix,prepare", [c[1:] for c in RUN_FILE_CASES],
                         ids=[c[0] for c in RUN_FILE_CASES])
def test_a_damaged_or_missing_run_file_is_one_line_naming_it_and_the_fix(
        finished_pair, tmp_path, capsys, name, damage, command, fix, prepare):
    results = tmp_path / "results"
    shutil.copytree(finished_pair / "results", results)
    config = write_config(tmp_path, {"epochs": 1, "train_subset": 200, "test_subset": 100})
    trial = results / "F1_synthetic_mnist"
    run = trial / "sb" / "seed0"
    if prepare:
        prepare(run)
    target = trial / name
    if name.startswith("landscape/"):  # a curve whose JSON sidecar (written last) is there
        target.parent.mkdir(exist_ok=True)
        for suffix in (".csv", ".json"):
            target.with_suffix(suffix).write_text('{"seed": 0}\n' if suffix == ".json" else "alpha,train_xent\n0,1\n")
    target.parent.mkdir(exist_ok=True)
    if damage == "delete":
        target.unlink(missing_ok=True)
    elif damage == "truncate":  # cut mid-line, as a full disk or a copy that stopped would
        target.write_bytes(target.read_bytes()[:len(target.read_bytes()) // 2].rstrip(b"\n"))
    else:
        target.write_bytes(b"\x89\xff\x00garbage\xfe" * 20)
    before = _files(tmp_path)
    arguments = [a.format(run=run, results=results, config=config) for a in command]
    code, err = run_main(capsys, *arguments)
    line = one_error_line(code, err)
    assert line.startswith(f"error: {target}: {'missing' if damage == 'delete' else 'damaged or truncated'}"), line
    expected_fix = (f"delete {run if name.startswith('sb/') else trial / 'lb' / 'seed0'} and rerun "
                    f"`python -m replication train CONFIG --seed 0 --regime {name[:2]}`" if fix == "train"
                    else f"delete it and rerun `python -m replication {fix.format(run=run)}`")
    assert expected_fix in line, line
    assert _files(tmp_path) == before  # nothing written, nothing removed


# Ctrl-C and TensorFlow's start-up chatter: real processes --------------------------------------
def _as_in_a_terminal():
    """SIGINT as a shell's foreground job gets it, whatever this suite inherited: a background job
    ignores SIGINT, and a CI runner may start it with SIGINT blocked (the mask survives exec, so the
    signal would stay pending and the run finish with status 0, as on CI on 2026-12-07)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(tmp_path):
    path = write_config(tmp_path, {"epochs": 6})
    command = [sys.executable, "-m", "replication", "train", str(path), "--regime", "sb"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, preexec_fn=_as_in_a_terminal)
    before = []
    for line in process.stderr:  # training, between epoch 1 and 2
        before.append(line)
        if "epoch 1/6" in line:
            break
    process.send_signal(signal.SIGINT)
    _, after = process.communicate(timeout=300)
    assert process.returncode == 130, "".join(before) + after
    lines = after.splitlines()
    assert lines[-1] == entry.INTERRUPTED
    assert all(line.startswith("[F1 SB (batch 32) seed 0] epoch ") for line in lines[:-1]), after
    run = tmp_path / "results" / "F1_synthetic_mnist" / "sb" / "seed0"
    assert not (run / "metrics.json").exists() and not list(run.glob(".*tmp*"))
    rerun = cli("train", path, "--regime", "sb", check=True)
    assert "resuming after epoch" in rerun.stderr and (run / "metrics.json").exists()


@pytest.mark.parametrize("case", ["bad-config", "bad-set", "missing-data-dir"])
def test_nothing_precedes_the_error_line_without_tf_cpp_min_log_level(tmp_path, case):
    path = (fashion_config(tmp_path, tmp_path / "nowhere") if case == "missing-data-dir" else
            write_config(tmp_path, {"epochz": 1} if case == "bad-config" else {}))
    extra = ["--set", "epochs=0"] if case == "bad-set" else []
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "replication", "train", str(path), *extra], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=300)
    one_error_line(result.returncode, result.stderr)


def test_a_bad_config_is_refused_before_keras_starts(tmp_path):
    path = write_config(tmp_path, {"epochz": 1})
    probe = ("import sys; from replication import __main__ as m; code = m.main(['train', sys.argv[1]]); "
             "print(code, 'keras' in sys.modules, 'tensorflow' in sys.modules, 'jax' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe, str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.split() == ["2", "False", "False", "False"], result.stderr
