"""Every network's shape and parameter count against numbers worked out by hand from the spec."""

import numpy as np
import pytest

from replication import models


def dense(n_in, n_out):
    return n_in * n_out + n_out


def conv(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


BN = 2  # gamma and beta per feature are trainable; batch_statistics keeps no moving averages


def f_net(n_in, depth, classes):
    return dense(n_in, 512) + BN * 512 + (depth - 1) * (dense(512, 512) + BN * 512) + dense(512, classes)


def c_shallow(classes):
    # 2 x [conv 64 5x5 -> BN] ; 32 -> 16 -> 8 by the stride-2 pools, flatten 8*8*64
    return (conv(5, 3, 64) + BN * 64 + conv(5, 64, 64) + BN * 64 + dense(8 * 8 * 64, 384) + BN * 384
            + dense(384, 192) + BN * 192 + dense(192, classes))


def c_vgg(classes):
    total, c_in = 0, 3
    for block in models.VGG_BLOCKS:
        for filters in block:
            total += conv(3, c_in, filters) + BN * filters
            c_in = filters
    return total + dense(512, 512) + BN * 512 + dense(512, classes)


HAND = {
    "F1": ((28, 28, 1), 10, f_net(784, 5, 10)),
    "F2": ((360,), 1973, f_net(360, 7, 1973)),
    "C1": ((32, 32, 3), 10, c_shallow(10)),
    "C2": ((32, 32, 3), 10, c_vgg(10)),
    "C3": ((32, 32, 3), 100, c_shallow(100)),
    "C4": ((32, 32, 3), 100, c_vgg(100)),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_parameter_counts_match_hand_counts(name):
    shape, classes, expected = HAND[name]
    model = models.build(name, shape, classes, "batch_statistics")
    assert models.parameter_counts(model) == (expected, 0)
    moving = models.build(name, shape, classes, "moving_average")
    trainable, frozen = models.parameter_counts(moving)
    assert trainable == expected
    assert frozen == sum(w.shape[0] * 2 for w in moving.weights if "moving_mean" in w.path) > 0


def test_known_totals():
    # The F1 count spelled out: 784*512+512 + 4*(512*512+512) + 5*1024 + 512*10+10.
    assert HAND["F1"][2] == 1_462_794
    assert HAND["C1"][2] == 1_757_834


@pytest.mark.parametrize("name", sorted(HAND))
def test_output_is_a_probability_vector(name):
    shape, classes, _ = HAND[name]
    model = models.build(name, shape, classes, "batch_statistics")
    out = np.asarray(model(np.random.default_rng(0).random((4, *shape), dtype=np.float32)))
    assert out.shape == (4, classes)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_batch_statistics_ignores_the_training_flag_and_normalises_per_batch():
    layer = models.BatchStatNormalization()
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 5)).astype("float32")
    train_out = np.asarray(layer(x, training=True))
    eval_out = np.asarray(layer(x, training=False))
    np.testing.assert_array_equal(train_out, eval_out)
    np.testing.assert_allclose(eval_out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(eval_out.var(axis=0), 4.0 / (4.0 + 1e-3), rtol=1e-3)


def test_moving_average_uses_moving_statistics_at_evaluation():
    model = models.build("F1", (28, 28, 1), 10, "moving_average")
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    # Fresh moving stats are mean 0, var 1: evaluation output differs from the batch-stat output.
    assert not np.allclose(np.asarray(model(x, training=False)), np.asarray(model(x, training=True)))


def test_unknown_network():
    with pytest.raises(ValueError, match="unknown network 'F9'"):
        models.build("F9", (784,), 10, "batch_statistics")
