"""Imports DeepLab's TF1 (slim, name-based) checkpoints into `build_deeplab` models.

DeepLab's released checkpoints name every variable by its TF1 variable scope:
`MobilenetV2/expanded_conv_3/depthwise/depthwise_weights`,
`xception_65/entry_flow/conv1_1/BatchNorm/gamma`, `aspp0/weights`,
`meta_architecture/branch0_depthwise/depthwise_weights`,
`decoder/feature_projection0/weights`, `logits/semantic/biases`, ...
`tf1_variable_names` gives each variable of a model built by
`deeplab.build_deeplab` its DeepLab name, walking the model's layers (the
head, decoder and logits layers by their class, the backbone's layers by a
per-backbone rule in `BACKBONE_NAMING`); `import_tf1_checkpoint` reads the
checkpoint with `tf.train.load_checkpoint`, checks that the two sides match
one to one with equal shapes, and only then assigns every value.

Not model weights, and skipped (listed in the report): `global_step`,
optimizer slots (`<name>/Momentum`, `<name>/Adam`, `<name>/Adam_1`,
`<name>/RMSProp*`, `beta1_power`, `beta2_power`), moving averages of the
weights (`<name>/ExponentialMovingAverage`) and an ImageNet classifier
(`<network>/logits/...`) in a backbone checkpoint.

Fine-tuning on another label set, DeepLab's `--initialize_last_layer=false`:
pass `exclude_modules=excluded_modules(initialize_last_layer=False)` (the
logits, head and decoder keep their fresh initial values; with
`last_layers_contain_logits_only=True` only the logits do). A backbone-only
(ImageNet) checkpoint is imported with `exclude_modules=("head", "decoder",
"logits")`.

Example:
>>> model = deeplab.build_deeplab(deeplab.ModelOptions(num_classes=19, ...))
>>> report = import_tf1_checkpoint(model, "deeplabv3_cityscapes/model.ckpt")
>>> print(report.format_table())
"""

import collections
import dataclasses
import re
from typing import Tuple

import numpy as np
import tensorflow as tf

from deeplab_dpc.layers import aspp
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import decoder
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.layers import lr_aspp
from deeplab_dpc.layers import pyramid_pooling
from deeplab_dpc.layers import split_separable_conv
from deeplab_dpc.layers import sum_merge_decoder
from deeplab_dpc.models import deeplab

MODULES = ("backbone", "head", "decoder", "logits")
# DeepLab's `--initialize_last_layer=false` leaves these freshly initialised
# (`last_layers_contain_logits_only` picks the first).
LOGITS_MODULES = ("logits",)
LAST_LAYER_MODULES = ("logits", "head", "decoder")

DPC_SCOPE = "meta_architecture"
DECODER_SCOPE = "decoder"
LOGITS_SCOPE = "logits/semantic"
BATCH_NORM = "BatchNorm"

# Checkpoint entries that are not model weights, with the reason shown.
_SKIPPED = (
    (re.compile(r"^global_step$"), "global step"),
    (re.compile(r"/(Momentum|Adam|Adam_1|RMSProp|RMSProp_1|Adagrad|Ftrl|Ftrl_1)$"),
     "optimizer slot"),
    (re.compile(r"^beta[12]_power(_\d+)?$"), "optimizer state"),
    (re.compile(r"/ExponentialMovingAverage$"), "moving average of a weight"),
    (re.compile(r"^[^/]+/logits/(weights|biases)$"), "ImageNet classifier"),
    (re.compile(r"^MobilenetV2/(Logits|Conv_1)/"),
     "ImageNet classifier or layer past DeepLab's feature endpoint"),
)


class CheckpointMismatchError(ValueError):
    """A TF1 checkpoint does not fit the model; the message names every variable."""


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What `import_tf1_checkpoint` did.

    Attributes:
      checkpoint: str, the checkpoint prefix read.
      mapped: tuple of (DeepLab name, Keras variable path, shape), assigned.
      excluded: tuple of (DeepLab name, module), model variables left at their
        values because their module was excluded.
      skipped: tuple of (checkpoint name, reason): not model weights, or
        weights of excluded modules.
    """

    checkpoint: str
    mapped: Tuple = ()
    excluded: Tuple = ()
    skipped: Tuple = ()

    def format_table(self):
        """A plain-text table: mapped, excluded and skipped, by reason.

        Example:
        >>> print(report.format_table())
        TF1 checkpoint /ckpt/model.ckpt
        mapped                        312 variables (2,543,507 values)
        excluded                        0 model variables (left as initialised)
        skipped: optimizer slot       188 checkpoint entries
        skipped: global step            1 checkpoint entries
        """
        reasons = collections.Counter(reason for _, reason in self.skipped)
        rows = [
            ("mapped", len(self.mapped),
             f"variables ({sum(int(np.prod(s)) for _, _, s in self.mapped):,} values)"),
            ("excluded", len(self.excluded), "model variables (left as initialised)"),
        ] + [(f"skipped: {r}", n, "checkpoint entries") for r, n in reasons.most_common()]
        width = max(len(r[0]) for r in rows)
        return "\n".join(
            [f"TF1 checkpoint {self.checkpoint}"]
            + [f"{label.ljust(width)}  {count:6d} {what}" for label, count, what in rows]
        )


def excluded_modules(initialize_last_layer=True, last_layers_contain_logits_only=False):
    """The modules DeepLab's flags leave uninitialised by a checkpoint.

    Args:
      initialize_last_layer: DeepLab's `--initialize_last_layer`.
      last_layers_contain_logits_only: DeepLab's
        `--last_layers_contain_logits_only`.

    Returns:
      tuple of module names (`MODULES`).
    """
    if initialize_last_layer:
        return ()
    return LOGITS_MODULES if last_layers_contain_logits_only else LAST_LAYER_MODULES


def resolve_tf1_checkpoint(path):
    """The checkpoint prefix of `path`: a prefix, or a folder holding one.

    A folder may be a training directory (with a `checkpoint` file) or the
    unpacked contents of a model-zoo tarball (`model.ckpt.index`, ...).

    Raises:
      FileNotFoundError: no checkpoint, or several with no `checkpoint` file.
    """
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        indexes = sorted(tf.io.gfile.glob(tf.io.gfile.join(path, "*.index")))
        if len(indexes) != 1:
            raise FileNotFoundError(
                f"{path!r}: expected one TF1 checkpoint (a *.index file) in the "
                f"folder, found {len(indexes)}: {indexes}; pass the prefix"
            )
        return indexes[0][: -len(".index")]
    if not tf.io.gfile.exists(path + ".index") and not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"no TF1 checkpoint at {path!r} (neither a folder nor a prefix with "
            f"{path + '.index'!r})"
        )
    return path


# ---------------------------------------------------------------- naming


def _variable_path(variable):
    return getattr(variable, "path", None) or variable.name.split(":")[0]


def _conv_names(layer, scope):
    """A Conv2D's or DepthwiseConv2D's variables under a slim scope."""
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        # tf_keras calls it `depthwise_kernel`, Keras 3 `kernel`.
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = layer.kernel if kernel is None else kernel
        names = {f"{scope}/depthwise_weights": kernel}
    else:
        names = {f"{scope}/weights": layer.kernel}
    if layer.use_bias:
        names[f"{scope}/biases"] = layer.bias
    return names


def _batch_norm_names(layer, scope):
    """A BatchNormalization's variables under `scope/BatchNorm`."""
    names = {}
    for attribute in ("gamma", "beta", "moving_mean", "moving_variance"):
        variable = getattr(layer, attribute, None)
        if variable is not None:
            names[f"{scope}/{BATCH_NORM}/{attribute}"] = variable
    return names


def _conv_bn_names(layer, scope):
    """A `ConvBN` as slim's `conv2d` with a batch norm."""
    return {**_conv_names(layer.conv, scope), **_batch_norm_names(layer.bn, scope)}


def _split_separable_names(layer, scope):
    """A `SplitSeparableConv2D` as DeepLab's `split_separable_conv2d`."""
    depthwise = f"{scope}_depthwise"
    return {
        **_conv_names(layer.depthwise, depthwise),
        **_batch_norm_names(layer.depthwise_bn, depthwise),
        **_conv_bn_names(layer.pointwise, f"{scope}_pointwise"),
    }


def _op_names(layer, scope):
    """A head op (ConvBN, SplitSeparableConv2D or PyramidPooling)."""
    if isinstance(layer, split_separable_conv.SplitSeparableConv2D):
        return _split_separable_names(layer, scope)
    if isinstance(layer, pyramid_pooling.PyramidPooling):
        return _conv_bn_names(layer.conv, scope)
    if isinstance(layer, conv_bn.ConvBN):
        return _conv_bn_names(layer, scope)
    raise TypeError(f"no DeepLab name for the head op {layer.name} ({type(layer)})")


def _join(scope, name):
    return f"{scope}/{name}" if scope else name


def _head_names(layer):
    """The DPC (under `meta_architecture`) or ASPP (at the top) variables."""
    if isinstance(layer, lr_aspp.LRASPP):
        return {
            **_conv_names(layer.image_pooling, "image_pooling"),
            **_conv_bn_names(layer.aspp0, "aspp0"),
        }
    scope = DPC_SCOPE if isinstance(layer, dense_prediction_cell.DensePredictionCell) else ""
    names = {}
    for branch in layer.branch_layers:
        names.update(_op_names(branch, _join(scope, branch.name)))
    names.update(_conv_bn_names(layer.concat_projection, _join(scope, "concat_projection")))
    return names


def _decoder_names(layer):
    if isinstance(layer, sum_merge_decoder.SumMergeDecoder):
        return {
            **_conv_names(
                layer.feature_projection, f"{DECODER_SCOPE}/feature_projection0"
            ),
            **_conv_names(layer.decoder_conv, f"{DECODER_SCOPE}/decoder_conv0"),
        }
    names = _conv_bn_names(
        layer.feature_projection, f"{DECODER_SCOPE}/{layer.feature_projection.name}"
    )
    for refine in layer.refine:
        names.update(_split_separable_names(refine, f"{DECODER_SCOPE}/{refine.name}"))
    return names


# MobileNet-v2 as tf.keras.applications names its layers -> DeepLab's scopes.
_MOBILENET_V2_LAYERS = (
    (re.compile(r"^Conv1$"), "Conv"),
    (re.compile(r"^bn_Conv1$"), "Conv/BatchNorm"),
    (re.compile(r"^expanded_conv_(depthwise|project)$"), r"expanded_conv/\1"),
    (re.compile(r"^expanded_conv_(depthwise|project)_BN$"), r"expanded_conv/\1/BatchNorm"),
    (re.compile(r"^block_(\d+)_(expand|depthwise|project)$"), r"expanded_conv_\1/\2"),
    (re.compile(r"^block_(\d+)_(expand|depthwise|project)_BN$"),
     r"expanded_conv_\1/\2/BatchNorm"),
)


def _mobilenet_v2_scope(layer_name):
    for pattern, replacement in _MOBILENET_V2_LAYERS:
        if pattern.match(layer_name):
            return "MobilenetV2/" + pattern.sub(replacement, layer_name)
    return None


def _dotted_scope(network_scope):
    """The rule of this package's own DeepLab networks (`models/xception.py`,
    `models/resnet_v1_beta.py`): a layer's name is its DeepLab scope under
    the network's, with '.' for '/' (Keras names cannot hold '/'); batch
    norms are `<conv scope>.BatchNorm`."""

    def scope(layer_name):
        return f"{network_scope}/{layer_name.replace('.', '/')}"

    return scope


# DeepLab's variable scope of each backbone (its feature extractor's
# `name_scope`: the beta ResNets keep the plain ResNets' scopes).
NETWORK_SCOPES = {
    "mobilenet_v2": "MobilenetV2",
    "xception_41": "xception_41",
    "xception_65": "xception_65",
    "xception_71": "xception_71",
    "resnet_v1_50_beta": "resnet_v1_50",
    "resnet_v1_101_beta": "resnet_v1_101",
    "mobilenet_v3_large_seg": "MobilenetV3",
    "mobilenet_v3_small_seg": "MobilenetV3",
}

# model_variant -> function from a backbone layer's name to its DeepLab scope.
BACKBONE_NAMING = {
    "mobilenet_v2": _mobilenet_v2_scope,
    **{
        variant: _dotted_scope(scope)
        for variant, scope in NETWORK_SCOPES.items()
        if variant != "mobilenet_v2"
    },
}


def _backbone_layer_names(layer, scope):
    if scope is None:
        raise CheckpointMismatchError(
            f"backbone layer {layer.name!r} has no DeepLab name: the model's "
            "backbone is not the one DeepLab builds for this model_variant"
        )
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        if not scope.endswith("/" + BATCH_NORM):
            raise CheckpointMismatchError(f"batch norm {layer.name!r} maps to {scope!r}")
        return _batch_norm_names(layer, scope[: -len(BATCH_NORM) - 1])
    if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)):
        return _conv_names(layer, scope)
    raise CheckpointMismatchError(
        f"backbone layer {layer.name!r} ({type(layer).__name__}) has weights but "
        "no DeepLab counterpart"
    )


def tf1_variable_names(model, model_variant):
    """DeepLab's TF1 name of every variable of a `build_deeplab` model.

    Args:
      model: a model from `deeplab.build_deeplab` (batch norms not folded).
      model_variant: str, its backbone (a key of `BACKBONE_NAMING`).

    Returns:
      dict DeepLab name -> (variable, module), module one of `MODULES`, in
      the model's layer order.

    Raises:
      ValueError: for a backbone DeepLab has no checkpoints of here.
      CheckpointMismatchError: if a model variable gets no name or two
        variables get one name.
    """
    if model_variant not in BACKBONE_NAMING:
        raise ValueError(
            f"no DeepLab variable names for model_variant {model_variant!r}; "
            f"DeepLab checkpoints exist here for {sorted(BACKBONE_NAMING)}"
        )
    backbone_scope = BACKBONE_NAMING[model_variant]
    names = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        module = deeplab.module_of(layer.name)
        if isinstance(
            layer, (dense_prediction_cell.DensePredictionCell, aspp.ASPP, lr_aspp.LRASPP)
        ):
            layer_names = _head_names(layer)
        elif isinstance(layer, (decoder.Decoder, sum_merge_decoder.SumMergeDecoder)):
            layer_names = _decoder_names(layer)
        elif layer.name == deeplab.LOGITS_LAYER:
            layer_names = _conv_names(layer, LOGITS_SCOPE)
        else:
            layer_names = _backbone_layer_names(layer, backbone_scope(layer.name))
        for name, variable in layer_names.items():
            if name in names:
                raise CheckpointMismatchError(f"two model variables map to {name!r}")
            names[name] = (variable, module)
    named = {id(v) for v, _ in names.values()}
    unnamed = [_variable_path(v) for v in model.weights if id(v) not in named]
    if unnamed:
        raise CheckpointMismatchError(
            f"{len(unnamed)} model variable(s) have no DeepLab name: {unnamed}"
        )
    return names


def skip_reason(name):
    """Why a checkpoint entry is not a model weight, or None if it is one."""
    for pattern, reason in _SKIPPED:
        if pattern.search(name):
            return reason
    return None


# ---------------------------------------------------------------- import


def _hints(model_variant, missing, unused, model_modules, checkpoint_names):
    """Sentences that say what the usual causes of a mismatch are."""
    hints = []
    backbones_held = sorted(
        variant
        for variant, scope in NETWORK_SCOPES.items()
        if any(n.startswith(scope + "/") for n in checkpoint_names)
    )
    if backbones_held and model_variant not in backbones_held:
        hints.append(
            f"The checkpoint's backbone is {' or '.join(backbones_held)}, the "
            f"model's {model_variant}: pass --model_variant={backbones_held[0]}."
        )
    unused_dpc = any(n.startswith(DPC_SCOPE + "/") for n in unused)
    missing_dpc = any(n.startswith(DPC_SCOPE + "/") for n in missing)
    if unused_dpc and not missing_dpc:
        hints.append(
            "The checkpoint holds a dense prediction cell (meta_architecture/...) "
            "but the model has ASPP: build it with --dense_prediction_cell_json, "
            "the cell the checkpoint was trained with."
        )
    if missing_dpc and not unused_dpc:
        hints.append(
            "The model has a dense prediction cell but the checkpoint has none "
            "(an ASPP checkpoint): leave out --dense_prediction_cell_json."
        )
    if any(n.startswith("decoder/") for n in unused) and "decoder" not in model_modules:
        hints.append("The checkpoint has a decoder: pass --decoder_output_stride=4.")
    if any(n.startswith("decoder/") for n in missing) and not any(
        n.startswith("decoder/") for n in checkpoint_names
    ):
        hints.append("The checkpoint has no decoder: leave out --decoder_output_stride.")
    roots = set(NETWORK_SCOPES.values())
    if any(n.split("/")[0] not in roots for n in missing) and all(
        n.split("/")[0] in roots for n in checkpoint_names
    ):
        hints.append(
            "The checkpoint holds only a backbone (e.g. an ImageNet checkpoint): "
            "import it with exclude_modules=('head', 'decoder', 'logits')."
        )
    if any(re.match(r"^(aspp\d|image_pooling|concat_projection)/", n) for n in unused):
        hints.append(
            "Check --atrous_rates, --aspp_with_separable_conv and "
            "--add_image_level_feature against the checkpoint's configuration."
        )
    return hints


def import_tf1_checkpoint(model, checkpoint, model_variant, exclude_modules=()):
    """Loads a DeepLab TF1 checkpoint into a `build_deeplab` model.

    Every variable of the model's modules not in `exclude_modules` must have
    its DeepLab counterpart in the checkpoint, of equal shape, and every
    model weight of the checkpoint must be used (or belong to an excluded
    module); otherwise nothing is assigned and the error lists every
    offending variable. `global_step`, optimizer slots and the like are
    skipped (`skip_reason`).

    Args:
      model: a model from `deeplab.build_deeplab`, batch norms not folded.
      checkpoint: str, a TF1 checkpoint prefix or a folder holding one.
      model_variant: str, the model's backbone (`ModelOptions.model_variant`).
      exclude_modules: module names (`MODULES`) whose variables are neither
        read nor required: `excluded_modules(initialize_last_layer=False)` to
        fine-tune on another label set; ("head", "decoder", "logits") for a
        backbone-only checkpoint.

    Returns:
      An `ImportReport`.

    Raises:
      FileNotFoundError: no checkpoint at `checkpoint`.
      CheckpointMismatchError (a ValueError): unmapped, missing, unused or
        shape-mismatched variables, or a logits layer of another number of
        classes; the message names each variable and how to fix the usual
        causes.
    """
    unknown = set(exclude_modules) - set(MODULES)
    if unknown:
        raise ValueError(f"exclude_modules: unknown modules {sorted(unknown)}; use {MODULES}")
    prefix = resolve_tf1_checkpoint(checkpoint)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    names = tf1_variable_names(model, model_variant)

    skipped, excluded, mapped = [], [], []
    missing, mismatched = [], []
    for name, (variable, module) in names.items():
        if module in exclude_modules:
            excluded.append((name, module))
            continue
        if name not in shapes:
            missing.append(name)
        elif tuple(shapes[name]) != tuple(variable.shape):
            mismatched.append((name, tuple(shapes[name]), tuple(variable.shape)))
        else:
            mapped.append((name, variable))
    unused = []
    for name in sorted(shapes):
        if name in names:
            if names[name][1] in exclude_modules:
                skipped.append((name, f"excluded module {names[name][1]}"))
            continue
        reason = skip_reason(name)
        if reason:
            skipped.append((name, reason))
        else:
            unused.append(name)

    if missing or unused or mismatched:
        raise CheckpointMismatchError(
            _mismatch_message(prefix, model_variant, names, shapes, missing, unused,
                              mismatched)
        )
    for name, variable in mapped:
        variable.assign(reader.get_tensor(name).astype(np.float32))
    return ImportReport(
        checkpoint=prefix,
        mapped=tuple((n, _variable_path(v), tuple(v.shape)) for n, v in mapped),
        excluded=tuple(excluded),
        skipped=tuple(skipped),
    )


def _mismatch_message(prefix, model_variant, names, shapes, missing, unused, mismatched):
    lines = [
        f"the TF1 checkpoint {prefix} does not fit the model "
        f"(model_variant {model_variant}):"
    ]
    logits = f"{LOGITS_SCOPE}/weights"
    classes = [(h, w) for n, h, w in mismatched if n == logits and h[:-1] == w[:-1]]
    if classes:
        (have, want), = classes
        lines.append(
            f"  wrong num_classes: the checkpoint's logits ({logits}) are for "
            f"{have[-1]} classes, the model has num_classes={want[-1]}. Build it "
            f"with --num_classes={have[-1]} to use the checkpoint as it is, or, "
            "to fine-tune on your own classes, leave the logits out: "
            "--initialize_last_layer=false --last_layers_contain_logits_only=true "
            "(exclude_modules=excluded_modules(initialize_last_layer=False, "
            "last_layers_contain_logits_only=True))."
        )
    logits_scope = (logits, f"{LOGITS_SCOPE}/biases") if classes else ()
    other = [m for m in mismatched if m[0] not in logits_scope]
    if other:
        lines.append(f"  {len(other)} shape mismatch(es) (checkpoint vs model):")
        lines += [f"    {n}: {h} vs {w}" for n, h, w in other]
    if missing:
        lines.append(
            f"  {len(missing)} model variable(s) with no counterpart in the checkpoint:"
        )
        lines += [f"    {n}" for n in missing]
    if unused:
        lines.append(f"  {len(unused)} checkpoint variable(s) the model does not use:")
        lines += [f"    {n} {list(shapes[n])}" for n in unused]
    modules = {module for _, module in names.values()}
    hints = _hints(
        model_variant, missing, unused, modules, [n for n in shapes if not skip_reason(n)]
    )
    lines += [f"  Hint: {h}" for h in hints]
    return "\n".join(lines)
