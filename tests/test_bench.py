"""The benchmark's FLOP count in closed form, and a tiny end-to-end run that writes its files."""

import json

from conftest import cli
from replication import bench, models


def test_forward_flops_closed_form():
    f1 = models.build("F1", (28, 28, 1), 10, "batch_statistics")
    assert bench.forward_flops(f1) == 2 * (784 * 512 + 4 * 512 * 512 + 512 * 10)
    c1 = models.build("C1", (32, 32, 3), 10, "batch_statistics")
    conv = 2 * (5 * 5 * 3 * 64 * 32 * 32 + 5 * 5 * 64 * 64 * 16 * 16)
    assert bench.forward_flops(c1) == conv + 2 * (4096 * 384 + 384 * 192 + 192 * 10)


def test_quick_bench_writes_ratios(tmp_path):
    # A fresh process: op determinism, once enabled by another test, would turn XLA off here.
    result = cli("bench", "--quick", "--out", tmp_path, check=True)
    record = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.md").read_text() in result.stdout
    assert record["matmul_peak_flop_per_second"] > 0
    assert len(record["training"]) == 2 * 2 * 2 * 2  # networks x regimes x XLA x pipelines
    for row in record["training"]:
        assert row["examples_per_second"] > 0 and 0 < row["fraction_of_matmul_peak"]
        assert row["xla_active"] == row["jit_compile"]  # XLA rows really ran with XLA
    assert {(r["network"], r["space"]) for r in record["sharpness"]} == {
        ("F1", "full"), ("F1", "random"), ("C1", "full"), ("C1", "random")}
    for r in record["sharpness"]:
        assert r["passes"] >= 1 and r["bare_seconds"] > 0
        parts = r["pass_seconds"] + r["solver_seconds"] + r["glue_seconds"]
        assert abs(parts - r["solve_seconds"]) < 1e-6
