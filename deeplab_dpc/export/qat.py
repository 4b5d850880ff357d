"""Quantization-aware training of DeepLab with tensorflow-model-optimization.

Runs under tf_keras only (`TF_USE_LEGACY_KERAS=1`, in the subprocess of
`legacy_keras`): TFMOT 0.8 does not accept Keras 3 models.

TFMOT's default 8-bit scheme quantizes the layers it knows (the backbone's
Conv2D, DepthwiseConv2D, BatchNormalization, ReLU, Add, ...). The project's
composite layers (DPC, ASPP, decoder, resize, image preprocessing) are
opaque to it, so each gets a `NestedQuantizeConfig` that reaches inside:

* weights: every nested Conv2D kernel is fake-quantized per output channel
  and every DepthwiseConv2D kernel per tensor (8 bits, symmetric, narrow
  range: TFLite's int8 weight scheme);
* activations: the output of every nested `Activation` layer (the ReLU that
  ends each conv -> BN -> ReLU unit) is fake-quantized with a moving-average
  range, where TFLite's fused conv+ReLU output is quantized;
* the layer's output is quantized only when no nested activation did it
  (the image preprocessing); resizes keep their input's scale, as TFLite's
  RESIZE_BILINEAR requires.

Range calibration: TFMOT's moving-average quantizers start at [-6, 6] and
move by 0.1% per training step, so a short fine-tuning would keep ranges
that clip large activations and waste resolution on small ones. `calibrate`
sets every moving-average range to the min/max observed over calibration
batches before fine-tuning, as post-training quantization would: one
training-mode forward pass moves a range `r` to `r + (1 - decay) * (v - r)`
for the batch's observed value `v`, which is read back from the change. The
model input's `QuantizeLayer` keeps the all-time min/max instead
(`AllValuesQuantizer`); its range is reset to [0, 0] first, so that the
calibration batches alone set it.
"""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from deeplab_dpc.export import keras_paths
from deeplab_dpc.layers import atrous_pooling
from deeplab_dpc.layers import resize

quantizers = tfmot.quantization.keras.quantizers

# `MovingAverageQuantizer` passes `ema_decay=0.999` (TFMOT 0.8).
EMA_DECAY = 0.999
# Name stems of the moving-average range variables TFMOT and this module
# create ("<stem>_min", "<stem>_max"; weight quantizers' stems end in
# "kernel"), and of the all-values range of TFMOT's input QuantizeLayer.
_MOVING_AVERAGE_STEMS = ("activation", "output")
_ALL_VALUES_STEM = "quantize_layer"
# Layers whose output has their input's scale in TFLite.
_SAME_SCALE = (resize.ResizeBilinear, atrous_pooling.AtrousPooling2D)


class _Named(quantizers.Quantizer):
    """A quantizer whose variables get a given name (unique in the layer)."""

    def __init__(self, quantizer, name):
        self.quantizer = quantizer
        self.name = name

    def build(self, tensor_shape, name, layer):
        del name
        return self.quantizer.build(tensor_shape, self.name, layer)

    def __call__(self, inputs, training, weights, **kwargs):
        return self.quantizer(inputs, training, weights, **kwargs)

    def get_config(self):
        return {}


def _activation_quantizer():
    return quantizers.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False
    )


def _activations(layer):
    return [
        (path, sub)
        for path, sub in keras_paths.sublayers(layer)
        if isinstance(sub, tf.keras.layers.Activation)
    ]


def _variable_name(path):
    return path.replace("/", "_")


class NestedQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes the convs and activations inside a composite layer."""

    def get_weights_and_quantizers(self, layer):
        result = []
        for path, sub, attribute in keras_paths.conv_kernels(layer):
            per_axis = not isinstance(sub, tf.keras.layers.DepthwiseConv2D)
            quantizer = quantizers.LastValueQuantizer(
                num_bits=8, per_axis=per_axis, symmetric=True, narrow_range=True
            )
            name = f"{_variable_name(path)}_{attribute}"
            result.append((getattr(sub, attribute), _Named(quantizer, name)))
        return result

    def set_quantize_weights(self, layer, quantize_weights):
        for (_, sub, attribute), weight in zip(
            keras_paths.conv_kernels(layer), quantize_weights
        ):
            setattr(sub, attribute, weight)

    def get_activations_and_quantizers(self, layer):
        return [
            (
                sub.activation,
                _Named(_activation_quantizer(), f"{_variable_name(path)}_activation"),
            )
            for path, sub in _activations(layer)
        ]

    def set_quantize_activations(self, layer, quantize_activations):
        for (_, sub), activation in zip(_activations(layer), quantize_activations):
            sub.activation = activation

    def get_output_quantizers(self, layer):
        if _activations(layer) or isinstance(layer, _SAME_SCALE):
            return []
        return [_activation_quantizer()]

    def get_config(self):
        return {}


def quantize(model):
    """The quantization-aware copy of a tf_keras DeepLab model.

    Args:
      model: a tf_keras model from `deeplab.build_deeplab`, with its weights.

    Returns:
      the model `tfmot.quantization.keras.quantize_apply` makes, with the
      same float weights.
    """
    scheme = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    registry = scheme.get_quantize_registry()
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotated(layer):
        if registry.supports(layer) or isinstance(layer, tf.keras.layers.InputLayer):
            return annotate(layer)
        return annotate(layer, NestedQuantizeConfig())

    with tfmot.quantization.keras.quantize_scope(
        {"NestedQuantizeConfig": NestedQuantizeConfig}
    ):
        annotated_model = tf.keras.models.clone_model(model, clone_function=annotated)
        annotated_model.set_weights(model.get_weights())
        return tfmot.quantization.keras.quantize_apply(annotated_model)


def range_variables(model, stems=_MOVING_AVERAGE_STEMS):
    """The (min, max) range variable pairs of a QAT model whose name stems
    end in one of `stems` (default: the moving-average ranges)."""
    by_name = {}
    for variable in model.non_trainable_variables:
        name = variable.name.split(":")[0]
        for suffix in ("_min", "_max"):
            stem = name[: -len(suffix)]
            if name.endswith(suffix) and stem.endswith(stems):
                by_name.setdefault(stem, {})[suffix] = variable
    return [(pair["_min"], pair["_max"]) for pair in by_name.values()]


def calibrate(model, batches):
    """Sets the activation ranges to the min/max seen on the batches.

    Args:
      model: from `quantize`.
      batches: iterable of float images `[batch, h, w, 3]`.

    Returns:
      int, the number of moving-average (min, max) pairs set.
    """
    for low, high in range_variables(model, (_ALL_VALUES_STEM,)):
        low.assign(tf.zeros_like(low))
        high.assign(tf.zeros_like(high))
    pairs = range_variables(model)
    lows = [np.inf] * len(pairs)
    highs = [-np.inf] * len(pairs)
    for images in batches:
        before = [(lo.numpy(), hi.numpy()) for lo, hi in pairs]
        model(images, training=True)
        for i, ((lo, hi), (lo0, hi0)) in enumerate(zip(pairs, before)):
            seen_lo = lo0 + (lo.numpy() - lo0) / (1.0 - EMA_DECAY)
            seen_hi = hi0 + (hi.numpy() - hi0) / (1.0 - EMA_DECAY)
            lows[i] = min(lows[i], float(seen_lo))
            highs[i] = max(highs[i], float(seen_hi))
            lo.assign(min(lows[i], 0.0))
            hi.assign(max(highs[i], 0.0))
    return len(pairs)
