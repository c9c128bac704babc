"""The paper's f: mean cross-entropy (and accuracy) of a model over a dataset, as a function of x.

x is the flat vector of the model's trainable variables (kernels, biases, batch-norm gamma/beta),
in `model.trainable_variables` order. Evaluation always runs with training=False (no dropout);
batch norm follows the model's semantics: `BatchStatNormalization` normalises each evaluation
batch with its own statistics (the paper: batches of 5000), Keras BatchNormalization uses its
moving averages. Each batch is one compiled pass (tf.function) producing loss and gradient
together; the data stays resident as tensors.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class Objective:
    """f(x), accuracy(x) and grad f(x) for `model` on (inputs, labels) in batches of `batch_size`."""

    def __init__(self, model, inputs: np.ndarray, labels: np.ndarray, batch_size: int):
        if len(inputs) == 0:
            raise ValueError("the objective needs at least one example")
        self.model = model
        self.size = len(inputs)
        self.batch_size = min(batch_size, self.size)
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.dimension = int(sum(self.sizes))
        self._batches = [
            (tf.constant(inputs[i:i + self.batch_size]), tf.constant(labels[i:i + self.batch_size]))
            for i in range(0, self.size, self.batch_size)]
        self._value = tf.function(self._batch_value, reduce_retracing=True)
        self._value_and_grad = tf.function(self._batch_value_and_grad, reduce_retracing=True)

    # x <-> variables --------------------------------------------------------------------------
    def get_flat(self) -> tf.Tensor:
        return tf.concat([tf.reshape(v, [-1]) for v in self.model.trainable_variables], axis=0)

    def set_flat(self, flat) -> None:
        for variable, value in zip(self.model.trainable_variables, self._unflatten(flat)):
            variable.assign(value)

    def _unflatten(self, flat):
        flat = tf.convert_to_tensor(flat, dtype=tf.float32)
        return [tf.reshape(t, s) for t, s in zip(tf.split(flat, self.sizes), self.shapes)]

    # compiled passes --------------------------------------------------------------------------
    def _forward(self, flat, x):
        non_trainable = [v.value for v in self.model.non_trainable_variables]
        outputs, _ = self.model.stateless_call(self._unflatten(flat), non_trainable, x, training=False)
        return outputs

    def _batch_value(self, flat, x, y):
        probs = self._forward(flat, x)
        loss = keras.losses.sparse_categorical_crossentropy(y, probs)
        correct = tf.cast(tf.equal(tf.cast(tf.argmax(probs, axis=-1), y.dtype), y), tf.float32)
        return tf.reduce_sum(loss), tf.reduce_sum(correct)

    def _batch_value_and_grad(self, flat, x, y):
        with tf.GradientTape() as tape:
            tape.watch(flat)
            loss_sum, _ = self._batch_value(flat, x, y)
        return loss_sum, tape.gradient(loss_sum, flat)

    # public -------------------------------------------------------------------------------------
    def evaluate(self, flat=None) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in [0, 1]) at x = flat (default: the model's weights)."""
        flat = self.get_flat() if flat is None else tf.convert_to_tensor(flat, tf.float32)
        loss, correct = 0.0, 0.0
        for x, y in self._batches:
            batch_loss, batch_correct = self._value(flat, x, y)
            loss += float(batch_loss)
            correct += float(batch_correct)
        return loss / self.size, correct / self.size

    def batch_value_and_gradient(self, flat, inputs, labels) -> tuple[tf.Tensor, tf.Tensor]:
        """(sum of the losses, its gradient) over one given batch, through the same compiled pass
        as f (the noise scale needs gradients of batches other than this objective's own)."""
        return self._value_and_grad(flat, tf.convert_to_tensor(inputs), tf.convert_to_tensor(labels))

    def value_and_gradient(self, flat) -> tuple[tf.Tensor, tf.Tensor]:
        """(f(x), grad f(x)) as float32 tensors on the device."""
        flat = tf.convert_to_tensor(flat, tf.float32)
        loss = tf.constant(0.0)
        grad = tf.zeros_like(flat)
        for x, y in self._batches:
            batch_loss, batch_grad = self.batch_value_and_gradient(flat, x, y)
            loss += batch_loss
            grad += batch_grad
        return loss / self.size, grad / self.size
