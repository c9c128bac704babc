"""Kept iterates and Figure 6: the config keys, the iterate files a run keeps (also when killed and
resumed), their measurement (f and Metric 2.1 at each iterate, reused when settings match), claim
6's rule on hand-made and published curves, the figure, and the Make rules."""

import math

import numpy as np
import pytest
import yaml

from conftest import TINY, cli, one_error_line, stamp
from replication import pipeline, rundir, storage, train
from replication import __main__ as cli_main
from replication import config as config_lib
from replication.measure import iterates, sharpness
from replication.analysis import iterate_tables, results
from tests.conftest import planned_commands


# Config -----------------------------------------------------------------------------------------------
def test_kept_epochs_and_their_checks():
    base = {"network": "F1", "dataset": "synthetic_mnist", "epochs": 10}
    assert config_lib.from_dict(base).kept_epochs() == ()  # nothing kept unless asked
    config = config_lib.from_dict({**base, "keep_iterates": [7, 1, 2], "keep_every": 4})
    assert config.kept_epochs() == (1, 2, 4, 7, 8)
    assert "iterates kept at epochs 1, 2, 4, 7, 8 of 10" in " | ".join(config.deviations())
    # Every epoch kept and measured is Figure 6's own protocol; measuring only the matched ones is not.
    assert not any("iterates" in d for d in config_lib.from_dict({**base, "keep_every": 1}).deviations())
    matched = config_lib.from_dict({**base, "keep_every": 1, "iterate_measure": "matched"}).deviations()
    assert [d for d in matched if d.startswith("iterates")] == [
        "iterates kept at every epoch of 10, but Figure 6's sharpness measured only at those nearest the matched "
        "training-loss levels and at the plateau stops (the paper has a point at about every epoch)"]
    assert not any("iterates" in d for d in config_lib.from_dict(base).deviations())
    for bad, key in (({"keep_iterates": [0]}, "keep_iterates"), ({"keep_iterates": [11]}, "keep_iterates"),
                     ({"keep_iterates": [2, 2]}, "keep_iterates"), ({"keep_every": 0}, "keep_every"),
                     ({"keep_every": 11}, "keep_every"), ({"keep_iterates": 3}, "keep_iterates")):
        with pytest.raises(config_lib.ConfigError, match=f"'{key}'"):
            config_lib.from_dict({**base, **bad})


# Training keeps them ----------------------------------------------------------------------------------
def weights(path):
    import h5py

    out = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: out.append((name, obj[()])) if hasattr(obj, "shape") else None)
    return out


def assert_same_weights(a, b):
    for (name_a, wa), (name_b, wb) in zip(weights(a), weights(b), strict=True):
        assert name_a == name_b
        np.testing.assert_array_equal(wa, wb)


def test_a_run_keeps_the_weights_of_the_asked_epochs(tiny_config, tmp_path):
    run = train.train(config_lib.load(tiny_config(epochs=3, keep_iterates=[1, 3])), "sb", 0)
    assert sorted(p.name for p in (run / "iterates").iterdir()) == ["epoch1.weights.h5", "epoch3.weights.h5"]
    metrics = storage.read_json(run / "metrics.json")
    assert metrics["kept_iterates"] == [1, 3]
    assert "iterates kept at epochs 1, 3 of 3 (Figure 6 has a point at about every epoch)" in metrics["deviations"]
    assert_same_weights(rundir.iterate_path(run, 3), run / "final.weights.h5")
    # Epoch 1's iterate is what a 1-epoch run ends with: each epoch depends on (seed, epoch) only.
    short = train.train(config_lib.load(tiny_config(epochs=1, results_dir=str(tmp_path / "short"))), "sb", 0)
    assert_same_weights(rundir.iterate_path(run, 1), short / "final.weights.h5")
    assert not (short / "iterates").exists() and storage.read_json(short / "metrics.json")["kept_iterates"] == []
    # Which iterates a run keeps is part of the run: another list is refused by name, since an
    # iterate that was not kept cannot be made afterwards.
    with pytest.raises(rundir.RunError, match=r"\('keep_iterates' was \[1, 3\], now \[1, 2\]\)"):
        train.train(config_lib.load(tiny_config(epochs=3, keep_iterates=[1, 2])), "sb", 0)


def test_a_run_made_before_keep_iterates_existed_is_not_refused(tiny_config):
    path = tiny_config()
    run = train.train(config_lib.load(path), "sb", 0)
    old = storage.read_yaml(run / "config.yaml")
    for key in rundir.RUN_FILE_KEYS:
        del old[key]
    storage.atomic_write_text(run / "config.yaml", yaml.safe_dump(old, sort_keys=False))
    assert train.train(config_lib.load(path), "sb", 0) == run
    with pytest.raises(rundir.RunError, match=r"\('keep_iterates' was \[\], now \[2\]\)"):
        train.train(config_lib.load(path, ["keep_iterates=[2]"]), "sb", 0)


KEEP = {**TINY, "epochs": 2, "keep_iterates": [1, 2]}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    return train.train(config_lib.from_dict({**KEEP, "results_dir": str(root)}), "sb", 0)


# The iterate's own write (renamed or not) and the history row after it: a resumed run redoes the
# epoch and ends with the same iterate files as an uninterrupted one.
@pytest.mark.parametrize("point", ["write:epoch1.weights.h5", "write:history.csv", "write:epoch2.weights.h5"])
def test_killed_run_resumes_to_the_same_iterates(point, tmp_path, reference_run):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**KEEP, "results_dir": str(tmp_path / "r")}))
    args = ("train", path, "--seed", "0", "--regime", "sb")
    killed = cli(*args, env={storage.FAILPOINT_VARIABLE: point})
    assert killed.returncode == -9, killed.stderr
    cli(*args, check=True)
    run = tmp_path / "r" / "F1_synthetic_mnist" / "sb" / "seed0"
    # A SIGKILL leaves the temporary file it cut short (hidden, never under a final name).
    kept = sorted(p.name for p in (run / "iterates").iterdir() if not p.name.startswith("."))
    assert kept == ["epoch1.weights.h5", "epoch2.weights.h5"], kept
    for epoch in (1, 2):
        assert_same_weights(rundir.iterate_path(run, epoch), rundir.iterate_path(reference_run, epoch))
    assert (run / "metrics.json").read_bytes() == (reference_run / "metrics.json").read_bytes()


# Measurement ------------------------------------------------------------------------------------------
def test_measure_every_kept_iterate_and_reuse(tmp_path, capsys):
    config = config_lib.from_dict({**KEEP, "results_dir": str(tmp_path / "r"),
                                   "sharpness": {"dim": 5, "subset": 150, "iterations": 2}})
    run = train.train(config, "sb", 0)
    assert cli_main.main(["iterates", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(iterates.summary_path(run))
    summary = storage.read_json(iterates.summary_path(run))
    assert summary["epochs"] == [1, 2] and len(summary["files"]) == 2 * (1 + 4)
    final = {(r["space"], r["epsilon"]): r for r in sharpness.sharpness_all(run)}
    for epoch in (1, 2):
        xent = storage.read_json(iterates.xent_path(run, epoch))
        assert xent["num_examples"] == 150 and xent["iterate_epoch"] == epoch
        for (space, epsilon), at_final in final.items():
            record = storage.read_json(iterates.sharpness_path(run, epoch, space, epsilon))
            assert record["iterate_epoch"] == epoch and record["num_examples"] == 150 and not record["failed"]
            assert record["f_x"] == pytest.approx(xent["train_xent"], rel=1e-5)  # the same f
            # The last epoch's iterate is the final weights (same phi, bit for bit); epoch 1's is not.
            assert (record["phi"] == at_final["phi"]) == (epoch == 2)
            assert (record["settings"]["weights_digest"] == at_final["settings"]["weights_digest"]) == (epoch == 2)
    files = [run / f for f in summary["files"]]
    stamps = [stamp(f) for f in files]
    assert cli_main.main(["iterates", str(run)]) == 0
    assert "already computed with these settings" in capsys.readouterr().err
    assert [stamp(f) for f in files] == stamps
    assert iterates.measure(run, force=True) and [stamp(f) for f in files] != stamps


def test_a_run_without_iterates_is_one_error_line(tiny_config):
    run = train.train(config_lib.load(tiny_config(epochs=1)), "sb", 0)
    result = cli("iterates", run)
    assert "kept no iterates: set keep_iterates" in one_error_line(result.returncode, result.stderr)


# Analysis on hand-made files ------------------------------------------------------------------------------
LOSSES = [1.0, 0.6, 0.4, 0.3, 0.2]
EPOCHS = [1, 2, 3, 5, 7]


def write_run(root, regime, phis, kept=EPOCHS, settings=None, network="F1"):
    """A finished run with measured iterates: f falls along LOSSES, phi(full, eps) = phis[i]."""
    dataset = "fashion_mnist"
    path = root / f"{network}_{dataset}" / regime / "seed0"
    storage.atomic_write_json(path / "metrics.json", {
        "network": network, "dataset": dataset, "dataset_label": "Fashion-MNIST (stand-in)", "regime": regime,
        "seed": 0, "batch_size": 256, "batchnorm": "batch_statistics", "eval_batch_size": 5000,
        "diverged": False, "epochs_run": 7, "train_accuracy": 90.0, "test_accuracy": 88.0,
        "deviations": ["iterates kept at epochs 1, 2, 3, 5, 7 of 7"], "kept_iterates": list(kept),
        "resolved_config": {}})
    storage.atomic_write_csv(path / "history.csv", [{"epoch": e, "train_loss": f + 0.01, "seconds": 1.0}
                                                    for e, f in zip(EPOCHS, LOSSES)])
    for epoch, loss, phi in zip(EPOCHS, LOSSES, phis):
        if epoch not in kept:
            continue
        owner = {"network": network, "dataset": dataset, "regime": regime, "run_seed": 0, "iterate_epoch": epoch}
        storage.atomic_write_json(iterates.xent_path(path, epoch), {
            **owner, "train_xent": loss, "train_accuracy": 100 - 10 * loss,
            "settings": {"subset": 10000, "weights_digest": f"w{epoch}"}})
        for epsilon, scale in ((1e-3, 1.0), (5e-4, 0.3)):
            storage.atomic_write_json(iterates.sharpness_path(path, epoch, "full", epsilon), {
                **owner, "space": "full", "epsilon": epsilon, "phi": None if phi is None else phi * scale,
                "failed": phi is None, "f_x": loss,
                "settings": {"epsilon": epsilon, "iterations": 10, "weights_digest": f"w{epoch}", **(settings or {})}})
    return path


def test_the_loader_rewords_what_older_runs_recorded_for_every_epochs_iterate(tmp_path):
    """Runs made before config.iterate_deviation recorded "iterates kept at every epoch of N" as a
    deviation: the loader drops it where every iterate was measured and names the matched-only
    measurement (measure/matched.py's summary present) where not."""
    old = "iterates kept at every epoch of 7"
    for regime, matched in (("sb", False), ("lb", True)):
        path = write_run(tmp_path, regime, GROWS)
        metrics = storage.read_json(path / "metrics.json")
        storage.atomic_write_json(path / "metrics.json", {**metrics, "deviations": [old, "1 seed(s) instead of 5"]})
        if matched:
            storage.atomic_write_json(path / "iterates" / "matched.json", {})
    runs = {run.regime: run for run in results.load(tmp_path).runs}
    assert runs["sb"].metrics["deviations"] == ["1 seed(s) instead of 5"]
    assert runs["lb"].metrics["deviations"] == [
        config_lib.iterate_deviation(tuple(range(1, 8)), 7, matched=True), "1 seed(s) instead of 5"]
    assert runs["lb"].metrics["deviations"][0].startswith("iterates kept at every epoch of 7, but")


GROWS, FALLS = [10.0, 30.0, 90.0, 200.0, 400.0], [40.0, 20.0, 10.0, 5.0, 2.0]
NOISY = [10.0, 40.0, 5.0, 30.0, 20.0]  # rho -0.1 against the falling loss: no trend either way


@pytest.mark.parametrize("sb,lb,level", [(FALLS, GROWS, "pass"), (GROWS, GROWS, "partial"),
                                         (FALLS, FALLS, "partial"), (GROWS, FALLS, "fail"),
                                         (NOISY, GROWS, "partial"), (NOISY, NOISY, "fail")])
def test_claim6_rule(tmp_path, sb, lb, level):
    write_run(tmp_path, "sb", sb)
    write_run(tmp_path, "lb", lb)
    rows = iterate_tables.rows(tmp_path)
    assert [(r["regime"], r["epoch"]) for r in rows] == [("lb", e) for e in EPOCHS] + [("sb", e) for e in EPOCHS]
    assert rows[0]["train_xent"] == 1.0 and rows[0]["history_train_loss"] == pytest.approx(1.01)
    assert rows[0]["phi_full_eps0.001"] == lb[0] and rows[0]["phi_full_eps0.0005"] == pytest.approx(0.3 * lb[0])
    units, _ = iterate_tables.judge(five_seeds(rows))
    assert [u["level"] for u in units] == [level], units
    assert "full space, eps 0.001" in units[0]["evidence"] and units[0]["evidence"].endswith(f"-> {level}")
    units, _ = iterate_tables.judge(rows)  # one seed
    assert [u["level"] for u in units] == ["inconclusive"]


def five_seeds(rows):
    """The rows of one seed as five seeds' (the rule needs five)."""
    return [{**r, "seed": seed} for seed in range(5) for r in rows]


def test_claim6_needs_enough_iterates_and_leaves_failed_solves_out(tmp_path):
    assert iterate_tables.judge([]) == ([], [])  # no iterates: not run
    write_run(tmp_path, "sb", FALLS, kept=[1, 2])
    write_run(tmp_path, "lb", GROWS, kept=[1, 2])
    units, notes = iterate_tables.judge(iterate_tables.rows(tmp_path))
    assert units == [] and "fewer than 3 iterates" in notes[0]
    write_run(tmp_path, "sb", [40.0, None, 10.0, 5.0, 2.0])
    write_run(tmp_path, "lb", GROWS)
    rows = iterate_tables.rows(tmp_path)
    assert math.isnan(rows[6]["phi_full_eps0.001"]) and rows[6]["phi_full_eps0.001_failed"] == 1
    units, _ = iterate_tables.judge(five_seeds(rows))
    assert [u["level"] for u in units] == ["pass"] and "5 failed solve(s) left out" in units[0]["evidence"]


def test_figure6_is_published_for_c1_and_f2_only():
    """The published curves' power under claim 6's rule: tests/test_verdict_power.py."""
    assert all(len(iterate_tables.published_figure6(n)) == 4 for n in iterate_tables.PUBLISHED)
    assert not iterate_tables.published_figure6("F1")


def test_measurements_of_another_iterate_or_settings_are_refused(tmp_path):
    write_run(tmp_path, "sb", FALLS)
    lb = write_run(tmp_path, "lb", GROWS, settings={"iterations": 5})
    with pytest.raises(results.ResultsError,
                       match="different settings \\('iterations' is 5 in the first, 10 in the second\\)"):
        iterate_tables.rows(tmp_path)
    write_run(tmp_path, "lb", GROWS)
    record = storage.read_json(iterates.xent_path(lb, 2))
    storage.atomic_write_json(iterates.xent_path(lb, 2), {**record, "iterate_epoch": 3})
    with pytest.raises(results.ResultsError, match="not a measurement of the iterate .*'epoch' is 3 there, 2"):
        iterate_tables.rows(tmp_path)


def test_figure_and_section_are_drawn_from_the_rows(tmp_path):
    write_run(tmp_path, "sb", FALLS)
    write_run(tmp_path, "lb", GROWS)
    rows = iterate_tables.rows(tmp_path)
    table_rows, columns = iterate_tables.table(rows)
    assert len(table_rows) == 10 and columns["phi_full_eps0.001"] == "full space, eps 0.001"
    text = iterate_tables.section(tmp_path, rows, "TABLE\n", "TRENDS\n")
    stem = tmp_path / "F1_fashion_mnist" / "iterates" / "figure6"
    assert stem.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert stem.with_suffix(".pdf").read_bytes().startswith(b"%PDF-")
    assert "## Figure 6" in text and "TABLE" in text and "TRENDS" in text
    assert "(F1_fashion_mnist/iterates/figure6.png)" in text
    trends, _ = iterate_tables.trend_table(rows)
    assert {(t["regime"], t["sharpness"]) for t in trends} == {
        (g, f"full space, eps {e}") for g in ("SB", "LB") for e in ("0.001", "0.0005")}
    assert all(math.isnan(t["paper_rho"]) for t in trends)  # F1 has no published Figure 6


# Make rules ---------------------------------------------------------------------------------------------
def test_rules_measure_the_iterates_of_sb_and_lb_before_the_report(tmp_path):
    config = tmp_path / "tiny.yaml"
    results_dir = tmp_path / "results"
    config.write_text(yaml.safe_dump({**TINY, "keep_iterates": [1, 2], "results_dir": str(results_dir),
                                      "sweep": {"batch_sizes": [64]}}))
    rules = pipeline.rules("tiny", [str(config)])
    trial = results_dir / "F1_synthetic_mnist"
    for regime in ("sb", "lb"):
        run = trial / regime / "seed0"
        assert f"{run}/iterates/measured.json: | {run}/metrics.json\n\t$(RUN) $(PY) -m replication iterates {run}\n" in rules
    assert "b64/seed0/iterates" not in rules  # Figure 6 is SB and LB
    report = next(line for line in rules.splitlines() if line.startswith(f"{results_dir}/REPORT.md:"))
    assert f"{trial}/sb/seed0/iterates/measured.json" in report and f"{trial}/lb/seed0/iterates/measured.json" in report
    lines = planned_commands(rules, "tiny-all", tmp_path)
    for regime in ("sb", "lb"):
        trained = lines.index(f"echo -m replication train {config} --seed 0 --regime {regime}")
        assert trained < lines.index(f"echo -m replication iterates {trial / regime / 'seed0'}") < len(lines) - 1
    config.write_text(yaml.safe_dump({**TINY, "results_dir": str(results_dir)}))
    assert "iterates" not in pipeline.rules("tiny", [str(config)])  # nothing kept, nothing measured
