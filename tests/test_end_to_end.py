"""The whole pipeline on real data at a tiny scale: Fashion-MNIST from Debian's
dataset-fashion-mnist (installed by .ci/run), train -> sharpness -> landscape -> report."""

import math
import os
from pathlib import Path

import pytest
import yaml

from conftest import cli
from replication import storage

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def fashion_dir():
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("REQUIRE_FASHION_MNIST"):
            pytest.fail(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return FASHION


def test_pipeline_on_fashion_mnist(tmp_path, fashion_dir):
    results = tmp_path / "results"
    config = tmp_path / "f1.yaml"
    config.write_text(yaml.safe_dump({
        "network": "F1", "dataset": "fashion_mnist", "data_dir": str(fashion_dir), "profile": "e2e",
        "train_subset": 1000, "test_subset": 500, "epochs": 2, "seeds": [0], "eval_batch_size": 500,
        "results_dir": str(results),
        "sharpness": {"subset": 500, "iterations": 3, "dim": 10},
        "landscape": {"points": 4, "subset": 500},
    }))
    runs = cli("train", config, check=True).stdout.split()
    assert [Path(r).parts[-2:] for r in runs] == [("sb", "seed0"), ("lb", "seed0")]
    for run in runs:
        metrics = storage.read_json(Path(run) / "metrics.json")
        assert metrics["dataset_label"] == "Fashion-MNIST (stand-in for MNIST)"
        assert metrics["num_train"] == 1000 and 50 < metrics["test_accuracy"] <= 100
    cli("sharpness", *runs, check=True)
    for run in runs:
        result = storage.read_json(Path(run) / "sharpness" / "full_eps0.001.json")
        # A trained minimiser has a box direction that raises f: phi is a positive finite number.
        assert not result["failed"] and math.isfinite(result["phi"]) and result["phi"] > 0
    cli("landscape", config, check=True)
    report = cli("report", results, check=True)
    text = (results / "REPORT.md").read_text()
    assert "Fashion-MNIST (stand-in for MNIST)" in text
    for claim in range(1, 8):
        assert f"Claim {claim}" in text or f"claim {claim}" in text.lower()
    assert (results / "tables" / "table2.csv").exists() and (results / "tables" / "table3.csv").exists()
    assert report.returncode == 0
