"""Gradient noise scale B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018): the mini-batch
estimator against the exact value from per-example gradients, weights left alone, bad input."""

import numpy as np
import pytest

from replication import objective
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

