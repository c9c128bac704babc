"""`make bench`: training throughput, achieved FLOP/s against a matrix-multiply peak measured in
the same run, and the cost of sharpness (Metric 2.1) with its SciPy<->TensorFlow glue overhead.

All numbers are ratios or rates measured here, on this machine, in one process; the report names
the device. FLOPs are counted analytically: 2 * multiply-adds of Dense and Conv2D layers per
example forward, and training = 3x forward (backward ~ 2x forward); batch norm, activations,
pooling and the optimizer are not counted, so the achieved fraction is a slight underestimate.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from replication import config as config_lib
from replication import data, storage, train

NETWORKS = {"F1": "synthetic_mnist", "C1": "synthetic_cifar10"}
# The paper's batch sizes: SB 256, LB 10% of the training set (MNIST 6000, CIFAR-10 5000).
BATCHES = {"F1": {"sb": 256, "lb": 6000}, "C1": {"sb": 256, "lb": 5000}}
# Training examples in f for the sharpness timing: the quick and official-cpu profiles' subsets.
SHARPNESS_EXAMPLES = {"F1": 10000, "C1": 2000}


def matmul_peak(n: int = 2048, repeats: int = 20) -> float:
    """Achieved float32 FLOP/s of an n x n matrix multiply (the machine's practical peak)."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    step = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    float(step(a, b))
    tick = time.perf_counter()
    for _ in range(repeats):
        float(step(a, b))
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


def training_throughput(network: str, batch_size: int, jit_compile: bool, pipeline: str,
                        steps: int) -> dict:
    """Examples/s of model.fit over `steps` batches, after a warm-up epoch (tracing excluded)."""
    import tensorflow as tf

    config = config_lib.from_dict({"network": network, "dataset": NETWORKS[network],
                                   "jit_compile": jit_compile, "results_dir": "/nonexistent"})
    shape = data.INPUT_SHAPE[config.dataset]
    rng = np.random.default_rng(0)
    x = rng.random((batch_size * steps, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch_size * steps).astype(np.int32)
    # Keras runs XLA only without op determinism; XLA rows are measured first for that reason.
    train.setup_determinism(0, deterministic_ops=not jit_compile)
    model = train.build_model(config, shape, 10)
    if pipeline == "numpy":  # shuffled NumPy copies straight into fit
        def fit():
            order = rng.permutation(len(x))
            model.fit(x[order], y[order], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    else:  # tensors resident in memory, each epoch gathered in a new order (train.epoch_dataset)
        x_resident, y_resident = tf.constant(x), tf.constant(y)

        def fit():
            model.fit(train.epoch_dataset(x_resident, y_resident, rng.permutation(len(x)), batch_size),
                      epochs=1, shuffle=False, verbose=0)
    row = {"network": network, "batch_size": batch_size, "jit_compile": jit_compile,
           "xla_active": bool(model.jit_compile), "pipeline": pipeline, "steps": steps}
    try:
        fit()
        tick = time.perf_counter()
        fit()
    except tf.errors.ResourceExhaustedError as err:  # XLA on CPU can ask for far more memory
        return {**row, "error": f"out of memory: {str(err).splitlines()[0]}"}
    seconds = time.perf_counter() - tick
    examples = batch_size * steps
    return {**row, "seconds": seconds,
            "examples_per_second": examples / seconds,
            "train_flop_per_second": 3 * forward_flops(model) * examples / seconds}


def run(out: str | Path, quick: bool = False) -> str:
    """Measure everything, write <out>/bench.json and bench.md, return the Markdown."""
    import tensorflow as tf

    from replication import models, sharpness

    out = Path(out)
    gpus = tf.config.list_physical_devices("GPU")
    device = ", ".join(d.name for d in gpus) if gpus else f"CPU ({train._cpu_name()})"
    peak = matmul_peak(512 if quick else 2048, 3 if quick else 20)
    rows = []
    for jit in (True, False):  # op determinism, once on, stays on: XLA first
        for network in NETWORKS:
            for regime, batch in BATCHES[network].items():
                batch = min(batch, 64) if quick else batch
                # Enough steps for a stable time; LB steps are few and long.
                steps = 2 if quick else (3 if regime == "lb" else 40 if network == "F1" else 12)
                if jit and network == "C1" and regime == "lb" and not quick:
                    # XLA's CPU compile of C1 at batch 5000 ran > 5 min in 16 GB here: skipped.
                    rows.append({"network": network, "regime": regime, "batch_size": batch,
                                 "jit_compile": True, "xla_active": True, "pipeline": "-",
                                 "error": "not measured on CPU (XLA compile too slow at this batch)"})
                    continue
                for pipeline in ("numpy", "tf.data"):
                    row = training_throughput(network, batch, jit, pipeline, steps)
                    row["regime"] = regime
                    if "error" in row:
                        print(f"{network} {regime} jit={jit} {pipeline}: {row['error']}", flush=True)
                        rows.append(row)
                        continue
                    row["fraction_of_matmul_peak"] = row["train_flop_per_second"] / peak
                    rows.append(row)
                    print(f"{network} {regime} jit={jit} {pipeline}: {row['examples_per_second']:.0f} ex/s, "
                          f"{row['fraction_of_matmul_peak']:.1%} of peak", flush=True)

    sharp = []
    for network, dataset in NETWORKS.items():
        shape = data.INPUT_SHAPE[dataset]
        model = models.build(network, shape, 10, "batch_statistics")
        synthetic = data.load(dataset)
        size = 200 if quick else SHARPNESS_EXAMPLES[network]
        x = np.resize(synthetic.x_train, (size, *shape))
        y = np.resize(synthetic.y_train, size)
        for space in ("full", "random"):
            result = sharpness.benchmark(model, space=space, dim=10 if quick else 100,
                                         iterations=2 if quick else 10, inputs=x, labels=y,
                                         batch_size=5000)
            sharp.append({"network": network, **result})
            print(f"sharpness {network} {space}: {result['solve_seconds']:.1f} s, "
                  f"{result['passes']} passes, glue {result['glue_fraction']:.1%}", flush=True)

    record = {"device": device, "matmul_peak_flop_per_second": peak, "training": rows,
              "sharpness": sharp, "quick": quick,
              "tensorflow": tf.__version__, "time": train._now()}
    storage.atomic_write_json(out / "bench.json", record)
    markdown = _markdown(record)
    storage.atomic_write_text(out / "bench.md", markdown)
    return markdown


def _markdown(record: dict) -> str:
    lines = [f"# Benchmark ({record['device']}, TensorFlow {record['tensorflow']}, {record['time']})", "",
             f"Matrix-multiply peak measured in the same run: {record['matmul_peak_flop_per_second'] / 1e9:.1f} "
             "GFLOP/s (float32).", "",
             "## Training throughput (model.fit, synthetic data of the dataset's shape)", "",
             "| network | regime | batch | XLA | input pipeline | examples/s | train GFLOP/s | of matmul peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in record["training"]:
        xla = "on" if r["xla_active"] else ("off (Keras fell back)" if r["jit_compile"] else "off")
        if "error" in r:
            lines.append(f"| {r['network']} | {r['regime'].upper()} | {r['batch_size']} | {xla} | {r['pipeline']} "
                         f"| {r['error']} | - | - |")
            continue
        lines.append(f"| {r['network']} | {r['regime'].upper()} | {r['batch_size']} | {xla} "
                     f"| {r['pipeline']} | {r['examples_per_second']:.0f} | {r['train_flop_per_second'] / 1e9:.1f} "
                     f"| {r['fraction_of_matmul_peak']:.1%} |")
    lines += ["", "XLA rows run without op determinism (Keras disables XLA while it is on); the "
              "training runs use op determinism and therefore no XLA unless a config sets jit_compile."]
    lines += ["", "## Sharpness (one L-BFGS-B solve, eps 1e-3, untrained weights, eval batch 5000, "
              "f on 10000 (F1) / 2000 (C1) examples)", "",
              "| network | space | n | p | examples | passes | solve s | of which passes s | SciPy s "
              "| glue s | glue / solve | glue / bare passes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["sharpness"]:
        lines.append(f"| {r['network']} | {r['space']} | {r['n']} | {r['p']} | {r['examples']} | {r['passes']} "
                     f"| {r['solve_seconds']:.2f} | {r['pass_seconds']:.2f} | {r['solver_seconds']:.2f} "
                     f"| {r['glue_seconds']:.2f} | {r['glue_fraction']:.1%} | {r['glue_ratio_to_bare']:.3f} |")
    lines += ["", "Glue = solve time minus the compiled passes minus SciPy's own L-BFGS-B routine: float64 "
              "casts, host/device transfers, A y and A^T g. The budget is glue <= 15% of the solve."]
    return "\n".join(lines) + "\n\nRaw numbers: bench.json. Regenerate with `make bench`.\n"

