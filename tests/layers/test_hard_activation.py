"""Tests for deeplab_dpc.layers.hard_activation."""

import numpy as np
import pytest
import tensorflow as tf

import layer_testing
from deeplab_dpc.layers import hard_activation


def test_values_are_deeplabs():
    x = np.array([-5.0, -3.0, -1.5, 0.0, 1.5, 3.0, 5.0], np.float32)
    relu6 = np.clip(x + 3.0, 0.0, 6.0)
    swish = hard_activation.HardActivation("hard_swish")(tf.constant(x)).numpy()
    np.testing.assert_allclose(swish, x * relu6 / 6.0, rtol=1e-6)
    gate = hard_activation.HardActivation("hard_sigmoid")(tf.constant(x)).numpy()
    # DeepLab's 0.16667, not 1/6: 6 maps to 1.00002.
    np.testing.assert_allclose(gate, relu6 * 0.16667, rtol=1e-6)
    assert gate[-1] == pytest.approx(1.00002, abs=1e-6)


def test_bad_kind_and_serialization(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        hard_activation.HardActivation("swish")
    layer_testing.check_config_round_trip(hard_activation.HardActivation("hard_swish"))
    layer_testing.check_keras_save_load(
        lambda: hard_activation.HardActivation("hard_sigmoid"), [(5, 5, 4)], tmp_path
    )
