"""Batch norm whose training step runs TensorFlow's fused kernel (Keras 3).

Keras 3's `BatchNormalization` computes a training step's batch statistics
with separate reductions (`ops.moments`) and normalizes with separate
multiplies and adds, each a pass over the activations, forwards and
backwards. TensorFlow's `FusedBatchNormV3` (and its gradient) does it in one
oneDNN kernel each way, as DeepLab's slim `batch_norm(fused=True)` and
tf_keras' `BatchNormalization` do. On this CPU, MobileNet-v2 + DPC's
training step at 257x257, batch 4, took 0.70x the time with it
(`bench/levers.py`).

`FusedBatchNormalization` is Keras 3's layer with the same variables,
config and checkpoints; only its training-mode call differs, and only where
the fused kernel computes the same thing: NHWC input, not synchronized, no
mask, no renorm, and where `fast_paths.available(FUSED_BATCH_NORM, dtype)`
says the kernel (and its gradient) ran on every device of the process in
that dtype. Elsewhere (inference, other layouts) it is Keras' own call.
The moving variance is updated with the biased batch variance, as Keras 3
does (the fused kernel returns the unbiased one, rescaled here).

Under tf_keras (`TF_USE_LEGACY_KERAS=1`) `batch_norm_class()` is tf_keras'
own `BatchNormalization`, which fuses by itself and which
tensorflow-model-optimization recognises.
"""

import tensorflow as tf

from deeplab_dpc.layers import fast_paths

IS_TF_KERAS = tf.keras.Model.__module__.startswith("tf_keras")
CLASS_NAME = "FusedBatchNormalization"


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class FusedBatchNormalization(tf.keras.layers.BatchNormalization):
    """`BatchNormalization` on TensorFlow's fused kernel in training.

    Takes `tf.keras.layers.BatchNormalization`'s arguments.

    Example:
    >>> layer = FusedBatchNormalization(momentum=0.9)
    >>> layer(tf.ones([2, 3, 3, 4]), training=True).shape
    TensorShape([2, 3, 3, 4])
    """

    def _fuses(self, inputs, training, mask):
        axis = self.axis[0] if isinstance(self.axis, (list, tuple)) else self.axis
        return (
            training is True
            and self.trainable
            and mask is None
            and not self.synchronized
            and not getattr(self, "renorm", False)
            and inputs.shape.rank == 4
            and axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if IS_TF_KERAS or not self._fuses(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        dtype = tf.bfloat16 if inputs.dtype == tf.bfloat16 else tf.float32
        fused = bool(fast_paths.available(fast_paths.FUSED_BATCH_NORM, dtype.name))
        fast_paths.record(
            fast_paths.layer_key(self), fast_paths.FUSED_BATCH_NORM, fused
        )
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        # The kernel keeps its statistics in float32 whatever its input:
        # bfloat16 activations go in as they are (no casts each way); others
        # are computed in float32, as Keras does.
        if inputs.dtype != tf.bfloat16:
            inputs = tf.cast(inputs, tf.float32)
        x = inputs
        channels = x.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels])
        beta = self.beta if self.center else tf.zeros([channels])
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x,
            tf.cast(gamma, tf.float32),
            tf.cast(beta, tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )[:3]
        # The kernel's variance is unbiased (n - 1); Keras' moving variance
        # takes the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        variance = variance * tf.maximum(count - 1.0, 0.0) / count
        momentum = self.momentum
        self.moving_mean.assign(
            self.moving_mean * momentum + tf.stop_gradient(mean) * (1.0 - momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * momentum
            + tf.stop_gradient(variance) * (1.0 - momentum)
        )
        return tf.cast(outputs, self.compute_dtype)


def batch_norm_class():
    """The batch norm class the models use under this Keras."""
    if IS_TF_KERAS:
        return tf.keras.layers.BatchNormalization
    return FusedBatchNormalization


def use_fused_in_config(config):
    """Makes a functional model config's batch norms fused ones (in place).

    Keras 3 only (a no-op under tf_keras): each `BatchNormalization` layer
    config becomes a `FusedBatchNormalization` one with the same settings,
    for `tf.keras.Model.from_config`.
    """
    if IS_TF_KERAS:
        return
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["class_name"] = CLASS_NAME
            layer["module"] = None
            layer["registered_name"] = f"deeplab_dpc>{CLASS_NAME}"
