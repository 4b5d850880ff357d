"""Backbone input normalisation inside the model (images in [0, 255])."""

import tensorflow as tf

# Modes of `tf.keras.applications.imagenet_utils.preprocess_input`.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("tf", "caffe")


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class ImagePreprocessing(tf.keras.layers.Layer):
    """Maps RGB images in [0, 255] to what a backbone was trained on.

    Modes: "tf" is `(2 / 255) * x - 1` (MobileNet-v2, Xception, as DeepLab);
    "caffe" is RGB -> BGR minus the ImageNet mean (Keras' ResNet).

    Args:
      mode: str, one of `MODES`.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, height, width, 3]` -> same shape, float32.

    Example:
    >>> ImagePreprocessing("tf")(tf.fill([1, 1, 1, 3], 255.0)).numpy().ravel()
    array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, mode="tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"{self.name}: mode must be one of {MODES}, got " f"{mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        if self.mode == "tf":
            return x * (2.0 / 255.0) - 1.0
        return tf.reverse(x, axis=[-1]) - tf.constant(_CAFFE_MEAN_BGR)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
