"""The README and docs agree with the result files (issue 23 item 5), every link in them resolves,
and each committed REPORT.md is what `report` writes from its folder's committed files.

The generated blocks are rendered in memory from results/ (replication/analysis/readme.py) and
compared with README.md and docs/*.md as committed; the other tests run the generator on copies of
real run directories in a temporary repository, so that a partly finished folder, a changed number
and a damaged summary each show what the generator does with them.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from replication import errors
from replication.analysis import batchsize_report, readme, results

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_FILES = ("metrics.json", "env.json", "history.csv", "config.yaml", "target.csv")


def test_generated_parts_agree_with_the_result_files():
    rendered = readme.render(ROOT)
    for path, text in rendered.items():
        written = path.read_text()
        if written != text:
            new, old = text.splitlines(), written.splitlines()
            first = next((i for i, (a, b) in enumerate(zip(new, old)) if a != b), min(len(new), len(old)))
            pytest.fail(f"{path.relative_to(ROOT)} disagrees with results/ from line {first + 1}:\n"
                        f"  file:  {old[first] if first < len(old) else '(end)'}\n"
                        f"  files: {new[first] if first < len(new) else '(end)'}\n"
                        f"run `python -m replication readme` (make report runs it)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    """Every relative link of a Markdown page whose file, or whose heading (#anchor), does not exist."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.is_file():
            broken.append(f"{target} (no file {path})")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.name})")
    return broken


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {'; '.join(broken_links(page))}"


def test_the_link_check_catches_a_broken_link_and_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A heading, with (punctuation)\n[ok](#a-heading-with-punctuation) [ok](page.md) "
                    "[gone](missing.md) [bad](#no-such-heading) [web](https://example.org/x)\n")
    assert [link.split(" ")[0] for link in broken_links(page)] == ["missing.md", "#no-such-heading"]


# A temporary repository made of copies of real files ------------------------------------------------
def _repository(tmp_path: Path, *configs: str) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "Makefile", root / "Makefile")
    for config in configs:
        (root / config).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / config, root / config)
    (root / "results").mkdir()
    return root


def _copy_run(root: Path, run: str) -> Path:
    """Copy a committed run directory's result files (not its weights) into the same place under root."""
    source, target = ROOT / run, root / run
    target.mkdir(parents=True)
    for name in RUN_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    for folder in ("sharpness", "noise"):
        if (source / folder).is_dir():
            shutil.copytree(source / folder, target / folder)
    return target


def _row(contract: str, name: str) -> str:
    return next(line for line in contract.splitlines() if line.startswith(f"| **{name}**"))


def test_a_partly_finished_folder_says_how_far_it_got(tmp_path):
    # One of the four runs of configs/quick/f1.yaml (2 seeds x SB, LB): the row says so.
    root = _repository(tmp_path, "configs/quick/f1.yaml", "configs/paper/f1.yaml")
    _copy_run(root, "results/quick/F1_fashion_mnist/sb/seed0")
    contract = readme.contract(root)
    quick = _row(contract, "quick")
    assert "**1 of 4 runs finished** (seed 0: 1 of 2, seed 1 not started)" in quick
    sb = json.loads((ROOT / "results/quick/F1_fashion_mnist/sb/seed0/metrics.json").read_text())["test_accuracy"]
    assert f"test SB {sb:.2f}" in quick and "no LB run yet" in quick and "`make quick`" in quick
    # A configured folder without results is a "not run yet" row; nothing was written into results/.
    assert "| not run yet |" in _row(contract, "paper")
    assert sorted(p.name for p in (root / "results" / "quick").rglob("*") if p.is_file()) == sorted(
        p.name for p in (ROOT / "results/quick/F1_fashion_mnist/sb/seed0").rglob("*")
        if p.is_file() and (p.parent.name in ("sharpness", "noise") or p.name in RUN_FILES))


def test_the_numbers_come_from_the_files(tmp_path):
    root = _repository(tmp_path, "configs/quick/f1.yaml")
    for regime in ("sb", "lb"):
        _copy_run(root, f"results/quick/F1_fashion_mnist/{regime}/seed0")
    before = _row(readme.contract(root), "quick")
    metrics = root / "results/quick/F1_fashion_mnist/lb/seed0/metrics.json"
    record = json.loads(metrics.read_text())
    record["test_accuracy"] = 12.34
    metrics.write_text(json.dumps(record) + "\n")
    after = _row(readme.contract(root), "quick")
    lb = f"LB {json.loads((ROOT / 'results/quick/F1_fashion_mnist/lb/seed0/metrics.json').read_text())['test_accuracy']:.2f}"
    assert lb in before and "LB 12.34" in after and lb not in after


def test_a_folder_no_config_writes_to_is_named_by_its_provenance(tmp_path):
    # Runs of the quick profile in a folder of their own (copied, as hessian-quick, or retrained
    # there, as paper-cpu-rerun): the row says whose runs they are and takes what they are from the
    # folder's PROVENANCE.md title, instead of calling every such folder "copies".
    root = _repository(tmp_path, "configs/quick/f1.yaml")
    for regime in ("sb", "lb"):
        source = _copy_run(root, f"results/quick/F1_fashion_mnist/{regime}/seed0")
        target = root / "results/apart/F1_fashion_mnist" / regime / "seed0"
        target.parent.mkdir(parents=True)
        shutil.move(source, target)
    row = _row(readme.contract(root), "apart")
    assert "runs made outside their profile folder: runs of profile quick" in row
    (root / "results/apart/PROVENANCE.md").write_text("# Seed 0 retrained on another CPU\n\nHow.\n")
    row = _row(readme.contract(root), "apart")
    assert row.startswith("| **apart**: Seed 0 retrained on another CPU: runs of profile quick (")
    assert "copies" not in row and "runs of [configs/quick/f1.yaml]" in row


def test_a_file_without_its_markers_is_one_clear_error(tmp_path):
    root = _repository(tmp_path, "configs/quick/f1.yaml")
    _copy_run(root, "results/quick/F1_fashion_mnist/sb/seed0")
    for name in readme.BLOCKS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    (root / "README.md").write_text("# A README whose results table lost its markers\n")
    with pytest.raises(readme.ReadmeError, match=r"README\.md: expected one generated block 'results'.*"
                                                 r"python -m replication readme") as caught:
        readme.write(root)
    assert isinstance(caught.value, errors.UserError)  # the CLI prints it as one line, exit status 2
    # Nothing is half-written: the docs pages, which had their markers, were not rewritten either.
    assert (root / "docs/batch-size.md").read_text() == (ROOT / "docs/batch-size.md").read_text()


def test_a_damaged_batch_size_summary_is_refused_naming_the_key(tmp_path):
    root = _repository(tmp_path, "configs/batch-size-gpu/c1.yaml")
    source = ROOT / "results/batch-size-gpu"
    for metrics in source.glob("*/*/seed*/metrics.json"):
        _copy_run(root, str(metrics.parent.relative_to(ROOT)))
    summary = root / "results/batch-size-gpu/batch_size.json"
    record = json.loads((source / "batch_size.json").read_text())
    assert "B_crit 2481 (16-84% 2207-2554; 1 seed)" in _row(_contract_with(summary, record, root), "batch-size-gpu")
    record["fit"]["b_crit"] = "2481"
    with pytest.raises(results.ResultsError, match=r"batch_size\.json: 'fit\.b_crit' is '2481', not a number"):
        _contract_with(summary, record, root)
    summary.unlink()
    with pytest.raises(results.ResultsError, match=r"batch_size\.json is missing: write it with "
                                                   r"`python -m replication report results/batch-size-gpu`"):
        readme.contract(root)


def _contract_with(summary: Path, record: dict, root: Path) -> str:
    summary.write_text(json.dumps(record) + "\n")
    return readme.contract(root)


# The sentences the numbers choose --------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_study():
    profile = next(p for p in readme.profiles(ROOT) if p.name == "batch-size-gpu")
    return readme.studies(ROOT, profile)[0]


def _step_sentence(study) -> str:
    return next(line for line in readme._reading([study]) if "a step's time" in line)


def test_the_step_time_sentence_follows_the_times(gpu_study):
    import dataclasses

    def with_times(per_example_ms):
        rows = [{**r, "seconds_per_step": per_example_ms(r["batch_size"]) * r["batch_size"] / 1000}
                for r in gpu_study.rows]
        return dataclasses.replace(gpu_study, rows=rows)

    assert "grew about in proportion to the batch" in _step_sentence(with_times(lambda b: 1.0))
    assert "grew less than the batch" in _step_sentence(with_times(lambda b: 10 / b ** 0.5))
    assert "grew more than the batch" in _step_sentence(with_times(lambda b: b ** 0.5))


def test_the_fair_comparison_sentence_follows_the_training_accuracies(gpu_study):
    import dataclasses

    # As measured: the (b) reference trained 5 epochs to 80.97%, (c) to 99.98%.
    measured = next(line for line in readme._reading([gpu_study]) if "in (c)" in line)
    assert "not the two at equal training accuracy" in measured
    close = [{**r, "train_accuracy": 99.5} if r["kind"] == "tuned" else r for r in gpu_study.compare]
    changed = next(line for line in readme._reading([dataclasses.replace(gpu_study, compare=close)])
                   if "in (c)" in line)
    assert "at about the same training accuracy" in changed


def test_claim1_at_equal_training_accuracy_is_read_from_both_folders():
    # results/batch-size-gpu's (c) run and results/paper-gpu's SB run share x0 and examples.
    text = readme.render(ROOT)[ROOT / "docs/batch-size.md"]
    block = text.split("<!-- equal-accuracy:begin")[1].split("<!-- equal-accuracy:end")[0]
    large = json.loads((ROOT / "results/batch-size-gpu/C1_cifar10_jpeg/b5000-x0.5-e98/seed0/metrics.json").read_text())
    sb = json.loads((ROOT / "results/paper-gpu/C1_cifar10_jpeg/sb/seed0/metrics.json").read_text())
    assert large["x0_sha256"] == sb["x0_sha256"]
    gap = large["test_accuracy"] - sb["test_accuracy"]
    assert f"ended {abs(gap):.2f} points {'below' if gap < 0 else 'above'} SB" in block


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_report_rewrites_the_readme_after_the_reports():
    planned = subprocess.run(["make", "-n", "--no-print-directory", "report", "PY=python3"], cwd=ROOT,
                             capture_output=True, text=True)
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    reports = next(i for i, line in enumerate(lines) if "-m replication report" in line)
    assert any("-m replication readme" in line for line in lines[reports + 1:])


def test_the_recommendation_is_checked_against_each_target_of_its_study(tmp_path):
    """Issue 25 item 6: per study folder with recommend/recommendation.json, one row per target
    (the recommended batch, its source, the measured B_crit, their ratio, both times); a number that
    no result can be is refused naming the file and the key."""
    import types

    folder = Path("results/critical-batch-f1-mnist")
    study = lambda target, b_crit: types.SimpleNamespace(  # noqa: E731
        folder=folder, label="F1, MNIST, 60000 training examples", seed=None, target=target, b_crit=b_crit,
        bootstrap={"resamples": 1000, "p16": 0.8 * b_crit, "p84": 1.3 * b_crit, "unbounded": {}}, train_seconds=3000.0,
        measure_seconds=600.0)
    found = [study("training cross-entropy 0.1", 2000.0), study("training cross-entropy 0.03", 8000.0)]
    assert readme.recommend_block(tmp_path, found).startswith("No recommendation has been checked")
    record = {"recommendation": {"batch_size": 2048, "from": "B_adam", "b_crit": 2500.0,
                                 "interval": {"low": 2100.0, "high": 2900.0}},
              "no_recommendation": None, "cost_seconds": 90.0, "noise": {"b_noise": 1000.0},
              "short_run": {"target": {"metric": "train_loss", "value": 0.1}}}
    path = tmp_path / folder / "recommend" / "recommendation.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record) + "\n")
    text = readme.recommend_block(tmp_path, found)
    assert "| F1 (critical-batch-f1-mnist, seeds pooled) | training cross-entropy 0.1 | 2048 (B_adam 2500, 2100 to 2900; " \
           "measured at train_loss <= 0.1) | " \
           "2000 (1600-2600) | - | 1.25 | 1000 (0.50) | 90 s | 3600 s |" in text
    assert "| training cross-entropy 0.03 | 2048 (B_adam 2500, 2100 to 2900; measured at train_loss <= 0.1) | " \
           "8000 (6400-10400) | - | 0.31 |" in text
    assert "By the rule" not in text  # no 2.5-97.5% interval: nothing judged
    # With the measured 2.5-97.5% intervals, the rule judges the recommended value and B_noise beside it:
    # 2500 is within 2x of [1500, 3000] but not of [6000, 12000]; 1000 within 2x of the first only.
    for one, (low, high) in zip(found, [(1500.0, 3000.0), (6000.0, 12000.0)]):
        one.bootstrap.update(p2_5=low, p97_5=high)
    text = readme.recommend_block(tmp_path, found)
    assert "the value recommend predicts from held on 1 of 2 workload-target pairs; the B_noise printed beside " \
           "it would have held on 1 of 2" in text
    assert "| 2000 (1600-2600) | 750-6000 | 1.25 |" in text  # what the rule accepts, beside each verdict
    assert "reaches 0 or below" not in text
    # An estimator interval that reaches below 0 (F1 MNIST's B_adam, 13822 +- 1.96 x 8353) is said to be
    # unresolved at that level, beside the value the rule still judges.
    path.write_text(json.dumps({**record, "recommendation": {**record["recommendation"],
                                                             "interval": {"low": -2550.0, "high": 30194.0}}}) + "\n")
    text = readme.recommend_block(tmp_path, found)
    assert "2048 (B_adam 2500, -2550 to 30194;" in text
    assert "In critical-batch-f1-mnist the estimator's 95% interval reaches 0 or below" in text
    # ...and a hold from such an estimate is counted apart (F1 MNIST at 0.03 was counted as a plain hold).
    assert "held on 1 of 2 workload-target pairs (1 of them from an estimate whose 95% interval reaches 0" in text
    path.write_text(json.dumps({**record, "cost_seconds": -1}) + "\n")
    with pytest.raises(results.ResultsError, match=r"recommendation\.json: 'cost_seconds' is -1"):
        readme.recommend_block(tmp_path, found)


def test_the_critical_batch_table_states_the_bracket_and_each_prediction(gpu_study):
    """Issue 25: one row per pooled study and target; B_crit inside the measured batches is
    bracketed, outside it an extrapolation; each prediction's rule verdict with its n, and a seed
    whose estimate was unresolved named; one-seed studies stay out of it."""
    import dataclasses

    assert readme.critical_batch_block([gpu_study]).startswith("No study pooled over several seeds")
    boot = {"resamples": 1000, "p16": 2000.0, "p84": 3000.0, "p2_5": 1500.0, "p97_5": None,
            "unbounded": {"p97_5": "above"}}
    checks = {"b_simple": {"holds": True, "mean": 2600.0, "n": 3, "unresolved_seeds": []},
              "adam_b_simple": {"holds": False, "mean": 9e5, "n": 3, "unresolved_seeds": [1]}}
    pooled = dataclasses.replace(gpu_study, seeds=3, b_crit=2481.0, bootstrap=boot, checks=checks,
                                 one_multiplier={"multiplier": 0.5, "excess": 0.04, "worst_batch": 500, "tied": False})
    row = readme.critical_batch_block([gpu_study, pooled]).splitlines()[2]
    # The 2.5-97.5% interval reaches past the largest batch: bracketed by the point and 16-84% only (it
    # said "yes" for F1 MNIST at 0.03, whose 97.5% point is 44556, beyond batch 16384); and the range
    # of predictions the rule accepts is stated beside its verdicts.
    assert "| 3 | 32-5000 | 2481 (2000-3000; 1500 to no upper bound) | point and 16-84%; the 2.5-97.5% " \
           "interval reaches past 5000 | above 750, no upper bound | 2600 (holds, n = 3) | " \
           "900000 (does not hold, n = 3; unresolved at seed 1) | 0.5x (4% at batch 500) |" in row
    inside = dataclasses.replace(pooled, bootstrap={**boot, "p97_5": 4000.0, "unbounded": {}})
    assert "| yes, its 2.5-97.5% interval too | 750-8000 |" in readme.critical_batch_block([inside]).splitlines()[2]
    narrow = dataclasses.replace(pooled, bootstrap={**boot, "p16": 20.0, "p2_5": 10.0})
    assert "| point only; its intervals reach below 32 and past 5000 |" in \
        readme.critical_batch_block([narrow]).splitlines()[2]
    unmeasured = dataclasses.replace(pooled, bootstrap={**dict.fromkeys(("p16", "p84", "p2_5", "p97_5")),
                                                        "unbounded": {}})  # batch_size_study.bootstrap: 0
    assert "| point; no interval measured | - |" in readme.critical_batch_block([unmeasured]).splitlines()[2]
    beyond = dataclasses.replace(pooled, b_crit=9000.0, bootstrap={**boot, "p2_5": None, "unbounded": {
        "p2_5": "above", "p97_5": "above"}})
    assert "| 9000 (2000-3000; no upper bound to no upper bound) | no: an extrapolation |" in \
        readme.critical_batch_block([beyond]).splitlines()[2]


@pytest.fixture(scope="module")
def mnist_studies():
    profile = next(p for p in readme.profiles(ROOT) if p.name == "critical-batch-f1-mnist")
    return readme.studies(ROOT, profile)


def test_choosing_a_batch_size_states_only_what_the_pooled_studies_support(gpu_study, mnist_studies):
    """Issue 25 item 7: each point is chosen by the pooled studies' numbers and names how many
    workloads and targets it rests on; one-seed studies add nothing to it."""
    import dataclasses

    assert readme.choosing_block([gpu_study]).startswith("No study pooled over several seeds")
    early, late = mnist_studies
    text = readme.choosing_block([gpu_study, early, late])
    assert text.startswith("From 1 workload and 2 workload-target pairs, 3 seeds each")
    assert f"B_crit was larger at the tighter target on 1 of 1 workload" in text
    assert f"{readme.sig(late.b_crit / early.b_crit, 2)}x; the 16-84% intervals do not overlap" in text
    # As measured the 2.5-97.5% intervals overlap, so the advice is a direction, not a certainty; only
    # intervals apart at that level too make it plain.
    assert "the 2.5-97.5% ones do)" in text and "may be below a late one's B_crit, not surely" in text
    apart = dataclasses.replace(late, bootstrap={**late.bootstrap, "p2_5": early.bootstrap["p97_5"] * 1.1})
    text = readme.choosing_block([early, apart])
    assert "the 2.5-97.5% ones do not)" in text and "an early target is below the late target's B_crit." in text
    # B_crit smaller at the tighter target: said as measured, with no advice drawn from it.
    shrunk = dataclasses.replace(late, b_crit=early.b_crit / 2, bootstrap=early.bootstrap)
    text = readme.choosing_block([early, shrunk])
    assert "larger at the tighter target on 0 of 1 workload" in text and "below the late" not in text
    assert "the 16-84% intervals overlap" in text
    # The test-accuracy point follows the spread of the batches' accuracies.
    # A small range is stated as an observation, not read as "no effect" (there is no test behind it).
    small = readme.choosing_block([early, late])
    assert "moved the seeds' mean test accuracy by at most" in small and "no equivalence test" in small
    assert "barely" not in small
    # The fastest batch against the runner-up, seed by seed (each seed's own runs), as the rows say.
    first, second, faster, compared = batchsize_report.fastest_two(late.rows)
    alone = readme.choosing_block([late])
    assert compared == 3 and f"batch {second['batch_size']} next at " in alone and f"its time, faster on {faster} of 3 seeds)" in alone
    slower = [{**r, "seconds_to_target_per_seed": [1e9, *r["seconds_to_target_per_seed"][1:]]}
              if r is first else r for r in late.rows]  # seed 0 slowest at the fastest batch
    assert f"faster on {faster - 1} of 3 seeds)" in readme.choosing_block([dataclasses.replace(late, rows=slower)])
    rows = [{**r, "test_accuracy": 90.0 + 2 * i} for i, r in enumerate(late.rows)]
    assert "moved the seeds' mean test accuracy by at most 10.00 points (the range of the seeds' means over " \
           "batches; an observation: no test of a difference" in readme.choosing_block([dataclasses.replace(late, rows=rows)])


def test_choosing_points_name_what_qualifies_a_c1_shaped_study(mnist_studies, tmp_path):
    # The C1 study (2 seeds, best rates at a capped grid edge, a large batch met on one seed only, a
    # target whose B_crit may not resolve) would have been summarised in words true only of the F1
    # studies: "3 seeds each", a batch range over a batch left out, a workload dropped silently.
    import dataclasses

    early, late = mnist_studies
    rows = [dict(r) for r in late.rows]
    rows[0]["grid"] = "capped high"
    rows[-1] = {**rows[-1], "steps": None, "seconds_to_target": None, "test_accuracy": None}
    c1 = dataclasses.replace(late, folder=tmp_path / "critical-batch-c1", seeds=2, rows=rows)
    text = readme.choosing_block([early, late, c1])
    assert text.startswith("From 2 workloads and 3 workload-target pairs, seeds: critical-batch-f1-mnist 3, "
                           "critical-batch-c1 2")
    assert f"Left out: critical-batch-c1 (B_crit resolved at {late.target} only)." in text
    assert f"(steps at batch {rows[0]['batch_size']} an upper bound: best rate at a capped grid edge; batch " \
           f"{rows[-1]['batch_size']} not met on every seed: left out)" in text
    # A B_crit beyond the batches fitted is named as an extrapolation wherever it is printed.
    beyond = dataclasses.replace(c1, b_crit=10 * max(r["batch_size"] for r in rows))
    assert f"(extrapolated past batch {rows[-2]['batch_size']})" in readme.choosing_block([early, late, beyond])
    # A range names only batches that all stayed within 1.5x: a gap is listed, not bridged.
    assert readme._batches([32, 512], [32, 128, 512]) == "batches 32, 512"
    assert readme._batches([32, 128], [32, 128, 512]) == "batch 32-128"


def test_a_study_names_fashion_mnist_as_a_workload_not_a_stand_in():
    """In the critical-batch studies Fashion-MNIST is a second workload beside the real MNIST, so
    their rows and reports name it plainly; its runs still record the stand-in label that the
    paper-protocol profiles' verdicts read."""
    from replication.analysis import results as results_lib

    profile = next(p for p in readme.profiles(ROOT) if p.name == "critical-batch-f1-fashion")
    (study, *_) = readme.studies(ROOT, profile)
    assert study.label == "F1, Fashion-MNIST, 60000 training examples"
    runs = results_lib.load(ROOT / profile.folder).runs
    assert {r.metrics["dataset_label"] for r in runs} == {"Fashion-MNIST (stand-in for MNIST)"}
    assert (ROOT / profile.folder / "REPORT.md").read_text().startswith(
        "# How to choose the batch size: F1 on Fashion-MNIST\n")


# Each committed REPORT.md is what `python -m replication report` writes from the committed files of
# its folder: a stale report (or a result file committed after the report was built, as happened
# with nine partial iterate measurements in December 2026) fails here, in CI's clean clone and
# locally alike, because only git-tracked files are copied (a run in progress adds untracked files).
def _report_folders() -> list[str]:
    try:
        tracked = subprocess.run(["git", "ls-files", "results/*/REPORT.md"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        if (ROOT / ".git").exists():  # a checkout git refuses (e.g. "dubious ownership"): not a skip
            raise RuntimeError(f"git ls-files failed in the checkout {ROOT}: {getattr(err, 'stderr', err)}")
        return []  # not a git checkout (an unpacked archive): nothing says which files are committed
    return sorted(Path(p).parent.name for p in tracked
                  if any((ROOT / p).parent.glob("*/*/seed*/metrics.json")))


@pytest.mark.parametrize("name", _report_folders() or [pytest.param("none", marks=pytest.mark.skip(
    reason="not a git checkout"))])
def test_each_committed_report_agrees_with_its_result_files(name, tmp_path, monkeypatch):
    from replication.analysis import report

    files = [rel for rel in subprocess.run(["git", "ls-files", "-z", f"results/{name}"], cwd=ROOT, check=True,
                                           capture_output=True, text=True).stdout.split("\0") if rel]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    monkeypatch.chdir(tmp_path)  # the report names its folder as given: results/<name>, as `make report`
    report.build(Path("results") / name)
    # The folder's own JSON summaries too (batch_size.json): the README's generated parts read them.
    stale = [rel for rel in files if (Path(rel).suffix in (".md", ".csv", ".tex") or
                                      (Path(rel).suffix == ".json" and Path(rel).parent == Path("results", name)))
             and (tmp_path / rel).read_bytes() != (ROOT / rel).read_bytes()]
    assert not stale, (f"results/{name}: {', '.join(stale)} differ from what its files give: run "
                       f"`python -m replication report results/{name}` on the committed files, then commit")


def test_a_best_rate_at_a_capped_grid_edge_is_named_in_the_results_row():
    # F1 MNIST's best rate at batch 16384 is 0.25x, the capped low edge of its grid: the row said
    # "best rate 0.25-0.707x the sqrt rule" as if 0.25x were measured to be the best there.
    profile = next(p for p in readme.profiles(ROOT) if p.name == "critical-batch-f1-mnist")
    row = readme._study_row(ROOT, profile, "config", "command")
    assert "best rate 0.25-0.707x the sqrt rule (at a capped grid edge at batch 16384)" in " ".join(row)


@pytest.mark.parametrize("name, words", [
    # One seed, B_crit above every batch fitted, grids stopped with an edge rate among the tied: the
    # row read "B_crit 2465 (16-84% 2012-3609); best rate 0.5x the sqrt rule at every batch", as if
    # it were a several-seed estimate inside the batches measured, with every best rate resolved.
    ("batch-size", ["B_crit 2465 (16-84% 2012-3609; 1 seed; extrapolated past batch 2000)",
                    "(at batch 32, 2000 only the best of an unfinished grid)"]),
    ("batch-size-c1-cpu", ["; 1 seed; extrapolated past batch 1000)",
                           "(at batch 32, 100, 316, 1000 only the best of an unfinished grid)"]),
    ("critical-batch-f1-mnist", ["2285 (16-84% 2007-2561; 3 seeds)"])])
def test_a_study_row_says_its_seeds_an_extrapolation_and_unfinished_grids(name, words):
    profile = next(p for p in readme.profiles(ROOT) if p.name == name)
    row = " ".join(readme._study_row(ROOT, profile, "config", "command"))
    assert all(w in row for w in words), row
    assert name != "critical-batch-f1-mnist" or ("extrapolated" not in row and "unfinished" not in row)


def test_a_sharpness_cell_says_how_many_solves_stopped_at_their_iteration_cap():
    # Every full-space solve of the sweep's SB and LB stopped at the paper's 10-iteration cap: the
    # value is the best f it reached, a lower bound on the maximum; the row gave it bare.
    loaded = results.load(ROOT / "results" / "sweep")
    clause = " ".join(readme._pair_clauses(loaded))
    assert "full SB 35.4 / LB 367 (at the iteration cap, lower bounds: SB 1 of 1, LB 1 of 1)" in clause
