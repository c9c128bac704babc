"""The paper's remedies for the generalization gap (Keskar et al. 2017, section 4 and appendix E),
as changes to one run's training: data augmentation (Table 6) and conservative training (Table 7).

A remedy run (`sb-augmented`, `lb-conservative`, ...: `regimes.remedy`) trains the plain network
from the trial's x0 with its regime's batch, and saves, evaluates and measures the plain network:
neither remedy adds a weight to the network, so x0, checkpoints, final weights, per-epoch metrics,
sharpness and the parametric plots are those of an ordinary run.

- Augmentation (section 4, appendix E; PAPER.md "Remedies"): random horizontal flips, rotations up to 10
  degrees and translations up to 0.2 of the image size, as Keras preprocessing layers placed between
  the network's input and its first layer (`augmented`). They hold no weights and act only at
  training=True: `fit` sees augmented images, every evaluation (training=False: the per-epoch
  metrics, f for sharpness, the parametric plots) sees the images as they are. Their seed generators
  are reseeded from (seed, epoch) with the dropout masks (train._reseed_dropout), so a run is
  bit-identical for a seed and resumes exactly. The paper does not say how it augmented; as in
  Keras 1's ImageDataGenerator (the authors used Keras 1), pixels are resampled by nearest
  neighbour and those from outside the image take the nearest edge pixel (config `interpolation`,
  `fill_mode`). Under JAX the layers are compiled with the model (backend.allow_jit).
- Conservative training (appendix E.2): outer step k approximately solves
  min_x mean_batch f_i(x) + (lambda/2) ||x - x_k||^2 with `inner_steps` (3) Adam iterations,
  lambda = 1e-3. The input pipeline yields each batch `inner_steps` times in a row
  (backend.epoch_inputs' `repeat`), and `ProximalAdam` adds the penalty's gradient
  lambda (x - x_k) to the batch gradient, with x_k the weights at the first of the repeats (a
  snapshot refreshed whenever Adam's step count is a multiple of `inner_steps`). Paper symbols:
  x = the trainable weights, x_k = `snapshot`, lambda = `proximal_lambda`. The penalty's gradient is
  closed-form, so it lives in the optimizer rather than in the loss: the snapshot and its refresh
  counter (Adam's own step count) are optimizer state, checkpointed with Adam's moments, and no
  backend-specific code is needed. One Adam state runs through all outer steps (the paper does not
  say whether each subproblem starts a fresh one).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from replication import backend

# Layer names, so that the networks' own layer names (and their weight files) are untouched.
AUGMENTATION_LAYERS = ("augment_flip", "augment_rotation", "augment_translation")


def augmentation_layers(settings) -> list[layers.Layer]:
    """The preprocessing layers of `settings` (a config.AugmentationConfig), in the order applied:
    flip, rotation, translation (those that are on)."""
    out = []
    if settings.horizontal_flip:
        out.append(layers.RandomFlip("horizontal", name=AUGMENTATION_LAYERS[0]))
    if settings.rotation_degrees > 0:
        out.append(layers.RandomRotation(settings.rotation_degrees / 360.0, fill_mode=settings.fill_mode,
                                         interpolation=settings.interpolation, name=AUGMENTATION_LAYERS[1]))
    if settings.translation > 0:
        out.append(layers.RandomTranslation(settings.translation, settings.translation,
                                            fill_mode=settings.fill_mode, interpolation=settings.interpolation,
                                            name=AUGMENTATION_LAYERS[2]))
    return [backend.allow_jit(layer) for layer in out]


def augmented(network: keras.Model, settings) -> keras.Model:
    """`network` with the augmentation layers between its input and its first layer, sharing every
    layer (and so every weight) with it. Each of the six networks is a chain of layers (input,
    then each layer on the previous one's output), which this rebuilds in order
    (tests/test_remedies.py checks every network gives the same outputs at training=False)."""
    shape = tuple(network.input_shape[1:])
    if len(shape) != 3:
        raise ValueError(f"data augmentation needs image inputs (height, width, channels); "
                         f"{network.name} takes {shape}")
    inputs = keras.Input(shape=shape, name=network.layers[0].name)
    hidden = inputs
    for layer in [*augmentation_layers(settings), *network.layers[1:]]:
        hidden = layer(hidden)
    return keras.Model(inputs, hidden, name=network.name)


@keras.saving.register_keras_serializable(package="replication")
class ProximalAdam(keras.optimizers.Adam):
    """Adam on f + (proximal_lambda / 2) ||x - x_k||^2, x_k refreshed every `inner_steps` steps.

    At every step whose count (Adam's `iterations`, before the step) is a multiple of
    `inner_steps`, the snapshot x_k takes the current weights; every step adds
    proximal_lambda (x - x_k) to the gradient before Adam's update. With proximal_lambda = 0 the
    steps are exactly Adam's (the added term is 0). Fed each batch `inner_steps` times in a row,
    this is the paper's conservative training (module docstring)."""

    def __init__(self, proximal_lambda: float = 1e-3, inner_steps: int = 3, **kwargs):
        super().__init__(**kwargs)
        if not proximal_lambda >= 0:
            raise ValueError(f"proximal_lambda must be >= 0, got {proximal_lambda!r}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps!r}")
        self.proximal_lambda = proximal_lambda
        self.inner_steps = inner_steps

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._snapshots = self.add_optimizer_variables(var_list, "snapshot")

    def update_step(self, gradient, variable, learning_rate):
        snapshot = self._snapshots[self._get_variable_index(variable)]
        refresh = ops.equal(ops.mod(self.iterations, self.inner_steps), 0)
        anchor = ops.where(refresh, ops.convert_to_tensor(variable), ops.convert_to_tensor(snapshot))  # x_k
        self.assign(snapshot, anchor)
        gradient = ops.add(ops.cast(gradient, variable.dtype),
                           ops.multiply(ops.cast(self.proximal_lambda, variable.dtype),
                                        ops.subtract(variable, anchor)))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "proximal_lambda": self.proximal_lambda,
                "inner_steps": self.inner_steps}
