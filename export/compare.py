r"""Compares models and their TFLite variants side by side in LiteRT.

  python export/compare.py --output_dir=DIR \
      --models=searched:LOGDIR_A:cell.json,published:LOGDIR_B:dpc,aspp:LOGDIR_C:aspp \
      [--models_config=models.json] [--crop_size=513,513] \
      [--variants=float32,float16,dynamic_int8,int8,qat_int8,pruned] \
      [--num_threads=2] [--latency_runs=20] [--warmup_runs=3] \
      [--dataset_dir=DIR --eval_split=val] [--overwrite] \
      [the export_tflite flags; model and data set flags, as for training]

A model is `name:checkpoint_path:head[:model_variant]`, head being `aspp`,
`dpc` (the published cell) or a cell JSON file; the other model flags
(`--depth_multiplier`, `--atrous_rates`, `--decoder_output_stride`, ...)
apply to all. `--models_config` takes a JSON file instead, for models that
differ in more: `{"models": [{"name": ..., "checkpoint_path": ..., "head":
..., "options": {"model_variant": "xception", "atrous_rates": [6, 12,
18]}}]}`.

Each model's variants are exported and checked as `export_tflite.py` does,
into `<output_dir>/<name>/`, then measured: params and MAdds, file size
(raw and gzip), LiteRT latency (median after warm-up, `--num_threads`),
peak memory (fresh process per file) and mIOU on `--eval_split`. Writes
`comparison.md`, `comparison.json` and the plots `miou_vs_latency.png`,
`miou_vs_madds.png`, `size_per_variant.png`, and prints the table.
"""

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import export_flags
from deeplab_dpc.flags import tflite_flags

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where everything goes.")
_MODELS = flags.DEFINE_list(
    "models", [], "Models as name:checkpoint_path:head[:model_variant]."
)
_MODELS_CONFIG = flags.DEFINE_string(
    "models_config", "", "A JSON file of models (instead of --models)."
)
_LATENCY_RUNS = flags.DEFINE_integer(
    "latency_runs", 20, "Timed runs per file.", lower_bound=1
)
_WARMUP_RUNS = flags.DEFINE_integer(
    "warmup_runs", 3, "Untimed runs first.", lower_bound=0
)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace existing files.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    if bool(_MODELS.value) == bool(_MODELS_CONFIG.value):
        raise app.UsageError("give exactly one of --models, --models_config")
    from deeplab_dpc.export import compare

    try:
        base = export_flags.model_options_from_flags()
        if _MODELS.value:
            specs = compare.parse_models(_MODELS.value, base)
        else:
            specs = compare.load_models(_MODELS_CONFIG.value, base)
        variants = tflite_flags.variants_from_flags()
        conversion = tflite_flags.conversion_options_from_flags(base.crop_size)
        checks = tflite_flags.check_options_from_flags()
        fine_tune = tflite_flags.fine_tune_options_from_flags(variants)
        pattern = tflite_flags.representative_pattern_from_flags(variants)
    except (flags.ValidationError, OSError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    try:
        result = compare.compare(
            specs,
            _OUTPUT_DIR.value,
            conversion,
            checks,
            variants=variants,
            representative_pattern=pattern,
            calibration_steps=tflite_flags.CALIBRATION_STEPS.value,
            fine_tune=fine_tune,
            latency_runs=_LATENCY_RUNS.value,
            warmup_runs=_WARMUP_RUNS.value,
            overwrite=_OVERWRITE.value,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from e
    print(compare.markdown(result))
    print(f"Wrote {', '.join(compare.output_files(_OUTPUT_DIR.value))}")


def run():
    cli.run(main, __name__, required=["output_dir"])


if __name__ == "__main__":
    run()
