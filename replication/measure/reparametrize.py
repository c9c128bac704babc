"""Function-preserving reparametrisations of a minimiser (Dinh, Pascanu, Bengio and Bengio 2017,
"Sharp Minima Can Generalize For Deep Nets", section 4), as a diagonal map x' = D x.

Beyond Keskar et al. (2017): a measure of sharpness that moves under a transformation that leaves
the network's function unchanged measures the parametrisation, not the minimum. Two kinds, each
scaling every eligible layer of a chain network (F1, F2, C1-C4 are chains) by one factor a > 0:

- "batchnorm": the kernel and bias of every Dense/Conv2D whose output goes into a
  BatchStatNormalization (batch_statistics), directly or through Activation layers, are multiplied
  by a. The layer's output h becomes a h; its batch mean and variance become a mu and a^2 sigma^2,
  so the normalised value (h - mu) / sqrt(sigma^2 + eps) becomes (h - mu) / sqrt(sigma^2 + eps / a^2):
  unchanged but for the epsilon (1e-3), which `output_change` quantifies per unit (`epsilon_effect`). Every activation
  on the way (the layer's own, and Activation layers between) must be positive homogeneous (linear
  or ReLU: act(a z) = a act(z)); one that is not (tanh, sigmoid, ...) is refused, since the batch
  norm would then not see a h and the function would change.
- "relu": into every ReLU unit by a, out of it by 1/a (relu(a z) = a relu(z) for a > 0): the
  affine parameters feeding the ReLU (a batch norm's gamma and beta, or a Dense/Conv2D's kernel and
  bias) times a, the kernel of the next Dense/Conv2D (across Flatten, Dropout and max-pooling,
  which commute with a positive scale) times 1/a. Exact up to float32 rounding.

Since f'(x') = f(D^-1 x'), the Hessian at x' is D^-1 H D^-1 and the gradient D^-1 grad f: the top
eigenvalue and the trace move with D, and Metric 2.1's box (|y_i| <= eps (|x_i| + 1)) changes shape.
"""

from __future__ import annotations

import keras
import numpy as np

from replication import models

KINDS = ("batchnorm", "relu")
REFERENCE = "Dinh, Pascanu, Bengio and Bengio (2017), Sharp Minima Can Generalize For Deep Nets"
# Layers between a ReLU and the next weighted layer that commute with a positive scale.
_HOMOGENEOUS = (keras.layers.Flatten, keras.layers.Dropout, keras.layers.MaxPooling2D, keras.layers.Reshape)
_WEIGHTED = (keras.layers.Dense, keras.layers.Conv2D)


# Activations with act(a z) = a act(z) for a > 0: a scale passes through them.
POSITIVE_HOMOGENEOUS = ("linear", "relu")


def _activation(layer) -> str:
    """A Dense/Conv2D's or an Activation layer's activation, by name."""
    return str(layer.get_config()["activation"])


def _is_relu(layer) -> bool:
    return isinstance(layer, keras.layers.Activation) and layer.get_config()["activation"] == "relu"


def _has_relu(layer) -> bool:
    return isinstance(layer, _WEIGHTED) and layer.get_config()["activation"] == "relu"


def scalings(model, kind: str, a: float) -> list[tuple[str, float]]:
    """[(variable path, factor)] of the transformation `kind` with factor `a` (variables left out
    keep factor 1). ValueError if the model has nothing to scale or a layer the kind cannot pass."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"the factor a must be a finite number > 0, got {a}")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    scaled: list[tuple[str, float]] = []
    for i, layer in enumerate(layers):
        if kind == "batchnorm":
            norm = _batch_norm_after(layers, i) if isinstance(layer, _WEIGHTED) else None
            if isinstance(norm, models.BatchStatNormalization):
                scaled += [(layer.kernel.path, a)] + ([(layer.bias.path, a)] if layer.use_bias else [])
            elif norm is not None:
                raise ValueError(f"{layer.name} feeds a moving-average batch norm, whose statistics do not "
                                 "follow the scale: the 'batchnorm' transformation needs batchnorm "
                                 "batch_statistics")
            continue
        if not (_is_relu(layer) or _has_relu(layer)):
            continue
        into = layer if _has_relu(layer) else layers[i - 1] if i > 0 else None
        if isinstance(into, (models.BatchStatNormalization, keras.layers.BatchNormalization)):
            scaled += [(into.gamma.path, a), (into.beta.path, a)]
        elif isinstance(into, _WEIGHTED):
            scaled += [(into.kernel.path, a)] + ([(into.bias.path, a)] if into.use_bias else [])
        else:
            raise ValueError(f"the ReLU {layer.name} follows {getattr(into, 'name', None)!r}, which has no "
                             "affine parameters to scale")
        out = next((later for later in layers[i + 1:] if not isinstance(later, _HOMOGENEOUS)), None)
        if not isinstance(out, _WEIGHTED):
            raise ValueError(f"after the ReLU {layer.name} comes {getattr(out, 'name', None)!r}, not a "
                             "Dense or Conv2D layer (only Flatten, Dropout, MaxPooling2D, Reshape may come "
                             "between)")
        scaled.append((out.kernel.path, 1.0 / a))
    if not scaled:
        raise ValueError(f"{model.name} has nothing the {kind!r} transformation scales")
    return scaled


def _batch_norm_after(layers: list, i: int):
    """The batch norm that the weighted layer `layers[i]` feeds, directly or through Activation
    layers, or None. ValueError if an activation on the way (its own included) is not positive
    homogeneous: scaling the layer by a would then not scale what the batch norm normalises."""
    j = i + 1
    while j < len(layers) and isinstance(layers[j], keras.layers.Activation):
        j += 1
    norm = layers[j] if j < len(layers) else None
    if not isinstance(norm, (models.BatchStatNormalization, keras.layers.BatchNormalization)):
        return None
    for layer in layers[i:j]:
        if _activation(layer) not in POSITIVE_HOMOGENEOUS:
            raise ValueError(f"{layers[i].name} feeds the batch norm {norm.name} through the activation "
                             f"{_activation(layer)!r} ({layer.name}), which does not pass a scale (act(a z) != "
                             f"a act(z)): the 'batchnorm' transformation needs {' or '.join(POSITIVE_HOMOGENEOUS)} "
                             "there")
    return norm


def factors(model, kind: str, a: float) -> np.ndarray:
    """The diagonal of D: one factor per entry of x (objective.Objective order), float64."""
    by_path = {}
    for path, factor in scalings(model, kind, a):
        by_path[path] = by_path.get(path, 1.0) * factor
    return np.concatenate([np.full(int(np.prod(v.shape)), by_path.get(v.path, 1.0))
                           for v in model.trainable_variables])


def outputs(model, weights: list, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's output probabilities at `weights` (model.get_weights() order) on `inputs`, in
    the objective's evaluation batches (batch statistics per batch), float64; weights restored."""
    saved = model.get_weights()
    try:
        model.set_weights(weights)
        parts = [keras.ops.convert_to_numpy(model(inputs[i:i + batch_size], training=False))
                 for i in range(0, len(inputs), batch_size)]
    finally:
        model.set_weights(saved)
    return np.concatenate(parts).astype(np.float64)


def transformed_weights(model, kind: str, a: float) -> list:
    """model.get_weights() after the transformation (float32; the model itself is unchanged)."""
    by_path = dict.fromkeys((v.path for v in model.weights), 1.0)
    for path, factor in scalings(model, kind, a):
        by_path[path] *= factor
    return [np.asarray(value * by_path[variable.path], value.dtype)
            for variable, value in zip(model.weights, model.get_weights())]


def epsilon_effect(model, a: float, inputs: np.ndarray, batch_size: int) -> float:
    """For "batchnorm": the largest relative change of a normalised unit's scale over units and
    evaluation batches, |sqrt((sigma^2 + eps) / (sigma^2 + eps / a^2)) - 1| (0 when eps = 0)."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    scaled = {path for path, _ in scalings(model, "batchnorm", a)}
    worst = 0.0
    for i in range(0, len(inputs), batch_size):
        h = inputs[i:i + batch_size]
        scaled_input = False  # is h a scaled layer's output (through activations)?
        for layer in layers:  # the chain, layer by layer
            if isinstance(layer, models.BatchStatNormalization) and scaled_input:
                values = np.asarray(keras.ops.convert_to_numpy(h), np.float64)
                variance = values.reshape(-1, values.shape[-1]).var(axis=0)
                ratio = np.sqrt((variance + layer.epsilon) / (variance + layer.epsilon / a ** 2))
                worst = max(worst, float(np.max(np.abs(ratio - 1.0))))
            h = layer(h, training=False)
            scaled_input = ((isinstance(layer, _WEIGHTED) and layer.kernel.path in scaled)
                            or (scaled_input and isinstance(layer, keras.layers.Activation)))
    return worst


def output_change(model, kind: str, a: float, inputs: np.ndarray, batch_size: int) -> dict:
    """How much the transformation changes the function on `inputs`: the largest change of an
    output probability, and for "batchnorm" the predicted epsilon effect (see epsilon_effect)."""
    before = outputs(model, model.get_weights(), inputs, batch_size)
    after = outputs(model, transformed_weights(model, kind, a), inputs, batch_size)
    return {"max_abs_probability_change": float(np.max(np.abs(after - before))),
            "predictions_changed": int(np.sum(np.argmax(after, 1) != np.argmax(before, 1))),
            "examples": len(inputs),
            "epsilon_effect": epsilon_effect(model, a, inputs, batch_size) if kind == "batchnorm" else 0.0}
