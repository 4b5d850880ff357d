r"""Exports a trained model as TFLite files for LiteRT, each one checked.

  python export/export_tflite.py --checkpoint_path=TRAIN_LOGDIR \
      --output_dir=DIR [--crop_size=513,513] \
      [--variants=float32,float16,dynamic_int8,int8,qat_int8,pruned] \
      [--include_argmax] [--include_preprocessing] [--allow_resize] \
      [--allow_flex] [--representative_dataset='DIR/train-*'] \
      [--calibration_steps=100] [--qat_steps=1000] [--qat_learning_rate=1e-5] \
      [--target_sparsity=0.5] [--pruning_steps=1000] \
      [--pruning_learning_rate=1e-3] [--dataset_dir=DIR] [--overwrite] \
      [model and data set flags, as for training]

or `--saved_model_dir=DIR` instead of `--checkpoint_path` (the post-training
variants only: "qat_int8" and "pruned" fine-tune the checkpoint's Keras
model). Writes `<output_dir>/<variant>.tflite` and `tflite_export.json`;
nothing is written unless every file converts, uses only LiteRT builtin ops
(unless `--allow_flex`), has no int64 tensor with `--include_argmax`, and
matches the float model in LiteRT (float32/float16 logits within tolerance,
int8 variants by pixel agreement); with `--dataset_dir` the report also
gives each file's mIOU on `--eval_split` beside the float model's.

Files take one image `[1, crop_h, crop_w, 3]` (float32 pixels in [0, 255],
or uint8 with `--include_preprocessing`) and give logits, or int32 classes
with `--include_argmax`. `--allow_resize` makes the input `[1, ?, ?, 3]`
(`resize_tensor_input`): the model still runs at the crop its DPC/ASPP is
built for; inside the file the image is fitted and padded to it as the
SavedModel does (scaled down to fit if larger, aspect ratio kept, padded
with the mean pixel) and the logits cut and resized back, so the file
gives the SavedModel's pixels (`python -m deeplab_dpc.predict --tflite=`). The int8 variants are calibrated on `--representative_dataset`
(default: the `--train_split` shards of `--dataset_dir`); "qat_int8" and
"pruned" are fine-tuned on `--train_split` (see
`deeplab_dpc/export/legacy_keras.py`).
"""

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import export_flags
from deeplab_dpc.flags import tflite_flags

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the files go.")
_SAVED_MODEL_DIR = flags.DEFINE_string(
    "saved_model_dir", None, "Convert this SavedModel instead of a checkpoint."
)
_SIGNATURE_KEY = flags.DEFINE_string(
    "signature_key", "serving_default", "The SavedModel signature to convert."
)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace existing files.")


def _source(from_checkpoint):
    """(model function, (Keras model, its options) or None)."""
    from deeplab_dpc.evaluation import inference
    from deeplab_dpc.export import tflite
    from deeplab_dpc.models import accounting

    if not from_checkpoint:
        fn = tflite.saved_model_fn(_SAVED_MODEL_DIR.value, _SIGNATURE_KEY.value)
        return fn, None
    options = export_flags.model_options_from_flags()
    model = inference.load_model(options, export_flags.checkpoint_from_flags())
    counts = accounting.count(model)["total"]
    print(f"Model: {counts['params']:,} params, {counts['madds']:,} MAdds")
    return tflite.keras_model_fn(model), (model, options)


def _summary(report):
    from deeplab_dpc.models import accounting

    evaluation = report.get("evaluation", {})
    rows = []
    for variant, entry in report["variants"].items():
        row = {
            "variant": variant,
            "size": f"{entry['size_bytes'] / 2**20:.2f} MiB",
            "gzip": f"{entry['gzip_bytes'] / 2**20:.2f} MiB",
            "agreement": "not run (Flex ops)",
        }
        if entry["litert_checked"]:
            row["agreement"] = f"{entry['parity']['agreement']:.4f}"
        if variant in evaluation:
            row["miou"] = f"{evaluation[variant]['miou']:.4f}"
            row["drop"] = f"{evaluation[variant]['miou_drop']:+.4f}"
        rows.append(row)
    columns = [("variant", "variant"), ("size", "size"), ("gzip", "gzip")]
    columns.append(("agreement", "agreement"))
    header = ""
    if evaluation:
        columns += [("miou", "mIOU"), ("drop", "mIOU drop")]
        header = f"float model mIOU: {evaluation['float']['miou']:.4f}\n"
    return header + accounting.format_table(rows, columns)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    from_checkpoint = not _SAVED_MODEL_DIR.value
    if from_checkpoint == (export_flags.CHECKPOINT_PATH.value is None):
        raise app.UsageError("give exactly one of --checkpoint_path, --saved_model_dir")
    try:
        variants = tflite_flags.variants_from_flags(from_checkpoint)
        conversion = tflite_flags.conversion_options_from_flags()
        checks = tflite_flags.check_options_from_flags()
        fine_tune = tflite_flags.fine_tune_options_from_flags(variants)
        pattern = tflite_flags.representative_pattern_from_flags(variants)
    except (flags.ValidationError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    from deeplab_dpc.export import tflite
    from deeplab_dpc.export import tflite_export

    try:
        tflite_export.check_output_dir(_OUTPUT_DIR.value, variants, _OVERWRITE.value)
        representative = None
        if pattern:
            representative = tflite.representative_images(
                pattern, conversion.crop_size, tflite_flags.CALIBRATION_STEPS.value
            )
        model_fn, keras = _source(from_checkpoint)
        report = tflite_export.export(
            _OUTPUT_DIR.value,
            model_fn,
            conversion,
            checks,
            variants=variants,
            representative=representative,
            keras=keras,
            fine_tune=fine_tune,
            overwrite=_OVERWRITE.value,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from e
    print(_summary(report))
    print(f"Wrote {', '.join(variants)} to {_OUTPUT_DIR.value}")


def run():
    cli.run(main, __name__, required=["output_dir"])


if __name__ == "__main__":
    run()
