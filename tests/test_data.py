"""Data loaders on files the tests make: IDX, CIFAR archives and arrays, TIMIT npz, the JPEG
stand-in layout; and the real MNIST and CIFAR-10 in ../shared/data where a checkout has them."""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY, one_error_line
from replication import data, storage
from replication import __main__ as entry

pytestmark = pytest.mark.backend

# The real data beside the project (CI and this project's sessions have ../shared beside the clone).
SHARED_DATA = storage.PROJECT_ROOT.parent / "shared" / "data"


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(directory, name="fashion_mnist", n_train=6, n_test=4):
    """Write four IDX .gz files and register their content checksums for `name`."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    sums = {}
    for filename, array in arrays.items():
        raw = idx_bytes(array)
        (directory / filename).write_bytes(gzip.compress(raw))
        sums[filename] = {"md5": "-", "content_sha256": hashlib.sha256(raw).hexdigest()}
    return arrays, sums


def test_read_idx_round_trip():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data.read_idx(idx_bytes(array)), array)


def test_read_idx_truncated():
    raw = idx_bytes(np.zeros((2, 3), np.uint8))[:-1]
    with pytest.raises(data.DataError, match=r"truncated: header says \(2, 3\), found 5 bytes"):
        data.read_idx(raw)


def test_idx_loader_scales_to_unit_interval(tmp_path, monkeypatch):
    arrays, sums = write_idx_set(tmp_path)
    monkeypatch.setitem(data.IDX_CHECKSUMS, "fashion_mnist", sums)
    ds = data.load("fashion_mnist", str(tmp_path))
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train-images-idx3-ubyte.gz"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert ds.label == "Fashion-MNIST (stand-in for MNIST)"


def test_idx_checksum_mismatch(tmp_path):
    write_idx_set(tmp_path)  # not registered: checksums are the real Fashion-MNIST ones
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz: checksum mismatch"):
        data.load("fashion_mnist", str(tmp_path))


def write_cifar10_archive(directory, monkeypatch):
    """A 12-image cifar-10-python.tar.gz (2 per batch, test labels 1 9), its MD5 registered."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 9]}
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    packed = buffer.getvalue()
    (directory / "cifar-10-python.tar.gz").write_bytes(packed)
    name, _, url = data.CIFAR_ARCHIVES["cifar10"]
    monkeypatch.setitem(data.CIFAR_ARCHIVES, "cifar10", (name, hashlib.md5(packed).hexdigest(), url))


def test_cifar_archive(tmp_path, monkeypatch):
    write_cifar10_archive(tmp_path, monkeypatch)
    ds = data.load("cifar10", str(tmp_path))
    assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
    assert list(ds.y_test) == [1, 9]
    assert ds.source == str(tmp_path / "cifar-10-python.tar.gz")


def cifar10_arrays(n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
            "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
            "y_test": rng.integers(0, 10, n_test, dtype=np.uint8)}


def register_cifar10_arrays(monkeypatch, arrays):
    """Make `arrays` the expected ones: their shapes and the SHA-256 of their raw bytes."""
    monkeypatch.setattr(data, "CIFAR10_NPZ_ARRAYS", {
        key: (array.shape, hashlib.sha256(array.tobytes()).hexdigest()) for key, array in arrays.items()})


def test_cifar10_arrays_file(tmp_path, monkeypatch):
    arrays = cifar10_arrays()
    register_cifar10_arrays(monkeypatch, arrays)
    np.savez(tmp_path / "cifar10.npz", **arrays)
    ds = data.load("cifar10", str(tmp_path))
    assert ds.label == "CIFAR-10" and ds.source == str(tmp_path / "cifar10.npz")
    assert ds.x_train.shape == (6, 32, 32, 3) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(ds.x_test, arrays["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"])
    assert ds.y_train.dtype == np.int32


def test_cifar10_prefers_the_official_archive_and_says_so(tmp_path, monkeypatch):
    write_cifar10_archive(tmp_path, monkeypatch)
    arrays = cifar10_arrays()
    register_cifar10_arrays(monkeypatch, arrays)
    np.savez(tmp_path / "cifar10.npz", **arrays)
    ds = data.load("cifar10", str(tmp_path))
    assert ds.source == str(tmp_path / "cifar-10-python.tar.gz") and list(ds.y_test) == [1, 9]


def test_cifar10_arrays_recipe_is_documented():
    """The Spec's `files` (which every missing-data message quotes) says how to make the file."""
    files = data.DATASETS["cifar10"].files
    assert "cifar-10-python.tar.gz" in files and "keras.datasets.cifar10.load_data()" in files
    assert "y_train=y_train.ravel().astype('uint8')" in files and "cifar10.npz" in data.__doc__


def cifar10_config(tmp_path, directory):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**TINY, "network": "C1", "dataset": "cifar10", "data_dir": str(directory),
                                    "results_dir": str(tmp_path / "results")}))
    return path


def flip_one_bit(array):
    array = array.copy()
    array.flat[7] ^= 1
    return array


def write_truncated(path, arrays):
    np.savez(path, **arrays)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def write_damaged(path, arrays):
    """Bytes flipped inside x_train's data: the zip's CRC-32 catches it when the array is read."""
    np.savez(path, **arrays)
    packed = bytearray(path.read_bytes())
    packed[5000:5008] = bytes(b ^ 0xFF for b in packed[5000:5008])
    path.write_bytes(bytes(packed))


def write_npy(path, arrays):
    with open(path, "wb") as file:  # np.save(path) would append ".npy" to the name
        np.save(file, arrays["x_train"])


CIFAR10_ARRAY_CASES = [
    # (id, how the file is written from the registered arrays, message after "<path>: ")
    ("other-digest", lambda path, a: np.savez(path, **{**a, "x_test": flip_one_bit(a["x_test"])}),
     "array 'x_test' has SHA-256 "),
    ("labels-not-flattened", lambda path, a: np.savez(path, **{**a, "y_train": a["y_train"][:, None]}),
     "array 'y_train' is uint8 (6, 1), expected uint8 (6,)"),
    ("labels-int64", lambda path, a: np.savez(path, **{**a, "y_test": a["y_test"].astype(np.int64)}),
     "array 'y_test' is int64 (4,), expected uint8 (4,)"),
    ("missing-key", lambda path, a: np.savez(path, **{k: v for k, v in a.items() if k != "x_train"}),
     "missing array 'x_train'"),
    ("truncated", write_truncated, "not a readable .npz"),
    ("damaged", write_damaged, "array 'x_train' is unreadable (Bad CRC-32"),
    ("one-npy-array", write_npy, "one .npy array, not an .npz of x_train, y_train, x_test, y_test"),
]


@pytest.mark.parametrize("write,message", [c[1:] for c in CIFAR10_ARRAY_CASES],
                         ids=[c[0] for c in CIFAR10_ARRAY_CASES])
def test_cifar10_wrong_array_is_refused_in_one_line(tmp_path, capsys, monkeypatch, write, message):
    arrays = cifar10_arrays()
    register_cifar10_arrays(monkeypatch, arrays)
    path = tmp_path / "cifar10.npz"
    write(path, arrays)
    with pytest.raises(data.DataError) as caught:
        data.load("cifar10", str(tmp_path))
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "keras.datasets.cifar10.load_data()" in str(caught.value)  # the fix
    code = entry.main(["train", str(cifar10_config(tmp_path, tmp_path))])
    line = one_error_line(code, capsys.readouterr().err)
    assert f"{path}: {message}" in line and "make it again as cifar10.npz made by" in line
    assert not (tmp_path / "results").exists()


def _shared(path: Path) -> Path:
    """`path` under ../shared/data; missing, the test skips, or fails where REQUIRE_SHARED_DATA is set (CI,
    whose clone has ../shared beside it: the real files' digests and official order are checked there)."""
    if not path.exists():
        if os.environ.get("REQUIRE_SHARED_DATA"):
            pytest.fail(f"{path} is missing: CI runs with ../shared beside the clone")
        pytest.skip(f"{path} is not here")
    return path


def test_real_cifar10_arrays_load():
    _shared(SHARED_DATA / "cifar10" / "cifar10.npz")
    ds = data.load("cifar10", str(SHARED_DATA / "cifar10"))  # the published digests, unpatched
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert list(ds.y_train[:10]) == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # the official data_batch_1
    assert list(ds.y_test[:10]) == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the official test_batch
    assert ds.source.endswith("cifar10.npz")


def test_real_mnist_loads():
    _shared(SHARED_DATA / "mnist")
    ds = data.load("mnist", str(SHARED_DATA / "mnist"))  # the official MD5s, unpatched
    assert ds.label == "MNIST"
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert list(np.bincount(ds.y_train, minlength=10)) == [5923, 6742, 5958, 6131, 5842, 5421, 5918,
                                                          6265, 5851, 5949]


def test_timit_npz_and_wrong_shape(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "timit.npz", x_train=rng.random((5, 360)), y_train=np.array([0, 1, 2, 1972, 5]),
             x_test=rng.random((3, 360)), y_test=np.array([0, 1, 2]))
    ds = data.load("timit", str(tmp_path))
    assert ds.x_train.shape == (5, 360) and ds.num_classes == 1973
    np.savez(tmp_path / "timit.npz", x_train=rng.random((5, 39)), y_train=np.zeros(5, int),
             x_test=rng.random((3, 360)), y_test=np.zeros(3, int))
    with pytest.raises(data.DataError, match=r"x_train has shape \(5, 39\), expected \(N, 360\)"):
        data.load("timit", str(tmp_path))


def test_labels_out_of_range(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "timit.npz", x_train=rng.random((2, 360)), y_train=np.array([0, 1973]),
             x_test=rng.random((1, 360)), y_test=np.array([0]))
    with pytest.raises(data.DataError, match=r"labels out of range \[0, 1973\) \(found 0..1973\)"):
        data.load("timit", str(tmp_path))


def test_missing_directory_says_what_to_download(tmp_path):
    with pytest.raises(data.DataError, match="does not exist: create it and put the four Fashion-MNIST IDX"):
        data.load("fashion_mnist", str(tmp_path / "nope"))
    with pytest.raises(data.DataError, match="holds neither cifar-10-python.tar.gz nor cifar10.npz: put "
                                             "one of them there"):
        data.load("cifar10", str(tmp_path))


def test_subset_is_fixed_and_ordered():
    x = np.arange(100)
    a, _ = data.subset(x, x, 10)
    b, _ = data.subset(x, x, 10)
    np.testing.assert_array_equal(a, b)
    assert list(a) == sorted(a) and len(set(a)) == 10
    assert data.subset(x, x, None)[0] is x


def test_synthetic_is_deterministic_and_learnable_shape():
    a, b = data.load("synthetic_mnist"), data.load("synthetic_mnist")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.shape == (2000, 28, 28, 1) and set(np.unique(a.y_train)) == set(range(10))


def test_jpeg_stand_in_layout_labels_and_order(tmp_path, monkeypatch):
    from PIL import Image

    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for split, count in (("train", 3), ("test", 2)):
            for label, name in enumerate(data.CIFAR10_CLASSES):
                for i in range(count):
                    image = np.full((32, 32, 3), 20 * label, np.uint8) + rng.integers(0, 3, (32, 32, 3), dtype=np.uint8)
                    encoded = io.BytesIO()
                    Image.fromarray(image).save(encoded, format="JPEG", quality=100)
                    blob = encoded.getvalue()
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg")
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    packed = buffer.getvalue()
    (tmp_path / data.JPEG_ARCHIVE).write_bytes(packed)
    monkeypatch.setattr(data, "JPEG_SHA256", hashlib.sha256(packed).hexdigest())
    monkeypatch.setenv("REPLICATION_CACHE", str(tmp_path / "cache"))
    ds = data.load("cifar10_jpeg", str(tmp_path))
    assert ds.label == "CIFAR-10 (JPEG q75 stand-in, decoded by Pillow)"
    assert ds.x_train.shape == (30, 32, 32, 3) and ds.x_test.shape == (20, 32, 32, 3)
    assert sorted(ds.y_train) == sorted(list(range(10)) * 3)
    # Pixel level encodes the label: classes follow CIFAR-10's order (airplane=0 ... truck=9).
    np.testing.assert_allclose(ds.x_train.mean(axis=(1, 2, 3)) * 255, 20 * ds.y_train + 1, atol=2)
    # Not class-sorted: batch-statistics evaluation needs mixed batches.
    assert list(ds.y_train) != sorted(ds.y_train)
    assert list((tmp_path / "cache").iterdir())  # decoded once, cached
    np.testing.assert_array_equal(data.load("cifar10_jpeg", str(tmp_path)).y_train, ds.y_train)


def test_the_measured_examples_are_not_what_any_seed_trains_on_first(tiny_config):
    """The examples f is measured on (target checks, sharpness, noise scale) are a random draw
    apart from every run's data order. They were default_rng(0)'s, which is seed 0's first-epoch
    order too (SeedSequence ignores a trailing 0), so seed 0 measured the examples it began with."""
    from replication import config as config_lib, rundir, train

    config = config_lib.load(tiny_config())
    _, x_train, _, _, _ = rundir.load_arrays(config)
    measured, _ = rundir.training_examples(config, 100)
    rows = {x.tobytes(): i for i, x in enumerate(x_train)}
    measured = {rows[x.tobytes()] for x in measured}
    assert len(measured) == 100
    for seed in range(4):
        first = set(train.epoch_order(seed, 0, len(x_train))[:100].tolist())
        # A random 100 of 400 shares about 25 with another; the old draw shared all 100 at seed 0.
        assert len(measured & first) < 50, seed
    again, _ = rundir.training_examples(config, 100)  # the same examples every time
    assert {rows[x.tobytes()] for x in again} == measured
