"""Dropout on 16 random bits an element (Keras 3).

Keras 3's `Dropout` (TensorFlow backend: `tf.nn.experimental.stateless_dropout`)
draws a float32 uniform number for every element, 32 random bits from
Philox. The DPC's dropout acts on the concatenated branches, the head's
largest tensor (33x33x1280 an image at 513x513 and output stride 16), and
TensorFlow's CPU Philox is slow: the random numbers alone took 66 ms of a
2.2 s MobileNet-v2 + DPC training step (513x513, batch 8; serial profile).
The whole dropout, forward and backward, alone on that shape: 62.5 ms with
Keras' layer, 46 ms in this form.

`dropout16` draws half as many 32-bit words and reads each as two 16-bit
numbers `u`: an element is dropped when `u < t`, `t = round(rate * 2**16)`,
and a kept one is scaled by `2**16 / (2**16 - t)`, so the expectation of
every element is its input exactly. The drop probability is `t / 2**16`,
within `2**-17` of `rate` (0.1000061 for 0.1). The draw is stateless, from
the layer's `keras.random.SeedGenerator` (seeded as Keras' own), so runs
repeat as with Keras' layer.

`FastDropout` is Keras 3's `Dropout` (same config) with this call in
training, where `fast_paths.available(FAST_DROPOUT)` says the uint32 draw
and its bitcast ran on every device of the process (else Keras' call).
Under tf_keras (`TF_USE_LEGACY_KERAS=1`), `dropout_class()` is
tf_keras' own `Dropout`, as the other Keras-3-only layers of this package.
"""

import numpy as np
import tensorflow as tf

from deeplab_dpc.layers import fast_paths

IS_TF_KERAS = tf.keras.Model.__module__.startswith("tf_keras")
BITS = 16
_LEVELS = 1 << BITS


def drop_threshold(rate):
    """`t`: an element is dropped when its 16-bit number is below it.

    Raises:
      ValueError: for a rate outside [0, 1).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    return min(int(round(rate * _LEVELS)), _LEVELS - 1)


def dropout16(inputs, rate, seed, noise_shape=None):
    """Dropout with one 16-bit random number an element of `noise_shape`.

    Args:
      inputs: a float tensor.
      rate: float in [0, 1), the fraction to drop.
      seed: int32 `[2]`, the stateless seed of the draw.
      noise_shape: None (every element draws) or a shape broadcastable to
        `inputs`' (as Keras' `Dropout`'s; a None entry takes the input's
        size).

    Returns:
      `inputs` with the dropped elements zero and the others scaled by
      `2**16 / (2**16 - t)`.

    Raises:
      ValueError: for a rate outside [0, 1).
    """
    threshold = drop_threshold(rate)
    if threshold == 0:
        return inputs
    shape = tf.shape(inputs)
    if noise_shape is not None:
        shape = tf.stack(
            [shape[i] if size is None else size for i, size in enumerate(noise_shape)]
        )
    count = tf.reduce_prod(shape)
    words = tf.random.stateless_uniform(
        [(count + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])
    static_count = tf.get_static_value(count)
    if static_count is None or static_count % 2:
        halves = halves[:count]  # One half too many when the count is odd.
    keep = tf.reshape(halves >= threshold, shape)
    scale = np.float32(_LEVELS / (_LEVELS - threshold))
    kept = inputs * tf.cast(scale, inputs.dtype)
    return tf.where(keep, kept, tf.zeros_like(kept))


def _stateless_seed(seed):
    """A `SeedGenerator.next()` value as the int32 seed stateless ops take."""
    if seed.dtype == tf.int32:
        return seed
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class FastDropout(tf.keras.layers.Dropout):
    """Keras' `Dropout`, drawing 16 random bits an element (`dropout16`)."""

    def call(self, inputs, training=False):
        if IS_TF_KERAS or not training or self.rate == 0:
            return super().call(inputs, training=training)
        fast = bool(fast_paths.available(fast_paths.FAST_DROPOUT))
        fast_paths.record(fast_paths.layer_key(self), fast_paths.FAST_DROPOUT, fast)
        if not fast:
            return super().call(inputs, training=training)
        seed = _stateless_seed(self.seed_generator.next())
        return dropout16(inputs, self.rate, seed, self.noise_shape)


def dropout_class():
    """`FastDropout` under Keras 3, tf_keras' `Dropout` under tf_keras."""
    if IS_TF_KERAS:
        return tf.keras.layers.Dropout
    return FastDropout
