"""Convolution -> batch norm -> activation, DeepLab's basic unit."""

import tensorflow as tf

from deeplab_dpc.layers import folding
from deeplab_dpc.layers import fused_batch_norm

# DeepLab's batch-norm settings (decay 0.9997, epsilon 1e-5, scale on).
NORM_MOMENTUM = 0.9997
NORM_EPSILON = 1e-5


def l2_regularizer(weight_decay):
    """Returns slim's `l2_regularizer(weight_decay)` as a Keras regularizer.

    slim adds `weight_decay * sum(w**2) / 2`; Keras' L2 adds `l2 * sum(w**2)`.

    Args:
      weight_decay: float, DeepLab's `--weight_decay`; 0 means none.

    Returns:
      A `tf.keras.regularizers.L2` or None.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return tf.keras.regularizers.L2(0.5 * weight_decay) if weight_decay else None


def track_sublayers(owner, layers):
    """Sets each of `layers` as an attribute of `owner`, named after it.

    Keras 3 tracks sublayers kept in a list for its own weights and `.keras`
    files, but `tf.train.Checkpoint` does not see into those lists: without
    this, the batch-norm statistics of list-held branches are not saved.
    """
    for layer in layers:
        setattr(owner, layer.name, layer)


def kernel_initializer(stddev):
    """Truncated normal with `stddev` (slim's choice), or Glorot-uniform."""
    if stddev is None:
        return "glorot_uniform"
    return tf.keras.initializers.TruncatedNormal(stddev=stddev)


def batch_norm(name, norm_momentum, norm_epsilon, synchronized):
    """A batch norm layer with DeepLab's conventions (fused in training)."""
    return fused_batch_norm.batch_norm_class()(
        momentum=norm_momentum,
        epsilon=norm_epsilon,
        scale=True,
        synchronized=synchronized,
        name=name,
    )


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class ConvBN(tf.keras.layers.Layer):
    """Conv2D (no bias) -> BatchNormalization -> activation, stride 1, SAME.

    Args:
      filters: int, output channels.
      kernel_size: int, square kernel size.
      dilation_rate: int or (int, int), atrous rate.
      activation: str, activation name ("relu", or "linear" for none).
      weight_decay: float, DeepLab's weight decay on the kernel (0: none).
      kernel_init_stddev: float or None; a truncated-normal kernel initializer
        with this standard deviation, or Glorot-uniform when None.
      norm_momentum, norm_epsilon, synchronized: BatchNormalization settings.
      **kwargs: forwarded to `tf.keras.layers.Layer`.

    Call: `[batch, height, width, channels]` -> `[batch, height, width, filters]`.

    Example:
    >>> layer = ConvBN(256, 1, name="aspp0")
    >>> layer(tf.zeros([1, 9, 9, 8])).shape
    TensorShape([1, 9, 9, 256])
    """

    def __init__(
        self,
        filters,
        kernel_size=1,
        dilation_rate=1,
        activation="relu",
        weight_decay=0.0,
        kernel_init_stddev=None,
        norm_momentum=NORM_MOMENTUM,
        norm_epsilon=NORM_EPSILON,
        synchronized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(dilation_rate, int):
            dilation_rate = (dilation_rate, dilation_rate)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = tuple(int(r) for r in dilation_rate)
        self.activation = activation
        self.weight_decay = float(weight_decay)
        self.kernel_init_stddev = kernel_init_stddev
        self.norm_momentum = norm_momentum
        self.norm_epsilon = norm_epsilon
        self.synchronized = synchronized
        if self.kernel_size == 1 and self.dilation_rate != (1, 1):
            raise ValueError(
                f"{self.name}: a 1x1 conv takes no dilation, got "
                f"{self.dilation_rate}"
            )
        self.conv = tf.keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            padding="same",
            dilation_rate=self.dilation_rate,
            use_bias=False,
            kernel_initializer=kernel_initializer(kernel_init_stddev),
            kernel_regularizer=l2_regularizer(self.weight_decay),
            name="conv",
        )
        self.bn = batch_norm("bn", norm_momentum, norm_epsilon, synchronized)
        self.act = tf.keras.layers.Activation(activation, name="act")

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        self.conv.build(input_shape)
        self.bn.build(input_shape[:-1].concatenate([self.filters]))
        super().build(input_shape)

    def call(self, inputs, training=None):
        return self.act(self.bn(self.conv(inputs), training=training))

    def fold_batch_norm(self):
        """Folds the batch norm into the conv, for inference only.

        Returns:
          bool, whether anything was folded (False when done already).
        """
        return folding.fold_sublayers(self, "conv", "bn")

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.filters])

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "dilation_rate": self.dilation_rate,
            "activation": self.activation,
            "weight_decay": self.weight_decay,
            "kernel_init_stddev": self.kernel_init_stddev,
            "norm_momentum": self.norm_momentum,
            "norm_epsilon": self.norm_epsilon,
            "synchronized": self.synchronized,
        }
