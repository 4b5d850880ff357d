"""Backbones at output stride 8, 16 or 32: Keras' applications and DeepLab's own.

Keras' applications have no output-stride setting. `build_backbone` rewrites
the functional config by DeepLab's rule: once the running stride of a tensor
reaches the output stride, later strides become 1 and later convs are
dilated by the stride they replaced. Strides and rates are tracked per
tensor (a block's shortcut and main convs both stride), the weights are
carried over unchanged, and the model takes images in [0, 255] (the
normalisation is a layer of the model).

DeepLab's own networks, which Keras lacks (`NetworkSpec`: the modified
aligned Xception-41/65/71 of `models/xception.py`, ResNet-v1-50/101-beta of
`models/resnet_v1_beta.py`), are built by this
package's code directly at the output stride, with DeepLab's layer names.
"""

import copy
import dataclasses
import functools
import json
import os
from typing import Callable

import tensorflow as tf

from deeplab_dpc.layers import atrous_pooling
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import dilated_depthwise
from deeplab_dpc.layers import fused_batch_norm
from deeplab_dpc.layers import image_preprocessing
from deeplab_dpc.models import mobilenet_v3_seg
from deeplab_dpc.models import resnet_v1_beta
from deeplab_dpc.models import xception

OUTPUT_STRIDES = (8, 16, 32)
FEATURES = "features"
LOW_LEVEL = "low_level"

_STRIDED = (
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "MaxPooling2D",
    "AveragePooling2D",
)
_CONVS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
_POOLS = {"MaxPooling2D": "MAX", "AveragePooling2D": "AVG"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """How to build one backbone and where its endpoints are.

    Attributes:
      constructor: name of the `tf.keras.applications` function.
      features: layer whose output feeds the head (DeepLab's choice).
      low_level: layer at stride 4 whose output feeds the v3+ decoder.
      preprocessing: `ImagePreprocessing` mode.
      has_depth_multiplier: whether `depth_multiplier` (alpha) applies.
      same_padding: layers whose VALID padding is made SAME, so that crops of
        the form OS*k+1 give features of exactly (crop - 1) / OS + 1 (Keras'
        Xception entry convs are unpadded; the kernels are unchanged).
      application_kwargs: (name, value) pairs passed to the constructor.
    """

    constructor: str
    features: str
    low_level: str
    preprocessing: str
    has_depth_multiplier: bool = False
    same_padding: tuple = ()
    application_kwargs: tuple = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """A DeepLab network this package builds from its own layers.

    Attributes:
      network: function `(images, output_stride=, multi_grid=, weight_decay=,
        norm_momentum=)` from preprocessed images to the features (DeepLab's
        choice), adding the network's layers to a functional graph.
      low_level: layer at stride 4 whose output feeds the v3+ decoder
        (DeepLab's `networks_to_feature_maps`).
      preprocessing: `ImagePreprocessing` mode (DeepLab's feature extractor).
      low_level_stride: int, the stride of `low_level` (the decoder's
        `--decoder_output_stride`).
    """

    network: Callable
    low_level: str
    preprocessing: str
    low_level_stride: int = 4


def _xception(model_variant):
    return NetworkSpec(
        network=functools.partial(xception.xception, model_variant=model_variant),
        low_level=xception.LOW_LEVEL[model_variant],
        preprocessing="tf",
    )


def _resnet_v1_beta(model_variant):
    # DeepLab maps the beta variants' images to [-1, 1] too.
    return NetworkSpec(
        network=functools.partial(
            resnet_v1_beta.resnet_v1_beta, model_variant=model_variant
        ),
        low_level=resnet_v1_beta.LOW_LEVEL,
        preprocessing="tf",
    )


def _mobilenet_v3_seg(model_variant):
    # DeepLab maps MobileNet-v3's images to [-1, 1]; its LR-ASPP decoder
    # reads a stride-8 endpoint.
    return NetworkSpec(
        network=functools.partial(
            mobilenet_v3_seg.mobilenet_v3_seg, model_variant=model_variant
        ),
        low_level=mobilenet_v3_seg.LOW_LEVEL[model_variant],
        preprocessing="tf",
        low_level_stride=mobilenet_v3_seg.LOW_LEVEL_STRIDE,
    )


BACKBONES = {
    # DeepLab takes MobileNet-v2's last inverted residual block (320
    # channels), not the 1280-channel conv, and `layer_4/depthwise_output`
    # (the expanded depthwise output of the third block) for the decoder.
    "mobilenet_v2": BackboneSpec(
        constructor="MobileNetV2",
        features="block_16_project_BN",
        low_level="block_2_depthwise_relu",
        preprocessing="tf",
        has_depth_multiplier=True,
    ),
    "xception": BackboneSpec(
        constructor="Xception",
        features="block14_sepconv2_act",
        low_level="block3_sepconv2_bn",
        preprocessing="tf",
        same_padding=("block1_conv1", "block1_conv2"),
    ),
    # Keras' own rescaling is switched off for ours, which is the same map.
    # Its squeeze-excite blocks pool globally, so the OS-16 features are not
    # the OS-32 ones subsampled (they are for the other backbones).
    "mobilenet_v3_large": BackboneSpec(
        constructor="MobileNetV3Large",
        # Keras 3 and tf_keras name the residual adds differently.
        features=("expanded_conv_14_add", "expanded_conv_14/Add"),
        low_level=("expanded_conv_2_add", "expanded_conv_2/Add"),
        preprocessing="tf",
        has_depth_multiplier=True,
        application_kwargs=(("include_preprocessing", False),),
    ),
    "resnet50": BackboneSpec(
        constructor="ResNet50",
        features="conv5_block3_out",
        low_level="conv2_block3_out",
        preprocessing="caffe",
    ),
    "resnet101": BackboneSpec(
        constructor="ResNet101",
        features="conv5_block3_out",
        low_level="conv2_block3_out",
        preprocessing="caffe",
    ),
    # DeepLab's modified aligned Xception (not Keras' Xception above).
    "xception_41": _xception("xception_41"),
    "xception_65": _xception("xception_65"),
    "xception_71": _xception("xception_71"),
    # DeepLab's ResNet-v1-beta (3x3-conv stem, multi-grid), not Keras' ResNet.
    "resnet_v1_50_beta": _resnet_v1_beta("resnet_v1_50_beta"),
    "resnet_v1_101_beta": _resnet_v1_beta("resnet_v1_101_beta"),
    # DeepLab's MobileNet-v3 segmentation variants (last block halved), not
    # Keras' MobileNetV3Large above.
    "mobilenet_v3_large_seg": _mobilenet_v3_seg("mobilenet_v3_large_seg"),
    "mobilenet_v3_small_seg": _mobilenet_v3_seg("mobilenet_v3_small_seg"),
}


def low_level_stride(model_variant):
    """The stride of a backbone's `LOW_LEVEL` endpoint (4, or 8 for the
    MobileNet-v3 seg variants)."""
    spec = BACKBONES[model_variant]
    return spec.low_level_stride if isinstance(spec, NetworkSpec) else 4


def check_crop(crop_size, output_stride):
    """Raises unless every side of the crop is of the form OS*k + 1.

    Args:
      crop_size: (int, int), crop height and width.
      output_stride: int, one of `OUTPUT_STRIDES`.

    Raises:
      ValueError: naming the bad value and the nearest valid crops.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {OUTPUT_STRIDES}, got " f"{output_stride}"
        )
    for side, size in zip(("height", "width"), crop_size):
        if size < output_stride + 1 or (size - 1) % output_stride:
            k = max(1, (size - 1) // output_stride)
            raise ValueError(
                f"crop {side} {size} cannot be served at output stride "
                f"{output_stride}: crops must be output_stride * k + 1 (e.g. "
                f"{output_stride * k + 1} or {output_stride * (k + 1) + 1}) so that "
                f"every stride-2 layer maps n to (n - 1) / 2 + 1"
            )


def _visit_history(obj, fn):
    """Calls `fn(history)` on every inbound tensor reference of a layer config.

    Keras 3 configs hold `{"class_name": "__keras_tensor__", "config":
    {"keras_history": [layer, node, tensor]}}`; tf_keras configs hold
    `[layer, node, tensor, kwargs]` lists. `history[0]` may be reassigned.
    """
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            fn(obj["config"]["keras_history"])
            return
        for value in obj.values():
            _visit_history(value, fn)
    elif isinstance(obj, list):
        if (
            len(obj) >= 3
            and isinstance(obj[0], str)
            and isinstance(obj[1], int)
            and isinstance(obj[2], int)
        ):
            fn(obj)
            return
        for value in obj:
            _visit_history(value, fn)


def inbound_layers(layer_config):
    """Names of the layers whose outputs a layer config consumes."""
    names = []
    _visit_history(layer_config.get("inbound_nodes", []), lambda h: names.append(h[0]))
    return names


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _same_in_disguise(layers, pads, kernel):
    """Whether an explicit ZeroPadding2D before a VALID conv equals SAME padding.

    Keras' applications pad their stride-2 VALID convs by `correct_pad`:
    (k - 1) / 2 on both sides when the static input size is odd, which every
    DeepLab crop (output_stride * k + 1) gives at strides below the output
    stride. That is exactly SAME padding there, and a SAME conv needs no
    separate Pad op (profiles showed the Pads at about 5% of MobileNet-v2's
    time).
    """
    if len(pads) != 1 or len(set(kernel)) != 1 or kernel[0] % 2 == 0:
        return False
    padding = layers[pads[0]]["config"]["padding"]
    half = (kernel[0] - 1) // 2
    return [list(_pair(side)) for side in _pair(padding)] == [[half, half]] * 2


def dilate_config(config, output_stride, same_padding=()):
    """Rewrites a functional config (in place) to the given output stride.

    Args:
      config: the `config` of a functional model's JSON, in Keras 3 or tf_keras
        form, layers in topological order.
      output_stride: int, the requested output stride.
      same_padding: names of layers whose padding is set to SAME.

    Returns:
      dict, layer name -> (stride of its output in the original model, atrous
      rate of its output in the rewritten one).

    Pooling layers that must read the map at a rate > 1 are replaced by
    `AtrousPooling2D` (Keras' pooling layers cannot dilate).

    Raises:
      ValueError: if a converted conv has VALID padding that no ZeroPadding2D
        can be removed for, or strides are not square.
    """
    layers = {layer["name"]: layer for layer in config["layers"]}
    geometry = {}
    for index, layer in enumerate(config["layers"]):
        cfg = layer["config"]
        inbound = inbound_layers(layer)
        s_in = max((geometry[n][0] for n in inbound), default=1)
        rate = s_in // min(s_in, output_stride)
        if layer["name"] in same_padding:
            cfg["padding"] = "same"
        stride = 1
        if layer["class_name"] in _STRIDED:
            strides = cfg.get("strides") or cfg.get("pool_size")
            if len(set(_pair(strides))) != 1:
                raise ValueError(
                    f"layer {layer['name']}: non-square strides "
                    f"{strides} are not supported"
                )
            stride = _pair(strides)[0]
        converted = stride > 1 and s_in >= output_stride
        if converted:
            cfg["strides"] = [1, 1]
        kernel = _pair(cfg.get("kernel_size") or cfg.get("pool_size") or 1)
        if layer["class_name"] in _CONVS and max(kernel) > 1 and rate > 1:
            cfg["dilation_rate"] = [rate, rate]
        pads = [n for n in inbound if layers[n]["class_name"] == "ZeroPadding2D"]
        if (
            (converted or rate > 1 or _same_in_disguise(layers, pads, kernel))
            and max(kernel) > 1
            and cfg.get("padding") == "valid"
        ):
            if not pads:
                raise ValueError(
                    f"layer {layer['name']}: cannot dilate a VALID {kernel} "
                    f"{layer['class_name']} with no ZeroPadding2D before it"
                )
            layers[pads[0]]["config"]["padding"] = [[0, 0], [0, 0]]
            cfg["padding"] = "same"
        if layer["class_name"] in _POOLS and max(kernel) > 1 and rate > 1:
            config["layers"][index] = _atrous_pooling(layer, kernel, rate)
        geometry[layer["name"]] = (s_in * stride, rate * (stride if converted else 1))
    return geometry


def _atrous_pooling(layer, kernel, rate):
    """The config entry of an `AtrousPooling2D` replacing a pooling layer."""
    entry = tf.keras.layers.serialize(
        atrous_pooling.AtrousPooling2D(
            _POOLS[layer["class_name"]], kernel, (rate, rate), name=layer["name"]
        )
    )
    entry["name"] = layer["name"]
    entry["inbound_nodes"] = layer["inbound_nodes"]
    return entry


def _insert_preprocessing(config, mode):
    """Adds an `ImagePreprocessing` layer right after the input layer."""
    input_name = config["layers"][0]["name"]
    consumer = next(l for l in config["layers"] if input_name in inbound_layers(l))
    entry = tf.keras.layers.serialize(
        image_preprocessing.ImagePreprocessing(mode, name="preprocessing")
    )
    entry["name"] = "preprocessing"
    entry["inbound_nodes"] = copy.deepcopy(consumer["inbound_nodes"])

    def rename(history):
        if history[0] == input_name:
            history[0] = "preprocessing"

    for layer in config["layers"][1:]:
        _visit_history(layer.get("inbound_nodes", []), rename)
    config["layers"].insert(1, entry)


def _load_application(spec, model_variant, crop_size, weights, depth_multiplier):
    """Builds the Keras application, loading `weights` the Keras way.

    The application is built at the crop size: Keras pads its stride-2 VALID
    convs by the parity of the static input size (`correct_pad`), which is
    symmetric only when that size is known and odd.
    """
    kwargs = dict(
        include_top=False, input_shape=(*crop_size, 3), **dict(spec.application_kwargs)
    )
    if spec.has_depth_multiplier:
        kwargs["alpha"] = depth_multiplier
    elif depth_multiplier != 1.0:
        raise ValueError(
            f"--depth_multiplier={depth_multiplier} is only for "
            f"mobilenet_v2, not {model_variant}"
        )
    constructor = getattr(tf.keras.applications, spec.constructor)
    if weights in (None, "", "none"):
        return constructor(weights=None, **kwargs)
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as e:  # Keras raises plain Exception on fetch failure.
            raise RuntimeError(
                f"could not download the ImageNet weights of {model_variant} "
                f"(tf.keras.applications.{spec.constructor}, include_top=False): "
                f"{e}. Without network access, download the no-top weights file "
                f"elsewhere and pass its path, e.g. "
                f"--backbone_weights=/path/to/{model_variant}_notop.h5"
            ) from e
    if not os.path.exists(weights):
        raise FileNotFoundError(f"--backbone_weights: no such file {weights!r}")
    try:
        return constructor(weights=weights, **kwargs)
    except (ValueError, OSError) as e:
        raise ValueError(
            f"--backbone_weights: {weights!r} does not hold no-top weights of "
            f"{model_variant} (depth_multiplier {depth_multiplier}): {e}"
        ) from e


def _endpoint(model, names):
    """The first layer of `names` (a name or a tuple of names) in the model."""
    names = (names,) if isinstance(names, str) else names
    for name in names:
        try:
            return model.get_layer(name)
        except ValueError:
            continue
    raise ValueError(f"{model.name}: none of the endpoint layers {names} exists")


def add_weight_decay(config, weight_decay):
    """Puts DeepLab's L2 weight decay on the backbone's kernels (in place).

    As slim's arg scopes in DeepLab: every conv kernel and the pointwise half
    of separable convs; depthwise kernels carry none.
    """
    regularizer = conv_bn.l2_regularizer(weight_decay)
    if regularizer is None:
        return
    keys = {"Conv2D": "kernel_regularizer", "SeparableConv2D": "pointwise_regularizer"}
    for layer in config["layers"]:
        if layer["class_name"] in keys:
            layer["config"][keys[layer["class_name"]]] = (
                tf.keras.regularizers.serialize(regularizer)
            )


def set_norm_momentum(config, momentum):
    """Sets every batch norm's momentum (DeepLab's `batch_norm_decay`), in place."""
    for layer in config["layers"]:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["momentum"] = float(momentum)


def build_backbone(
    model_variant,
    crop_size,
    output_stride=16,
    depth_multiplier=1.0,
    weights=None,
    weight_decay=0.0,
    norm_momentum=None,
    multi_grid=None,
):
    """Builds a backbone for a fixed crop at an output stride.

    Args:
      model_variant: str, a key of `BACKBONES`.
      crop_size: (int, int), the crop, of the form OS*k + 1 per side.
      output_stride: int, 8, 16 or 32.
      depth_multiplier: float, MobileNet-v2's alpha.
      weights: None or "none", "imagenet" (the Keras download), or the path of
        a weights file for the no-top application.
      weight_decay: float, DeepLab's L2 weight decay on the kernels (0: none).
      norm_momentum: float or None, the momentum of every batch norm's moving
        statistics (DeepLab: 0.9997); None keeps the application's (or
        DeepLab's network's).
      multi_grid: None or three ints, DeepLab's `--multi_grid` (its own
        networks only).

    Returns:
      A functional `tf.keras.Model` from `[batch, h, w, 3]` images in [0, 255]
      to `{"features": [batch, fh, fw, c], "low_level": [batch, lh, lw, c_low]}`
      (stride `output_stride` and 4). Its layers keep Keras' names (DeepLab's
      scopes for DeepLab's networks).

    Raises:
      ValueError: for an unknown variant, a bad crop or output stride, or a
        weights file that does not fit.
    """
    if model_variant not in BACKBONES:
        raise ValueError(
            f"unknown model_variant {model_variant!r}; choose one "
            f"of {sorted(BACKBONES)}"
        )
    check_crop(crop_size, output_stride)
    spec = BACKBONES[model_variant]
    if isinstance(spec, NetworkSpec):
        return _build_network(
            spec,
            model_variant,
            crop_size,
            output_stride,
            depth_multiplier,
            weights,
            weight_decay,
            norm_momentum,
            multi_grid,
        )
    if multi_grid is not None:
        raise ValueError(
            f"--multi_grid is for DeepLab's own networks, not {model_variant}"
        )
    original = _load_application(
        spec, model_variant, crop_size, weights, depth_multiplier
    )
    config = json.loads(original.to_json())["config"]
    for layer in config["layers"]:
        layer.pop("build_config", None)
    dilate_config(config, output_stride, spec.same_padding)
    add_weight_decay(config, weight_decay)
    if norm_momentum is not None:
        set_norm_momentum(config, norm_momentum)
    _insert_preprocessing(config, spec.preprocessing)
    fused_batch_norm.use_fused_in_config(config)
    dilated_depthwise.use_native_in_config(config)
    dilated = tf.keras.Model.from_config(config)
    dilated.set_weights(original.get_weights())
    outputs = {
        FEATURES: _endpoint(dilated, spec.features).output,
        LOW_LEVEL: _endpoint(dilated, spec.low_level).output,
    }
    return tf.keras.Model(dilated.input, outputs, name=model_variant)


def _build_network(
    spec,
    model_variant,
    crop_size,
    output_stride,
    depth_multiplier,
    weights,
    weight_decay,
    norm_momentum,
    multi_grid,
):
    """Builds one of DeepLab's own networks (`NetworkSpec`) as a backbone."""
    if depth_multiplier != 1.0:
        raise ValueError(
            f"--depth_multiplier={depth_multiplier} is only for "
            f"mobilenet_v2, not {model_variant}"
        )
    if weights not in (None, "", "none"):
        raise ValueError(
            f"--backbone_weights={weights!r}: {model_variant} is DeepLab's own "
            "network, which Keras has no weights files of; its ImageNet weights "
            f"are DeepLab's TF1 checkpoint ({model_variant}_imagenet), imported "
            "by models.tf1_checkpoint"
        )
    images = tf.keras.Input((*crop_size, 3))
    x = image_preprocessing.ImagePreprocessing(
        spec.preprocessing, name="preprocessing"
    )(images)
    features = spec.network(
        x,
        output_stride=output_stride,
        multi_grid=multi_grid,
        weight_decay=weight_decay,
        norm_momentum=norm_momentum,
    )
    network = tf.keras.Model(images, features)
    outputs = {
        FEATURES: features,
        LOW_LEVEL: network.get_layer(spec.low_level).output,
    }
    return tf.keras.Model(images, outputs, name=model_variant)
