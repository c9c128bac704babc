"""Dinh et al.'s function-preserving transformations: the outputs do not change (exactly for the
ReLU rescaling, up to the batch-norm epsilon for the scaling before batch norm, which is then
quantified), the factors are the ones the transformation names, the Hessian moves as
D^-1 H D^-1, and the measures that depend on the parametrisation move with it."""

import re

import keras
import numpy as np
import pytest

from replication import models
from replication.measure import hessian, reparametrize, sharpness

pytestmark = pytest.mark.backend

A = 10.0


def plain_relu_network(fused: bool):
    """Dense -> ReLU -> Dense softmax, the ReLU inside the Dense or as its own layer (with a
    Dropout between it and the next Dense, which commutes with the scale)."""
    keras.utils.set_random_seed(2)
    hidden = ([keras.layers.Dense(16, activation="relu", name="hidden")] if fused else
              [keras.layers.Dense(16, name="hidden"), keras.layers.Activation("relu", name="relu"),
               keras.layers.Dropout(0.5, name="dropout")])
    output = keras.layers.Dense(3, activation="softmax", name="output")
    return keras.Sequential([keras.Input((5,)), *hidden, output])


def batchnorm_network(epsilon=models.BN_EPSILON, depth=2):
    """depth x [Dense -> BatchStatNormalization -> ReLU] -> Dense softmax: F1's pattern, small."""
    keras.utils.set_random_seed(4)
    layers = [keras.Input((5,))]
    for i in range(1, depth + 1):
        layers += [keras.layers.Dense(16, name=f"dense_{i}"),
                   models.BatchStatNormalization(epsilon, name=f"bn_{i}"),
                   keras.layers.Activation("relu", name=f"relu_{i}")]
    return keras.Sequential(layers + [keras.layers.Dense(3, activation="softmax", name="output")])


def data(n=40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n)


def scaled(model, kind):
    return {path.split("/", 1)[1]: factor for path, factor in reparametrize.scalings(model, kind, A)}


@pytest.mark.parametrize("fused", [True, False])
def test_relu_rescaling_leaves_outputs_unchanged_and_scales_in_and_out(fused):
    model = plain_relu_network(fused)
    inputs, _ = data()
    assert scaled(model, "relu") == {"hidden/kernel": A, "hidden/bias": A, "output/kernel": 1 / A}
    change = reparametrize.output_change(model, "relu", A, inputs, 16)
    assert change["max_abs_probability_change"] < 1e-6 and change["predictions_changed"] == 0
    before = reparametrize.outputs(model, model.get_weights(), inputs, 16)
    wrong = reparametrize.transformed_weights(model, "relu", A)
    wrong[-2] = wrong[-2] * A  # forget the 1/a out of the unit: the function changes
    assert np.max(np.abs(reparametrize.outputs(model, wrong, inputs, 16) - before)) > 1e-2


def test_relu_rescaling_of_batch_norm_networks_scales_gamma_beta_and_the_next_kernel():
    model = batchnorm_network()
    inputs, _ = data()
    assert scaled(model, "relu") == {"bn_1/gamma": A, "bn_1/beta": A, "dense_2/kernel": 1 / A,
                                     "bn_2/gamma": A, "bn_2/beta": A, "output/kernel": 1 / A}
    d = reparametrize.factors(model, "relu", A)
    assert len(d) == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert reparametrize.output_change(model, "relu", A, inputs, 16)["max_abs_probability_change"] < 1e-6


def test_scaling_before_batch_norm_is_exact_without_epsilon_and_quantified_with_it():
    inputs, _ = data()
    exact = batchnorm_network(epsilon=0.0)
    assert scaled(exact, "batchnorm") == {"dense_1/kernel": A, "dense_1/bias": A,
                                          "dense_2/kernel": A, "dense_2/bias": A}
    change = reparametrize.output_change(exact, "batchnorm", A, inputs, 16)
    assert change["max_abs_probability_change"] < 1e-6 and change["epsilon_effect"] == 0.0
    model = batchnorm_network()  # epsilon 1e-3: the normalised scale moves by sqrt((s2+e)/(s2+e/a^2))
    change = reparametrize.output_change(model, "batchnorm", A, inputs, 16)
    dense = model.get_layer("dense_1")  # the first layer: its batch variances, unit by unit
    variance = np.concatenate([np.asarray(dense(inputs[i:i + 16]), np.float64).var(axis=0)
                               for i in range(0, 40, 16)])
    expected = np.max(np.abs(np.sqrt((variance + 1e-3) / (variance + 1e-3 / A ** 2)) - 1))
    assert change["epsilon_effect"] >= expected * (1 - 1e-9) and 0 < change["epsilon_effect"] < 0.05
    assert 0 < change["max_abs_probability_change"] < 10 * change["epsilon_effect"]
    assert reparametrize.output_change(model, "batchnorm", 1.0, inputs, 16)["max_abs_probability_change"] == 0


@pytest.mark.parametrize("kind, network", [("relu", lambda: plain_relu_network(False)),
                                           ("relu", batchnorm_network),
                                           ("batchnorm", lambda: batchnorm_network(epsilon=0.0))])
def test_hessian_moves_as_d_inverse_h_d_inverse_and_the_measures_move(kind, network):
    """f'(x') = f(D^-1 x') at x' = D x: H' = D^-1 H D^-1, with the outputs unchanged."""
    model = network()
    inputs, labels = data()
    f = hessian.curvature_objective(model, inputs, labels, 16)
    x = np.asarray(f.get_flat(), np.float64)
    d = reparametrize.factors(model, kind, A)
    x_new = (x * d).astype(np.float32)
    assert float(f.evaluate(x_new)[0]) == pytest.approx(float(f.evaluate(x)[0]), rel=1e-5)
    rng = np.random.default_rng(1)
    for _ in range(2):
        v = rng.normal(size=len(x))
        moved = np.asarray(f.hessian_vector_product(x_new, v.astype(np.float32)), np.float64)
        expected = np.asarray(f.hessian_vector_product(x, (v / d).astype(np.float32)), np.float64) / d
        np.testing.assert_allclose(moved, expected, rtol=2e-3, atol=1e-4 * np.abs(expected).max())
    top = [hessian.top_eigenvalue(f, point, iterations=len(x), tol=1e-6)["eigenvalue"]
           for point in (x, x_new)]
    assert abs(top[1] / top[0] - 1) > 0.05  # the function did not change; the top eigenvalue did
    # Metric 2.1 on the transformed model (sharpness.measure), full space.
    phi = []
    for weights in (model.get_weights(), reparametrize.transformed_weights(model, kind, A)):
        saved = model.get_weights()
        model.set_weights(weights)
        phi.append(sharpness.measure(model, inputs, labels, 16, 1e-3, "full")["phi"])
        model.set_weights(saved)
    assert abs(phi[1] / phi[0] - 1) > 0.01


def test_transformations_refuse_what_they_cannot_preserve():
    inputs, _ = data()
    keras.utils.set_random_seed(0)
    moving = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, name="hidden"),
                               keras.layers.BatchNormalization(name="bn"),
                               keras.layers.Activation("relu", name="relu"),
                               keras.layers.Dense(3, activation="softmax", name="output")])
    with pytest.raises(ValueError, match="moving-average"):
        reparametrize.scalings(moving, "batchnorm", A)
    linear = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    for kind in reparametrize.KINDS:
        with pytest.raises(ValueError, match="nothing"):
            reparametrize.scalings(linear, kind, A)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="factor"):
            reparametrize.scalings(plain_relu_network(True), "relu", bad)
    with pytest.raises(ValueError, match="kind"):
        reparametrize.scalings(linear, "swap", A)
    tanh = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                             keras.layers.Activation("tanh", name="tanh"),
                             keras.layers.Dense(3, activation="softmax", name="output")])
    with pytest.raises(ValueError, match="not a Dense"):
        reparametrize.scalings(tanh, "relu", A)


def _into_batch_norm(*between, own=None):
    """Dense(own activation) -> `between` Activation layers -> BatchStatNormalization (epsilon 0) -> Dense softmax."""
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation=own, name="hidden"),
                             *[keras.layers.Activation(name, name=f"act_{name}") for name in between],
                             models.BatchStatNormalization(0.0, name="bn"),
                             keras.layers.Dense(3, activation="softmax", name="output")])


@pytest.mark.parametrize("model, activation", [(lambda: _into_batch_norm(own="tanh"), "'tanh' (hidden)"),
                                               (lambda: _into_batch_norm("tanh"), "'tanh' (act_tanh)"),
                                               (lambda: _into_batch_norm("relu", "sigmoid"), "'sigmoid'")])
def test_the_batchnorm_scaling_refuses_an_activation_a_scale_does_not_pass(model, activation):
    # Before, a Dense with tanh feeding the batch norm was scaled anyway: tanh(a z) != a tanh(z), so the
    # outputs changed while the transformation was reported as function-preserving.
    model = model()
    inputs, _ = data()
    with pytest.raises(ValueError, match=r"hidden feeds the batch norm bn through the activation "
                                         + re.escape(activation) + r".*needs linear or relu there"):
        reparametrize.scalings(model, "batchnorm", A)
    wrong = [w * A if i < 2 else w for i, w in enumerate(model.get_weights())]  # what was done before
    before = reparametrize.outputs(model, model.get_weights(), inputs, 16)
    assert np.max(np.abs(reparametrize.outputs(model, wrong, inputs, 16) - before)) > 1e-2


@pytest.mark.parametrize("between, own", [((), "relu"), (("relu",), None), (("linear", "relu"), None)])
def test_the_batchnorm_scaling_passes_relu_and_linear_activations_exactly(between, own):
    model = _into_batch_norm(*between, own=own)
    inputs, _ = data()
    assert scaled(model, "batchnorm") == {"hidden/kernel": A, "hidden/bias": A}
    change = reparametrize.output_change(model, "batchnorm", A, inputs, 16)
    assert change["max_abs_probability_change"] < 1e-6 and change["epsilon_effect"] == 0.0
