"""The side-by-side comparison of models and their TFLite variants in LiteRT.

For every model (a checkpoint and its architecture, `ModelSpec`) `compare`
exports the asked variants with `tflite_export.export` (so every file is
checked as the export program checks it) into `<output_dir>/<model name>/`
and measures each file:

* params and MAdds of the model (`accounting.count`: total and head; one
  multiply-accumulate counts 1, per image at the crop);
* file size, raw and gzip-compressed (what pruning buys in a download);
* LiteRT latency: median of `latency_runs` timed `invoke()` calls after
  `warmup_runs` untimed ones, XNNPACK with `num_threads` threads, batch 1;
* peak memory: in a fresh process importing only NumPy and LiteRT, the
  peak resident set size while loading the file, allocating its tensors and
  running one inference, minus the resident size before
  (`litert_runner.peak_memory`);
* mIOU on the validation split (`metrics`, as the eval program), beside
  the float model's.

Results: `comparison.json` (everything), `comparison.md` (the table) and
three plots (matplotlib figures drawn on its Agg canvas, no pyplot):
`miou_vs_latency.png`, `miou_vs_madds.png`, `size_per_variant.png`.
"""

import dataclasses
import io
import json
import os
import re

from matplotlib.figure import Figure
import numpy as np

from deeplab_dpc import file_io
from deeplab_dpc import progress
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.evaluation import inference
from deeplab_dpc.export import litert_runner
from deeplab_dpc.export import tflite
from deeplab_dpc.export import tflite_export
from deeplab_dpc.models import accounting
from deeplab_dpc.models import deeplab

MARKDOWN_FILE = "comparison.md"
JSON_FILE = "comparison.json"
PLOTS = ("miou_vs_latency.png", "miou_vs_madds.png", "size_per_variant.png")
HEAD_ASPP = "aspp"
HEAD_PUBLISHED = "dpc"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MIB = 2.0**20


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison.

    Attributes:
      name: str, its label and folder name ([A-Za-z0-9_.-]).
      checkpoint_path: str, a checkpoint prefix or a train_logdir.
      options: its `deeplab.ModelOptions`.
    """

    name: str
    checkpoint_path: str
    options: deeplab.ModelOptions


def _head(head, base_options, source):
    """`base_options` with the head `aspp`, `dpc` (published) or a cell file."""
    if head == HEAD_ASPP:
        return dataclasses.replace(base_options, dense_prediction_cell=None)
    if head == HEAD_PUBLISHED:
        cell = cell_spec.published_cell()
        return dataclasses.replace(base_options, dense_prediction_cell=cell)
    try:
        cell = cell_spec.load_cell(head)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{source}: head {head!r} is neither 'aspp', 'dpc' nor a readable "
            f"cell JSON file: {e}"
        ) from e
    return dataclasses.replace(base_options, dense_prediction_cell=cell)


def _spec(name, checkpoint_path, options, source):
    if not _NAME.match(name):
        raise ValueError(f"{source}: model name {name!r} must match {_NAME.pattern}")
    return ModelSpec(name=name, checkpoint_path=checkpoint_path, options=options)


def parse_models(items, base_options):
    """Models from `name:checkpoint_path:head[:model_variant]` items.

    Args:
      items: strings (`--models`); head is "aspp", "dpc" (the published
        cell) or the path of a cell in DeepLab's JSON.
      base_options: `deeplab.ModelOptions` from the model flags.

    Returns:
      list of `ModelSpec`.

    Raises:
      ValueError: naming the bad item, or a repeated name.
    """
    specs = []
    for item in items:
        parts = item.split(":")
        if len(parts) not in (3, 4) or not all(parts):
            raise ValueError(
                f"--models item {item!r}: expected name:checkpoint_path:head"
                "[:model_variant]"
            )
        options = _head(parts[2], base_options, f"--models item {item!r}")
        if len(parts) == 4:
            options = dataclasses.replace(options, model_variant=parts[3])
        specs.append(_spec(parts[0], parts[1], options, f"--models item {item!r}"))
    return _unique(specs)


def load_models(path, base_options):
    """Models from a JSON file: `{"models": [{"name", "checkpoint_path",
    "head", "options": {ModelOptions field: value}}]}`. "head" and
    "options" are optional (default: the flags' model); "crop_size" and
    "atrous_rates" are lists.

    Raises:
      ValueError: naming the file and the bad entry or field.
    """
    with open(path) as f:
        try:
            entries = json.load(f)["models"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f'{path}: expected {{"models": [...]}}: {e}') from e
    fields = {f.name for f in dataclasses.fields(deeplab.ModelOptions)}
    specs = []
    for i, entry in enumerate(entries):
        source = f"{path}: models[{i}]"
        overrides = dict(entry.get("options", {}))
        unknown = sorted(set(overrides) - (fields - {"dense_prediction_cell"}))
        if unknown:
            raise ValueError(
                f"{source}: unknown options {unknown} (give a cell as 'head')"
            )
        try:
            options = dataclasses.replace(base_options, **overrides)
            if "head" in entry:
                options = _head(entry["head"], options, source)
            name, checkpoint_path = entry["name"], entry["checkpoint_path"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: {e!r}") from e
        specs.append(_spec(name, checkpoint_path, options, source))
    return _unique(specs)


def _unique(specs):
    names = [s.name for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"model names must be unique: {repeated} repeat")
    if not specs:
        raise ValueError("no model to compare")
    return specs


def output_files(output_dir):
    """The report files `compare` writes."""
    names = (MARKDOWN_FILE, JSON_FILE, *PLOTS)
    return [os.path.join(output_dir, name) for name in names]


def compare(
    specs,
    output_dir,
    conversion,
    checks,
    *,
    variants,
    representative_pattern=None,
    calibration_steps=100,
    fine_tune=None,
    latency_runs=20,
    warmup_runs=3,
    overwrite=False,
):
    """Exports, measures and reports every model and variant.

    Args:
      specs: list of `ModelSpec`.
      output_dir: str; gets a folder per model and the report files.
      conversion: `tflite.ConversionOptions` (its crop is replaced by each
        model's).
      checks: `tflite_export.CheckOptions` (its `num_threads` also times).
      variants: names from `tflite.VARIANTS`.
      representative_pattern: TFRecord glob calibrating the int8 variants.
      calibration_steps: int, calibration images.
      fine_tune: `legacy_keras.FineTuneOptions` for "qat_int8" and "pruned".
      latency_runs, warmup_runs: ints, the timing.
      overwrite: bool, replace existing files.

    Returns:
      dict: "rows" (one per model and variant, the table's figures),
      "models" (per model: options, params and MAdds per module, float
      mIOU) and "settings".

    Raises:
      FileExistsError: when report files exist and not `overwrite`.
      and what `tflite_export.export` raises.
    """
    existing = [p for p in output_files(output_dir) if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist: pass --overwrite")
    variants = tflite.parse_variants(variants)
    rows, models = [], {}
    models_done = progress.Progress("model", len(specs))
    for i, spec in enumerate(specs, start=1):
        progress.emit(
            f"model {i}/{len(specs)} ({spec.name}): exporting {', '.join(variants)}"
        )
        model = inference.load_model(spec.options, spec.checkpoint_path)
        counts = accounting.count(model)
        crop = spec.options.crop_size
        representative = None
        if representative_pattern:
            representative = tflite.representative_images(
                representative_pattern, crop, calibration_steps
            )
        report = tflite_export.export(
            os.path.join(output_dir, spec.name),
            tflite.keras_model_fn(model),
            dataclasses.replace(conversion, crop_size=crop),
            checks,
            variants=variants,
            representative=representative,
            keras=(model, spec.options),
            fine_tune=fine_tune,
            overwrite=overwrite,
        )
        evaluation = report.get("evaluation", {})
        models[spec.name] = {
            "checkpoint_path": spec.checkpoint_path,
            "head": spec.options.head,
            "model_variant": spec.options.model_variant,
            "crop_size": list(crop),
            "counts": counts,
            "float_miou": evaluation.get("float", {}).get("miou"),
        }
        for variant in variants:
            entry = report["variants"][variant]
            row = _measure(entry, checks.num_threads, latency_runs, warmup_runs)
            row.update(_row(spec, variant, entry, counts, evaluation.get(variant, {})))
            rows.append(row)
        models_done.advance(spec.name, "exported, evaluated and timed")
    settings = {
        "num_threads": checks.num_threads,
        "latency_runs": latency_runs,
        "warmup_runs": warmup_runs,
        "eval_split": checks.eval_split if checks.dataset_dir else None,
        "conversion": dataclasses.asdict(conversion),
    }
    result = {"settings": settings, "models": models, "rows": rows}
    os.makedirs(output_dir, exist_ok=True)
    file_io.write_text(
        os.path.join(output_dir, JSON_FILE),
        json.dumps(result, indent=2, default=float) + "\n",
    )
    file_io.write_text(os.path.join(output_dir, MARKDOWN_FILE), markdown(result))
    for name, figure in zip(PLOTS, plots(rows)):
        _write_figure(output_dir, name, figure)
    return result


def _measure(entry, num_threads, latency_runs, warmup_runs):
    """LiteRT latency and peak memory of an exported file."""
    if not entry["litert_checked"]:
        raise ValueError(
            f"cannot measure {entry['file']}: it holds Flex ops {entry['ops']}, "
            "which LiteRT's Python package cannot run"
        )
    runner = litert_runner.Runner(entry["file"], num_threads)
    timing = litert_runner.latency(runner, runs=latency_runs, warmup=warmup_runs)
    memory = litert_runner.peak_memory(entry["file"], num_threads)
    return {
        "latency_ms": timing["median_ms"],
        "peak_memory_mib": memory["peak_rss_delta_mib"],
    }


def _row(spec, variant, entry, counts, evaluation):
    """The table's figures of one model's variant, but for the timing."""
    return {
        "model": spec.name,
        "variant": variant,
        "params": counts["total"]["params"],
        "madds": counts["total"]["madds"],
        "head_params": counts["head"]["params"],
        "head_madds": counts["head"]["madds"],
        "size_bytes": entry["size_bytes"],
        "gzip_bytes": entry["gzip_bytes"],
        "miou": evaluation.get("miou"),
        "miou_drop": evaluation.get("miou_drop"),
        "agreement": entry["parity"]["agreement"],
        "sparsity": entry.get("sparsity"),
        "file": entry["file"],
    }


def _number(value, form):
    return "-" if value is None else format(value, form)


def markdown(result):
    """The comparison table (and how it was measured) as Markdown."""
    s = result["settings"]
    lines = [
        "# TFLite variants in LiteRT",
        "",
        f"Latency: median of {s['latency_runs']} runs after {s['warmup_runs']} "
        f"warm-up runs, batch 1, {s['num_threads']} thread(s), XNNPACK. Peak "
        "memory: growth of the peak resident set while loading the file and "
        "running one inference, in a fresh process. mIOU: "
        f"{s['eval_split'] or 'not measured (no data set)'}. MAdds: "
        "multiply-accumulates per image at the model's crop.",
        "",
        "| model | variant | params | MAdds | size (MiB) | gzip (MiB) "
        "| latency (ms) | peak memory (MiB) | mIOU | mIOU drop |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['params']:,} | {r['madds']:,} "
            f"| {r['size_bytes'] / _MIB:.2f} | {r['gzip_bytes'] / _MIB:.2f} "
            f"| {r['latency_ms']:.2f} | {r['peak_memory_mib']:.1f} "
            f"| {_number(r['miou'], '.4f')} | {_number(r['miou_drop'], '+.4f')} |"
        )
    return "\n".join(lines) + "\n"


def plots(rows):
    """The three figures: mIOU vs latency, mIOU vs MAdds, size per variant."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    markers = dict(zip(variants, "os^Dvp<>"))
    colors = {model: f"C{i}" for i, model in enumerate(models)}
    figures = []
    scale = {"latency_ms": 1.0, "madds": 1e-9}
    for key, label in (
        ("latency_ms", "LiteRT latency (ms)"),
        ("madds", "model MAdds per image (GMAdds)"),
    ):
        figure = Figure(figsize=(6, 4.5))
        axes = figure.subplots()
        for r in rows:
            if r["miou"] is not None:
                marker, color = markers[r["variant"]], colors[r["model"]]
                x = r[key] * scale[key]
                axes.scatter(x, r["miou"], marker=marker, color=color)
        for model, color in colors.items():
            axes.scatter([], [], color=color, label=model)
        for variant, marker in markers.items():
            axes.scatter([], [], color="grey", marker=marker, label=variant)
        axes.set_xlabel(label)
        axes.set_ylabel("mIOU")
        axes.set_title(f"mIOU vs {label.split(' (')[0]}")
        axes.legend(fontsize="small")
        figures.append(figure)
    sizes = {(r["model"], r["variant"]): r["size_bytes"] / _MIB for r in rows}
    gzipped = {
        (r["model"], r["variant"]): r.get("gzip_bytes", 0) / _MIB for r in rows
    }
    figure = Figure(figsize=(max(6.0, 1.2 * len(variants) * len(models)), 4.5))
    axes = figure.subplots()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        x = np.arange(len(variants)) + i * width
        heights = [sizes.get((model, v), 0.0) for v in variants]
        axes.bar(x, heights, width, label=f"{model} (raw)", color=f"C{i}", alpha=0.4)
        # gzip shows what pruning's zeros buy (the raw size does not change).
        packed = [gzipped.get((model, v), 0.0) for v in variants]
        axes.bar(x, packed, width * 0.6, label=f"{model} (gzip)", color=f"C{i}")
    axes.set_xticks(np.arange(len(variants)) + width * (len(models) - 1) / 2)
    axes.set_xticklabels(variants)
    axes.set_ylabel("file size (MiB)")
    axes.set_title("TFLite file size per variant, raw and gzip")
    axes.legend(fontsize="small")
    figures.append(figure)
    return figures


def _write_figure(output_dir, name, figure):
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100, bbox_inches="tight")
    file_io.write_bytes(os.path.join(output_dir, name), png.getvalue())
