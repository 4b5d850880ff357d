"""Atrous depthwise convolution on TensorFlow's native dilated kernel (Keras 3).

Keras (both Keras 3 and tf_keras) computes an atrous depthwise convolution
the way `tf.nn.depthwise_conv2d` does: SpaceToBatchND, a plain depthwise
convolution of the rate-strided blocks, BatchToSpaceND, and the same three
ops again in each gradient. TensorFlow's `DepthwiseConv2dNative` also takes
the rate itself (`dilations`), so the model can skip the reshuffles:

  forward        `DepthwiseConv2dNative` with `dilations`;
  input gradient the same op on the output gradient with the kernel turned
                 by 180 degrees (stride 1, SAME padding and an odd kernel pad
                 both sides alike, so the transposed convolution is a
                 convolution);
  kernel gradient TensorFlow's own (the SpaceToBatchND route), as the CPU
                 kernel of `DepthwiseConv2dNativeBackpropFilter` takes no
                 dilations.

On this CPU the native kernel pays only at small rates: MobileNet-v2's rate-2
depthwise convs at output stride 16 (33x33x960, batch 8) took 0.75x the time
forward and backward, the published DPC's (6, 3) and (1, 6) branches 0.80x
and 0.87x, but its (18, 15) and (6, 21) branches took 1.2x and 2.6x (a 3x3
kernel of rate 21 on a 33x33 map reads mostly padding). So `NATIVE_MAX_RATE`
bounds where it is used. At inference (batch 1, 513x513, 2 threads, batch
norm folded) the native route also lets grappler fuse the bias and ReLU6
into the depthwise op, which it does not across BatchToSpaceND: the forward
of MobileNet-v2 + ASPP took 0.93x the time, + the published DPC 0.92x, and
letting rates up to 21 go native made the latter 1.07x slower.

The native kernel's dilations exist only in oneDNN's CPU kernel: with
oneDNN off (AMD and ARM CPUs, Apple silicon, `TF_ENABLE_ONEDNN_OPTS=0`) and
on GPUs the op raises `UnimplementedError`. So the layer takes the native
route only where `fast_paths.available(NATIVE_DILATED_DEPTHWISE)` says a
probe of the real op ran on every device of the process, and never inside
`fast_paths.portable()`, where exports trace (a SavedModel made on an
Intel CPU must serve on an AMD CPU or a GPU).

`DilatedDepthwiseConv2D` is Keras 3's `DepthwiseConv2D` with the same
variables, config and checkpoints; only its call differs, and only where
the native route runs and computes the same thing: float32, channels-last,
stride 1, SAME padding, depth multiplier 1, an odd kernel, a rate above 1
and at most `NATIVE_MAX_RATE`, in training and inference alike. Elsewhere
it is Keras' own call (the portable route: SpaceToBatchND, which TFLite's
converter makes a dilated `DEPTHWISE_CONV_2D`). It also drops, in
both modes, the taps that can only read padding: on an axis where the rate
is at least the feature map's (static) size, every tap but the kernel's
centre reads only SAME padding, so the layer drops those taps (a slice of
the kernel; rate 1 on that axis; a per-channel scale when both axes go). It
computes the same values, and the cut taps get the zero gradient they
always had. The proxy task meets this all the time: 129x129 crops give 9x9
features at output stride 16, where 5 of the 8 rates of the search space
exceed the map. Its training step on such cells took 0.73x the time (mean
of 5 sampled cells, 2 threads: 35.7 against 48.7 ms a step).

Under tf_keras (`TF_USE_LEGACY_KERAS=1`, where tensorflow-model-optimization
needs Keras' own classes) `depthwise_class()` is tf_keras' `DepthwiseConv2D`.
"""

import contextlib
import threading

import tensorflow as tf

from deeplab_dpc.layers import fast_paths

IS_TF_KERAS = tf.keras.Model.__module__.startswith("tf_keras")
CLASS_NAME = "DilatedDepthwiseConv2D"
NATIVE_MAX_RATE = 6
_STATE = threading.local()


@contextlib.contextmanager
def all_taps():
    """Within it (in this thread), layers traced keep every tap of the kernel.

    For counting an architecture's MAdds (`models.accounting`) as the paper
    does, 9 taps a 3x3 kernel whatever the rate and map size.
    """
    previous = getattr(_STATE, "all_taps", False)
    _STATE.all_taps = True
    try:
        yield
    finally:
        _STATE.all_taps = previous


def dilated_depthwise_conv2d(inputs, kernel, rate):
    """Stride-1 SAME atrous depthwise convolution on the native dilated kernel.

    The same values and gradients as
    `tf.nn.depthwise_conv2d(inputs, kernel, [1, 1, 1, 1], "SAME",
    dilations=rate)` within float32 rounding.

    Args:
      inputs: float32 `[batch, height, width, channels]`.
      kernel: float32 `[kh, kw, channels, 1]`, kh and kw odd.
      rate: (int, int), the atrous rate.

    Returns:
      `[batch, height, width, channels]`.

    Raises:
      ValueError: for an even kernel or a depth multiplier other than 1.
    """
    kh, kw, _, multiplier = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0 or multiplier != 1:
        raise ValueError(
            "the native dilated route needs an odd kernel and depth multiplier "
            f"1, got kernel shape {kernel.shape}"
        )
    rate = tuple(int(r) for r in rate)
    dilations = [1, *rate, 1]

    def native(x, k):
        return tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=k, strides=[1, 1, 1, 1], padding="SAME", dilations=dilations
        )

    @tf.custom_gradient
    def conv(x, k):
        def grad(dy):
            dx = native(dy, tf.reverse(k, axis=[0, 1]))
            # TF's kernel gradient of the SpaceToBatch route. The forward ops
            # traced here feed no output: inside a tf.function (the training
            # step) TensorFlow prunes them and the unused input gradient.
            with tf.GradientTape() as tape:
                tape.watch(k)
                y = tf.nn.depthwise_conv2d(
                    x, k, [1, 1, 1, 1], "SAME", dilations=list(rate)
                )
            return dx, tape.gradient(y, k, output_gradients=dy)

        return native(x, k), grad

    return conv(inputs, kernel)


@tf.keras.utils.register_keras_serializable(package="deeplab_dpc")
class DilatedDepthwiseConv2D(tf.keras.layers.DepthwiseConv2D):
    """`DepthwiseConv2D` on TensorFlow's native dilated kernel where it runs.

    It also drops the taps that can only read padding (a rate
    at least the map's size; see the module docstring).

    Takes `tf.keras.layers.DepthwiseConv2D`'s arguments.

    Example:
    >>> layer = DilatedDepthwiseConv2D(3, padding="same", dilation_rate=2)
    >>> layer(tf.ones([2, 9, 9, 4]), training=True).shape
    TensorShape([2, 9, 9, 4])
    """

    def _native(self, inputs, rate):
        fits = (
            inputs.dtype == tf.float32
            and self.data_format == "channels_last"
            and tuple(self.strides) == (1, 1)
            and self.padding == "same"
            and self.depth_multiplier == 1
            and all(k % 2 == 1 for k in self.kernel_size)
            and 1 < max(rate) <= NATIVE_MAX_RATE
        )
        if not fits:
            return False
        native = bool(fast_paths.available(fast_paths.NATIVE_DILATED_DEPTHWISE))
        fast_paths.record(
            fast_paths.layer_key(self), fast_paths.NATIVE_DILATED_DEPTHWISE, native
        )
        return native

    def _reach(self, inputs):
        """(kernel slices, rate) without taps that can only read padding.

        With stride 1 and SAME padding, a tap `j` kernel rows from the
        centre reads row `i + j * rate` for output row `i`; when the rate is
        at least the (static) height, every such row is padding for every
        `i`, so only the centre row of the kernel ever meets the input. The
        same holds for columns. Returns None when no axis is so; otherwise
        the slices of the kernel's rows and columns to keep and the rate that
        is left (1 on each cut axis): the same values and, as the cut taps
        only ever multiplied zeros, the same gradients (0 for those taps).
        """
        if (
            getattr(_STATE, "all_taps", False)
            or self.data_format != "channels_last"
            or tuple(self.strides) != (1, 1)
            or self.padding != "same"
        ):
            return None
        slices, rate, cut = [], [], False
        for size, kernel, r in zip(
            inputs.shape[1:3], self.kernel_size, self.dilation_rate
        ):
            if size is not None and kernel > 1 and kernel % 2 and r >= size:
                slices.append(slice(kernel // 2, kernel // 2 + 1))
                rate.append(1)
                cut = True
            else:
                slices.append(slice(None))
                rate.append(int(r))
        return (tuple(slices), tuple(rate)) if cut else None

    def call(self, inputs, training=None):
        if IS_TF_KERAS:
            return super().call(inputs)
        reach = self._reach(inputs)
        if reach is None:
            if not self._native(inputs, self.dilation_rate):
                return super().call(inputs)
            outputs = dilated_depthwise_conv2d(
                inputs, tf.convert_to_tensor(self.kernel), self.dilation_rate
            )
        else:
            (rows, cols), rate = reach
            kernel = self.kernel[rows, cols]
            if kernel.shape[:2] == (1, 1) and self.depth_multiplier == 1:
                # A 1x1 depthwise conv: a per-channel scale.
                outputs = inputs * tf.reshape(kernel, [-1])
            elif self._native(inputs, rate):
                outputs = dilated_depthwise_conv2d(inputs, kernel, rate)
            else:
                outputs = tf.keras.ops.depthwise_conv(
                    inputs, kernel, padding="same", dilation_rate=rate
                )
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def depthwise_class():
    """The depthwise conv class the models use under this Keras."""
    if IS_TF_KERAS:
        return tf.keras.layers.DepthwiseConv2D
    return DilatedDepthwiseConv2D


def use_native_in_config(config):
    """Makes a functional model config's atrous depthwise convs native ones.

    Keras 3 only (a no-op under tf_keras): each `DepthwiseConv2D` layer config
    with a rate above 1 becomes a `DilatedDepthwiseConv2D` one with the same
    settings, for `tf.keras.Model.from_config`.
    """
    if IS_TF_KERAS:
        return
    for layer in config["layers"]:
        if layer["class_name"] != "DepthwiseConv2D":
            continue
        rate = layer["config"].get("dilation_rate", 1)
        rate = (rate, rate) if isinstance(rate, int) else tuple(rate)
        if max(rate) > 1:
            layer["class_name"] = CLASS_NAME
            layer["module"] = None
            layer["registered_name"] = f"deeplab_dpc>{CLASS_NAME}"
