"""`make bench`: training throughput, achieved FLOP/s against matrix-multiply peaks measured in the
same run, and the cost of sharpness (Metric 2.1) split into bare passes, SciPy and glue.

All numbers are rates or ratios measured here, on this machine and backend, in one process; the
report names the device and the backend. FLOPs are counted analytically: 2 * multiply-adds of
Dense and Conv2D layers per example forward, and training = 3x forward (backward ~ 2x forward);
batch norm, activations, pooling and the optimizer are not counted, so the achieved fraction is a
slight underestimate. On a GPU both backends run float32 training products in TF32 by default, so
training is set against the TF32 peak there. On a CPU training is set against the faster of two
float32 products timed in the same run: the backend's compiled one and NumPy's BLAS one. The
backend's alone is no peak there: XLA's CPU product of one 4096 x 4096 matrix reached 0.135 TFLOP/s
where NumPy's BLAS reached 0.43 on the same 2 Intel cores (2026-12-06), and JAX training was
reported at 205% of the former.

Training variants, each a row:
- input "numpy": a shuffled NumPy copy of the epoch handed to fit (host -> device every step);
- input "device": the data kept on the device, each epoch gathered there and sliced by Keras;
- input "training": what train.py feeds fit (backend.epoch_inputs: under TensorFlow a tf.data
  gather from device tensors, under JAX the NumPy copy, which measured faster there);
- steps_per_execution k: Keras runs k steps per compiled call (fewer host round trips).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from replication import backend, data, rundir, storage
from replication import config as config_lib

DATASETS = {"F1": "synthetic_mnist", "C1": "synthetic_cifar10", "C2": "synthetic_cifar10"}
# The paper's batch sizes: SB 256, LB 10% of the training set (MNIST 6000, CIFAR-10 5000).
BATCHES = {"F1": {"sb": 256, "lb": 6000}, "C1": {"sb": 256, "lb": 5000}, "C2": {"sb": 256, "lb": 5000}}
# Training examples in f for the sharpness timing: on a CPU the quick and official-cpu profiles'
# subsets, on a GPU the whole training set (what the paper profile measures on).
SHARPNESS_EXAMPLES = {"cpu": {"F1": 10000, "C1": 2000}, "gpu": {"F1": 60000, "C1": 50000}}
STEPS_PER_EXECUTION = 10


def matmul_peak(precision: str = "float32", n: int = 4096, repeats: int = 20) -> float:
    """Achieved FLOP/s of an n x n float32 matrix product in `precision` ("float32" or "tf32")."""
    from keras import ops

    rng = np.random.default_rng(0)
    a = backend.resident(rng.standard_normal((n, n), dtype=np.float32))
    b = backend.resident(rng.standard_normal((n, n), dtype=np.float32))
    with backend.matmul_precision(precision):
        step = backend.compiled(lambda a, b: ops.sum(ops.matmul(a, b)))
        backend.synchronize(step(a, b))
        tick = time.perf_counter()
        results = [step(a, b) for _ in range(repeats)]
        backend.synchronize(results)
    return 2 * n ** 3 * repeats / (time.perf_counter() - tick)


def blas_peak(n: int = 4096, repeats: int = 20) -> float:
    """Achieved FLOP/s of an n x n float32 product by NumPy's BLAS: the CPU's reference peak, which
    does not depend on how well the backend's compiler does one large product (module docstring)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # BLAS's threads and buffers start on the first call
    tick = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - tick)


def forward_flops(model) -> int:
    """FLOPs per example of one forward pass through the Dense and Conv2D layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Conv2D):
            height, width = layer.output.shape[1:3]
            total += 2 * int(np.prod(layer.kernel.shape)) * height * width
    return total


def training_throughput(network: str, batch_size: int, steps: int, variants) -> list[dict]:
    """Examples/s of model.fit over `steps` batches for each (input, steps_per_execution) variant,
    timed after a warm-up epoch of the same variant (compilation excluded). One model per call:
    the variants differ in how data reaches it, not in what it computes."""
    from keras import ops

    config = config_lib.from_dict({"network": network, "dataset": DATASETS[network],
                                   "results_dir": "/nonexistent"})
    shape = data.DATASETS[config.dataset].input_shape
    rng = np.random.default_rng(0)
    x = rng.random((batch_size * steps, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch_size * steps).astype(np.int32)
    x_device, y_device = backend.resident(x), backend.resident(y)
    x_training, y_training = backend.training_data(x, y)
    backend.setup_determinism(0)
    model = rundir.build_model(config, shape, 10)
    flops = 3 * forward_flops(model)
    rows = []
    for pipeline, per_execution in variants:
        if per_execution != getattr(model, "steps_per_execution", 1):
            model.compile(optimizer=model.optimizer, loss=model.loss, jit_compile=model.jit_compile,
                          steps_per_execution=per_execution)

        def fit():
            order = rng.permutation(len(x))
            if pipeline == "numpy":
                model.fit(x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
            elif pipeline == "device":
                index = backend.resident(order.astype(np.int32))
                model.fit(ops.take(x_device, index, axis=0), ops.take(y_device, index, axis=0),
                          batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
            else:
                model.fit(**backend.epoch_inputs(x_training, y_training, order, batch_size),
                          epochs=1, verbose=0)
            backend.synchronize(model.trainable_variables[-1].value)

        row = {"network": network, "batch_size": batch_size, "pipeline": pipeline,
               "steps_per_execution": per_execution, "steps": steps, "xla_active": bool(model.jit_compile)}
        try:
            fit()
            tick = time.perf_counter()
            fit()
        except Exception as err:  # XLA on a CPU, or a big batch on a small GPU, can run out of memory
            if not backend.is_out_of_memory(err):
                raise
            rows.append({**row, "error": f"out of memory: {str(err).splitlines()[0][:200]}"})
            continue
        seconds = time.perf_counter() - tick
        examples = batch_size * steps
        rows.append({**row, "seconds": seconds, "examples_per_second": examples / seconds,
                     "train_flop_per_second": flops * examples / seconds})
    return rows


def run(out: str | Path, quick: bool = False, networks=None) -> str:
    """Measure everything, write <out>/<backend>-<device>/bench.json and bench.md, return the Markdown."""
    from replication import models
    from replication.measure import sharpness

    out = Path(out) / folder_name()
    on_gpu = bool(backend.gpu_names())
    # C2 (15M parameters) trains at ~1 example/ms on 2 CPU cores: measured on a GPU only, unless named.
    networks = networks or (["F1", "C1", "C2"] if on_gpu else ["F1", "C1"])
    size, repeats = (512, 3) if quick else (4096, 20)
    peaks = {"float32": matmul_peak("float32", size, repeats)}
    if on_gpu:
        peaks["tf32"] = matmul_peak("tf32", 8192, 20)
        training_peak_name = "tf32"
    else:
        peaks["float32_numpy"] = blas_peak(size, repeats)
        training_peak_name = max(("float32", "float32_numpy"), key=peaks.get)
    training_peak = peaks[training_peak_name]
    rows = []
    for network in networks:
        for regime, batch in BATCHES[network].items():
            batch = min(batch, 64) if quick else batch
            # Enough steps for a stable time; LB steps are few and long.
            if quick:
                steps = 2 * STEPS_PER_EXECUTION
            elif on_gpu:
                steps = 20 * STEPS_PER_EXECUTION if regime == "sb" else 2 * STEPS_PER_EXECUTION
            else:
                steps = 3 if regime == "lb" else 40 if network == "F1" else 12
            variants = [("numpy", 1), ("device", 1), ("training", 1)]
            if quick or on_gpu:  # k > 1 saves host round trips, which a CPU's step time dwarfs
                variants.append(("training", STEPS_PER_EXECUTION))
            for row in training_throughput(network, batch, steps, variants):
                row["regime"] = regime
                if "error" not in row:
                    row["fraction_of_peak"] = row["train_flop_per_second"] / training_peak
                rows.append(row)
                state = row.get("error") or (f"{row['examples_per_second']:.0f} ex/s, "
                                             f"{row['fraction_of_peak']:.1%} of peak")
                print(f"{network} {regime} {row['pipeline']} k={row['steps_per_execution']}: {state}", flush=True)

    sharp = []
    for network in [n for n in networks if n in SHARPNESS_EXAMPLES["cpu"]]:
        dataset = DATASETS[network]
        shape = data.DATASETS[dataset].input_shape
        model = models.build(network, shape, 10, "batch_statistics")
        synthetic = data.load(dataset)
        size = 200 if quick else SHARPNESS_EXAMPLES["gpu" if on_gpu else "cpu"][network]
        x = np.resize(synthetic.x_train, (size, *shape))
        y = np.resize(synthetic.y_train, size)
        for space in ("full", "random"):
            result = sharpness.benchmark(model, space=space, dim=10 if quick else 100,
                                         iterations=2 if quick else 10, inputs=x, labels=y,
                                         batch_size=5000)
            sharp.append({"network": network, **result})
            print(f"sharpness {network} {space}: {result['solve_seconds']:.1f} s, "
                  f"{result['passes']} passes, {result['solve_seconds'] / result['bare_seconds']:.2f}x bare",
                  flush=True)

    # The code measured: a bench.md cited in the docs names its commit (its own, not the one that committed it).
    record = {**backend.describe(), **rundir.git_state(), "matmul_peak_flop_per_second": peaks,
              "training_peak": training_peak_name, "training": rows,
              "sharpness": sharp, "quick": quick, "time": rundir.now()}
    storage.atomic_write_json(out / "bench.json", record)
    markdown = _markdown(record)
    storage.atomic_write_text(out / "bench.md", markdown)
    return markdown


def folder_name() -> str:
    """One folder per backend and device model, so one machine's numbers never overwrite another's
    (a GPU's a CPU's, an Intel CPU's an AMD one's: results/bench/tensorflow-cpu, from before the
    CPU model was named, is the AMD EPYC's)."""
    gpus = backend.gpu_names()
    where = gpus[0] if gpus else f"cpu {backend.cpu_name()}"
    slug = "".join(c if c.isalnum() else "-" for c in where.lower())
    return f"{backend.name()}-" + re.sub("-+", "-", slug).strip("-")


def _markdown(record: dict) -> str:
    peaks = record["matmul_peak_flop_per_second"]
    lines = [f"# Benchmark ({record['device']}, {record['backend_version']}, Keras {record['keras']}, "
             f"{record['time']}" + (f", commit {record['git_commit'][:7]}{' with local changes' if record['git_dirty'] else ''}"
                                    if "git_commit" in record else "") + ")", "",
             "Matrix-multiply peaks measured in the same run: " +
             ", ".join(f"{name} {value / 1e12:.2f} TFLOP/s" for name, value in peaks.items()) + ".", "",
             f"## Training throughput (model.fit, synthetic data of the dataset's shape; peak = "
             f"{record['training_peak']})", "",
             "| network | regime | batch | input | steps/execution | examples/s | train TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in record["training"]:
        head = f"| {r['network']} | {r['regime'].upper()} | {r['batch_size']} | {r['pipeline']} | {r['steps_per_execution']} "
        if "error" in r:
            lines.append(head + f"| {r['error']} | - | - |")
            continue
        lines.append(head + f"| {r['examples_per_second']:.0f} | {r['train_flop_per_second'] / 1e12:.3f} "
                     f"| {r['fraction_of_peak']:.1%} |")
    lines += ["", "XLA is on for every row under JAX; under TensorFlow the rows run without XLA, with op "
              "determinism, as the training runs do (jit_compile: false)."]
    lines += ["", "## Sharpness (one L-BFGS-B solve, eps 1e-3, untrained weights, eval batch 5000, full "
              "float32 products)", "",
              "| network | space | n | p | examples | passes | solve s | bare passes s | solve / bare "
              "| of which passes s | SciPy s | glue s | glue / solve |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["sharpness"]:
        lines.append(f"| {r['network']} | {r['space']} | {r['n']} | {r['p']} | {r['examples']} | {r['passes']} "
                     f"| {r['solve_seconds']:.2f} | {r['bare_seconds']:.2f} | {r['solve_seconds'] / r['bare_seconds']:.2f} "
                     f"| {r['pass_seconds']:.2f} | {r['solver_seconds']:.2f} | {r['glue_seconds']:.2f} "
                     f"| {r['glue_fraction']:.1%} |")
    lines += ["", "Bare passes: the same number of f-and-gradient passes at x alone. Glue = solve minus the "
              "passes inside it minus SciPy's own L-BFGS-B routine: float64 casts, host/device transfers, "
              "A y and A^T g. On a GPU the budget is solve <= 2x bare passes."]
    return "\n".join(lines) + "\n\nRaw numbers: bench.json. Regenerate with `make bench`.\n"
