"""The remedies of Tables 6 and 7 (replication/remedies.py, remedy_tables.py): config sections that
add runs and leave every other run as it was, augmentation that only training sees, conservative
training that is exactly Adam plus the proximal term on each batch repeated, and the tables and
claim 7's rule on hand-made results and on the paper's own numbers."""

import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from conftest import ROOT, TINY, cli
from replication import backend, compare, pipeline, remedy_tables, results, sharpness, storage, train
from replication import config as config_lib

IMAGE_NETWORKS = {"F1": ((28, 28, 1), 10), "C1": ((32, 32, 3), 10), "C2": ((32, 32, 3), 10),
                  "C3": ((32, 32, 3), 100), "C4": ((32, 32, 3), 100)}


def _weights(path):
    import h5py

    out = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: out.append((name, obj[()])) if hasattr(obj, "shape") else None)
    return out


def assert_same_run(a, b):
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    for (name_a, wa), (name_b, wb) in zip(_weights(a / "final.weights.h5"), _weights(b / "final.weights.h5")):
        assert name_a == name_b
        np.testing.assert_array_equal(wa, wb)


def _config(tmp_path, name="r", **overrides):
    return config_lib.from_dict({**TINY, "results_dir": str(tmp_path / name), **overrides})


def _tiny_c1(tmp_path, name="r", **overrides):
    return _config(tmp_path, name, network="C1", dataset="synthetic_cifar10", train_subset=128,
                   test_subset=64, eval_batch_size=64, augmentation={"enabled": True}, **overrides)


# Config: off by default, runs of their own, old runs untouched -----------------------------------------
def test_remedies_are_off_by_default_and_add_runs_of_their_own():
    plain = config_lib.from_dict(dict(TINY))
    assert plain.regimes() == ["sb", "lb"] and plain.remedy_settings("sb") is None
    both = config_lib.from_dict({**TINY, "augmentation": {"enabled": True}, "conservative": {"enabled": True}})
    assert both.regimes() == ["sb", "lb", "sb-augmented", "lb-augmented", "sb-conservative", "lb-conservative"]
    assert both.remedy_settings("lb-conservative") == {"remedy": "conservative", "proximal_lambda": 1e-3,
                                                       "inner_steps": 3}
    assert both.remedy_settings("sb-augmented") == {
        "remedy": "augmentation", "horizontal_flip": True, "rotation_degrees": 10.0, "translation": 0.2,
        "fill_mode": "nearest", "interpolation": "nearest"}
    # A remedy run has its base regime's batch and learning rate.
    assert [both.batch_size(r, 400) for r in both.regimes()] == [32, 40, 32, 40, 32, 40]
    assert both.for_regime("lb-conservative") is both
    # Its deviations say what departs from the paper: F1 was not augmented there (Table 6: C1-C4).
    assert both.run_deviations("sb") == both.deviations()
    assert "data augmentation on F1: the paper augments C1, C2, C3, C4 only (Table 6)" in \
        both.run_deviations("sb-augmented")
    assert both.run_deviations("sb-conservative") == both.deviations()
    other = config_lib.from_dict({**TINY, "conservative": {"enabled": True, "inner_steps": 5}})
    assert any("5 inner Adam steps (paper: 1e-3 and 3)" in d for d in other.run_deviations("lb-conservative"))
    with pytest.raises(config_lib.ConfigError, match="unknown regime 'sb-augmented'"):
        plain.batch_size("sb-augmented", 400)
    with pytest.raises(config_lib.ConfigError, match="or a remedy run of this config: sb-conservative"):
        other.batch_size("sb-augmented", 400)


@pytest.mark.parametrize("section, message", [
    ({"conservative": {"proximal_lambda": -1.0}}, "'conservative.proximal_lambda'"),
    ({"conservative": {"inner_steps": 0}}, "'conservative.inner_steps'"),
    ({"conservative": {"lambda": 1e-3}}, "unknown config key 'conservative.lambda'"),
    ({"augmentation": {"translation": 1.5}}, "'augmentation.translation'"),
    ({"augmentation": {"fill_mode": "mirror"}}, "'augmentation.fill_mode'"),
    ({"augmentation": {"enabled": "yes"}}, "'augmentation.enabled': expected bool"),
    ({"augmentation": {"enabled": True, "horizontal_flip": False, "rotation_degrees": 0, "translation": 0}},
     "turn on at least one"),
    ({"network": "F2", "dataset": "timit", "augmentation": {"enabled": True}}, "timit is not an image dataset"),
])
def test_bad_remedy_settings_are_refused(section, message):
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        config_lib.from_dict({**TINY, **section})


def test_the_new_keys_leave_committed_runs_valid():
    """A plain run's resolved config gains no key in its `run` entry, and the new sections are not
    training keys: `check` still accepts the committed results/quick runs (made before them)."""
    committed = sorted(ROOT.glob("results/quick/*/*/seed*/config.yaml"))
    assert committed, "results/quick holds no committed runs"
    for path in committed:
        stored = storage.read_yaml(path)
        assert "augmentation" not in stored and "conservative" not in stored
    result = cli("check", "configs/quick/f1.yaml", env={"KERAS_BACKEND": "tensorflow"})  # as they were made
    assert result.returncode == 0, result.stderr
    config = config_lib.load(ROOT / "configs/quick/f1.yaml")
    assert set(train._resolved(config, "sb", 0, 256)["run"]) == {"regime", "seed", "batch_size", "backend"}


def test_the_remedies_profile_is_wired_into_make(tmp_path):
    paths = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "remedies").glob("*.yaml"))
    assert paths == ["configs/remedies/c1.yaml", "configs/remedies/f1.yaml"]
    configs = [config_lib.load(ROOT / p) for p in paths]
    assert {c.results_dir for c in configs} == {"results/remedies"}
    rules = pipeline.rules("remedies", paths)
    for config, regime in ((configs[0], "lb-augmented"), (configs[1], "sb-conservative")):
        run = train.run_directory(config, regime, 0)
        assert f"--regime {regime}" in rules
        assert f"{sharpness.result_path(run, 'full', 1e-3).parent}" in rules
    assert "remedies-all: results/remedies/REPORT.md" in rules
    dry = tmp_path / "rules.mk"
    dry.write_text("PY := echo\n" + rules)
    planned = subprocess.run(["make", "-n", "--no-print-directory", "-f", str(dry), "remedies-all"],
                             capture_output=True, text=True, cwd=ROOT)
    assert planned.returncode == 0, planned.stderr
    assert sum(" train " in line for line in planned.stdout.splitlines()) == 8  # 2 configs x 4 runs
    makefile = (ROOT / "Makefile").read_text()
    assert "include .cache/remedies.mk" in makefile and "\nremedies: remedies-all\n" in makefile


# Augmentation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("network", sorted(IMAGE_NETWORKS))
def test_augmentation_acts_in_training_only_and_adds_no_weight(network):
    """At training=False the augmented model is the network (bit for bit), and it holds exactly the
    network's weights; at training=True the images change."""
    import keras

    from replication import models, remedies

    shape, classes = IMAGE_NETWORKS[network]
    keras.utils.set_random_seed(0)
    net = models.build(network, shape, classes, "batch_statistics")
    augmented = remedies.augmented(net, config_lib.AugmentationConfig(enabled=True))
    assert [v.path for v in augmented.weights] == [v.path for v in net.weights]
    assert [layer.name for layer in augmented.layers[1:4]] == list(remedies.AUGMENTATION_LAYERS)
    images = np.random.default_rng(0).random((4, *shape)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmented(images, training=False)),
                                  keras.ops.convert_to_numpy(net(images, training=False)))
    front = keras.Sequential(augmented.layers[1:4])
    assert not np.array_equal(keras.ops.convert_to_numpy(front(images, training=True)), images)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(front(images, training=False)), images)


def test_augmentation_refuses_inputs_that_are_not_images():
    from replication import models, remedies

    with pytest.raises(ValueError, match="needs image inputs"):
        remedies.augmented(models.build("F2", (360,), 1973, "batch_statistics"), config_lib.AugmentationConfig())


@pytest.fixture(scope="module")
def augmented_runs(tmp_path_factory):
    """A plain SB and an augmented SB run of one tiny C1 trial, and the augmented run again elsewhere."""
    tmp = tmp_path_factory.mktemp("augmented")
    config = _tiny_c1(tmp, "a")
    plain, aug = train.train(config, "sb", 0), train.train(config, "sb-augmented", 0)
    again = train.train(_tiny_c1(tmp, "b"), "sb-augmented", 0)
    return config, plain, aug, again


def test_augmented_run_is_bit_identical_shares_x0_and_is_evaluated_unaugmented(augmented_runs):
    from replication import objective

    config, plain, aug, again = augmented_runs
    assert_same_run(aug, again)
    m_plain, m_aug = (storage.read_json(r / "metrics.json") for r in (plain, aug))
    assert m_aug["x0_sha256"] == m_plain["x0_sha256"]   # SB, LB and the remedy runs start from one x0
    assert m_aug["regime"] == "sb-augmented" and m_aug["batch_size"] == m_plain["batch_size"]
    assert m_aug["resolved_config"]["run"]["remedy"]["remedy"] == "augmentation"
    assert m_aug["train_loss"] != m_plain["train_loss"]  # the images it trained on were others
    # Under JAX the augmented model is XLA-compiled like the plain one (backend.allow_jit).
    assert storage.read_json(aug / "env.json")["xla"] == storage.read_json(plain / "env.json")["xla"] \
        == (backend.name() == "jax")
    # The per-epoch metrics are those of the saved plain network on the images as they are.
    run = train.load_run(aug)
    assert [layer.name for layer in run.model.layers] == [layer.name for layer in train.load_run(plain).model.layers]
    _, x_train, y_train, _, _ = train.load_arrays(config)
    loss, accuracy = objective.Objective(run.model, x_train, y_train, config.eval_batch_size).evaluate()
    np.testing.assert_allclose(loss, m_aug["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(100 * accuracy, m_aug["train_accuracy"], rtol=1e-6)


def test_killed_augmented_run_resumes_to_identical_results(augmented_runs, tmp_path):
    """The augmentation layers' seed generators are reseeded from (seed, epoch) like dropout's, so
    epoch 2 after a restart draws the transformations the uninterrupted run drew."""
    _, _, aug, _ = augmented_runs
    path = tmp_path / "config.yaml"
    config = _tiny_c1(tmp_path, "k")
    path.write_text(yaml.safe_dump({**config.to_dict(), "results_dir": str(tmp_path / "k")}))
    args = ("train", path, "--seed", "0", "--regime", "sb-augmented")
    killed = cli(*args, env={storage.FAILPOINT_VARIABLE: "epoch:2:mid"})
    assert killed.returncode == -9, killed.stderr
    cli(*args, check=True)
    assert_same_run(train.run_directory(config, "sb-augmented", 0), aug)


# Conservative training ----------------------------------------------------------------------------------
def _batches(inputs):
    """The (x, y) batches Model.fit would read from epoch_inputs(...), as NumPy arrays."""
    import keras

    source = inputs["x"]
    return [tuple(keras.ops.convert_to_numpy(t) for t in batch) for batch in source]


def test_each_batch_comes_inner_steps_times_in_a_row():
    x = np.arange(10 * 3, dtype="float32").reshape(10, 3)
    y = np.arange(10, dtype="int32")
    order = np.random.default_rng(0).permutation(10)
    data = backend.training_data(x, y)
    once = backend.epoch_inputs(*data, order, 4)
    thrice = backend.epoch_inputs(*data, order, 4, repeat=3)
    assert thrice["steps_per_epoch"] == 9  # 3 batches (4, 4 and the last 2), each 3 times
    plain = (_batches(once) if "batch_size" not in once
             else [(once["x"][i:i + 4], once["y"][i:i + 4]) for i in range(0, 10, 4)])
    repeated = _batches(thrice)
    assert len(plain) == 3 and len(repeated) == 9
    for index, (xb, yb) in enumerate(repeated):
        np.testing.assert_array_equal(xb, plain[index // 3][0])
        np.testing.assert_array_equal(yb, plain[index // 3][1])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in plain]), order)


def test_lambda_zero_is_three_plain_adam_steps_on_each_batch(tmp_path):
    """Conservative training with lambda = 0 through the real pipeline and optimizer gives the
    weights of plain Adam stepped three times on each batch (train_on_batch), bit for bit."""
    config = _config(tmp_path, conservative={"enabled": True, "proximal_lambda": 0.0}, train_subset=100)
    backend.setup_determinism(0)
    _, x, y, _, _ = train.load_arrays(config)
    conservative = train.build_model(config, x.shape[1:], 10, regime="sb-conservative")
    plain = train.build_model(config, x.shape[1:], 10)
    plain.set_weights(conservative.get_weights())
    order = np.random.default_rng(3).permutation(len(x))  # 100 = 3 batches of 32 and one of 4
    conservative.fit(**backend.epoch_inputs(*backend.training_data(x, y), order, 32, repeat=3), epochs=1, verbose=0)
    for start in range(0, len(x), 32):
        batch = order[start:start + 32]
        for _ in range(3):
            plain.train_on_batch(x[batch], y[batch])
    import keras

    steps = [int(keras.ops.convert_to_numpy(m.optimizer.iterations)) for m in (conservative, plain)]
    assert steps == [12, 12]
    for a, b in zip(conservative.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


def _adam_reference(x0, gradients, lam, inner_steps, lr=0.1, b1=0.9, b2=0.999, eps=1e-8):
    """Keras' Adam in float64 on g_t + lam (x - x_k), x_k refreshed every inner_steps steps."""
    x, m, v, snapshot, path = x0.astype(np.float64), 0.0, 0.0, None, []
    for t, g in enumerate(gradients):
        if t % inner_steps == 0:
            snapshot = x.copy()
        g = g + lam * (x - snapshot)
        m, v = m + (g - m) * (1 - b1), v + (g * g - v) * (1 - b2)
        alpha = lr * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        x = x - alpha * m / (np.sqrt(v) + eps)
        path.append(x.copy())
    return path


def test_proximal_adam_is_adam_on_the_proximal_objective():
    """The closed-form update: Adam's recurrence on g + lambda (x - x_k), with x_k the weights at
    every inner_steps-th step; and the term pulls the weights back towards x_k."""
    import keras

    from replication import remedies

    rng = np.random.default_rng(0)
    x0 = rng.normal(size=5).astype("float32")
    gradients = rng.normal(size=(7, 5)).astype("float32")
    lam = 0.5
    variable = keras.Variable(x0)
    optimizer = remedies.ProximalAdam(proximal_lambda=lam, inner_steps=3, learning_rate=0.1, epsilon=1e-8)
    optimizer.build([variable])
    ours = []
    for g in gradients:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
        ours.append(keras.ops.convert_to_numpy(variable.value).copy())
    expected = _adam_reference(x0, gradients, lam, 3)
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=1e-6)
    plain = _adam_reference(x0, gradients, 0.0, 3)
    assert not np.allclose(expected, plain, atol=1e-3)  # the term is not negligible here
    np.testing.assert_allclose(keras.ops.convert_to_numpy(optimizer._snapshots[0].value), expected[5], rtol=1e-5)
    # One outer step on a constant gradient: the proximal term keeps x_3 closer to x_k = x0.
    constant = np.ones((3, 5), "float32")
    pulled = _adam_reference(x0, constant, 5.0, 3)[-1]
    free = _adam_reference(x0, constant, 0.0, 3)[-1]
    assert np.linalg.norm(pulled - x0) < np.linalg.norm(free - x0)


def test_conservative_run_records_its_settings_resumes_and_refuses_others(tmp_path):
    config = _config(tmp_path, "c", conservative={"enabled": True}, train_subset=200)
    plain, run = train.train(config, "lb", 0), train.train(config, "lb-conservative", 0)
    m_plain, m_run = (storage.read_json(r / "metrics.json") for r in (plain, run))
    assert m_run["x0_sha256"] == m_plain["x0_sha256"]
    assert m_run["resolved_config"]["run"]["remedy"] == {"remedy": "conservative", "proximal_lambda": 1e-3,
                                                         "inner_steps": 3}
    assert m_run["train_loss"] != m_plain["train_loss"]  # three steps per batch: another minimiser
    # Killed half-way through epoch 2 (a mid-epoch count needs the repeated pipeline's length) and rerun.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config.to_dict(), "results_dir": str(tmp_path / "k")}))
    args = ("train", path, "--seed", "0", "--regime", "lb-conservative")
    killed = cli(*args, env={storage.FAILPOINT_VARIABLE: "epoch:2:mid"})
    assert killed.returncode == -9, killed.stderr
    cli(*args, check=True)
    assert_same_run(tmp_path / "k" / run.relative_to(tmp_path / "c"), run)
    # Other remedy settings refuse the remedy run (naming its run entry), never the plain runs.
    edited = config_lib.from_dict({**config.to_dict(), "conservative": {"enabled": True, "proximal_lambda": 0.01}})
    with pytest.raises(train.RunError, match=r"made by another config \('run' was .*'proximal_lambda': 0.001"):
        train.check(edited)
    assert train.check(config_lib.from_dict({**config.to_dict(), "conservative": {"enabled": False}})) == 1


# Tables 6 and 7, claim 7 --------------------------------------------------------------------------------
FASHION = "Fashion-MNIST (stand-in for MNIST)"
JPEG = "CIFAR-10 JPEG (stand-in)"


def _write_run(root, network, dataset, label, regime, seed, test_acc, phi=None, remedy=None):
    """One finished run; `phi` = full-space sharpness at eps 1e-3 (eps 5e-4: a fifth of it)."""
    path = root / f"{network}_{dataset}" / regime / f"seed{seed}"
    run = {"regime": regime, "seed": seed, "batch_size": 256, "backend": "tensorflow"}
    if remedy:
        run["remedy"] = remedy
    storage.atomic_write_json(path / "metrics.json", {
        "network": network, "dataset": dataset, "dataset_label": label, "profile": "handmade", "regime": regime,
        "seed": seed, "batch_size": 256 if regime.startswith("sb") else 6000, "batchnorm": "batch_statistics",
        "eval_batch_size": 5000, "num_train": 60000, "num_test": 10000, "epochs_run": 5, "stopped": "fixed",
        "diverged": False, "diverged_epoch": None, "train_loss": 0.1, "train_accuracy": 99.0,
        "test_loss": 0.3, "test_accuracy": test_acc, "x0_sha256": f"x0-{seed}",
        "deviations": ["5 epochs instead of the figures' 100"], "resolved_config": {"epochs": 5, "run": run}})
    for epsilon, value in ((1e-3, phi), (5e-4, None if phi is None else phi / 5)):
        if value is not None:
            storage.atomic_write_json(sharpness.result_path(path, "full", epsilon), {
                "phi": value, "failed": False, "epsilon": epsilon, "space": "full", "iterations": 10,
                "start": "zero", "num_examples": 10000, "network": network, "regime": regime,
                "run_seed": seed, "batchnorm": "batch_statistics"})
    return path


CONSERVATIVE = {"remedy": "conservative", "proximal_lambda": 1e-3, "inner_steps": 3}
AUGMENTATION = {"remedy": "augmentation", "horizontal_flip": True, "rotation_degrees": 10.0,
                "translation": 0.2, "fill_mode": "nearest", "interpolation": "nearest"}


@pytest.fixture
def handmade(tmp_path):
    """F1: plain SB 90/91, LB 87/88 (gap 3); conservative SB 90, LB 89.5/90.5 (gap 0.5 from plain SB),
    LB sharper (300) than plain SB (20). C1: plain gap 2; augmented SB 85, LB 82 (gap 3: wider), LB
    sharper (250 vs 30)."""
    root = tmp_path / "results" / "handmade"
    for seed, jitter in ((0, 0.0), (1, 1.0)):
        _write_run(root, "F1", "fashion_mnist", FASHION, "sb", seed, 90 + jitter, 20.0)
        _write_run(root, "F1", "fashion_mnist", FASHION, "lb", seed, 87 + jitter, 200.0)
        _write_run(root, "F1", "fashion_mnist", FASHION, "sb-conservative", seed, 90.0, 25.0, CONSERVATIVE)
        _write_run(root, "F1", "fashion_mnist", FASHION, "lb-conservative", seed, 89.5 + jitter, 300.0,
                   CONSERVATIVE)
    _write_run(root, "C1", "cifar10_jpeg", JPEG, "sb", 0, 80.0, 28.0)
    _write_run(root, "C1", "cifar10_jpeg", JPEG, "lb", 0, 78.0, 700.0)
    _write_run(root, "C1", "cifar10_jpeg", JPEG, "sb-augmented", 0, 85.0, 30.0, AUGMENTATION)
    _write_run(root, "C1", "cifar10_jpeg", JPEG, "lb-augmented", 0, 82.0, 250.0, AUGMENTATION)
    return root


def test_tables_6_and_7_beside_the_paper(handmade):
    loaded = results.load(handmade)
    (f1,) = remedy_tables.rows(loaded, "conservative")
    assert (f1["network"], f1["sb_baseline"], f1["seeds"], f1["diverged"]) == ("F1", "sb", 2, 0)
    # Table 7's SB is the plain SB run (the paper's baseline equals Table 2's SB).
    assert f1["sb_test_mean"] == 90.5 and f1["lb_test_mean"] == 90.0 and f1["remedy_sb_test_mean"] == 90.0
    assert f1["gap"] == pytest.approx(0.5) and f1["plain_gap"] == pytest.approx(3.0)
    assert f1["lb_phi_eps1e-3_mean"] == 300.0 and f1["lb_phi_eps5e-4_mean"] == 60.0
    assert f1["sb_phi_eps1e-3_mean"] == 20.0 and f1["plain_lb_phi_eps1e-3_mean"] == 200.0
    assert (f1["paper_sb_test_mean"], f1["paper_lb_test_mean"]) == (98.03, 98.12)
    assert f1["paper_lb_phi_eps1e-3_mean"] == 232.25 and f1["paper_gap"] == pytest.approx(98.03 - 98.12)
    assert f1["paper_plain_gap"] == pytest.approx(98.03 - 97.81)
    assert f1["settings"] == "inner_steps 3, proximal_lambda 0.001"
    (c1,) = remedy_tables.rows(loaded, "augmentation")
    # Table 6's SB is the augmented SB run (the paper's baseline there is augmented: 83.63 > 80.04).
    assert (c1["sb_baseline"], c1["sb_test_mean"], c1["lb_test_mean"]) == ("sb-augmented", 85.0, 82.0)
    assert c1["gap"] == 3.0 and c1["plain_gap"] == 2.0 and c1["sb_phi_eps1e-3_mean"] == 30.0
    assert (c1["paper_sb_test_mean"], c1["paper_lb_test_mean"], c1["paper_lb_phi_eps5e-4_mean"]) == (83.63, 82.5, 45.89)
    table = remedy_tables.markdown([f1])
    assert "| F1 | Fashion-MNIST (stand-in for MNIST) | plain | 2 (0) | 90.50 ± 0.71 | 98.03 ± 0.07 " \
           "| 90.00 ± 0.71 | 98.12 ± 0.01 | +0.50 (+3.00) | -0.09 (+0.22) | 300.00 ± 0.00 | 232.25 ± 63.81 |" in table
    assert "under conservative training (not in the paper): F1 90.00 ± 0.00%" in table
    levels, evidence = remedy_tables.claim7([f1, c1])
    assert levels == ["pass", "partial"]
    assert "does not narrow" in evidence[1] and "LB sharper" in evidence[1]
    assert evidence[-1] == "adversarial training is not built (the paper publishes no numbers for it)"
    assert remedy_tables.claim7([f1])[1][-1].startswith("not run: augmentation; adversarial")
    # Without remedy runs there are no rows, so no levels: the verdict is "not run".
    for regime in ("sb-conservative", "lb-conservative", "sb-augmented", "lb-augmented"):
        for run in handmade.glob(f"*/{regime}"):
            shutil.rmtree(run)
    loaded = results.load(handmade)
    assert remedy_tables.rows(loaded, "conservative") == remedy_tables.rows(loaded, "augmentation") == []
    assert remedy_tables.claim7([]) == ([], [])


def test_claim7_cannot_judge_a_half_without_its_evidence(handmade):
    for regime in ("sb", "lb"):  # no plain runs of C1: the gap is not judged, sharpness still is
        shutil.rmtree(handmade / "C1_cifar10_jpeg" / regime)
    loaded = results.load(handmade)
    (c1,) = remedy_tables.rows(loaded, "augmentation")
    levels, evidence = remedy_tables.claim7([c1])
    assert levels == ["partial"] and "gap not judged" in evidence[0] and len(evidence) == 2


def test_remedy_runs_of_other_settings_are_never_averaged(handmade):
    path = handmade / "F1_fashion_mnist" / "lb-conservative" / "seed1" / "metrics.json"
    record = storage.read_json(path)
    record["resolved_config"]["run"]["remedy"]["proximal_lambda"] = 0.01
    storage.atomic_write_json(path, record)
    with pytest.raises(results.ResultsError, match=r"different remedy settings \('proximal_lambda' is 0.001 "
                                                   r"in the first, 0.01 in the second\)"):
        remedy_tables.rows(results.load(handmade), "conservative")


def _published_rows(remedy):
    """Rows of the paper's own Table 6 or 7, with Table 2's gaps and Table 3's SB sharpness."""
    _, csv_name, prefix, _ = remedy_tables.TABLES[remedy]
    table2, table3 = compare.published("table2_accuracy"), compare.published("table3_sharpness_full_space")
    out = []
    for network, row in compare.published(csv_name).items():
        out.append({"network": network, "data": "paper", "remedy": remedy,
                    "gap": row["baseline_sb_test_mean"] - row[f"{prefix}_test_mean"],
                    "plain_gap": table2[network]["test_sb_mean"] - table2[network]["test_lb_mean"],
                    "lb_phi_eps1e-3_mean": row["lb_sharpness_eps1e-3_mean"],
                    "sb_phi_eps1e-3_mean": table3[network]["eps1e-3_sb_mean"],
                    "lb_phi_eps5e-4_mean": math.nan, "sb_phi_eps5e-4_mean": math.nan})
    return out


def test_claim7_rule_on_the_papers_own_tables():
    """As the docstring says: Table 6 passes on C1-C4; Table 7's C3 gap widens (3.60 vs 3.13)."""
    levels, _ = remedy_tables.claim7(_published_rows("augmentation"))
    assert levels == ["pass"] * 4
    rows = _published_rows("conservative")
    levels, evidence = remedy_tables.claim7(rows)
    assert dict(zip([r["network"] for r in rows], levels)) == {
        "F1": "pass", "F2": "pass", "C1": "pass", "C2": "pass", "C3": "partial", "C4": "pass"}
    assert "gap +3.60 vs plain +3.13 points (does not narrow)" in evidence[4]

