"""The paper's f: mean cross-entropy (and accuracy) of a model over a dataset, as a function of x.

x is the flat vector of the model's trainable variables (kernels, biases, batch-norm gamma/beta),
in `model.trainable_variables` order. Evaluation always runs with training=False (no dropout);
batch norm follows the model's semantics: `BatchStatNormalization` normalises each evaluation
batch with its own statistics (the paper: batches of 5000), Keras BatchNormalization uses its
moving averages, read afresh at every call (the landscape changes them between evaluations).
Each batch is one compiled pass (backend.compiled) producing loss and gradient together, in full
float32 (backend.float32_matmuls); the data stays resident as tensors on the device.

One pass beyond f: `training_batch_gradient`, a mini-batch gradient taken as model.fit takes it
(training=True: dropout on, batch norm on the batch's own statistics), for the gradient noise
scale's training-time definition (docs/noise-scale.md, Definition 1).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from replication import backend, models


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
            (backend.resident(inputs[i:i + self.batch_size]), backend.resident(labels[i:i + self.batch_size]))
            for i in range(0, self.size, self.batch_size)]
        self._value = backend.compiled(self._batch_value)
        self._value_and_grad = backend.compiled(backend.value_and_grad(self._batch_value))
        self._hessian_vector_product = None  # compiled on first use (the hessian command only)
        self._training_value_and_grad = None  # compiled on first use (the noise scale only)
        # The random layers' generator states among the non-trainable variables (models.seed_generators).
        states = {id(generator.state) for _, generator in models.seed_generators(model)}
        self._generator_states = [i for i, v in enumerate(model.non_trainable_variables) if id(v) in states]

    # x <-> variables --------------------------------------------------------------------------
    def get_flat(self):
        """x as a float32 tensor of length n."""
        return ops.concatenate([ops.reshape(v.value, [-1]) for v in self.model.trainable_variables], axis=0)

    def set_flat(self, flat) -> None:
        for variable, value in zip(self.model.trainable_variables, self._unflatten(flat)):
            variable.assign(value)

    def _unflatten(self, flat):
        flat = ops.convert_to_tensor(flat, "float32")
        pieces, start = [], 0
        for size, shape in zip(self.sizes, self.shapes):
            pieces.append(ops.reshape(flat[start:start + size], shape))
            start += size
        return pieces

    def _non_trainable(self):
        return [ops.convert_to_tensor(v.value) for v in self.model.non_trainable_variables]

    # compiled passes (everything they use comes in as an argument) ------------------------------
    def _batch_value(self, flat, non_trainable, x, y):
        probs, _ = self.model.stateless_call(self._unflatten(flat), non_trainable, x, training=False)
        return self._sums(probs, y)

    def _batch_value_training(self, flat, non_trainable, x, y):
        # The non-trainable values stateless_call returns (batch norm's moving statistics updated by
        # this batch, the advanced seed states) are dropped: measuring never changes the model.
        probs, _ = self.model.stateless_call(self._unflatten(flat), non_trainable, x, training=True)
        return self._sums(probs, y)

    @staticmethod
    def _sums(probs, y):
        loss = keras.losses.sparse_categorical_crossentropy(y, probs)
        correct = ops.cast(ops.equal(ops.cast(ops.argmax(probs, axis=-1), y.dtype), y), "float32")
        return ops.sum(loss), ops.sum(correct)

    # public -------------------------------------------------------------------------------------
    def evaluate(self, flat=None) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in [0, 1]) at x = flat (default: the model's weights)."""
        flat = self.get_flat() if flat is None else ops.convert_to_tensor(flat, "float32")
        non_trainable = self._non_trainable()
        loss, correct = 0.0, 0.0
        with backend.float32_matmuls():
            for x, y in self._batches:
                batch_loss, batch_correct = self._value(flat, non_trainable, x, y)
                loss += float(batch_loss)
                correct += float(batch_correct)
        return loss / self.size, correct / self.size

    def batch_value_and_gradient(self, flat, inputs, labels):
        """(sum of the losses, its gradient) over one given batch, through the same compiled pass
        as f (the noise scale needs gradients of batches other than this objective's own)."""
        return self._batch_value_and_gradient(flat, self._non_trainable(), ops.convert_to_tensor(inputs),
                                              ops.convert_to_tensor(labels))

    def _batch_value_and_gradient(self, flat, non_trainable, x, y):
        with backend.float32_matmuls():
            loss_sum, _, grad = self._value_and_grad(flat, non_trainable, x, y)
        return loss_sum, grad

    def training_batch_gradient(self, flat, inputs, labels, stream: tuple[int, ...]):
        """(sum of the losses, its gradient) over one given batch with the model in training mode,
        as model.fit takes it: dropout on, batch norm on this batch's own statistics (Keras
        BatchNormalization in training mode; BatchStatNormalization always). Each random layer's
        masks come from `stream` alone (its generator's state is drawn from
        numpy.random.default_rng(stream)), so the same stream gives the same gradient and two
        streams give independent masks. The model's variables, seed states included, are unchanged."""
        if self._training_value_and_grad is None:
            self._training_value_and_grad = backend.compiled(backend.value_and_grad(self._batch_value_training))
        variables = self.model.non_trainable_variables
        non_trainable = self._non_trainable()
        draws = np.random.default_rng(list(stream)).integers(2 ** 31, size=len(self._generator_states))
        for index, draw in zip(self._generator_states, draws):
            non_trainable[index] = ops.convert_to_tensor(backend.seed_state(int(draw), variables[index]))
        with backend.float32_matmuls():
            loss_sum, _, grad = self._training_value_and_grad(
                ops.convert_to_tensor(flat, "float32"), non_trainable, ops.convert_to_tensor(inputs),
                ops.convert_to_tensor(labels))
        return loss_sum, grad

    def value_and_gradient(self, flat):
        """(f(x), grad f(x)) as float32 tensors on the device."""
        flat = ops.convert_to_tensor(flat, "float32")
        non_trainable = self._non_trainable()
        loss = grad = None
        for x, y in self._batches:
            batch_loss, batch_grad = self._batch_value_and_gradient(flat, non_trainable, x, y)
            loss = batch_loss if loss is None else loss + batch_loss
            grad = batch_grad if grad is None else grad + batch_grad
        return loss / self.size, grad / self.size

    def hessian_vector_product(self, flat, vector):
        """H v: the Hessian of f at x = flat times `vector`, a float32 tensor on the device. Each
        batch is one compiled forward-over-reverse pass (backend.hessian_vector_product) of the
        same loss as f, with the same batches and batch-norm semantics; summed, divided by N."""
        if self._hessian_vector_product is None:
            self._hessian_vector_product = backend.compiled(backend.hessian_vector_product(self._batch_value))
        flat, vector = ops.convert_to_tensor(flat, "float32"), ops.convert_to_tensor(vector, "float32")
        non_trainable = self._non_trainable()
        total = None
        with backend.float32_matmuls():
            for x, y in self._batches:
                part = self._hessian_vector_product(flat, vector, non_trainable, x, y)
                total = part if total is None else total + part
        return total / self.size
