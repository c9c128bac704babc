"""Every network's shape and parameter count against numbers worked out by hand from the spec."""

import numpy as np
import pytest

from replication import models


# Worked out by hand from appendix B and the official network_zoo.py (shallownet, deepnet), not
# from models.py: a Dense layer has in*out + out weights, a k x k conv k*k*in*out + out, a batch
# norm 2 per feature (gamma, beta; batch_statistics keeps no moving averages, moving_average
# adds a moving mean and variance per feature, not trainable). No batch norm on the output layer.
#
# F1: 784 -> 5 x [Dense 512, BN] -> 10
#   784*512+512 = 401_920; 4 x (512*512+512) = 4 x 262_656 = 1_050_624; BN 5 x 1024 = 5_120;
#   512*10+10 = 5_130.  Total 1_462_794.  Moving statistics: 5 x 512 x 2 = 5_120.
# F2: 360 -> 7 x [Dense 512, BN] -> 1973
#   360*512+512 = 184_832; 6 x 262_656 = 1_575_936; BN 7 x 1024 = 7_168; 512*1973+1973 = 1_012_149.
#   Total 2_780_085.  Moving statistics: 7 x 512 x 2 = 7_168.
# C1/C3: 2 x [conv 64 5x5 'same', BN, pool 3x3 stride 2]: 32 -> 16 -> 8, flatten 8*8*64 = 4096;
#   Dense 384, BN; Dense 192, BN; output.
#   conv 5*5*3*64+64 = 4_864; conv 5*5*64*64+64 = 102_464; 4096*384+384 = 1_573_248;
#   384*192+192 = 73_920; BN 2 x (64+64+384+192) = 1_408: 1_755_904 before the output layer;
#   C1: + 192*10+10 = 1_930 -> 1_757_834.  C3: + 192*100+100 = 19_300 -> 1_775_204.
#   Moving statistics: 1_408.
# C2/C4: 13 convs 3x3 'same' with BN (64, 64 | 128, 128 | 256 x 3 | 512 x 3 | 512 x 3), 2x2 pools
#   32 -> 1, flatten 512; Dense 512, BN; output.
#   convs: 27*64+64 = 1_792; 576*64+64 = 36_928; 576*128+128 = 73_856; 1152*128+128 = 147_584;
#   1152*256+256 = 295_168; 2 x (2304*256+256) = 2 x 590_080; 2304*512+512 = 1_180_160;
#   5 x (4608*512+512) = 5 x 2_359_808: 14_714_688.  Conv BN 2 x 4224 features = 8_448.
#   512*512+512 = 262_656, BN 1_024: 14_986_816 before the output layer;
#   C2: + 512*10+10 = 5_130 -> 14_991_946.  C4: + 512*100+100 = 51_300 -> 15_038_116.
#   Moving statistics: 2 x (4224 + 512) = 9_472.
HAND = {  # name: (input shape, classes, trainable, moving statistics under moving_average)
    "F1": ((28, 28, 1), 10, 1_462_794, 5_120),
    "F2": ((360,), 1973, 2_780_085, 7_168),
    "C1": ((32, 32, 3), 10, 1_757_834, 1_408),
    "C2": ((32, 32, 3), 10, 14_991_946, 9_472),
    "C3": ((32, 32, 3), 100, 1_775_204, 1_408),
    "C4": ((32, 32, 3), 100, 15_038_116, 9_472),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_parameter_counts_match_hand_counts(name):
    shape, classes, trainable, moving = HAND[name]
    assert models.parameter_counts(models.build(name, shape, classes, "batch_statistics")) == (trainable, 0)
    assert models.parameter_counts(models.build(name, shape, classes, "moving_average")) == (trainable, moving)


@pytest.mark.parametrize("name", sorted(HAND))
def test_output_is_a_probability_vector(name):
    shape, classes, _, _ = HAND[name]
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
