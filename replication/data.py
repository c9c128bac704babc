"""Datasets (paper Table 5) as in-memory arrays, online through TFDS or offline from standard files.

Pixels are scaled to [0, 1] and nothing else is done (PAPER.md "Data"). Offline sources:
- MNIST / Fashion-MNIST: the four IDX `.gz` files (as Debian's `dataset-fashion-mnist` installs
  them in /usr/share/datasets/fashion-mnist/). Checked against the upstream `.gz` MD5 or the
  SHA-256 of the decompressed bytes (Debian re-compresses the files, the content is the same).
- CIFAR-10 / CIFAR-100: the "python version" archives, MD5-checked.
- CIFAR-10 also from the arrays file `cifar10.npz` (the real data, lossless; the project's
  ../shared/data/cifar10/ holds it): the four uint8 arrays that `keras.datasets.cifar10.load_data()`
  returns, labels flattened, each checked by shape and by the SHA-256 of its raw C-order bytes. Make
  it from Keras (default image_data_format channels_last) with

      (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
      numpy.savez("cifar10.npz", x_train=x_train, y_train=y_train.ravel().astype("uint8"),
                  x_test=x_test, y_test=y_test.ravel().astype("uint8"))

  Where a directory holds both files, the official archive is read (its published MD5 covers the
  file as downloaded) and the Dataset's `source` names the file read.
- cifar10_jpeg: the CIFAR-10 JPEG stand-in (`../shared/data/cifar10-jpeg.tar.gz`), SHA-256 checked;
  decoded once and cached beside the project in `.cache/`.
- TIMIT (F2): LDC-licensed; a user-made `timit.npz` (see `TIMIT_FORMAT`).
- synthetic_mnist / synthetic_cifar10: small Gaussian-cluster data for tests and smoke runs; never
  a paper result.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from replication import storage
from replication.errors import UserError


class DataError(UserError, RuntimeError):
    """A dataset is missing, corrupt or malformed; the message says what to download and where."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    label: str          # how results name the data (stand-ins say so)
    source: str         # "tfds", a path, or "generated"
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Accepted checksums per file: the upstream .gz MD5 and, where known, the SHA-256 of the
# decompressed IDX bytes (measured on Debian's dataset-fashion-mnist 0.0~git20200523).
IDX_CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
        "train-labels-idx1-ubyte.gz": {"md5": "d53e105ee54ea40749a09fcbcd1e9432"},
        "t10k-images-idx3-ubyte.gz": {"md5": "9fb629c4189551a2d022fa330f9573f3"},
        "t10k-labels-idx1-ubyte.gz": {"md5": "ec29112dd5afa0611ce80d1b7f02629c"},
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": {
            "md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "content_sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"},
        "train-labels-idx1-ubyte.gz": {
            "md5": "25c81989df183df01b3e8a0aad5dffbe",
            "content_sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"},
        "t10k-images-idx3-ubyte.gz": {
            "md5": "bef4ecab320f06d8554ea6380940ec79",
            "content_sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"},
        "t10k-labels-idx1-ubyte.gz": {
            "md5": "bb300cfdad3c16e7a12a480ee83cd310",
            "content_sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    },
}
CIFAR_ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
CIFAR10_NPZ = "cifar10.npz"
# The real CIFAR-10 as keras.datasets.cifar10.load_data() returns it (labels flattened), in the
# official order: each array's shape (raw bytes alone do not fix it) and the SHA-256 of its raw
# C-order uint8 bytes (../shared/data/README.md), which anyone can compute from the official files.
CIFAR10_NPZ_ARRAYS = {
    "x_train": ((50000, 32, 32, 3), "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a"),
    "y_train": ((50000,), "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"),
    "x_test": ((10000, 32, 32, 3), "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"),
    "y_test": ((10000,), "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
}
CIFAR10_NPZ_RECIPE = (f"{CIFAR10_NPZ} made by `(x_train, y_train), (x_test, y_test) = "
                      "keras.datasets.cifar10.load_data(); numpy.savez('cifar10.npz', x_train=x_train, "
                      "y_train=y_train.ravel().astype('uint8'), x_test=x_test, "
                      "y_test=y_test.ravel().astype('uint8'))`")
JPEG_ARCHIVE = "cifar10-jpeg.tar.gz"
JPEG_SHA256 = "b379c20532d0d7113e4257fb4fe37c05481e5a503319cd10c2de3889728c9e18"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# Named in the decoded cache's file name and in every result on the stand-in (its label). Pillow's
# decode equals TensorFlow's decode_jpeg(dct_method="INTEGER_ACCURATE"); results made before the
# JAX port used TensorFlow's default INTEGER_FAST, which differs by up to 5 levels in some pixels.
JPEG_DECODER_KEY = "pillow"
TIMIT_FORMAT = ("timit.npz with arrays x_train (N, 360) float32, y_train (N,) int in [0, 1973), "
                "x_test (M, 360) float32, y_test (M,) int in [0, 1973)")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One dataset's facts: the package's only record of its shape and classes (config checks
    which networks take it, models are built for it)."""

    label: str                      # how results name the data (stand-ins say so)
    input_shape: tuple[int, ...]    # one example
    num_classes: int
    files: str = ""                 # what data_dir must hold (what to download); "" = generated
    tfds: str | None = None         # the tensorflow-datasets name for data_dir: null; None = none
    # How a batch-size study (beyond the paper) names the data, where it stands in for nothing: a
    # second workload, not the paper's dataset; "" = the label (a lossy copy still says so there).
    workload: str = ""

    def workload_label(self) -> str:
        return self.workload or self.label


DATASETS = {
    "mnist": Spec("MNIST", (28, 28, 1), 10, "the four MNIST IDX files (train-images-idx3-ubyte.gz, "
                  "...) from https://ossci-datasets.s3.amazonaws.com/mnist/", "mnist"),
    "fashion_mnist": Spec("Fashion-MNIST (stand-in for MNIST)", (28, 28, 1), 10,
                          "the four Fashion-MNIST IDX files (Debian: `apt-get install "
                          "dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist/)",
                          "fashion_mnist", workload="Fashion-MNIST"),
    "cifar10": Spec("CIFAR-10", (32, 32, 3), 10,
                    f"{CIFAR_ARCHIVES['cifar10'][0]} from {CIFAR_ARCHIVES['cifar10'][2]}, or "
                    f"{CIFAR10_NPZ_RECIPE}", "cifar10"),
    "cifar100": Spec("CIFAR-100", (32, 32, 3), 100,
                     f"{CIFAR_ARCHIVES['cifar100'][0]} from {CIFAR_ARCHIVES['cifar100'][2]}", "cifar100"),
    "cifar10_jpeg": Spec("CIFAR-10 (JPEG q75 stand-in, decoded by Pillow)", (32, 32, 3), 10,
                         f"{JPEG_ARCHIVE} (the project's ../shared/data/ holds it)"),
    "timit": Spec("TIMIT (user-supplied features)", (360,), 1973,
                  f"{TIMIT_FORMAT}, made as docs/data.md's 'TIMIT' section says"),
    "synthetic_mnist": Spec("synthetic MNIST-shaped clusters (test data)", (28, 28, 1), 10),
    "synthetic_cifar10": Spec("synthetic CIFAR-shaped clusters (test data)", (32, 32, 3), 10),
}


def load(name: str, data_dir: str | None = None) -> Dataset:
    """Load dataset `name` from `data_dir` (offline) or through TFDS (data_dir None)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: use one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    if name.startswith("synthetic_"):
        return _synthetic(name)
    if data_dir is None:
        if spec.tfds:
            return _from_tfds(name)
        raise DataError(f"dataset {name} has no download: set data_dir to a directory holding {spec.files}")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"data directory {directory} for {name} does not exist: create it and put "
                        f"{spec.files} in it (or set data_dir: null to download through TFDS)")
    loader = {"mnist": _idx, "fashion_mnist": _idx, "cifar10": _cifar, "cifar100": _cifar,
              "cifar10_jpeg": _jpeg, "timit": _timit}[name]
    x_train, y_train, x_test, y_test = loader(name, directory)
    files = _files(name, directory)
    # Where one file holds everything, the source names it (cifar10 reads one of two).
    source = str(directory) if name in IDX_CHECKSUMS else str(files["train"][0])
    return _checked(name, source, x_train, y_train, x_test, y_test, files)


def _files(name: str, directory: Path) -> dict[str, tuple[Path, Path]]:
    """The files holding each split's (inputs, labels), for messages."""
    if name in IDX_CHECKSUMS:
        paths = [directory / f for f in IDX_FILES]
        return {"train": (paths[0], paths[1]), "test": (paths[2], paths[3])}
    path = (_cifar10_file(directory) if name == "cifar10" else
            directory / (CIFAR_ARCHIVES[name][0] if name in CIFAR_ARCHIVES else
                         JPEG_ARCHIVE if name == "cifar10_jpeg" else "timit.npz"))
    return {"train": (path, path), "test": (path, path)}


def _checked(name, source, x_train, y_train, x_test, y_test, files=None) -> Dataset:
    """The arrays as a Dataset, once each split has inputs of the dataset's shape and one integer
    label in [0, classes) per input; `files` names where each split's (inputs, labels) came from."""
    spec = DATASETS[name]
    k = spec.num_classes
    fix = f"expected {TIMIT_FORMAT}" if name == "timit" else f"download {spec.files} again"
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        inputs, labels = (files or {}).get(split, (source, source))
        if x.shape[1:] != spec.input_shape:
            raise DataError(f"{inputs}: x_{split} has shape {x.shape}, expected "
                            f"(N, {', '.join(map(str, spec.input_shape))}): {fix}")
        if y.shape != (len(x),):
            raise DataError(f"{labels}: y_{split} has shape {y.shape}, expected ({len(x)},), one label "
                            f"per input: {fix}")
        if not np.issubdtype(y.dtype, np.integer):  # float labels would be truncated silently
            raise DataError(f"{labels}: y_{split} holds {y.dtype} values: labels must be integers in "
                            f"[0, {k}): {fix}")
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise DataError(f"{labels}: y_{split} labels out of range [0, {k}) "
                            f"(found {int(y.min())}..{int(y.max())}): {fix}")
    return Dataset(name, spec.label, source, x_train.astype(np.float32), y_train.astype(np.int32),
                   x_test.astype(np.float32), y_test.astype(np.int32), k)


def _missing(name: str, path: Path) -> DataError:
    return DataError(f"{name}: {path} not found: download {DATASETS[name].files} into {path.parent}")


def _digest(data, algorithm: str) -> str:
    """The hex digest of bytes or of a C-contiguous array's raw bytes."""
    return hashlib.new(algorithm, data).hexdigest()


def read_idx(raw: bytes) -> np.ndarray:
    """Parse IDX bytes (big-endian, unsigned byte data) into an array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError("not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"IDX file truncated: header says {dims}, "
                        f"found {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _idx(name, directory):
    arrays = []
    for filename in IDX_FILES:
        path = directory / filename
        if not path.is_file():
            raise _missing(name, path)
        packed = path.read_bytes()
        try:
            raw = gzip.decompress(packed)
        except (OSError, EOFError, zlib.error) as err:  # a bad header, a cut or a damaged stream
            raise DataError(f"{path}: not a valid gzip file ({err}): re-download it") from None
        known = IDX_CHECKSUMS[name][filename]
        if _digest(packed, "md5") != known["md5"] and \
                _digest(raw, "sha256") != known.get("content_sha256"):
            raise DataError(f"{path}: checksum mismatch (corrupt or a different file): "
                            f"download {DATASETS[name].files} again")
        try:
            arrays.append(read_idx(raw))
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
    x_train, y_train, x_test, y_test = arrays
    return x_train[..., None] / 255.0, y_train, x_test[..., None] / 255.0, y_test


def _cifar10_file(directory: Path) -> Path:
    """The file cifar10 reads: the official archive if present, else the arrays file if present
    (a missing archive is then what messages name)."""
    archive, arrays = directory / CIFAR_ARCHIVES["cifar10"][0], directory / CIFAR10_NPZ
    return arrays if arrays.is_file() and not archive.is_file() else archive


def _cifar(name, directory):
    filename, md5, _ = CIFAR_ARCHIVES[name]
    path = _cifar10_file(directory) if name == "cifar10" else directory / filename
    if path.name == CIFAR10_NPZ:
        return _cifar10_arrays(path)
    if name == "cifar10" and not path.is_file():
        raise DataError(f"cifar10: {directory} holds neither {filename} nor {CIFAR10_NPZ}: put one of "
                        f"them there ({DATASETS[name].files})")
    if not path.is_file():
        raise _missing(name, path)
    packed = path.read_bytes()
    if _digest(packed, "md5") != md5:
        raise DataError(f"{path}: checksum mismatch (corrupt or a different file): "
                        f"download {DATASETS[name].files} again")
    members = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
               "cifar100": (["train"], ["test"], b"fine_labels")}[name]
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        batches = {Path(m.name).name: pickle.loads(tar.extractfile(m).read(), encoding="bytes")
                   for m in tar.getmembers() if m.isfile()}

    def stack(names):
        x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(batches[n][members[2]]) for n in names])
        return x.transpose(0, 2, 3, 1) / 255.0, y

    return (*stack(members[0]), *stack(members[1]))


def _cifar10_arrays(path: Path):
    """The real CIFAR-10 from the arrays file, each array checked (key, dtype, shape, SHA-256 of its
    raw bytes) before use. Reading takes about 1.2 s and hashing 0.12 s on this project's 2-core
    CPU, so nothing is cached between calls."""
    fix = f"make it again as {CIFAR10_NPZ_RECIPE}"
    try:
        arrays = np.load(path)  # allow_pickle=False: an object array is refused, not run
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz ({err}): {fix}") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: one .npy array, not an .npz of {', '.join(CIFAR10_NPZ_ARRAYS)}: {fix}")
    parts = []
    with arrays:
        for key, (shape, sha256) in CIFAR10_NPZ_ARRAYS.items():
            if key not in arrays.files:
                raise DataError(f"{path}: missing array '{key}': {fix}")
            try:
                array = arrays[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise DataError(f"{path}: array '{key}' is unreadable ({err}): {fix}") from None
            if array.dtype != np.uint8 or array.shape != shape:
                raise DataError(f"{path}: array '{key}' is {array.dtype} {array.shape}, expected uint8 "
                                f"{shape}: {fix}")
            found = _digest(np.ascontiguousarray(array), "sha256")
            if found != sha256:
                raise DataError(f"{path}: array '{key}' has SHA-256 {found[:16]}..., not the real "
                                f"CIFAR-10's {sha256[:16]}... (corrupt or a different file): {fix}")
            parts.append(array)
    x_train, y_train, x_test, y_test = parts
    return x_train / 255.0, y_train, x_test / 255.0, y_test


def _jpeg(name, directory):
    """Decode the JPEG stand-in once (Pillow, the same on every backend) and cache the uint8
    arrays; the cache file names the archive's checksum and the decoder."""
    path = directory / JPEG_ARCHIVE
    if not path.is_file():
        raise _missing(name, path)
    packed = path.read_bytes()
    checksum = _digest(packed, "sha256")
    if checksum != JPEG_SHA256:
        raise DataError(f"{path}: checksum mismatch (corrupt or a different file): "
                        f"use the archive from ../shared/data/")
    cached = storage.cache_directory() / f"cifar10_jpeg-{checksum[:16]}-{JPEG_DECODER_KEY}.npz"
    if not cached.is_file():
        images = {"train": [], "test": []}
        labels = {"train": [], "test": []}
        with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                parts = Path(member.name).parts
                if not member.isfile() or not member.name.endswith(".jpg"):
                    continue
                split, cls = parts[-3], parts[-2]
                images[split].append(decode_jpeg(tar.extractfile(member).read()))
                labels[split].append(CIFAR10_CLASSES.index(cls))
        storage.atomic_savez(cached, **{f"x_{s}": np.stack(images[s]) for s in images},
                             **{f"y_{s}": np.asarray(labels[s]) for s in labels})
    with np.load(cached) as arrays:
        x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    # The archive is sorted by class; CIFAR-10's own files are in random order. Evaluation under
    # batch statistics needs mixed batches (a one-class batch of 5000 normalises away the class),
    # so the images are put in a fixed random order, the same for every run.
    train_order = np.random.default_rng(0).permutation(len(x_train))
    test_order = np.random.default_rng(1).permutation(len(x_test))
    return (x_train[train_order] / 255.0, y_train[train_order],
            x_test[test_order] / 255.0, y_test[test_order])


def decode_jpeg(blob: bytes) -> np.ndarray:
    """One JPEG as uint8 RGB (height, width, 3), by Pillow (libjpeg-turbo, its default ISLOW IDCT)."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image.convert("RGB"))


def _timit(name, directory):
    path = directory / "timit.npz"
    if not path.is_file():
        raise _missing(name, path)
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path) as arrays:
            missing = [k for k in keys if k not in arrays.files]
            if missing:
                raise DataError(f"{path}: missing array '{missing[0]}': expected {TIMIT_FORMAT}")
            parts = [arrays[k] for k in keys]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz ({err}): expected {TIMIT_FORMAT}") from None
    return parts  # shapes, label type and range: _checked


def _from_tfds(name):
    import tensorflow_datasets as tfds

    try:
        splits = tfds.load(DATASETS[name].tfds, split=["train", "test"], batch_size=-1,
                           as_supervised=True)
    except Exception as err:  # network errors come in many types
        raise DataError(f"could not download {name} through tensorflow-datasets ({err}). Offline: "
                        f"set data_dir to a directory holding {DATASETS[name].files}") from None
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(splits)
    return _checked(name, "tfds", x_train / 255.0, y_train, x_test / 255.0, y_test)


def _synthetic(name):
    """Learnable Gaussian clusters: 2000 train / 500 test examples, fixed seed."""
    shape = (28, 28, 1) if name == "synthetic_mnist" else (32, 32, 3)
    rng = np.random.default_rng(1234)
    centers = rng.uniform(0.2, 0.8, size=(10, *shape))

    def make(n):
        y = rng.integers(0, 10, size=n)
        x = np.clip(centers[y] + rng.normal(0, 0.25, size=(n, *shape)), 0, 1)
        return x, y

    return _checked(name, "generated", *make(2000), *make(500))


def subset(x: np.ndarray, y: np.ndarray, size: int | None, seed: int | np.random.SeedSequence = 0):
    """A fixed random subset of `size` examples, in their original order (same for every run): the
    training set a config's train_subset keeps, and a test_subset. Not for measuring f on training
    examples: measurement_subset."""
    if size is None or size >= len(x):
        return x, y
    index = np.sort(np.random.default_rng(seed).permutation(len(x))[:size])
    return x[index], y[index]


# The examples f is measured on (target checks, sharpness, noise scale, landscapes) come from a
# stream of their own. They were drawn by default_rng(0), and NumPy's SeedSequence ignores trailing
# zeros, so default_rng([seed, epoch]) at seed 0, epoch 0 is that same stream: seed 0's first epoch
# began with exactly the measured examples, and a target checked in its first epoch was met early on
# examples just trained on (the F1 MNIST study's seed 0 met training loss 0.1 in a quarter of the
# other seeds' steps). A spawn key makes the stream's entropy five words long, so no seed list of up
# to four words (every other stream here) can equal it.
MEASUREMENT_STREAM = np.random.SeedSequence(0, spawn_key=(0x6D656173,))
MEASUREMENT_SUBSET = "measurement-stream-1"  # recorded by a run with target checks (target.Tracker.summary)


def measured_examples(size: int | None) -> dict:
    """The key a measurement on `size` training examples adds to its recorded settings: a result made
    on the examples drawn before MEASUREMENT_STREAM lacks it, so it is never reused for a new one
    (storage.reusable), and a folder mixing the two is refused (results: one trial's settings)."""
    return {"examples": MEASUREMENT_SUBSET} if size is not None else {}


def measurement_subset(x: np.ndarray, y: np.ndarray, size: int | None):
    """The fixed `size` training examples f is measured on, in their original order, drawn apart from
    every run's data order (MEASUREMENT_STREAM); all of them where size is None or not smaller."""
    return subset(x, y, size, seed=MEASUREMENT_STREAM)
