"""Max or average pooling with a dilated window, for dilated backbones."""

import tensorflow as tf

POOLING_TYPES = ("MAX", "AVG")


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class AtrousPooling2D(tf.keras.layers.Layer):
    """Stride-1 pooling whose window is dilated, SAME padding.

    When a backbone's stride-2 pooling layer comes after the output stride has
    been reached, its stride becomes 1 and every later window must read the
    map at the accumulated rate, like the convs. Keras' pooling layers have no
    dilation; this layer (`tf.nn.pool` with `dilations`) takes their place.

    Args:
      pooling_type: "MAX" or "AVG".
      pool_size: (int, int), the window.
      dilation_rate: (int, int), the rate.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, h, w, c]` -> `[batch, h, w, c]`.

    Example:
    >>> AtrousPooling2D("MAX", (3, 3), (2, 2))(tf.zeros([1, 9, 9, 4])).shape
    TensorShape([1, 9, 9, 4])
    """

    def __init__(self, pooling_type, pool_size, dilation_rate, **kwargs):
        super().__init__(**kwargs)
        if pooling_type not in POOLING_TYPES:
            raise ValueError(
                f"{self.name}: pooling_type must be one of {POOLING_TYPES}, got "
                f"{pooling_type!r}"
            )
        self.pooling_type = pooling_type
        self.pool_size = tuple(int(p) for p in pool_size)
        self.dilation_rate = tuple(int(r) for r in dilation_rate)

    def call(self, inputs):
        # The window's taps are shifted views of the padded map. Padding is
        # excluded as in TensorFlow's SAME pooling: -inf for max, and the mean
        # is over the taps inside the map. (`tf.nn.pool` with dilations pads
        # with zeros through space_to_batch, which changes border maxima.)
        (kh, kw), (rh, rw) = self.pool_size, self.dilation_rate
        pad_h, pad_w = (kh - 1) * rh, (kw - 1) * rw
        paddings = [[0, 0], [pad_h // 2, pad_h - pad_h // 2]]
        paddings += [[pad_w // 2, pad_w - pad_w // 2], [0, 0]]
        height, width = tf.shape(inputs)[1], tf.shape(inputs)[2]

        def taps(x):
            return [
                x[:, i * rh : i * rh + height, j * rw : j * rw + width]
                for i in range(kh)
                for j in range(kw)
            ]

        if self.pooling_type == "MAX":
            padded = tf.pad(inputs, paddings, constant_values=-float("inf"))
            return tf.reduce_max(tf.stack(taps(padded)), axis=0)
        total = tf.add_n(taps(tf.pad(inputs, paddings)))
        count = tf.add_n(taps(tf.pad(tf.ones_like(inputs[..., :1]), paddings)))
        return total / count

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "pooling_type": self.pooling_type,
            "pool_size": self.pool_size,
            "dilation_rate": self.dilation_rate,
        }
