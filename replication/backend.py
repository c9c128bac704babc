"""Everything that differs between Keras backends (TensorFlow, the default, and JAX), and nothing else.

The rest of the package uses `keras`, `keras.ops` and NumPy only; a need that differs by backend
is one small function here. Choose the backend as Keras does: `KERAS_BACKEND=jax` (or `tensorflow`)
in the environment. Under JAX nothing here imports TensorFlow.

Where the backends differ, on purpose or by nature:
- Compiled passes: `tf.function(jit_compile=True)` with a GradientTape, or `jax.jit` of
  `jax.value_and_grad`: XLA on both, which makes them bit-reproducible on a CPU (`compiled`). Every
  value a compiled pass needs (weights, batch-norm statistics, data) is passed in as an argument:
  `jax.jit` freezes whatever a function captures, and the landscape changes the statistics.
- `jit_compile` (config key): under TensorFlow it turns on XLA for the training step (and Keras then
  runs without op determinism); under JAX every step is XLA-compiled whatever the key says (Keras'
  un-jitted JAX step is an eager debugging mode), so the key changes nothing there.
- Determinism: TensorFlow's `enable_op_determinism`; JAX on a CPU is deterministic. JAX on a GPU
  is deterministic only with `XLA_FLAGS=--xla_gpu_deterministic_ops=true` in the environment,
  which costs 1.6x in training and 9x in a full-float32 evaluation pass on an H100 (measured), so
  it is the user's choice; env.json records the flags and whether the run was deterministic.
- Matrix-multiply precision: both backends let a GPU of the Ampere generation or later run float32
  matrix products in TF32 by default; training keeps that default. Measurements (f for sharpness,
  the landscape, the per-epoch metrics) run under `float32_matmuls()`, full float32 on both.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from replication import storage
from replication.errors import UserError

SUPPORTED = ("tensorflow", "jax")
# Opt-in bit-reproducibility for JAX on a GPU. Measured on one H100 (C1): training 1.6-1.8x
# slower, a float32 pass over 50,000 images 9x slower (docs/performance.md), so it is not the default.
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


# TensorFlow 2.16+ logs through absl before absl is initialised, which ignores TF_CPP_MIN_LOG_LEVEL:
# the lines of that start-up chatter, held back while Keras starts (_keras).
_START_UP_CHATTER = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "                       # absl
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] ")               # TensorFlow's own


def _prepare_environment() -> None:
    """Before Keras starts its backend: keep TensorFlow's start-up chatter out of logs; under JAX,
    keep XLA's compiled programs on disk. Keras compiles each new model's steps anew, so every run
    of a study and every process pays XLA again (C2 at a new batch size: about 80 s on an H200);
    JAX's persistent cache reuses a program compiled before for the same computation and shapes.
    A user's JAX_COMPILATION_CACHE_DIR wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("KERAS_BACKEND") == "jax":
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(storage.cache_directory() / "jax"))


_prepare_environment()


class BackendError(UserError, RuntimeError):
    """Keras runs on a backend this project does not support."""


def _keras():
    """Keras, started on first use (a bad config is refused before TensorFlow loads, in seconds).

    While TF_CPP_MIN_LOG_LEVEL is 3 (the default here) the start-up chatter TensorFlow writes to
    file descriptor 2 is dropped and anything else written meanwhile is passed on; if starting
    fails, everything is passed on with the error."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    wanted = os.environ.get("KERAS_BACKEND")
    if wanted is not None and wanted not in SUPPORTED:  # before Keras imports a framework for it
        raise BackendError(f"Keras backend {wanted!r} is not supported: set KERAS_BACKEND to one of "
                           f"{', '.join(SUPPORTED)}")
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3"
    with _held_back_chatter() if quiet else contextlib.nullcontext():
        import keras
    return keras


@contextlib.contextmanager
def _held_back_chatter():
    """File descriptor 2 goes to a temporary file meanwhile; then its lines are passed on to
    stderr, less _START_UP_CHATTER unless the block failed with an error."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except Exception:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if failed or not _START_UP_CHATTER.match(line)))
            sys.stderr.flush()


def name() -> str:
    """The Keras backend in use: "tensorflow" or "jax" (starts Keras, see _keras)."""
    backend = _keras().backend.backend()
    if backend not in SUPPORTED:
        raise BackendError(f"Keras backend {backend!r} is not supported: set KERAS_BACKEND to one of "
                           f"{', '.join(SUPPORTED)}")
    return backend


def version() -> str:
    if name() == "jax":
        import jax
        import jaxlib

        return f"jax {jax.__version__} (jaxlib {jaxlib.__version__})"
    import tensorflow as tf

    return f"tensorflow {tf.__version__}"


def gpu_names() -> list[str]:
    """The GPUs the backend computes on, by model name where the backend gives one."""
    if name() == "jax":
        import jax

        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return names


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device() -> str:
    """The one device string every result records: GPU model names, or the CPU and its cores."""
    gpus = gpu_names()
    return ", ".join(gpus) if gpus else f"CPU ({cpu_name()}, {os.cpu_count()} cores)"


def describe() -> dict:
    """Backend, its version, Keras' version and the device: what every result file records."""
    return {"backend": name(), "backend_version": version(), "keras": _keras().__version__,
            "device": device()}


def setup_determinism(seed: int, deterministic_ops: bool = True) -> dict:
    """Seeds everywhere (Keras' recipe) plus the backend's determinism switch; returns what applied.

    TensorFlow: op determinism, unless asked not to (Keras turns XLA off while it is on, so a
    config with jit_compile: true trains without it). JAX: deterministic on a CPU; on a GPU only
    if XLA_FLAGS holds DETERMINISTIC_XLA_FLAG.
    """
    if name() == "jax" and "tensorflow" not in sys.modules:
        # keras.utils.set_random_seed also seeds TensorFlow wherever it is installed, importing it
        # (seconds of start-up, for tf.data pipelines this backend never uses): hide it meanwhile.
        sys.modules["tensorflow"] = None
        try:
            _keras().utils.set_random_seed(seed)
        finally:
            del sys.modules["tensorflow"]
    else:
        _keras().utils.set_random_seed(seed)
    if name() == "tensorflow":
        import tensorflow as tf

        if deterministic_ops:
            tf.config.experimental.enable_op_determinism()
        return {"deterministic_ops": deterministic_ops}
    return {"deterministic_ops": bool(not gpu_names() or
                                      DETERMINISTIC_XLA_FLAG[2:] in os.environ.get("XLA_FLAGS", "")),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR", "")}


DATA_PARALLEL_VARIABLE = "REPLICATION_DATA_PARALLEL"


def distribution(batch_size: int, num_train: int) -> dict:
    """With REPLICATION_DATA_PARALLEL=1 (JAX only), Keras' DataParallel over every device of JAX's
    default platform (the node's GPUs), set for the process before a model is built; returns what
    env.json records ({} while the switch is off or unset).

    Variables are replicated and each batch is split along its first axis, one slice per device.
    jax.jit compiles the step for the whole array (SPMD), so a reduction over the batch stays one
    over the global batch (XLA adds the cross-device sums): the loss's mean, and batch norm's mean
    and variance, the paper's batch statistics (tests/test_data_parallel.py checks both); only the
    order of float additions changes. Every batch of an epoch, the last smaller one too, must split
    evenly over the devices: refused otherwise."""
    switch = os.environ.get(DATA_PARALLEL_VARIABLE, "")
    if switch not in ("", "0", "1"):
        raise BackendError(f"{DATA_PARALLEL_VARIABLE}={switch!r} is not a switch: set it to 1 (data-parallel "
                           "over every device) or 0")
    if switch != "1":
        return {}
    if name() != "jax":
        raise BackendError(f"{DATA_PARALLEL_VARIABLE}=1 needs the JAX backend, and this process runs "
                           f"{name()}: set KERAS_BACKEND=jax, or unset {DATA_PARALLEL_VARIABLE}")
    keras = _keras()
    devices = keras.distribution.list_devices()
    last = num_train % batch_size or batch_size
    if batch_size % len(devices) or last % len(devices):
        raise BackendError(f"{DATA_PARALLEL_VARIABLE}=1 splits every batch over {len(devices)} devices, and "
                           f"batch size {batch_size} (the last batch of {num_train} examples: {last}) does not "
                           f"split evenly: use a batch size and training set that divide by {len(devices)}, or "
                           f"unset {DATA_PARALLEL_VARIABLE}")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return {"distribution": "keras.distribution.DataParallel", "devices": len(devices)}


def keras_jit_compile(jit_compile: bool) -> bool:
    """What to pass to Model.compile: the config's value under TensorFlow, always True under JAX."""
    return True if name() == "jax" else jit_compile


# What a measurement pass is (recorded in every measurement's settings, so results from passes
# compiled otherwise are recomputed, not reused).
PASSES = "XLA-compiled (jax.jit / tf.function(jit_compile=True))"


def compiled(function):
    """`function` compiled by XLA as one program: jax.jit, or tf.function(jit_compile=True).

    XLA under TensorFlow too, because TensorFlow's own graph executor is not bit-reproducible on a
    CPU even with op determinism on: the gradient of batch-statistics normalisation (its reductions
    over the batch) differed in the last bit between two calls at the same point, about one call in
    two (F1, 5000-example batches), and SciPy's L-BFGS-B amplified that to a 2% spread of phi
    between processes (docs/guarantees.md). XLA's CPU programs give identical bits on every call and
    in every process, as jax.jit's do."""
    if name() == "jax":
        import jax

        return jax.jit(function)
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # disable_op_determinism is not public

    program = tf.function(function, jit_compile=True, reduce_retracing=True)

    def call(*args):
        # TensorFlow refuses to compile some gradients for XLA while op determinism is on (MaxPool's:
        # "no deterministic XLA implementation"), even on a CPU, where XLA's programs are
        # deterministic anyway (above). Training turns it on; a study measures in the same process,
        # so the pass runs as it does in a measurement process of its own, where it is off.
        if not tf_config.is_op_determinism_enabled():
            return program(*args)
        tf_config.disable_op_determinism()
        try:
            return program(*args)
        finally:
            tf_config.enable_op_determinism()

    return call


def value_and_grad(function):
    """function(flat, *args) -> (value, aux) becomes (flat, *args) -> (value, aux, d value / d flat)."""
    if name() == "jax":
        import jax

        gradient = jax.value_and_grad(function, has_aux=True)

        def jax_wrapped(flat, *args):
            (value, aux), grad = gradient(flat, *args)
            return value, aux, grad

        return jax_wrapped
    import tensorflow as tf

    def tf_wrapped(flat, *args):
        with tf.GradientTape() as tape:
            tape.watch(flat)
            value, aux = function(flat, *args)
        return value, aux, tape.gradient(value, flat)

    return tf_wrapped


def hessian_vector_product(function):
    """function(flat, *args) -> (value, aux) becomes (flat, vector, *args) -> (d^2 value / d flat^2)
    vector, forward over reverse: jax.jvp of jax.grad, or a ForwardAccumulator around a GradientTape
    (about the cost of two gradients; no n x n matrix). Compile the result with `compiled`."""
    if name() == "jax":
        import jax

        def jax_product(flat, vector, *args):
            gradient = jax.grad(lambda point: function(point, *args)[0])
            return jax.jvp(gradient, (flat,), (vector,))[1]

        return jax_product
    import tensorflow as tf

    def tf_product(flat, vector, *args):
        with tf.autodiff.ForwardAccumulator(flat, vector) as accumulator:
            with tf.GradientTape() as tape:
                tape.watch(flat)
                value, _ = function(flat, *args)
            gradient = tape.gradient(value, flat)
        return accumulator.jvp(gradient)

    return tf_product


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Matrix products and convolutions in "float32" (full precision) or "tf32" (the GPU default).

    Under JAX the setting is read when a function is traced (and is part of jit's cache key), under
    TensorFlow when a kernel runs: enter it around the call in both cases. No effect on a CPU.
    """
    if precision not in ("float32", "tf32"):
        raise ValueError(f"precision must be 'float32' or 'tf32', got {precision!r}")
    if name() == "jax":
        import jax

        with jax.default_matmul_precision("highest" if precision == "float32" else "tensorfloat32"):
            yield
        return
    import tensorflow as tf

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(precision == "tf32")
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def float32_matmuls():
    """Full float32 products for a measurement (see the module docstring)."""
    return matmul_precision("float32")


def resident(array: np.ndarray):
    """`array` as a backend tensor on the default device (the GPU if there is one)."""
    return _keras().ops.convert_to_tensor(array)


def training_data(x: np.ndarray, y: np.ndarray):
    """What `epoch_inputs` gathers each epoch from: tensors kept on the device under TensorFlow,
    the NumPy arrays themselves under JAX (see epoch_inputs)."""
    return (x, y) if name() == "jax" else (resident(x), resident(y))


def epoch_inputs(x, y, order: np.ndarray, batch_size: int, repeat: int = 1) -> dict:
    """Keyword arguments for Model.fit: one epoch of (x, y) from `training_data`, in `order`, in
    batches of `batch_size` (the last one smaller if it does not divide), each yielded `repeat`
    times in a row (conservative training's inner steps; 1: every batch once).

    TensorFlow: a tf.data pipeline of index batches, each gathered on the device and prefetched.
    JAX: a shuffled NumPy copy of the epoch, which Keras slices and transfers batch by batch; on an
    H100 this beat the epoch gathered on the device and sliced there by 1.2-1.8x (F1, C1; `make
    bench` rows "numpy" and "resident"). Repeated batches under JAX come from a generator of the
    same NumPy slices (a flat copy cannot repeat a smaller last batch whole).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    steps = -(-len(order) // batch_size) * repeat
    if name() == "jax":
        if repeat == 1:
            return {"x": x[order], "y": y[order], "batch_size": batch_size, "shuffle": False}

        def batches():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                inputs, labels = x[batch], y[batch]
                for _ in range(repeat):
                    yield inputs, labels

        return {"x": batches(), "steps_per_epoch": steps, "shuffle": False}
    import tensorflow as tf

    index = tf.data.Dataset.from_tensor_slices(order.astype(np.int64)).batch(batch_size)
    if repeat == 1:
        return {"x": index.map(lambda i: (tf.gather(x, i), tf.gather(y, i))).prefetch(2), "shuffle": False}
    index = index.flat_map(lambda i: tf.data.Dataset.from_tensors(i).repeat(repeat))
    return {"x": index.map(lambda i: (tf.gather(x, i), tf.gather(y, i))).prefetch(2),
            "steps_per_epoch": steps, "shuffle": False}


def allow_jit(layer):
    """`layer`, compiled with its model under JAX. Keras marks RandomRotation and RandomTranslation
    as not XLA-compilable on every backend, and a JAX model holding one would then train eagerly
    (Keras' debugging mode, many times slower); their JAX implementation is jax.numpy and compiles
    (tests/test_remedies.py trains an augmented run under JAX and checks it was compiled). Under
    TensorFlow the flag stays as Keras set it (training there is not XLA-compiled by default)."""
    if name() == "jax":
        layer.supports_jit = True
    return layer


def seed_state(value: int, variable) -> np.ndarray:
    """A Keras SeedGenerator state [value, 0] in the variable's dtype (int64 under TensorFlow,
    uint32 under JAX, where the value is taken modulo 2**32)."""
    dtype = np.dtype(_keras().backend.standardize_dtype(variable.dtype))
    if np.issubdtype(dtype, np.unsignedinteger) or dtype.itemsize < 8:
        value %= 2 ** 32 if np.issubdtype(dtype, np.unsignedinteger) else 2 ** 31
    return np.array([value, 0], dtype)


def is_out_of_memory(err: BaseException) -> bool:
    """The device ran out of memory (TensorFlow's ResourceExhaustedError, XLA's RESOURCE_EXHAUSTED)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(err, tf.errors.ResourceExhaustedError):
        return True
    return type(err).__name__ == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(err)


def synchronize(value) -> None:
    """Wait until `value` (a tensor, or a tuple of them) is computed: for timings on a GPU."""
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
        ops = _keras().ops
        np.asarray(ops.convert_to_numpy(ops.reshape(item, [-1])[-1:]))
