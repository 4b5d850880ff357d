"""DeepLab meta-architecture: backbone -> head (DPC or ASPP) -> decoder -> logits."""

import dataclasses
from typing import Optional

import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.layers import aspp
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import decoder
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.layers import resize
from deeplab_dpc.models import backbones

HEAD_DPC = "dpc"
HEAD_ASPP = "aspp"
DECODER_OUTPUT_STRIDES = (4,)

# Names of the layers the meta-architecture adds; every other layer of the
# model is the backbone's. `MODULES` maps them to the accounting modules.
DPC_LAYER = "dense_prediction_cell"
ASPP_LAYER = "aspp"
DECODER_LAYER = "decoder"
LOGITS_LAYER = "logits"
UPSAMPLE_LAYER = "upsample_logits"
MODULES = {
    DPC_LAYER: "head",
    ASPP_LAYER: "head",
    DECODER_LAYER: "decoder",
    LOGITS_LAYER: "logits",
    UPSAMPLE_LAYER: "logits",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Everything that fixes a DeepLab model (DeepLab's `ModelOptions`).

    Attributes:
      model_variant: backbone, a key of `backbones.BACKBONES`.
      num_classes: int, logits channels.
      crop_size: (int, int), the crop the model is built for (OS*k + 1).
      output_stride: int, 8, 16 or 32.
      dense_prediction_cell: a `cell_spec.CellSpec`; when set the head is a DPC and
        the ASPP settings are ignored, as in DeepLab.
      atrous_rates: ASPP rates; empty means the 1x1 and image-level branches.
      aspp_with_separable_conv: ASPP atrous convs are split separable.
      add_image_level_feature: ASPP has the image pooling branch.
      image_pooling_crop_size: (int, int) or None, pooling geometry crop.
      decoder_output_stride: None (no decoder) or 4 (DeepLab v3+).
      depth_multiplier: MobileNet-v2's alpha.
      multi_grid: None or three ints, DeepLab's `--multi_grid` (the rate
        multipliers of the last block of DeepLab's own networks).
      backbone_weights: None/"none", "imagenet" or a weights file path.
      weight_decay: DeepLab's `--weight_decay` on every kernel but depthwise ones.
      norm_momentum, norm_epsilon, synchronized: BatchNormalization settings;
        `norm_momentum` (DeepLab's batch-norm decay) applies to the backbone
        too.
    """

    model_variant: str = "mobilenet_v2"
    num_classes: int = 21
    crop_size: tuple = (513, 513)
    output_stride: int = 16
    dense_prediction_cell: Optional[cell_spec.CellSpec] = None
    atrous_rates: tuple = ()
    aspp_with_separable_conv: bool = True
    add_image_level_feature: bool = True
    image_pooling_crop_size: Optional[tuple] = None
    decoder_output_stride: Optional[int] = None
    depth_multiplier: float = 1.0
    multi_grid: Optional[tuple] = None
    backbone_weights: Optional[str] = None
    weight_decay: float = 4e-5
    norm_momentum: float = conv_bn.NORM_MOMENTUM
    norm_epsilon: float = conv_bn.NORM_EPSILON
    synchronized: bool = False

    def __post_init__(self):
        object.__setattr__(self, "crop_size", tuple(int(c) for c in self.crop_size))
        object.__setattr__(
            self, "atrous_rates", tuple(int(r) for r in self.atrous_rates)
        )
        if self.multi_grid is not None:
            object.__setattr__(
                self, "multi_grid", tuple(int(r) for r in self.multi_grid)
            )
        if len(self.crop_size) != 2:
            raise ValueError(
                f"crop_size must be (height, width), got " f"{self.crop_size}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if (
            self.decoder_output_stride is not None
            and self.decoder_output_stride not in DECODER_OUTPUT_STRIDES
        ):
            raise ValueError(
                f"decoder_output_stride must be one of {DECODER_OUTPUT_STRIDES} "
                f"(the low-level feature's stride) or unset, got "
                f"{self.decoder_output_stride}"
            )
        backbones.check_crop(self.crop_size, self.output_stride)

    @property
    def head(self):
        return HEAD_DPC if self.dense_prediction_cell is not None else HEAD_ASPP


def build_head(options):
    """The head layer (`DensePredictionCell` or `ASPP`) for the options."""
    common = dict(
        crop_size=options.crop_size,
        output_stride=options.output_stride,
        pooling_crop_size=options.image_pooling_crop_size,
        weight_decay=options.weight_decay,
        norm_momentum=options.norm_momentum,
        norm_epsilon=options.norm_epsilon,
        synchronized=options.synchronized,
    )
    if options.head == HEAD_DPC:
        return dense_prediction_cell.DensePredictionCell(
            options.dense_prediction_cell, name=DPC_LAYER, **common
        )
    return aspp.ASPP(
        options.atrous_rates,
        use_separable_conv=options.aspp_with_separable_conv,
        add_image_level_feature=options.add_image_level_feature,
        name=ASPP_LAYER,
        **common,
    )


def build_logits(options):
    """DeepLab's 1x1 logits layer (named `LOGITS_LAYER`) for the options.

    It computes in float32 under every dtype policy: with mixed precision the
    logits, their softmax and the loss stay float32.
    """
    return tf.keras.layers.Conv2D(
        options.num_classes,
        1,
        kernel_initializer=conv_bn.kernel_initializer(0.01),
        kernel_regularizer=conv_bn.l2_regularizer(options.weight_decay),
        name=LOGITS_LAYER,
        dtype="float32",
    )


def build_deeplab(options):
    """Builds DeepLab as one flat functional Keras model.

    Args:
      options: a `ModelOptions`.

    Returns:
      A `tf.keras.Model` from `[batch, crop_h, crop_w, 3]` float images in
      [0, 255] to `[batch, crop_h, crop_w, num_classes]` logits (bilinearly
      upsampled with align_corners, as DeepLab). Images of other sizes are
      padded or resized to the crop before the model.

    Raises:
      ValueError: for a crop the output stride cannot serve, or bad options.
    """
    backbone = backbones.build_backbone(
        options.model_variant,
        options.crop_size,
        options.output_stride,
        depth_multiplier=options.depth_multiplier,
        weights=options.backbone_weights,
        weight_decay=options.weight_decay,
        norm_momentum=options.norm_momentum,
        multi_grid=options.multi_grid,
    )
    endpoints = backbone.output
    x = build_head(options)(endpoints[backbones.FEATURES])
    if options.decoder_output_stride is not None:
        x = decoder.Decoder(
            weight_decay=options.weight_decay,
            norm_momentum=options.norm_momentum,
            norm_epsilon=options.norm_epsilon,
            synchronized=options.synchronized,
            name=DECODER_LAYER,
        )([x, endpoints[backbones.LOW_LEVEL]])
    x = build_logits(options)(x)
    x = resize.ResizeBilinear(options.crop_size, name=UPSAMPLE_LAYER, dtype="float32")(
        x
    )
    return tf.keras.Model(backbone.input, x, name="deeplab")


def module_of(layer_name):
    """The accounting module ("backbone", "head", ...) a model layer is in."""
    return MODULES.get(layer_name, "backbone")
