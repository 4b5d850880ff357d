"""MobileNet-v3's hard activations, as DeepLab's TF1 code computes them."""

import tensorflow as tf

# DeepLab (`core/utils.q_sigmoid`, `mobilenet_v3.squeeze_excite`) multiplies
# by 0.16667, not 1/6, in its hard sigmoid; its hard swish uses 1/6.
HARD_SIGMOID_SCALE = 0.16667
KINDS = ("hard_swish", "hard_sigmoid")


def hard_sigmoid(x):
    """`relu6(x + 3) * 0.16667` (DeepLab's `q_sigmoid`)."""
    return tf.nn.relu6(x + 3.0) * HARD_SIGMOID_SCALE


def hard_swish(x):
    """`x * relu6(x + 3) / 6` (MobileNet-v3's `hard_swish`)."""
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class HardActivation(tf.keras.layers.Layer):
    """MobileNet-v3's hard swish or DeepLab's hard (quantized) sigmoid.

    Args:
      kind: str, one of `KINDS`.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: any shape -> the same shape.

    Example:
    >>> HardActivation("hard_swish")(tf.constant([-4.0, 0.0, 4.0])).numpy()
    array([-0.,  0.,  4.], dtype=float32)
    """

    def __init__(self, kind, **kwargs):
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind

    def call(self, inputs):
        return hard_swish(inputs) if self.kind == "hard_swish" else hard_sigmoid(inputs)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}
