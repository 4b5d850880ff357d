"""Model and data set flags shared by every program, as DeepLab's `common.py`.

One flagfile (`--flagfile=configs/....flags`) then serves every program.
Library code never reads `FLAGS`: programs call `model_options_from_flags`.
"""

from absl import flags

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import metadata
from deeplab_dpc.data import registry
from deeplab_dpc.data import tfds_source
from deeplab_dpc.models import backbones
from deeplab_dpc.models import deeplab

MODEL_VARIANT = flags.DEFINE_enum(
    "model_variant", "mobilenet_v2", sorted(backbones.BACKBONES), "Backbone."
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
    [str(s) for s in backbones.OUTPUT_STRIDES],
    "Ratio of input to backbone feature resolution.",
)
HEAD = flags.DEFINE_enum(
    "head",
    None,
    [deeplab.HEAD_DPC, deeplab.HEAD_ASPP],
    "Context head. Default: dpc when --dense_prediction_cell_json is set, "
    "else aspp. --head=dpc without a JSON uses the published Cityscapes cell.",
)
DPC_JSON = flags.DEFINE_string(
    "dense_prediction_cell_json",
    "",
    "A dense prediction cell in DeepLab's JSON format; replaces ASPP.",
)
ATROUS_RATES = flags.DEFINE_list(
    "atrous_rates",
    [],
    "ASPP atrous rates, comma separated (e.g. 6,12,18 at "
    "output stride 16); empty means only the 1x1 and image-level branches.",
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
    "decoder_output_stride", None, "4 adds DeepLab v3+'s decoder; unset means none."
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
    """Parses a list of strings into positive ints, naming the flag on error."""
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
        if head == deeplab.HEAD_ASPP:
            raise flags.ValidationError(
                "--head=aspp conflicts with --dense_prediction_cell_json (a DPC "
                "replaces ASPP); drop one of them"
            )
        return cell_spec.load_cell(DPC_JSON.value)
    if head == deeplab.HEAD_DPC:
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


def model_options_from_flags(crop_size, **overrides):
    """`deeplab.ModelOptions` from the model flags and a crop size.

    Args:
      crop_size: (int, int), the program's crop (train, eval or export crop).
      **overrides: `ModelOptions` fields to set instead of their flags.

    Returns:
      A `deeplab.ModelOptions`.
    """
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
        aspp_with_separable_conv=ASPP_WITH_SEPARABLE_CONV.value,
        add_image_level_feature=ADD_IMAGE_LEVEL_FEATURE.value,
        image_pooling_crop_size=pooling_crop,
        decoder_output_stride=DECODER_OUTPUT_STRIDE.value,
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
