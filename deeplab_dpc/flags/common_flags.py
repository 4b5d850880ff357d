"""Model and data set flags shared by every program, as DeepLab's `common.py`.

One flagfile (`--flagfile=configs/....flags`, or a training run's
`train.flags`) then serves every program. Library code never reads `FLAGS`:
programs call `model_options_from_flags`. Nothing here imports TensorFlow
when the flags are defined (so `--help` is fast): the enum values below are
the library's, which `tests/flags/test_common_flags.py` checks.
"""

from absl import flags

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import registry

# `sorted(backbones.BACKBONES)`, `backbones.OUTPUT_STRIDES`, the heads of
# `deeplab`: those modules import TensorFlow.
BACKBONE_NAMES = (
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_large_seg",
    "mobilenet_v3_small_seg",
    "resnet101",
    "resnet50",
    "resnet_v1_101_beta",
    "resnet_v1_50_beta",
    "xception",
    "xception_41",
    "xception_65",
    "xception_71",
)
OUTPUT_STRIDES = (8, 16, 32)
HEAD_DPC = "dpc"
HEAD_ASPP = "aspp"

class _CommaMultiFlag(flags.MultiFlag):
    """A list flag given comma separated or repeated, as DeepLab's users pass
    its multi-integer flags.

    `--atrous_rates=6 --atrous_rates=12 --atrous_rates=18` (DeepLab's form)
    and `--atrous_rates=6,12,18` both give ["6", "12", "18"], `--atrous_rates=`
    gives []. A comma list (or an empty value) replaces what came before, as
    a list flag does (so a command line overrides a flagfile's
    `--atrous_rates=6,12,18`); consecutive single values accumulate, as
    DeepLab's multi-integer flags do (the first of them replaces a list).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._last_single = False

    def _parse(self, arguments):
        return [item for items in super()._parse(arguments) for item in items]

    def parse(self, arguments):
        if not isinstance(arguments, str):
            super().parse(arguments)
            return
        items = self.parser.parse(arguments)
        if len(items) == 1 and self.present and self._last_single:
            self.value = list(self.value) + items
        else:
            self.value = items
        self._last_single = len(items) == 1
        self.present += 1


def define_comma_multi(name, default, help_text, flag_values=flags.FLAGS):
    """Defines a `_CommaMultiFlag` (values: lists of strings)."""
    return flags.DEFINE_flag(
        _CommaMultiFlag(
            flags.ListParser(), flags.ArgumentSerializer(), name, default, help_text
        ),
        flag_values,
    )


MODEL_VARIANT = flags.DEFINE_enum(
    "model_variant", "mobilenet_v2", list(BACKBONE_NAMES), "Backbone."
)
DEPTH_MULTIPLIER = flags.DEFINE_float(
    "depth_multiplier", 1.0, "MobileNet-v2's width multiplier (alpha)."
)
flags.register_validator(
    "depth_multiplier", lambda value: value > 0, "must be > 0 (e.g. 0.35, 1.0)"
)
OUTPUT_STRIDE = flags.DEFINE_enum(
    "output_stride",
    "16",
    [str(s) for s in OUTPUT_STRIDES],
    "Ratio of input to backbone feature resolution.",
)
HEAD = flags.DEFINE_enum(
    "head",
    None,
    [HEAD_DPC, HEAD_ASPP],
    "Context head. Default: dpc when --dense_prediction_cell_json is set, "
    "else aspp. --head=dpc without a JSON uses the published Cityscapes cell.",
)
DPC_JSON = flags.DEFINE_string(
    "dense_prediction_cell_json",
    "",
    "A dense prediction cell in DeepLab's JSON format; replaces ASPP.",
)
ATROUS_RATES = define_comma_multi(
    "atrous_rates",
    [],
    "ASPP atrous rates, comma separated (e.g. 6,12,18 at output stride 16) "
    "or repeated as DeepLab's flag (--atrous_rates=6 --atrous_rates=12 "
    "--atrous_rates=18); none means only the 1x1 and image-level branches.",
)
MULTI_GRID = define_comma_multi(
    "multi_grid",
    None,
    "DeepLab's multi-grid of its own networks' last block (ResNet-v1-beta, "
    "Xception), three ints: --multi_grid=1 --multi_grid=2 --multi_grid=4 or "
    "--multi_grid=1,2,4; unset: the network's default.",
)
ASPP_WITH_SEPARABLE_CONV = flags.DEFINE_boolean(
    "aspp_with_separable_conv", True, "ASPP atrous convs are split separable."
)
ADD_IMAGE_LEVEL_FEATURE = flags.DEFINE_boolean(
    "add_image_level_feature", True, "ASPP has the image pooling branch."
)
IMAGE_POOLING_CROP_SIZE = flags.DEFINE_string(
    "image_pooling_crop_size",
    "",
    "Crop 'H,W' that fixes the pooling kernels; default: the crop size.",
)
DECODER_OUTPUT_STRIDE = flags.DEFINE_integer(
    "decoder_output_stride",
    None,
    "4 adds DeepLab v3+'s decoder (8 the MobileNet-v3 seg variants' LR-ASPP "
    "decoder); unset means none.",
)
# DeepLab's flags of its MobileNet-v3 LR-ASPP head (g3doc/model_zoo.md).
IMAGE_POOLING_STRIDE = flags.DEFINE_list(
    "image_pooling_stride", ["1", "1"], "Image pooling stride 'H,W' (LR-ASPP: 4,5)."
)
ASPP_WITH_SQUEEZE_AND_EXCITATION = flags.DEFINE_boolean(
    "aspp_with_squeeze_and_excitation",
    False,
    "The image-level feature gates the 1x1 branch (MobileNet-v3's LR-ASPP).",
)
ASPP_CONVS_FILTERS = flags.DEFINE_integer(
    "aspp_convs_filters", 256, "Channels of the ASPP branches."
)
ASPP_WITH_CONCAT_PROJECTION = flags.DEFINE_boolean(
    "aspp_with_concat_projection", True, "ASPP with its concat projection."
)
IMAGE_SE_USES_QSIGMOID = flags.DEFINE_boolean(
    "image_se_uses_qsigmoid", False, "The LR-ASPP gate is the hard sigmoid."
)
DECODER_USE_SUM_MERGE = flags.DEFINE_boolean(
    "decoder_use_sum_merge", False, "The decoder sums (LR-ASPP) instead of concatenating."
)
DECODER_FILTERS = flags.DEFINE_integer(
    "decoder_filters", 256, "Decoder channels (LR-ASPP: the number of classes)."
)
DECODER_OUTPUT_IS_LOGITS = flags.DEFINE_boolean(
    "decoder_output_is_logits", False, "The decoder's output is the logits (LR-ASPP)."
)
DATASET = flags.DEFINE_string(
    "dataset",
    "pascal_voc_seg",
    "Data set name from the registry (cityscapes, pascal_voc_seg, ade20k, "
    "synthetic, ...), custom with --num_classes and --ignore_label, or a TFDS "
    "source: tfds:cityscapes/semantic_segmentation, tfds:scene_parse150.",
)
DATASET_DIR = flags.DEFINE_string(
    "dataset_dir", None, "Folder of the data set's TFRecord shards."
)
NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Number of classes; default: the data set's."
)
IGNORE_LABEL = flags.DEFINE_integer(
    "ignore_label",
    None,
    "Label excluded from loss and metrics; default: the " "data set's.",
)
BACKBONE_WEIGHTS = flags.DEFINE_string(
    "backbone_weights",
    "none",
    "none, imagenet (downloaded by tf.keras.applications) or a weights file "
    "of the no-top application.",
)
WEIGHT_DECAY = flags.DEFINE_float(
    "weight_decay", 4e-5, "DeepLab's L2 weight decay.", lower_bound=0.0
)
BATCH_NORM_DECAY = flags.DEFINE_float(
    "batch_norm_decay",
    0.9997,
    "DeepLab's batch-norm decay (the moving statistics' momentum); 0.9997 "
    "suits runs of tens of thousands of steps, short runs need less (about "
    "1 - 10 / steps). The search program uses that for its short runs "
    "(pretraining, proxy trials, re-rank) unless this flag is given.",
    lower_bound=0.0,
    upper_bound=1.0,
)


def parse_size(value, flag_name):
    """Parses 'H,W' (or 'S' for a square) into an (int, int) tuple.

    Raises:
      flags.ValidationError: naming the flag and the bad value.
    """
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise flags.ValidationError(
            f"--{flag_name}={value!r}: expected 'height,width', e.g. '513,513'"
        )
    return sizes


def parse_rates(values, flag_name="atrous_rates"):
    """Parses a list of strings into positive ints, naming the flag on error.

    Items may themselves be comma lists ("6,12,18"), as values set in code
    are not split by the flag's parser.
    """
    values = [p.strip() for v in values for p in str(v).split(",") if p.strip()]
    try:
        rates = tuple(int(v) for v in values)
    except ValueError:
        rates = (0,)
    if any(r < 1 for r in rates):
        raise flags.ValidationError(
            f"--{flag_name}={','.join(values)!r}: expected positive integers, "
            f"e.g. 6,12,18"
        )
    return rates


def load_cell_from_flags():
    """The cell for the model flags, or None for an ASPP head."""
    head = HEAD.value
    if DPC_JSON.value:
        if head == HEAD_ASPP:
            raise flags.ValidationError(
                "--head=aspp conflicts with --dense_prediction_cell_json (a DPC "
                "replaces ASPP); drop one of them"
            )
        try:
            return cell_spec.load_cell(DPC_JSON.value)
        except FileNotFoundError:
            raise
        except ValueError as e:  # Named here, not as the crop flag's fault.
            raise flags.ValidationError(f"--dense_prediction_cell_json: {e}") from e
    if head == HEAD_DPC:
        return cell_spec.published_cell()
    return None


def dataset_info_from_flags():
    """The `registry.DatasetInfo` named by --dataset (and its overrides).

    `--num_classes` or `--ignore_label` without `--dataset` declare a custom
    data set (the defaults of the default data set fill in the other one);
    with `--dataset` they must agree with the registry. The class names and
    palette come from `class_names.txt` and `colormap.txt` in
    `--dataset_dir` when those files are there (`metadata.with_metadata`).

    Raises:
      flags.ValidationError: for an unknown data set, disagreeing values, or
        a bad metadata file in --dataset_dir (naming it).
    """
    from deeplab_dpc.data import metadata
    from deeplab_dpc.data import tfds_source

    num_classes, ignore_label = NUM_CLASSES.value, IGNORE_LABEL.value
    if tfds_source.is_tfds_name(DATASET.value):
        try:
            info = tfds_source.dataset_info(DATASET.value)
        except ValueError as e:
            raise flags.ValidationError(f"--dataset: {e}") from e
    elif not flags.FLAGS["dataset"].present and (
        num_classes is not None or ignore_label is not None
    ):
        # `--num_classes` alone (DeepLab's habit) describes a custom label set.
        default = registry.get(DATASET.value)
        info = registry.get(
            "custom",
            default.num_classes if num_classes is None else num_classes,
            default.ignore_label if ignore_label is None else ignore_label,
        )
    else:
        try:
            info = registry.get(DATASET.value, num_classes, ignore_label)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from e
    try:
        return metadata.with_metadata(info, DATASET_DIR.value)
    except (OSError, ValueError) as e:
        raise flags.ValidationError(f"--dataset_dir: {e}") from e


def _multi_grid_from_flag():
    """`--multi_grid` as three ints, or None when not given."""
    if not MULTI_GRID.value:
        return None
    grid = parse_rates(MULTI_GRID.value, "multi_grid")
    if len(grid) != 3:
        raise flags.ValidationError(
            f"--multi_grid={','.join(map(str, grid))}: DeepLab's multi-grid is "
            "three ints (one a unit of the last block), e.g. 1,2,4"
        )
    return grid


def model_options_from_flags(crop_size, **overrides):
    """`deeplab.ModelOptions` from the model flags and a crop size.

    Args:
      crop_size: (int, int), the program's crop (train, eval or export crop).
      **overrides: `ModelOptions` fields to set instead of their flags.

    Returns:
      A `deeplab.ModelOptions`.
    """
    from deeplab_dpc.models import deeplab

    pooling_crop = (
        parse_size(IMAGE_POOLING_CROP_SIZE.value, "image_pooling_crop_size")
        if IMAGE_POOLING_CROP_SIZE.value
        else None
    )
    weights = BACKBONE_WEIGHTS.value
    values = dict(
        model_variant=MODEL_VARIANT.value,
        num_classes=dataset_info_from_flags().num_classes,
        crop_size=crop_size,
        output_stride=int(OUTPUT_STRIDE.value),
        dense_prediction_cell=load_cell_from_flags(),
        atrous_rates=parse_rates(ATROUS_RATES.value),
        multi_grid=_multi_grid_from_flag(),
        aspp_with_separable_conv=ASPP_WITH_SEPARABLE_CONV.value,
        add_image_level_feature=ADD_IMAGE_LEVEL_FEATURE.value,
        image_pooling_crop_size=pooling_crop,
        decoder_output_stride=DECODER_OUTPUT_STRIDE.value,
        image_pooling_stride=parse_size(
            ",".join(IMAGE_POOLING_STRIDE.value), "image_pooling_stride"
        ),
        aspp_with_squeeze_and_excitation=ASPP_WITH_SQUEEZE_AND_EXCITATION.value,
        aspp_convs_filters=ASPP_CONVS_FILTERS.value,
        aspp_with_concat_projection=ASPP_WITH_CONCAT_PROJECTION.value,
        image_se_uses_qsigmoid=IMAGE_SE_USES_QSIGMOID.value,
        decoder_use_sum_merge=DECODER_USE_SUM_MERGE.value,
        decoder_filters=DECODER_FILTERS.value,
        decoder_output_is_logits=DECODER_OUTPUT_IS_LOGITS.value,
        depth_multiplier=DEPTH_MULTIPLIER.value,
        backbone_weights=None if weights == "none" else weights,
        weight_decay=WEIGHT_DECAY.value,
        norm_momentum=BATCH_NORM_DECAY.value,
    )
    values.update(overrides)
    return deeplab.ModelOptions(**values)


def model_options_for_crop_flag(flag_name, value, **overrides):
    """(crop, ModelOptions) for a program's crop flag (e.g. train_crop_size).

    Raises:
      flags.ValidationError: naming the crop flag and the output stride when
        the crop does not suit them, or the flag of another bad value.
    """
    crop = parse_size(value, flag_name)
    try:
        return crop, model_options_from_flags(crop, **overrides)
    except ValueError as e:
        if isinstance(e, flags.ValidationError):
            raise
        raise flags.ValidationError(
            f"--{flag_name}={value!r} (--output_stride={OUTPUT_STRIDE.value}): {e}"
        ) from e
