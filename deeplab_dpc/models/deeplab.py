"""DeepLab meta-architecture: backbone -> head (DPC or ASPP) -> decoder -> logits."""

import dataclasses
from typing import Optional

import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.layers import aspp
from deeplab_dpc.layers import conv_bn
from deeplab_dpc.layers import decoder
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.layers import lr_aspp
from deeplab_dpc.layers import resize
from deeplab_dpc.layers import sum_merge_decoder
from deeplab_dpc.models import backbones

HEAD_DPC = "dpc"
HEAD_ASPP = "aspp"
DECODER_OUTPUT_STRIDES = (4, 8)

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
      decoder_output_stride: None (no decoder), 4 (DeepLab v3+) or 8 (the
        MobileNet-v3 seg variants' LR-ASPP decoder): the stride of the
        backbone's low-level endpoint.
      image_pooling_stride: (int, int), DeepLab's `--image_pooling_stride`
        (the LR-ASPP head's pooling stride).
      aspp_with_squeeze_and_excitation: bool, DeepLab's flag: the ASPP is
        MobileNet-v3's LR-ASPP (`layers/lr_aspp.py`); it needs
        `add_image_level_feature`, no atrous rates and
        `aspp_with_concat_projection=False`.
      aspp_convs_filters: int, channels of the ASPP branches.
      aspp_with_concat_projection: bool, DeepLab's flag (False only with
        squeeze-and-excitation).
      image_se_uses_qsigmoid: bool, the LR-ASPP gate is the hard sigmoid.
      decoder_use_sum_merge, decoder_output_is_logits: bools, DeepLab's
        flags; both together give the LR-ASPP decoder
        (`layers/sum_merge_decoder.py`), which then replaces the logits
        layer (the model has no `logits` layer).
      decoder_filters: int, DeepLab's `--decoder_filters` (with
        `decoder_output_is_logits`: the number of classes).
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
    image_pooling_stride: tuple = (1, 1)
    aspp_with_squeeze_and_excitation: bool = False
    aspp_convs_filters: int = 256
    aspp_with_concat_projection: bool = True
    image_se_uses_qsigmoid: bool = False
    decoder_use_sum_merge: bool = False
    decoder_filters: int = 256
    decoder_output_is_logits: bool = False
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
        object.__setattr__(
            self, "image_pooling_stride", tuple(int(s) for s in self.image_pooling_stride)
        )
        backbones.check_crop(self.crop_size, self.output_stride)
        self._check_deeplab_head_flags()

    def _check_deeplab_head_flags(self):
        """The combinations of DeepLab's head flags this package builds."""
        lr_aspp_flags = (
            "--aspp_with_squeeze_and_excitation with --add_image_level_feature, "
            "--aspp_with_concat_projection=false and no --atrous_rates"
        )
        if self.aspp_with_squeeze_and_excitation:
            if (
                not self.add_image_level_feature
                or self.aspp_with_concat_projection
                or self.atrous_rates
            ):
                raise ValueError(f"the LR-ASPP head is built for {lr_aspp_flags}")
        elif not self.aspp_with_concat_projection or self.aspp_convs_filters != 256 or (
            self.image_se_uses_qsigmoid or self.image_pooling_stride != (1, 1)
        ):
            raise ValueError(
                "--aspp_with_concat_projection=false, --aspp_convs_filters, "
                "--image_se_uses_qsigmoid and --image_pooling_stride are built "
                f"here only for the LR-ASPP head ({lr_aspp_flags})"
            )
        sum_merge = (self.decoder_use_sum_merge, self.decoder_output_is_logits)
        if any(sum_merge):
            if not all(sum_merge) or self.decoder_output_stride is None:
                raise ValueError(
                    "--decoder_use_sum_merge and --decoder_output_is_logits are "
                    "built here together (the LR-ASPP decoder), with "
                    "--decoder_output_stride"
                )
            if self.decoder_filters != self.num_classes:
                raise ValueError(
                    f"--decoder_filters={self.decoder_filters}: the decoder's "
                    f"output is the logits, so it must be num_classes="
                    f"{self.num_classes}"
                )
        elif self.decoder_filters != 256:
            raise ValueError(
                "--decoder_filters is built here only for the LR-ASPP decoder "
                "(--decoder_use_sum_merge --decoder_output_is_logits)"
            )

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
    if options.aspp_with_squeeze_and_excitation:
        return lr_aspp.LRASPP(
            filters=options.aspp_convs_filters,
            pooling_stride=options.image_pooling_stride,
            use_qsigmoid=options.image_se_uses_qsigmoid,
            name=ASPP_LAYER,
            **common,
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
        low_level_stride = backbones.low_level_stride(options.model_variant)
        if options.decoder_output_stride != low_level_stride:
            raise ValueError(
                f"decoder_output_stride {options.decoder_output_stride}: "
                f"{options.model_variant}'s decoder endpoint is at stride "
                f"{low_level_stride}"
            )
    if options.decoder_output_is_logits:
        x = sum_merge_decoder.SumMergeDecoder(
            options.decoder_filters,
            weight_decay=options.weight_decay,
            name=DECODER_LAYER,
            dtype="float32",
        )([x, endpoints[backbones.LOW_LEVEL]])
    elif options.decoder_output_stride is not None:
        x = decoder.Decoder(
            weight_decay=options.weight_decay,
            norm_momentum=options.norm_momentum,
            norm_epsilon=options.norm_epsilon,
            synchronized=options.synchronized,
            name=DECODER_LAYER,
        )([x, endpoints[backbones.LOW_LEVEL]])
    if not options.decoder_output_is_logits:
        x = build_logits(options)(x)
    x = resize.ResizeBilinear(options.crop_size, name=UPSAMPLE_LAYER, dtype="float32")(
        x
    )
    return tf.keras.Model(backbone.input, x, name="deeplab")


def module_of(layer_name):
    """The accounting module ("backbone", "head", ...) a model layer is in."""
    return MODULES.get(layer_name, "backbone")
