"""The benchmark's FLOP count in closed form, and a tiny end-to-end run that writes its files."""

import json

from conftest import cli
from replication import backend, bench, models


def test_forward_flops_closed_form():
    f1 = models.build("F1", (28, 28, 1), 10, "batch_statistics")
    assert bench.forward_flops(f1) == 2 * (784 * 512 + 4 * 512 * 512 + 512 * 10)
    c1 = models.build("C1", (32, 32, 3), 10, "batch_statistics")
    conv = 2 * (5 * 5 * 3 * 64 * 32 * 32 + 5 * 5 * 64 * 64 * 16 * 16)
    assert bench.forward_flops(c1) == conv + 2 * (4096 * 384 + 384 * 192 + 192 * 10)


def test_quick_bench_writes_ratios(tmp_path):
    result = cli("bench", "--quick", "--networks", "F1", "--out", tmp_path, check=True)
    folder = tmp_path / bench.folder_name()
    record = json.loads((folder / "bench.json").read_text())
    assert (folder / "bench.md").read_text() in result.stdout
    assert record["backend"] == backend.name() and record["device"] == backend.device()
    peak = record["matmul_peak_flop_per_second"]["float32"]
    assert peak > 0 and record["training_peak"] == "float32"  # no GPU here: no TF32 peak
    rows = record["training"]
    # Both regimes, each with NumPy, device and training inputs, and k steps per execution.
    assert sorted((r["regime"], r["pipeline"], r["steps_per_execution"]) for r in rows) == sorted(
        (regime, pipeline, k) for regime in ("sb", "lb")
        for pipeline, k in (("numpy", 1), ("device", 1), ("training", 1), ("training", bench.STEPS_PER_EXECUTION)))
    for row in rows:
        examples = row["batch_size"] * row["steps"]
        assert abs(row["examples_per_second"] - examples / row["seconds"]) < 1e-6 * row["examples_per_second"]
        assert abs(row["fraction_of_peak"] - row["train_flop_per_second"] / peak) < 1e-12
        assert row["train_flop_per_second"] == 3 * bench.forward_flops(
            models.build("F1", (28, 28, 1), 10, "batch_statistics")) * examples / row["seconds"]
    assert {(r["network"], r["space"]) for r in record["sharpness"]} == {("F1", "full"), ("F1", "random")}
    for r in record["sharpness"]:
        assert r["passes"] >= 1 and r["bare_seconds"] > 0
        parts = r["pass_seconds"] + r["solver_seconds"] + r["glue_seconds"]
        assert abs(parts - r["solve_seconds"]) < 1e-6
