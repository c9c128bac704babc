"""Gradient noise scale B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018): the mini-batch
estimator against the exact value from per-example gradients, weights left alone, bad input; the
training-time definitions of docs/noise-scale.md (dropout masks per batch, Adam's own v_hat saved
by a target run)."""

import numpy as np
import pytest

from replication import objective, rundir, storage, train
from replication.data import MEASUREMENT_SUBSET
from replication.measure import noise

pytestmark = pytest.mark.backend


def softmax_regression(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="softmax")])
    return model


def data(size=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(size, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=size).astype(np.int64)
    return x, y


def per_example_gradients(model, x, y):
    obj = objective.Objective(model, x, y, len(x))
    flat = obj.get_flat()
    return np.stack([np.asarray(obj.batch_value_and_gradient(flat, x[i:i + 1], y[i:i + 1])[1], np.float64)
                     for i in range(len(x))])


def exact_b_simple(model, x, y):
    """tr(Sigma)/|G|^2 from every per-example gradient (Sigma with 1/N, the population covariance)."""
    per_example = per_example_gradients(model, x, y)
    mean = per_example.mean(axis=0)
    trace = float(np.mean(np.sum((per_example - mean) ** 2, axis=1)))
    return trace / float(np.sum(mean ** 2)), trace, float(np.sum(mean ** 2))


def exact_adam_b_simple(per_example, batch_size, epsilon=1e-8, root=np.sqrt):
    """The Adam-preconditioned B_simple the estimator converges to, from every per-example gradient:
    P = 1 / (sqrt(v) + eps), v the expected square of a b-example gradient drawn without
    replacement (G^2 + diag(Sigma) / b (N - b) / (N - 1)), then tr(P Sigma P) / |P G|^2. `root`
    stands in for the square root, to show what its absence would give."""
    size = len(per_example)
    mean = per_example.mean(axis=0)
    variance = ((per_example - mean) ** 2).mean(axis=0)
    v = mean ** 2 + variance / batch_size * (size - batch_size) / (size - 1)
    p = 1 / (root(v) + epsilon)
    return float(np.sum(p ** 2 * variance) / np.sum(p ** 2 * mean ** 2))


def test_estimate_matches_the_exact_noise_scale():
    # Inputs on scales 8 and 0.2 make the gradient's coordinates differ by orders of magnitude, so
    # the preconditioner matters: without its square root the Adam value would be about twice as large.
    model, (x, y) = softmax_regression(), data()
    x = x * np.array([1.0, 8.0, 0.2], np.float32)
    exact, trace, norm_sq = exact_b_simple(model, x, y)
    result = noise.estimate(model, x, y, batch_size=8, batches=3000, seed=1)
    assert result["resolved"] and result["note"] is None
    assert result["grad_norm_sq"] == pytest.approx(norm_sq, rel=0.05)
    assert result["trace_sigma"] == pytest.approx(trace, rel=0.05)      # the without-replacement correction
    assert result["b_simple"] == pytest.approx(exact, rel=0.05)
    # Without the (N-1)/(N-b) correction the estimate would be 10% low at b=8, N=64: it must not be.
    assert abs(result["trace_sigma"] * (64 - 8) / 63 - trace) > 0.05 * trace
    per_example = per_example_gradients(model, x, y)
    adam = exact_adam_b_simple(per_example, 8)
    assert result["adam"]["resolved"] and result["adam"]["b_simple"] == pytest.approx(adam, rel=0.05)
    assert abs(exact_adam_b_simple(per_example, 8, root=lambda v: v) / adam - 1) > 0.5
    assert abs(adam / exact - 1) > 0.5  # and it is not the plain value either


def test_few_batches_are_unbiased_for_the_squared_gradient_norm():
    # |mean g|^2 over K batches overestimates |G|^2 by E[V]/K; at K = 3 that is 0.75 |G|^2 here, so
    # subtracting V/K is what keeps the mean over seeds at |G|^2 (adding it would land near 2.5 |G|^2).
    model, (x, y) = softmax_regression(), data()
    _, trace, norm_sq = exact_b_simple(model, x, y)
    correction = trace / 8 * (64 - 8) / (64 - 1) / 3  # E[V] / K at b = 8, N = 64, K = 3
    assert correction > 0.5 * norm_sq
    estimates = [noise.estimate(model, x, y, batch_size=8, batches=3, seed=s)["grad_norm_sq"] for s in range(40)]
    assert np.mean(estimates) == pytest.approx(norm_sq, rel=0.4)  # ~3 standard errors of the mean


def test_the_estimator_on_fixed_gradients_is_the_documented_formula():
    """The few-batch tests above bound the |G|^2 correction loosely (V / (K - 1) instead of V / K
    would pass them at K = 3); here each number is checked against the formula written out apart:
    V the batches' sample variance, |G|^2 = |mean g|^2 - V / K, tr(Sigma) = V b (N - 1) / (N - b)
    (docs/noise-scale.md), and the jackknife over leaving each batch out."""
    g = np.random.default_rng(0).normal(size=(5, 4)) + 1.0  # K = 5 batch gradients of n = 4 weights
    b, n_examples = 8, 64

    def formula(rows):
        k = len(rows)
        mean = rows.mean(axis=0)
        variance = ((rows - mean) ** 2).sum() / (k - 1)
        return variance * b * (n_examples - 1) / (n_examples - b), mean @ mean - variance / k

    total = g.sum(axis=0)
    got = noise._noise_scale(float(total @ total), (g * g).sum(axis=1), g @ total, b, n_examples)
    trace, norm_sq = formula(g)
    assert got["trace_sigma"] == pytest.approx(trace, rel=1e-12) and got["grad_norm_sq"] == pytest.approx(norm_sq, rel=1e-12)
    assert got["b_simple"] == pytest.approx(trace / norm_sq, rel=1e-12)
    jack = np.array([t / s for t, s in (formula(np.delete(g, i, axis=0)) for i in range(len(g)))])
    expected_se = np.sqrt((len(g) - 1) / len(g) * ((jack - jack.mean()) ** 2).sum())
    assert got["b_simple_standard_error"] == pytest.approx(expected_se, rel=1e-10)


def test_jackknife_standard_error_matches_the_spread_over_seeds():
    model, (x, y) = softmax_regression(), data()
    runs = [noise.estimate(model, x, y, batch_size=8, batches=200, seed=s) for s in range(12)]
    spread = np.std([r["b_simple"] for r in runs], ddof=1)
    typical_se = np.median([r["b_simple_standard_error"] for r in runs])
    assert 0.5 < typical_se / spread < 2.0, (typical_se, spread)


def test_weights_are_unchanged_and_bad_input_is_refused():
    model, (x, y) = softmax_regression(), data()
    before = [w.copy() for w in model.get_weights()]
    noise.estimate(model, x, y, batch_size=8, batches=5)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"noise-scale batch \(64\) must be between 1 and the number of examples minus one \(63\)"):
        noise.estimate(model, x, y, batch_size=64, batches=5)
    with pytest.raises(ValueError, match="at least 3 mini-batches"):
        noise.estimate(model, x, y, batch_size=8, batches=2)



# The training-time definitions (docs/noise-scale.md): dropout on, Adam's own v_hat ---------------
def dropout_network(rate=0.5, seed=0, batchnorm=False):
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((3,)), keras.layers.Dense(16, activation="relu")]
    layers += [keras.layers.BatchNormalization()] if batchnorm else []
    layers += [keras.layers.Dropout(rate)] if rate else []
    return keras.Sequential(layers + [keras.layers.Dense(4, activation="softmax")])


def test_training_mode_masks_come_from_the_stream_and_leave_the_model_alone():
    model, (x, y) = dropout_network(batchnorm=True), data()
    obj = objective.Objective(model, x, y, len(x))
    flat = obj.get_flat()
    before = [np.asarray(v.value).copy() for v in model.non_trainable_variables]  # seed state, moving stats

    def gradient(stream, index=slice(0, 8)):
        return np.asarray(obj.training_batch_gradient(flat, x[index], y[index], stream)[1])

    first = gradient((0, 7, 1))
    np.testing.assert_array_equal(first, gradient((0, 7, 1)))      # the same (seed, k): the same gradient
    assert np.abs(first - gradient((0, 7, 2))).max() > 1e-3         # another batch index: other masks
    assert np.abs(first - gradient((1, 7, 1))).max() > 1e-3         # another seed: other masks
    for a, b in zip(before, [np.asarray(v.value) for v in model.non_trainable_variables]):
        np.testing.assert_array_equal(a, b)                          # moving statistics never written back
    # Without dropout, training mode differs from evaluation only by batch norm's statistics: with
    # the moving statistics set to this batch's own, evaluation gives the training-mode loss.
    model = dropout_network(rate=0, batchnorm=True)
    obj = objective.Objective(model, x, y, len(x))
    flat = obj.get_flat()
    training_loss = float(obj.training_batch_gradient(flat, x[:8], y[:8], (0, 7, 1))[0])
    assert abs(float(obj.batch_value_and_gradient(flat, x[:8], y[:8])[0]) - training_loss) > 1e-3
    hidden = np.maximum(x[:8] @ model.layers[0].kernel.numpy() + model.layers[0].bias.numpy(), 0)
    model.layers[1].moving_mean.assign(hidden.mean(axis=0))
    model.layers[1].moving_variance.assign(hidden.var(axis=0))
    assert float(obj.batch_value_and_gradient(flat, x[:8], y[:8])[0]) == pytest.approx(training_loss, rel=1e-4)


def test_dropout_adds_to_the_noise_under_the_training_definition():
    # Same weights, same K batches: with dropout on, the masks add their own variance to tr(Sigma).
    model, (x, y) = dropout_network(), data(size=256)
    evaluation = noise.estimate(model, x, y, batch_size=16, batches=200, seed=3)
    training = noise.estimate(model, x, y, batch_size=16, batches=200, seed=3, definition="training")
    assert training["trace_sigma"] > 1.5 * evaluation["trace_sigma"], (training["trace_sigma"], evaluation["trace_sigma"])
    # Without an optimizer state the Adam value is not measured, never the batch-estimated one.
    assert training["adam"]["b_simple"] is None and not training["adam"]["resolved"]
    assert training["adam"]["note"].startswith("not measured")
    assert evaluation["adam"]["resolved"] and evaluation["adam"]["b_simple"] > 0


def test_without_dropout_or_batch_norm_both_definitions_agree():
    model, (x, y) = softmax_regression(), data()
    evaluation = noise.estimate(model, x, y, batch_size=8, batches=50, seed=2)
    training = noise.estimate(model, x, y, batch_size=8, batches=50, seed=2, definition="training")
    for key in ("b_simple", "b_simple_standard_error", "trace_sigma", "grad_norm_sq"):
        assert training[key] == pytest.approx(evaluation[key], rel=1e-6), key
    with pytest.raises(ValueError, match="unknown noise-scale definition 'train'"):
        noise.estimate(model, x, y, batch_size=8, batches=5, definition="train")


def test_the_adam_preconditioner_is_the_optimizers_bias_corrected_v():
    # v_hat = v / (1 - 0.75^1) = 4 v; P = 1 / (sqrt(v_hat) + 1e-8), worked out by hand.
    state = noise.AdamState(np.array([0.0, 0.25, 1e-16]), step=1, beta_2=0.75, epsilon=1e-8)
    np.testing.assert_allclose(state.preconditioner(), [1e8, 1 / (1 + 1e-8), 1 / 3e-8], rtol=1e-12)


def test_b_adam_uses_the_given_v_hat_held_fixed():
    # With P from a given state, the estimator converges to tr(P Sigma P) / |P G|^2 of that P (not
    # of the P the batches would give: exact_adam_b_simple).
    model, (x, y) = softmax_regression(), data()
    x = x * np.array([1.0, 8.0, 0.2], np.float32)
    per_example = per_example_gradients(model, x, y)
    v = np.random.default_rng(5).uniform(0.01, 4.0, size=per_example.shape[1])
    state = noise.AdamState(v, step=10, beta_2=0.999, epsilon=1e-8)
    p = state.preconditioner()
    mean = per_example.mean(axis=0)
    exact = float(np.sum(p ** 2 * ((per_example - mean) ** 2).mean(axis=0)) / np.sum((p * mean) ** 2))
    result = noise.estimate(model, x, y, batch_size=8, batches=3000, seed=1, definition="training", adam_state=state)
    assert result["adam"]["resolved"] and result["adam"]["adam_step"] == 10
    assert result["adam"]["b_simple"] == pytest.approx(exact, rel=0.05)
    assert abs(exact_adam_b_simple(per_example, 8) / exact - 1) > 0.2  # the batch-estimated P gives another value
    with pytest.raises(ValueError, match="'training' definition only"):
        noise.estimate(model, x, y, batch_size=8, batches=5, adam_state=state)
    with pytest.raises(ValueError, match="holds 3 second moments, the model 16"):
        noise.estimate(model, x, y, batch_size=8, batches=5, definition="training", adam_state=noise.AdamState(
            np.ones(3), 1, 0.999, 1e-8))


# A run with stopping: target keeps Adam's state at its final point; the noise command uses it -----
STUDY = {"stopping": "target", "epochs": 20, "sharpness": {"subset": 300}, "sweep": {"noise_batches": 4},
         "target": {"metric": "train_loss", "value": 1.0, "every_steps": 3, "eval_subset": 200, "max_steps": 200},
         "batch_size_study": {"batch_sizes": [16, 64], "lr_multipliers": [0.5, 1, 2]}}


def test_adam_state_is_saved_in_trainable_variable_order(tmp_path):
    import types

    from replication import train

    model = dropout_network()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    optimizer = model.optimizer
    for i, variable in enumerate(model.trainable_variables):
        optimizer._velocities[optimizer._get_variable_index(variable)].assign(np.full(variable.shape, i + 1.0))
    optimizer.iterations.assign(7)
    target = train.adam_state_path(tmp_path)
    train._save_adam_state(types.SimpleNamespace(model=model), target)
    state = noise.read_adam_state(target, storage.weights_digest(model.get_weights()))
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    np.testing.assert_array_equal(state.v, np.repeat(np.arange(1.0, len(sizes) + 1), sizes))
    assert (state.step, state.beta_2, state.epsilon) == (7, optimizer.beta_2, optimizer.epsilon)


def test_a_target_run_keeps_its_adam_state_and_the_training_definition_uses_it(tiny_config, tmp_path):
    from replication import config as config_lib
    from replication import errors, train

    config = config_lib.load(tiny_config(**STUDY))
    run = train.train(config, "b16-x1", 0)
    metrics = storage.read_json(run / "metrics.json")
    assert metrics["stopped"] == "target"
    assert metrics["resolved_config"]["sweep"]["noise_definition"] == "evaluation"
    loaded = rundir.load_run(run)
    state = noise.read_adam_state(train.adam_state_path(run), storage.weights_digest(loaded.model.get_weights()))
    assert state.step == metrics["target"]["steps_run"] and len(state.v) == sum(
        int(np.prod(v.shape)) for v in loaded.model.trainable_variables)
    assert np.all(state.v >= 0) and np.count_nonzero(state.v) > 0.9 * len(state.v)

    # The default definition: settings as before, plus which examples (files made on the examples drawn
    # before data.MEASUREMENT_SUBSET are measured again), Adam's v from the batches.
    old = noise.noise_scale(run, "final")
    assert set(old["settings"]) == {"point", "batch_size", "batches", "subset", "estimator", "seed",
                                    "weights_digest", "backend", "passes", "examples"}
    assert old["settings"]["examples"] == MEASUREMENT_SUBSET
    assert old["definition"] == "evaluation" and old["adam"]["resolved"] and "adam_step" not in old["adam"]
    # The training definition is a new result (not the evaluation one reused), with B_adam from the state.
    new = noise.noise_scale(run, "final", definition="training")
    assert new["definition"] == "training" and new["definitions_doc"] == "docs/noise-scale.md"
    assert new["settings"]["definition"] == "training"
    assert new["settings"]["adam_state_sha256"] == storage.sha256_file(train.adam_state_path(run))
    assert new["adam"]["resolved"] and new["adam"]["adam_step"] == state.step
    assert new["adam"]["b_simple"] != old["adam"]["b_simple"]
    assert noise.noise_scale(run, "final", definition="training") == new  # reused now
    # At x0 B_adam is not defined; a run without the state has it "not measured".
    initial = noise.noise_scale(run, "initial", definition="training")
    assert initial["adam"]["b_simple"] is None and initial["adam"]["note"].startswith("not defined at x0")
    train.adam_state_path(run).rename(tmp_path / "kept.npz")
    missing = noise.noise_scale(run, "final", definition="training")
    assert missing["settings"]["adam_state_sha256"] is None and missing["adam"]["b_simple"] is None
    assert missing["adam"]["note"].startswith("not measured") and missing["b_simple"] is not None
    # A state that belongs to other weights, or a damaged file, is refused in one line.
    storage.atomic_savez(train.adam_state_path(run), **{**dict(np.load(tmp_path / "kept.npz")),
                                                        "weights_sha256": np.str_("0" * 64)})
    with pytest.raises(errors.UserError, match="saved with other weights than the run's final.weights.h5"):
        noise.noise_scale(run, "final", definition="training")
    train.adam_state_path(run).write_bytes(b"not an npz")
    with pytest.raises(errors.UserError, match=r"final.adam.npz: not a readable .npz .*train the run again"):
        noise.noise_scale(run, "final", definition="training")


def test_a_fixed_length_run_saves_no_adam_state(tiny_config):
    from replication import config as config_lib
    from replication import train

    run = train.train(config_lib.load(tiny_config(epochs=1)), "sb", 0)
    assert (run / "metrics.json").exists() and not train.adam_state_path(run).exists()


def test_unseen_inputs_counts_features_no_trained_example_lit_that_a_measured_batch_does():
    # Definition 2's P is 1 / epsilon where v = 0: a first-layer weight whose input was zero in every
    # example trained on so far. F1 MNIST seed 2 at training loss 0.1 had 4 such pixels lit (one example) in 3 of
    # its 100 measured batches, and a B_adam 80x the other seeds' with no standard error.
    from replication.analysis import unseen_inputs

    assert list(unseen_inputs.examples_trained(0, 4, 2, 10)) == sorted(train.epoch_order(0, 0, 10)[:8])
    assert list(unseen_inputs.examples_trained(0, 4, 3, 10)) == list(range(10))  # a whole epoch (4 + 4 + 2)
    assert list(unseen_inputs.examples_trained(1, 4, 4, 10)) == list(range(10))
    x_train = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 5]], float)
    measured = np.array([[0, 0, 2, 0], [1, 0, 0, 0], [0, 0, 3, 4]], float)
    counted = unseen_inputs.count(x_train, measured, np.array([0, 1]), [np.array([0, 1]), np.array([1]), np.array([2])])
    assert counted == {"features_never_nonzero": 2, "of_them_nonzero_in_measured_batches": 2,
                       "measured_batches_with_one": 2, "measured_examples_with_one": 2}
    # An example drawn into two batches is one example (and both batches hold one).
    again = unseen_inputs.count(x_train, measured, np.array([0, 1]), [np.array([0]), np.array([0, 1])])
    assert again["measured_batches_with_one"] == 2 and again["measured_examples_with_one"] == 1
    assert noise.batch_indices(10, 3, 2, 0)[0].tolist() == sorted(np.random.default_rng([0, 7]).choice(10, 3, replace=False))


def test_the_unseen_inputs_command_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    from replication import __main__ as entry
    from conftest import one_error_line

    line = one_error_line(entry.main(["unseen-inputs", str(tmp_path / "missing")]), capsys.readouterr().err)
    assert "does not exist" in line
