"""The paper's six networks (Keskar et al. 2017, appendix B) as functions returning keras.Model.

Where the paper is silent or disagrees with the authors' code, we follow the official
`network_zoo.py` (github.com/keskarnitish/large-batch-training) and say so in each docstring.
Common choices: Keras default initialisation (Glorot uniform kernels, zero biases), Dense and Conv
layers keep their bias before batch norm (as Keras 1 did), batch-norm epsilon 1e-3 (Keras 1),
no batch norm on the output layer, softmax output.

Batch normalisation is a config choice:
- "batch_statistics": Keras 1 `BatchNormalization(mode=2)`, the paper's: normalise with the
  statistics of the current batch in training and in evaluation alike, no moving averages.
- "moving_average": modern `keras.layers.BatchNormalization` (moving averages at evaluation).
"""

from __future__ import annotations

import keras
from keras import layers, ops

BN_EPSILON = 1e-3  # Keras 1 default


@keras.saving.register_keras_serializable(package="replication")
class BatchStatNormalization(layers.Layer):
    """Batch norm that always uses the current batch's statistics (Keras 1 mode=2).

    Trainable gamma and beta per feature (last axis); no moving mean or variance, so the
    `training` flag does not change its output -- unless `virtual_batch_size` is set: ghost batch
    norm (Hoffer, Hubara and Soudry 2017, "Train longer, generalize better", section 4.1), where in
    training each consecutive chunk of `virtual_batch_size` examples of the batch is normalised
    with its own mean and variance, so a large batch sees the noise of small ones (the last chunk
    of a batch the size does not divide is smaller; Keras 3 has no `virtual_batch_size`).
    Evaluation (training=False: the loss f of sharpness, every accuracy) still normalises with the
    whole evaluation batch, as every other run does, so a ghost-trained minimiser is measured by
    the same function as the rest. One class for both, so weight files (which Keras keys by class
    name) and x0 are shared between ghost and plain models.

    Statistics are per feature (last axis) over the examples and every other axis (the spatial
    ones of a convolution)."""

    def __init__(self, epsilon: float = BN_EPSILON, virtual_batch_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if virtual_batch_size is not None and virtual_batch_size < 1:
            raise ValueError(f"virtual_batch_size must be >= 1 or None, got {virtual_batch_size}")
        self.epsilon = epsilon
        self.virtual_batch_size = virtual_batch_size

    def build(self, input_shape):
        dim = input_shape[-1]
        self.gamma = self.add_weight(shape=(dim,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(dim,), initializer="zeros", name="beta")

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs, training=None):
        if training and self.virtual_batch_size:
            return self._ghost(inputs)
        axes = list(range(len(inputs.shape) - 1))
        mean, variance = ops.moments(inputs, axes=axes)
        return (inputs - mean) * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def _ghost(self, inputs):
        size = ops.shape(inputs)[0]  # an int under JAX, maybe a tensor under TensorFlow
        chunks = (size + self.virtual_batch_size - 1) // self.virtual_batch_size
        # Example -> its chunk as a one-hot matrix: sums per chunk are a matmul, not a scatter
        # (segment_sum), which XLA's deterministic GPU mode would serialise. On a GPU the product
        # runs in training's TF32 like every other layer's (backend.py), rounding each example's
        # value to 2^-11 before the chunk's sum: far below the chunk's own sampling noise.
        member = ops.one_hot(ops.arange(size) // self.virtual_batch_size, chunks, dtype=inputs.dtype)
        counts = ops.sum(member, axis=0)[:, None]
        inner = list(range(1, len(inputs.shape) - 1))  # spatial axes: equal sizes, so means of means

        def chunk_mean(values):  # (size, 1.., features) -> (size, 1.., features): each example's chunk mean
            per_example = ops.mean(values, axis=inner) if inner else values
            means = ops.matmul(ops.transpose(member), per_example) / counts
            return ops.reshape(ops.matmul(member, means), [-1, *[1] * len(inner), inputs.shape[-1]])

        centered = inputs - chunk_mean(inputs)
        variance = chunk_mean(ops.square(centered))
        return centered * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "virtual_batch_size": self.virtual_batch_size}


class _Names:
    """Stable layer names (dense_1, bn_1, ...) per model: Keras' global auto-names depend on how
    many models the process built before, and they end up in the .weights.h5 files."""

    def __init__(self):
        self.counts = {}

    def __call__(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}_{self.counts[kind]}"


def _bn(batchnorm: str, name: str) -> layers.Layer:
    if batchnorm == "batch_statistics":
        return BatchStatNormalization(name=name)
    if batchnorm == "moving_average":
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)
    raise ValueError(f"unknown batchnorm {batchnorm!r}: use 'batch_statistics' or 'moving_average'")


def _dense_block(h, units: int, batchnorm: str, names):
    h = layers.Dense(units, name=names("dense"))(h)
    h = _bn(batchnorm, names("bn"))(h)
    return layers.Activation("relu", name=names("relu"))(h)


def _fully_connected(name, input_shape, num_classes, depth, batchnorm):
    names = _Names()
    inputs = keras.Input(shape=input_shape, name="input")
    h = layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for _ in range(depth):
        h = _dense_block(h, 512, batchnorm, names)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(h)
    return keras.Model(inputs, outputs, name=name)


def f1(input_shape=(28, 28, 1), num_classes=10, batchnorm="batch_statistics") -> keras.Model:
    """F1 (MNIST): 784 -> 5 x [Dense 512 -> BN -> ReLU] -> Dense 10 softmax (appendix B.1)."""
    return _fully_connected("F1", input_shape, num_classes, 5, batchnorm)


def f2(input_shape=(360,), num_classes=1973, batchnorm="batch_statistics") -> keras.Model:
    """F2 (TIMIT): 360 -> 7 x [Dense 512 -> BN -> ReLU] -> Dense 1973 softmax (appendix B.1)."""
    return _fully_connected("F2", input_shape, num_classes, 7, batchnorm)


def _shallow_conv(name, input_shape, num_classes, batchnorm):
    """C1/C3: the official code's AlexNet-like net.

    The paper writes the conv layers as [64, 5, 5, 2]; the official code uses stride 1 in the
    convolution and puts stride 2 in the 3x3 'same' max-pool. We follow the code: 32 -> 16 -> 8,
    so Flatten gives 8x8x64 = 4096 features.
    """
    names = _Names()
    inputs = keras.Input(shape=input_shape, name="input")
    h = inputs
    for _ in range(2):
        h = layers.Conv2D(64, 5, padding="same", name=names("conv"))(h)
        h = _bn(batchnorm, names("bn"))(h)
        h = layers.Activation("relu", name=names("relu"))(h)
        h = layers.MaxPooling2D(pool_size=3, strides=2, padding="same", name=names("pool"))(h)
    h = layers.Flatten(name="flatten")(h)
    for units in (384, 192):
        h = _dense_block(h, units, batchnorm, names)
        h = layers.Dropout(0.5, name=names("dropout"))(h)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(h)
    return keras.Model(inputs, outputs, name=name)


def c1(input_shape=(32, 32, 3), num_classes=10, batchnorm="batch_statistics") -> keras.Model:
    """C1 (CIFAR-10), shallow convolutional network (appendix B.2; see `_shallow_conv`)."""
    return _shallow_conv("C1", input_shape, num_classes, batchnorm)


def c3(input_shape=(32, 32, 3), num_classes=100, batchnorm="batch_statistics") -> keras.Model:
    """C3 (CIFAR-100): C1 with a 100-way output (appendix B.2)."""
    return _shallow_conv("C3", input_shape, num_classes, batchnorm)


VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _vgg(name, input_shape, num_classes, batchnorm):
    """C2/C4: the official code's VGG-16-like net (appendix B.2 gives only "VGG").

    Every conv is 3x3 'same' -> BN -> ReLU; 2x2 max-pool after each block. Dropout (official code):
    0.3 after the very first conv, 0.4 after every other conv that is not last in its block, then
    Flatten (1x1x512) -> Dropout 0.5 -> Dense 512 -> BN -> ReLU -> Dropout 0.5 -> softmax.
    """
    names = _Names()
    inputs = keras.Input(shape=input_shape, name="input")
    h = inputs
    first = True
    for block in VGG_BLOCKS:
        for i, filters in enumerate(block):
            h = layers.Conv2D(filters, 3, padding="same", name=names("conv"))(h)
            h = _bn(batchnorm, names("bn"))(h)
            h = layers.Activation("relu", name=names("relu"))(h)
            if i < len(block) - 1:
                h = layers.Dropout(0.3 if first else 0.4, name=names("dropout"))(h)
            first = False
        h = layers.MaxPooling2D(pool_size=2, strides=2, name=names("pool"))(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dropout(0.5, name=names("dropout"))(h)
    h = _dense_block(h, 512, batchnorm, names)
    h = layers.Dropout(0.5, name=names("dropout"))(h)
    outputs = layers.Dense(num_classes, activation="softmax", name="output")(h)
    return keras.Model(inputs, outputs, name=name)


def c2(input_shape=(32, 32, 3), num_classes=10, batchnorm="batch_statistics") -> keras.Model:
    """C2 (CIFAR-10), VGG-like (appendix B.2; see `_vgg`)."""
    return _vgg("C2", input_shape, num_classes, batchnorm)


def c4(input_shape=(32, 32, 3), num_classes=100, batchnorm="batch_statistics") -> keras.Model:
    """C4 (CIFAR-100): C2 with a 100-way output (appendix B.2)."""
    return _vgg("C4", input_shape, num_classes, batchnorm)


MODELS = {"F1": f1, "F2": f2, "C1": c1, "C2": c2, "C3": c3, "C4": c4}


def build(network: str, input_shape, num_classes: int, batchnorm: str,
          ghost_batch_size: int | None = None) -> keras.Model:
    """The network; with `ghost_batch_size`, every batch-statistics layer normalises
    virtual batches of that size in training (ghost batch norm) (same names and weights, so x0 is shared)."""
    if network not in MODELS:
        raise ValueError(f"unknown network {network!r}: use one of {sorted(MODELS)}")
    model = MODELS[network](input_shape=tuple(input_shape), num_classes=num_classes, batchnorm=batchnorm)
    return with_ghost_batch_norm(model, ghost_batch_size) if ghost_batch_size else model


def with_ghost_batch_norm(model: keras.Model, virtual_batch_size: int) -> keras.Model:
    """A copy of `model` (fresh weights) whose BatchStatNormalization layers are ghost ones."""
    def swap(layer):
        if type(layer) is BatchStatNormalization:
            return BatchStatNormalization(layer.epsilon, virtual_batch_size, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=swap)


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(trainable, non-trainable) scalar counts."""
    count = lambda vs: int(sum(int(ops.size(v)) for v in vs))  # noqa: E731
    return count(model.trainable_weights), count(model.non_trainable_weights)


def seed_generators(model: keras.Model) -> list[tuple[int, object]]:
    """(layer index, generator) of every layer that draws random numbers when training: Dropout's
    seed generator, or a Keras preprocessing layer's (remedies.augmentation_layers). Training
    reseeds them per epoch (train._reseed_dropout); the noise scale per mini-batch (objective.py)."""
    found = []
    for index, layer in enumerate(model.layers):
        generator = getattr(layer, "seed_generator", None) or getattr(layer, "generator", None)
        if generator is not None:
            found.append((index, generator))
    return found
