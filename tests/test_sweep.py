"""Batch-size sweep (Figure 4, claim 4): run names, learning-rate scaling, the points and the
verdict from a hand-made results tree, the published curve, and one real sweep run end to end."""

import math
import re

import pytest
import yaml

from conftest import cli
from replication import regimes, rundir, storage, train
from replication import config as config_lib
from replication.analysis import report, results, sweep, verdicts
from test_report import PDF_MAGIC, PNG_MAGIC, write_run


# Run names and learning rates ---------------------------------------------------------------------
def test_run_names_round_trip_and_typos_are_not_sweep_runs():
    assert regimes.sweep(1024).name == "b1024"
    assert regimes.sweep(1024, "sqrt").name == "b1024-sqrt"
    for batch, scaling in ((1, "none"), (64, "sqrt"), (50000, "linear")):
        spec = regimes.parse(regimes.sweep(batch, scaling).name)
        assert (spec.kind, spec.batch, spec.scaling) == ("sweep", batch, scaling)
    for name in ("sb", "lb", "b", "b0", "b064", "bx", "b64-none", "b64-cubic", "64", "B64", "b\u00b2", "b64-"):
        assert getattr(regimes.parse_or_none(name), "kind", None) != "sweep", name


def test_learning_rate_scaling_has_the_closed_form():
    config = config_lib.from_dict({"network": "F1", "dataset": "mnist",
                                   "sweep": {"batch_sizes": [64, 1024], "lr_scalings": ["none", "sqrt", "linear"]}})
    assert config.regimes() == ["sb", "lb", "b64", "b1024", "b64-sqrt", "b1024-sqrt", "b64-linear", "b1024-linear"]
    run = regimes.parse
    assert config.for_regime(run("sb")) is config and config.for_regime(run("b1024")) is config
    assert config.for_regime(run("b1024-sqrt")).learning_rate == pytest.approx(1e-3 * 2)     # sqrt(1024/256)
    assert config.for_regime(run("b64-sqrt")).learning_rate == pytest.approx(1e-3 / 2)       # sqrt(64/256)
    assert config.for_regime(run("b1024-linear")).learning_rate == pytest.approx(1e-3 * 4)
    assert config.batch_size(run("b1024-linear"), 60000) == 1024 and config.batch_size(run("lb"), 60000) == 6000
    with pytest.raises(config_lib.ConfigError, match=r"unknown regime 'b512': use sb or lb, or a sweep "
                                                     r"run of this config: b64, b1024, b64-sqrt"):
        config.for_regime(run("b512"))
    plain = config_lib.from_dict({"network": "F1", "dataset": "mnist"})
    with pytest.raises(config_lib.ConfigError, match="this config has no sweep.batch_sizes"):
        plain.for_regime(run("b64"))
    with pytest.raises(config_lib.ConfigError, match=r"the batch 1024 of b1024 is larger than "
                                                     r"the training set \(1000 examples\)"):
        config.batch_size(run("b1024"), 1000)


# Points and claim 4 from a hand-made tree ----------------------------------------------------------
def points(root):
    return sweep.points(results.load(root))


def seed_points(root):
    return sweep.seed_points(results.load(root))


def write_point(root, regime, seed, batch, test_acc, phi, network="F1", train_acc=99.0, diverged=False,
                measured=True):
    """A finished run of `regime` at `batch` with full-space sharpness `phi` at eps 1e-3."""
    path = write_run(root, regime, seed, train_acc, test_acc, {("full", 1e-3): phi} if measured else None)
    metrics = storage.read_json(path / "metrics.json")
    metrics["diverged"] = diverged
    spec = regimes.parse(regime)
    exponent = regimes.LR_SCALINGS[spec.scaling] if spec.kind == "sweep" else 0.0
    scale = (batch / 256) ** exponent if exponent else 1.0
    metrics.update(batch_size=batch, network=network,
                   resolved_config={"learning_rate": 1e-3 * scale})
    if scale != 1.0:
        metrics["deviations"] = [*metrics["deviations"], "Adam hyper-parameters differ from Keras 1 defaults"]
    storage.atomic_write_json(path / "metrics.json", metrics)
    return path


@pytest.fixture
def swept(tmp_path):
    root = tmp_path / "results" / "sweep"
    # Unscaled: accuracy falls and sharpness rises with the batch; SB (256) and LB (6000) are points.
    for seed, jitter in ((0, 0.0), (1, 0.4)):
        write_point(root, "b64", seed, 64, 91.0 + jitter, 10.0)
        write_point(root, "sb", seed, 256, 90.0 + jitter, 20.0)
        write_point(root, "b1024", seed, 1024, 89.5 + jitter, 80.0)
        write_point(root, "lb", seed, 6000, 86.0 + jitter, 300.0 if seed == 0 else None)  # a failed solve
    write_point(root, "b1024-sqrt", 0, 1024, 90.5, 30.0)
    return root


def test_points_average_seeds_and_count_failures(swept):
    rows = points(swept)
    unscaled = [r for r in rows if r["lr_scaling"] == "none"]
    assert [r["batch_size"] for r in unscaled] == [64, 256, 1024, 6000]
    assert [r["runs"] for r in unscaled] == ["b64", "sb", "b1024", "lb"]
    sb = unscaled[1]
    assert sb["seeds"] == 2 and sb["test_mean"] == pytest.approx(90.2)
    assert sb["test_std"] == pytest.approx(math.sqrt(0.08))  # two values 0.4 apart, ddof=1
    lb = unscaled[3]
    assert lb["phi_full_eps0.001_mean"] == pytest.approx(300.0) and lb["phi_full_eps0.001_failed"] == 1
    anchor, scaled = [r for r in rows if r["lr_scaling"] == "sqrt"]
    assert (anchor["batch_size"], anchor["runs"]) == (256, "sb")  # the SB run anchors every curve
    assert scaled["batch_size"] == 1024 and scaled["learning_rate"] == pytest.approx(2e-3)
    assert math.isnan(scaled["paper_test_acc_pct"])  # F1 has no published Figure 4


def test_claim4_pairs_seeds_and_needs_five(swept):
    """Claim 4's rule, paired by seed (its branches: tests/test_verdicts.py): two seeds are inconclusive."""
    verdict = verdicts.claim4(seed_points(swept))
    assert verdict["verdict"] == "inconclusive (1 seed; the rule needs 5)", verdict  # the sharpness half's
    assert "test accuracy at batch 64 minus at 6000: 2 of 2 seeds agree" in verdict["reason"]
    assert "(mean rho -1.00)" in verdict["reason"]
    # LB seed 1's solve failed: one seed has sharpness at both ends
    assert "full-space sharpness, eps 0.001 at batch 6000 / at 64: 1 of 1 seed agrees" in verdict["reason"]
    assert "largest test-accuracy drop 3.50 points between batch 1024 and 6000" in verdict["reason"]
    assert "Fashion-MNIST" in verdict["scope"]


def test_claim4_needs_three_batch_sizes(tmp_path):
    few = tmp_path / "few"
    write_point(few, "b64", 0, 64, 90.0, 1.0)
    write_point(few, "sb", 0, 256, 89.0, 2.0)
    verdict = verdicts.claim4(seed_points(few))
    assert verdict["verdict"] == "not run" and "2 batch sizes with results, at least 3 are needed" in verdict["reason"]


def test_claim4_names_under_training_missing_sharpness_and_divergence(tmp_path):
    falling = [("b64", 64, 91.0, 10.0), ("sb", 256, 90.0, 20.0), ("b1024", 1024, 89.0, 80.0), ("lb", 6000, 86.0, 300.0)]
    root = tmp_path / "undertrained"
    for regime, batch, test, phi in falling:
        write_point(root, regime, 0, batch, test, phi, train_acc=99.0 - batch / 1000)  # train falls 5.9 points
    verdict = verdicts.claim4(seed_points(root))
    assert verdict["verdict"] == "inconclusive (1 seed; the rule needs 5)"
    assert "not only a generalization gap" in verdict["reason"]
    unmeasured = tmp_path / "unmeasured"
    for regime, batch, test, phi in falling:
        write_point(unmeasured, regime, 0, batch, test, phi, measured=(regime != "b64"))
    rows = points(unmeasured)  # b64 has no sharpness file: its columns are there, empty
    assert rows[0]["phi_full_eps0.001_missing"] == 1 and math.isnan(rows[0]["phi_full_eps0.001_mean"])
    assert report.build(unmeasured).exists()  # one CSV header for rows with and without sharpness
    none_measured = tmp_path / "none_measured"
    for regime, batch, test, phi in falling:
        write_point(none_measured, regime, 0, batch, test, phi, measured=False)
    verdict = verdicts.claim4(seed_points(none_measured))
    assert "sharpness: not computed" in verdict["reason"] and "sharpness not computed" in verdict["reason"]
    diverged = tmp_path / "diverged"
    for regime, batch, test, phi in falling[1:]:
        write_point(diverged, regime, 0, batch, test, phi, diverged=(regime == "lb"))
    verdict = verdicts.claim4(seed_points(diverged))
    assert verdict["verdict"] == "not run"
    assert "2 batch sizes with results" in verdict["reason"] and "every seed diverged at batch 6000" in verdict["reason"]


def test_sweep_points_that_repeat_sb_or_lb_are_refused():
    with pytest.raises(config_lib.ConfigError, match=r"bad value 256 for 'sweep.batch_sizes': the SB batch size"):
        config_lib.from_dict({"network": "F1", "dataset": "mnist", "sweep": {"batch_sizes": [64, 256]}})
    with pytest.raises(config_lib.ConfigError, match=r"bad value 5000 for 'sweep.batch_sizes': the LB batch size"):
        config_lib.from_dict({"network": "F1", "dataset": "mnist", "lb_batch_size": 5000,
                              "sweep": {"batch_sizes": [5000]}})
    sqrt_only = config_lib.from_dict({"network": "F1", "dataset": "mnist", "lb_batch_size": 5000,
                                      "sweep": {"batch_sizes": [5000], "lr_scalings": ["sqrt"]}})
    assert sqrt_only.sweep_runs() == [regimes.sweep(5000, "sqrt")]


def test_no_sweep_means_no_points_and_claim4_not_run(tmp_path):
    root = tmp_path / "pairs"
    write_run(root, "sb", 0, 99.0, 90.0)
    write_run(root, "lb", 0, 99.0, 88.0)
    assert points(root) == []
    assert verdicts.verdicts(results.load(root))[3]["verdict"] == "not run"


def test_published_figure4_is_read_and_interpolated():
    curves = sweep.published_figure4("C1")
    assert set(curves) == set(sweep.FIGURE4_COLUMNS)
    acc = curves["test_acc_pct"]
    assert sweep.published_at(acc, 100) == pytest.approx(79.06)      # the first published point
    assert sweep.published_at(acc, 5000) == pytest.approx(75.67)     # the last
    assert math.isnan(sweep.published_at(acc, 50)) and math.isnan(sweep.published_at(acc, 6000))
    assert sweep.published_figure4("F1") == {}


def test_report_has_the_figure4_section_and_files(swept):
    path = report.build(swept)
    text = path.read_text()
    assert "## Figure 4: test accuracy and sharpness against the batch size" in text
    assert re.search(r"\| F1 \| Fashion-MNIST \(stand-in for MNIST\) \| sqrt \| 1024 \| 0.002 \| b1024-sqrt", text)
    assert "| 4 | Test accuracy falls" in text
    assert "inconclusive (1 seed; the rule needs 5)" in text.split("| 4 |")[1].split("\n")[0]
    stem = swept / "F1_fashion_mnist" / "sweep" / "figure4"
    assert stem.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    assert stem.with_suffix(".pdf").read_bytes().startswith(PDF_MAGIC)
    csv_rows = storage.read_csv(swept / "tables" / "figure4.csv")
    assert len(csv_rows) == 6
    # Rebuilding from the same files gives the same bytes (no dates in the figures).
    before = {p: p.read_bytes() for p in (path, stem.with_suffix(".pdf"), stem.with_suffix(".png"))}
    report.build(swept)
    assert all(p.read_bytes() == b for p, b in before.items())
    # Claims 1-2 ignore the sweep: the scaled run's learning rate is no deviation of theirs.
    judged = verdicts.verdicts(results.load(swept))
    assert "Adam" not in judged[0]["reason"] and "Adam" not in judged[1]["reason"]
    assert "Adam" not in judged[3]["reason"]  # claim 4 is judged on the unscaled curve only


# One real sweep run -----------------------------------------------------------------------------------
def test_a_sweep_run_trains_with_its_batch_and_scaled_learning_rate(tiny_config):
    path = tiny_config(sweep={"batch_sizes": [128], "lr_scalings": ["sqrt"]}, epochs=1)
    result = cli("train", path, "--seed", "0", "--regime", "b128-sqrt", check=True)
    run = rundir.run_directory(config_lib.load(path), "b128-sqrt", 0)
    assert result.stdout.strip() == str(run)
    metrics = storage.read_json(run / "metrics.json")
    assert metrics["regime"] == "b128-sqrt" and metrics["batch_size"] == 128
    assert metrics["resolved_config"]["learning_rate"] == pytest.approx(1e-3 * 2)  # sqrt(128/32)
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["regime"] == "b128-sqrt"
    assert "learning rate 0.002 (sqrt-scaled with batch 128 from 0.001 at 32; sweep run)" in metrics["deviations"]
    assert not any("Adam" in d for d in metrics["deviations"])
    # Same x0 as the pair: the trial's x0 file is shared.
    sb = train.train(config_lib.load(path), "sb", 0)
    assert storage.read_json(sb / "metrics.json")["x0_sha256"] == metrics["x0_sha256"]
    # The scaled rate is the one trained with: the same batch at the base rate ends elsewhere.
    unscaled = tiny_config(sweep={"batch_sizes": [128]}, epochs=1)
    plain = train.train(config_lib.load(unscaled), "b128", 0)
    assert storage.read_json(plain / "metrics.json")["x0_sha256"] == metrics["x0_sha256"]
    assert storage.read_json(plain / "metrics.json")["train_loss"] != metrics["train_loss"]
    bad = cli("train", path, "--regime", "b999")
    assert bad.returncode == 2 and "unknown regime 'b999'" in bad.stderr
    # The gradient noise scale at x0 and at the minimiser; a second request is skipped.
    for point in ("initial", "final"):
        cli("noise", run, "--point", point, check=True)
        record = storage.read_json(run / "noise" / f"{point}.json")
        assert record["b_simple"] > 0 and record["batch_size"] == 32 and record["num_examples"] == 400
    assert record["settings"]["weights_digest"] != storage.read_json(run / "noise" / "initial.json")["settings"]["weights_digest"]
    again = cli("noise", run, check=True)
    assert "already computed with these settings; skipping" in again.stderr


def test_make_rules_train_and_measure_every_sweep_run(tmp_path):
    from conftest import TINY
    from replication import pipeline

    path = tmp_path / "tiny.yaml"
    results = tmp_path / "results"
    path.write_text(yaml.safe_dump({**TINY, "results_dir": str(results),
                                    "sweep": {"batch_sizes": [64], "lr_scalings": ["none", "sqrt"]}}))
    rules = pipeline.rules("tiny", [str(path)])
    trial = results / "F1_synthetic_mnist"
    for regime in ("sb", "lb", "b64", "b64-sqrt"):
        assert f"{trial}/{regime}/seed0/metrics.json: | tiny-check-0\n\t$(RUN) $(PY) -m replication train {path} --seed 0 --regime {regime}\n" in rules
        report_rule = next(line for line in rules.splitlines() if line.startswith(f"{results}/REPORT.md:"))
        # One sharpness command per run; its target is the last file it writes.
        assert f"{trial}/{regime}/seed0/sharpness/random_eps0.0005.json" in report_rule
        assert f"{trial}/{regime}/seed0/noise/final.json: | {trial}/{regime}/seed0/metrics.json\n" in rules
    assert f"\t$(RUN) $(PY) -m replication noise {trial}/sb/seed0 --point initial\n" in rules
    assert "--point initial" not in rules.replace(f"{trial}/sb/seed0 --point initial", "")
