"""Ghost batch norm (Hoffer et al. 2017): in training, each chunk of the batch normalised with its own
statistics; evaluation and weight files as plain batch-statistics normalisation."""

import keras
import numpy as np
import pytest

from replication import models

pytestmark = pytest.mark.backend


def _per_chunk(x, size, gamma, beta):
    """The reference: BatchStatNormalization applied to each chunk on its own."""
    layer = models.BatchStatNormalization()
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return np.concatenate([np.asarray(layer(x[i:i + size])) for i in range(0, len(x), size)])


@pytest.mark.parametrize("shape, size", [((10, 6), 4), ((12, 6), 3), ((9, 5, 5, 3), 4), ((7, 6), 16)])
def test_ghost_batchnorm_equals_per_chunk_batch_statistics(shape, size):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * rng.uniform(0.5, 3, size=shape[-1]) + 2).astype("float32")
    gamma = rng.uniform(0.5, 2, shape[-1]).astype("float32")
    beta = rng.normal(size=shape[-1]).astype("float32")
    ghost = models.BatchStatNormalization(virtual_batch_size=size)
    ghost.build(x.shape)
    ghost.gamma.assign(gamma)
    ghost.beta.assign(beta)
    trained = np.asarray(ghost(x, training=True))
    np.testing.assert_allclose(trained, _per_chunk(x, size, gamma, beta), rtol=1e-4, atol=1e-4)
    # A chunk as large as the batch is plain batch-statistics normalisation, and chunks matter.
    whole = _per_chunk(x, len(x), gamma, beta)
    if size >= len(x):
        np.testing.assert_allclose(trained, whole, rtol=1e-4, atol=1e-4)
    else:
        assert not np.allclose(trained, whole, atol=1e-3)
    # Evaluation normalises with the whole batch, as every other run's does.
    np.testing.assert_allclose(np.asarray(ghost(x)), whole, rtol=1e-4, atol=1e-4)


def test_ghost_batchnorm_trains_in_a_compiled_model_with_a_ragged_last_batch():
    inputs = keras.Input((6,))
    h = models.BatchStatNormalization(virtual_batch_size=4, name="ghost")(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(22, 6)).astype("float32"), rng.integers(0, 3, 22)
    history = model.fit(x, y, batch_size=10, epochs=2, verbose=0)  # batches 10, 10, 2
    assert np.all(np.isfinite(history.history["loss"]))
    restored = keras.Model.from_config(model.get_config())
    assert restored.get_layer("ghost").virtual_batch_size == 4
    with pytest.raises(ValueError, match="virtual_batch_size"):
        models.BatchStatNormalization(virtual_batch_size=0)


@pytest.mark.parametrize("network, shape", [("F1", (28, 28, 1)), ("C1", (32, 32, 3))])
def test_a_ghost_network_shares_names_and_weight_files_and_differs_only_in_training(network, shape, tmp_path):
    plain = models.build(network, shape, 10, "batch_statistics")
    ghost = models.build(network, shape, 10, "batch_statistics", ghost_batch_size=16)
    assert [layer.name for layer in ghost.layers] == [layer.name for layer in plain.layers]
    assert sum(bool(getattr(layer, "virtual_batch_size", None)) for layer in ghost.layers) == \
        sum(isinstance(layer, models.BatchStatNormalization) for layer in plain.layers) > 0
    plain.save_weights(tmp_path / "x0.weights.h5")
    ghost.load_weights(tmp_path / "x0.weights.h5")  # x0 of a trial loads into its ghost runs
    x = np.random.default_rng(0).normal(size=(64, *shape)).astype("float32")
    np.testing.assert_allclose(np.asarray(ghost(x)), np.asarray(plain(x)), atol=1e-5)
    assert not np.allclose(np.asarray(ghost(x, training=True)), np.asarray(plain(x, training=True)), atol=1e-3)
