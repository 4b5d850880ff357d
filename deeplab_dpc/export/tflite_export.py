"""Exports TFLite variants of a model and checks each one in LiteRT.

`export` converts every asked variant (`tflite.convert`; "qat_int8" and
"pruned" after fine-tuning in the tf_keras subprocess of `legacy_keras`),
then checks each file before anything reaches the output folder:

* the rules of `tflite.ConversionOptions`: only LiteRT builtin ops unless
  `allow_flex`; no int64 tensor with `include_argmax`; uint8 input with
  `include_preprocessing`. (A file that does hold Flex ops, with
  `allow_flex`, is written unchecked, "litert_checked": false: LiteRT's
  Python package has no Flex delegate to run it.)
* parity with the float model on a few images (`CheckOptions`): float32 and
  float16 logits within a relative tolerance; the pruned file within the
  float32 tolerance of the pruned tf_keras model; the int8 variants by the
  pixel agreement of their classes with the float model's;
* when a validation split is given, the mIOU of the float model and of
  every file (`evaluate`, the project's `metrics`), and each file's mIOU
  drop and pixel agreement on the whole split.

The report (sizes raw and gzip-compressed, ops, parity, mIOU) is written
as `tflite_export.json` beside the files.
"""

import dataclasses
import gzip
import json
import os
import shutil
from typing import Optional

import numpy as np
import tensorflow as tf

from deeplab_dpc import file_io
from deeplab_dpc import progress
from deeplab_dpc.data import pipeline
from deeplab_dpc.data import tfexample
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.export import legacy_keras
from deeplab_dpc.export import litert_runner
from deeplab_dpc.export import tflite

REPORT_FILE = "tflite_export.json"
# The tf_keras copy must reproduce the Keras model's logits to float noise.
_TRANSFER_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """A file does not reproduce its model within the check's tolerance."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """How `export` checks every file against the float model.

    Attributes:
      dataset_dir: str or None; the `eval_split` shards there give the parity
        images and every variant's mIOU (None: parity on the calibration or
        random images, no mIOU).
      eval_split: str, the validation split.
      num_classes, ignore_label: ints, the data set's labels.
      max_eval_images: int, images of the mIOU (0: the whole split).
      parity_images: int >= 1, images of the output comparisons.
      float32_tolerance: float32 and pruned files: max |logits - reference|
        over max(1, max |reference|) (the pruned file against the pruned
        model).
      float16_tolerance: the same for float16.
      min_float_agreement: the pixel agreement float files need when they
        output classes (`include_argmax`).
      min_pixel_agreement: the pixel agreement of the int8 variants' classes
        with the float model's.
      num_threads: int, LiteRT threads.
    """

    dataset_dir: Optional[str] = None
    eval_split: str = "val"
    num_classes: int = 0
    ignore_label: int = 255
    max_eval_images: int = 0
    parity_images: int = 4
    float32_tolerance: float = 1e-3
    float16_tolerance: float = 2e-2
    min_float_agreement: float = 0.99
    min_pixel_agreement: float = 0.9
    num_threads: int = 1


def output_paths(output_dir, variants):
    """variant -> `<output_dir>/<variant>.tflite`."""
    return {v: os.path.join(output_dir, f"{v}.tflite") for v in variants}


def check_output_dir(output_dir, variants, overwrite=False):
    """Raises FileExistsError naming the outputs that exist, unless overwrite."""
    paths = [*output_paths(output_dir, variants).values()]
    paths.append(os.path.join(output_dir, REPORT_FILE))
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist: pass --overwrite "
            "(overwrite=True) to replace them"
        )


def _check_file(content, variant, options):
    """The file's `ModelInfo`; ConversionError when it breaks a rule."""
    info = litert_runner.model_info(content)
    if info.unsupported_ops and not options.allow_flex:
        raise tflite.ConversionError(
            f"{variant}: ops that LiteRT's builtins lack: "
            f"{list(info.unsupported_ops)} (--allow_flex allows Flex ops)"
        )
    int64 = info.tensors_of_type("int64")
    if options.include_argmax and int64:
        raise tflite.ConversionError(f"{variant}: int64 tensors in the file: {int64}")
    if options.include_preprocessing and info.input_types != ("uint8",):
        raise tflite.ConversionError(
            f"{variant}: the input is {info.input_types}, not uint8 pixels"
        )
    return info


def _passed(variant, parity, checks):
    """Whether a variant's parity figures meet the check's thresholds."""
    if variant not in tflite.FLOAT_OUTPUTS:
        return parity["agreement"] >= checks.min_pixel_agreement
    if parity["relative_max_abs_diff"] is None:
        return parity["agreement"] >= checks.min_float_agreement
    tolerance = checks.float32_tolerance
    if variant == tflite.FLOAT16:
        tolerance = checks.float16_tolerance
    return parity["relative_max_abs_diff"] <= tolerance


def _parity_images(checks, crop_size, representative):
    """Validation images, else calibration images, else seeded noise."""
    if checks.dataset_dir:
        pattern = os.path.join(checks.dataset_dir, f"{checks.eval_split}-*")
        images = tflite.representative_images(pattern, crop_size, checks.parity_images)
        return np.concatenate(images)
    if representative:
        return np.concatenate(representative[: checks.parity_images])
    rng = np.random.default_rng(0)
    shape = (checks.parity_images, *crop_size, 3)
    return np.round(rng.uniform(0.0, 255.0, shape)).astype(np.float32)


def _fine_tuned(variants, keras, fine_tune, images, logits, work_dir):
    """Runs `legacy_keras`; returns variant -> (model function, its info).

    Raises:
      ParityError: when the tf_keras copy of the model (before fine-tuning)
        does not give the Keras model's logits.
    """
    model, model_options = keras
    result = legacy_keras.run(
        variants, model, model_options, fine_tune, images, work_dir
    )
    outputs = result.pop("outputs")
    scale = max(1.0, float(np.max(np.abs(logits))))
    difference = np.max(np.abs(outputs[legacy_keras.FLOAT] - logits)) / scale
    difference = float(difference)
    if difference > _TRANSFER_TOLERANCE:
        raise ParityError(
            "the tf_keras copy of the model gives other logits than the Keras "
            f"model before fine-tuning (relative difference {difference:.2e})"
        )
    functions = {}
    for variant in variants:
        info = result[variant]
        function = tflite.graph_def_fn(
            info.pop("graph"), info.pop("input"), info.pop("output")
        )
        info["tf_keras_transfer_difference"] = difference
        info["tf_keras_logits"] = outputs[variant]
        functions[variant] = (function, info)
    return functions


def export(
    output_dir,
    model_fn,
    conversion,
    checks,
    *,
    variants=tflite.VARIANTS,
    representative=None,
    keras=None,
    fine_tune=None,
    overwrite=False,
):
    """Converts, checks and writes TFLite variants of a model.

    Everything is written to a hidden staging folder of `output_dir` and
    checked there; only when every file converted, obeys the rules
    (`allow_flex`, `include_argmax`, `include_preprocessing`) and passes its
    parity check are the files renamed to `<output_dir>/<variant>.tflite`
    and the report written to `<output_dir>/tflite_export.json` (last).
    A failure leaves `output_dir` as it was (a folder it created is removed).

    Args:
      output_dir: str.
      model_fn: float images `[n, crop_h, crop_w, 3]` -> float logits (or
        probabilities), e.g. `tflite.keras_model_fn(model)` or
        `tflite.saved_model_fn(...)`.
      conversion: `ConversionOptions`.
      checks: `CheckOptions`.
      variants: names from `tflite.VARIANTS`.
      representative: float32 images `[1, h, w, 3]` (calibration), for
        "int8" and "qat_int8".
      keras: (Keras model, its `deeplab.ModelOptions`), for the fine-tuned
        variants ("qat_int8", "pruned").
      fine_tune: `legacy_keras.FineTuneOptions`, for the fine-tuned variants.
      overwrite: bool, replace existing files.

    Returns:
      the report (the JSON written): per variant its file, sizes (raw and
      gzip), ops, parity figures and mIOU.

    Raises:
      FileExistsError: when outputs exist and not `overwrite`.
      ValueError: for bad variants or missing inputs.
      tflite.ConversionError, ParityError: when a file fails.
      RuntimeError: when the tf_keras subprocess fails.
    """
    variants = tflite.parse_variants(variants)
    fine_tuned = [v for v in variants if v in tflite.FINE_TUNED]
    if fine_tuned and (keras is None or fine_tune is None):
        raise ValueError(
            f"{fine_tuned} fine-tune a Keras model: give the checkpoint "
            "(--checkpoint_path) and a data set (--dataset_dir)"
        )
    check_output_dir(output_dir, variants, overwrite)
    created = not os.path.isdir(output_dir)
    # Named after this process; killed exports' leftovers go first.
    staging = file_io.make_staging_dir(output_dir, ".tflite-staging-")
    try:
        images = _parity_images(checks, conversion.crop_size, representative)
        reference = (images, model_fn(tf.constant(images)).numpy())
        functions = _functions(
            staging, model_fn, conversion, variants, keras, fine_tune, reference
        )
        report = _check_variants(
            staging, functions, conversion, checks, representative, reference
        )
        if checks.dataset_dir and checks.num_classes:
            report["evaluation"] = _evaluate(
                model_fn, staging, report, conversion, checks
            )
        # The report comes last: an old one goes first, so that files
        # without a report never pass for a finished export.
        report_path = os.path.join(output_dir, REPORT_FILE)
        if os.path.lexists(report_path):
            os.remove(report_path)
        for variant, path in output_paths(output_dir, variants).items():
            os.replace(os.path.join(staging, f"{variant}.tflite"), path)
            report["variants"][variant]["file"] = path
        text = json.dumps(report, indent=2, default=float) + "\n"
        file_io.write_text(report_path, text)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not os.listdir(output_dir):
            os.rmdir(output_dir)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return report


def _functions(staging, model_fn, conversion, variants, keras, fine_tune, reference):
    """variant -> (frozen inference function, info for the report).

    `reference` is (parity images, the model's logits on them).
    """
    functions = {}
    post_training = [v for v in variants if v in tflite.POST_TRAINING]
    if post_training:
        function = tflite.inference_function(model_fn, conversion)
        functions = {v: (function, {}) for v in post_training}
    fine_tuned = [v for v in variants if v in tflite.FINE_TUNED]
    if fine_tuned:
        work_dir = os.path.join(staging, "fine_tune")
        os.makedirs(work_dir)
        tuned = _fine_tuned(fine_tuned, keras, fine_tune, *reference, work_dir)
        for variant, (fn, info) in tuned.items():
            functions[variant] = (tflite.inference_function(fn, conversion), info)
    return functions


def _check_variants(staging, functions, conversion, checks, representative, reference):
    """Converts, checks and writes every variant into `staging`.

    Returns:
      the report's "variants" part.

    Raises:
      tflite.ConversionError, ParityError: naming every failing variant.
    """
    images, logits = reference
    report = {"conversion": dataclasses.asdict(conversion), "variants": {}}
    failures = []
    variants_done = progress.Progress("variant", len(functions))
    for variant, (function, info) in functions.items():
        content = tflite.convert(function, variant, conversion, representative)
        model_info = _check_file(content, variant, conversion)
        file_io.write_bytes(os.path.join(staging, f"{variant}.tflite"), content)
        tuned_logits = info.pop("tf_keras_logits", None)
        entry = {
            **info,
            "size_bytes": len(content),
            "gzip_bytes": len(gzip.compress(content, 9)),
            "ops": list(model_info.ops),
            "litert_checked": not model_info.unsupported_ops,
        }
        report["variants"][variant] = entry
        if model_info.unsupported_ops:
            # Only with allow_flex: LiteRT's Python package has no Flex
            # delegate, so such a file cannot be run here.
            variants_done.advance(variant, "converted (Flex ops: not run here)")
            continue
        runner = litert_runner.Runner(content, checks.num_threads)
        entry["input_dtype"] = runner.input_dtype.name
        entry["output"] = (
            tflite.PREDICTIONS if runner.outputs_predictions else tflite.LOGITS
        )
        entry["parity"] = litert_runner.compare_outputs(runner, images, logits)
        checked = entry["parity"]
        if tuned_logits is not None:
            entry["fine_tuned_parity"] = litert_runner.compare_outputs(
                runner, images, tuned_logits
            )
            if variant == tflite.PRUNED:
                checked = entry["fine_tuned_parity"]
        entry["passed"] = _passed(variant, checked, checks)
        if not entry["passed"]:
            tuned = entry.get("fine_tuned_parity")
            against = f" (against its fine-tuned model: {tuned})" if tuned else ""
            failures.append(f"{variant}: {entry['parity']}{against}")
        variants_done.advance(
            variant, "converted and checked" if entry["passed"] else "FAILED its check"
        )
    if failures:
        raise ParityError(
            "files that do not reproduce the model within the checks' "
            f"tolerances: {'; '.join(failures)}"
        )
    return report


def _evaluate(model_fn, staging, report, conversion, checks):
    """mIOU of the float model and every file on the validation split."""
    predictors = {
        "float": lambda x: np.argmax(model_fn(tf.constant(x)).numpy(), axis=-1)
    }
    for variant, entry in report["variants"].items():
        if not entry["litert_checked"]:
            continue
        path = os.path.join(staging, f"{variant}.tflite")
        predictors[variant] = litert_runner.Runner(path, checks.num_threads).predict
    results = evaluate(
        predictors,
        checks.dataset_dir,
        checks.eval_split,
        crop_size=conversion.crop_size,
        num_classes=checks.num_classes,
        ignore_label=checks.ignore_label,
        max_images=checks.max_eval_images,
        reference="float",
        round_images=conversion.include_preprocessing,
    )
    for result in results.values():
        result["miou_drop"] = results["float"]["miou"] - result["miou"]
    return results


def evaluate(
    predictors,
    dataset_dir,
    split,
    *,
    crop_size,
    num_classes,
    ignore_label,
    max_images=0,
    reference=None,
    round_images=False,
):
    """mIOU of predictors on one split, and their agreement with a reference.

    Every predictor sees the same images, one at a time: the split read by
    `pipeline.make_dataset` in evaluation mode (padded to `crop_size` with
    the mean pixel; images must fit the crop). Agreement and mIOU count only
    the image, not its padding.

    Args:
      predictors: dict name -> callable mapping float images `[1, h, w, 3]`
        in [0, 255] to int classes `[1, h, w]` (`Runner.predict`, or a
        TensorFlow model's argmax).
      dataset_dir: str, the folder of the TFRecord shards.
      split: str, the split (e.g. "val").
      crop_size: (int, int), the models' input size.
      num_classes, ignore_label: ints, the data set's.
      max_images: int, stop after this many images (0: the whole split).
      reference: a key of `predictors` or None; the others' pixel
        agreement with it is reported.
      round_images: bool, round the images to integers first (so that
        models taking uint8 pixels and float models see the same input).

    Returns:
      dict name -> {"miou", "pixel_accuracy", "per_class_iou",
      "num_images"} plus "agreement" (fraction of image pixels where the
      classes equal the reference's) when `reference` is given.

    Raises:
      ValueError: for an unknown reference, or an image of the split larger
        than the crop (the pipeline's message names it).
    """
    if reference is not None and reference not in predictors:
        raise ValueError(f"reference {reference!r} is not one of {list(predictors)}")
    dataset = pipeline.make_dataset(
        dataset_dir,
        split,
        crop_size=crop_size,
        batch_size=1,
        is_training=False,
        ignore_label=ignore_label,
    )
    streams = {
        name: metrics.StreamingMeanIoU(
            num_classes=num_classes, ignore_label=ignore_label
        )
        for name in predictors
    }
    same = {name: 0 for name in predictors}
    total, count = 0, 0
    try:
        num_images = tfexample.count_records(dataset_dir, split, max_images)
    except FileNotFoundError:
        num_images = 0  # Unknown: the progress lines then show no total.
    images_done = progress.Progress("evaluation image", num_images)
    batches = iter(dataset)
    while not max_images or count < max_images:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except tf.errors.InvalidArgumentError as e:
            raise ValueError(
                f"cannot evaluate on {split!r} of {dataset_dir!r} at crop "
                f"{tuple(crop_size)}: {e.message}"
            ) from e
        images = batch[pipeline.IMAGE].numpy()
        if round_images:
            images = np.round(images)
        height = int(batch[pipeline.ORIGINAL_HEIGHT][0])
        width = int(batch[pipeline.ORIGINAL_WIDTH][0])
        labels = batch[pipeline.LABEL].numpy()[0, :height, :width, 0]
        outputs = {
            name: np.asarray(predict(images))[0, :height, :width]
            for name, predict in predictors.items()
        }
        for name, predictions in outputs.items():
            streams[name].update(labels, predictions)
            if reference is not None:
                same[name] += int(np.sum(predictions == outputs[reference]))
        total += height * width
        count += 1
        images_done.advance(detail=f"{len(predictors)} models")
    results = {}
    for name, stream in streams.items():
        result = stream.result()
        results[name] = {
            "miou": result["miou"],
            "pixel_accuracy": result["pixel_accuracy"],
            "per_class_iou": result["per_class_iou"],
            "num_images": count,
        }
        if reference is not None:
            results[name]["agreement"] = same[name] / max(total, 1)
    return results
