"""The built-in demo: data, the DPC vs ASPP, a real search, export.

  python -m deeplab_dpc.demo [--demo_dir=demo_output] [--stages=...]

1. `data`: writes the built-in synthetic multi-scale data set as DeepLab
   TFRecords under `<demo_dir>/synthetic` (kept and reused when already
   there) and reads a training batch through the input pipeline (DeepLab's
   augmentation), printing what came out.
2. `heads`: builds MobileNet-v2 and Xception DeepLab models (random weights:
   nothing is downloaded) with the published Cityscapes DPC and with ASPP at
   rates 6, 12, 18 at 1025x2049, output stride 16, and prints params and
   multiply-adds of the head, of its branches alone (the DPC paper's count)
   and of the whole model.
3. `search`: a small real architecture search on the synthetic set with the
   search program (`python -m deeplab_dpc.search --mode=all`): pretraining of
   the MobileNet-v2 proxy backbone, the feature cache, two local workers on
   one study, the re-rank of the top cells and `<demo_dir>/search/report.md`.
   A finished search is reused.
4. `export`: the best cell's model (its re-rank checkpoint) as a SavedModel
   and as TFLite files, and the side-by-side comparison with the
   pretrained ASPP model (`export/compare.py`).

Stages 3 and 4 run the project's programs as subprocesses, with the presets
of `configs/synthetic_mobilenetv2_dpc.flags`: from a checkout its files
(`export/compare.py`), installed (`deeplab_dpc_demo`) the installed modules
(`deeplab_dpc.export_programs.compare`) and the installed preset.
"""

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

from deeplab_dpc import processes
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.flags import cli

# The library (TensorFlow) is imported inside the stages, after the flags are
# parsed: `--help` is quick.
# pylint: disable=import-outside-toplevel

# The paper's Cityscapes setting: full 1025x2049 images, output stride 16.
CROP_SIZE = (1025, 2049)
OUTPUT_STRIDE = 16
NUM_CLASSES = 19
VARIANTS = ("mobilenet_v2", "xception")
# The demo's images and crops: 513x513 at output stride 16 gives 33x33
# features, where the cell space's rates (1-21) and pooling grids (1-8) reach
# different context (at 129 every rate of 9 or more read only padding).
DEMO_CROP = (513, 513)
_CROP_FLAG = f"{DEMO_CROP[0]},{DEMO_CROP[1]}"

_DEMO_DIR = flags.DEFINE_string(
    "demo_dir", "demo_output", "Where the demo writes its data set."
)
STAGES = ("data", "heads", "search", "export")
_STAGES = flags.DEFINE_list("stages", list(STAGES), f"Stages to run, of {STAGES}.")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.dirname(os.path.abspath(__file__))
PRESET_NAME = "synthetic_mobilenetv2_dpc.flags"
# The installed package of the repository's export/ folder (setup.py).
INSTALLED_EXPORT = "deeplab_dpc.export_programs"


def in_checkout(repo=REPO):
    """Whether the demo runs from a checkout (else from an installed wheel)."""
    return os.path.isfile(os.path.join(repo, "export", "export_model.py"))


def preset(repo=REPO, package=PACKAGE):
    """The preset flagfile: configs/ of a checkout, or its installed copy."""
    if in_checkout(repo):
        return os.path.join(repo, "configs", PRESET_NAME)
    return os.path.join(package, "configs", PRESET_NAME)


def export_program(name, repo=REPO):
    """The arguments of Python that run the export program `name`."""
    if in_checkout(repo):
        return [f"export/{name}.py"]
    return ["-m", f"{INSTALLED_EXPORT}.{name}"]


PRESET = preset()
# A search that fits in minutes on 2 CPU cores (see the README's figures).
SEARCH_FLAGS = (
    f"--train_crop_size={_CROP_FLAG}",
    "--train_batch_size=4",
    "--base_learning_rate=0.02",
    "--pretrain_steps=300",
    "--cache_copies=1",
    "--num_trials=24",
    "--num_workers=2",
    "--proxy_steps=60",
    "--proxy_batch_size=8",
    "--proxy_learning_rate=0.05",
    "--top_k=3",
    "--rerank_steps=100",
    "--target_crop_size=513,513",
    "--max_head_madds=1.1xaspp",
    "--seed=1",
)

_COLUMNS = [
    ("backbone", "backbone"),
    ("head", "head"),
    ("head_params", "head params"),
    ("head_madds", "head MAdds"),
    ("branch_params", "branch params"),
    ("branch_madds", "branch MAdds"),
    ("total_params", "total params"),
    ("total_madds", "total MAdds"),
]


def compare(variants, crop_size, output_stride, num_classes):
    """Rows of the DPC-vs-ASPP table, one per (backbone, head)."""
    from deeplab_dpc.models import accounting
    from deeplab_dpc.models import deeplab

    rows = []
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    heads = [
        ("DPC (published)", dict(dense_prediction_cell=cell_spec.published_cell())),
        (f"ASPP {','.join(map(str, rates))}", dict(atrous_rates=rates)),
    ]
    for variant in variants:
        for head_name, head in heads:
            options = deeplab.ModelOptions(
                model_variant=variant,
                crop_size=crop_size,
                output_stride=output_stride,
                num_classes=num_classes,
                **head,
            )
            counts = accounting.count(deeplab.build_deeplab(options))
            rows.append(
                {
                    "backbone": variant,
                    "head": head_name,
                    "head_params": counts["head"]["params"],
                    "head_madds": counts["head"]["madds"],
                    "branch_params": counts["head_branches"]["params"],
                    "branch_madds": counts["head_branches"]["madds"],
                    "total_params": counts["total"]["params"],
                    "total_madds": counts["total"]["madds"],
                }
            )
    return rows


def _image_size(shard):
    """(height, width) of a shard's first example."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from deeplab_dpc.data import tfexample

    record = next(iter(tf.data.TFRecordDataset(shard).take(1)))
    example = tfexample.decode_example(record)
    return int(example[tfexample.HEIGHT]), int(example[tfexample.WIDTH])


def prepare_data(data_dir, crop=DEMO_CROP, num_train=200, num_val=50):
    """Writes the synthetic data set unless its shards are there; describes it.

    Its images are `crop`-sized; shards of another size (an earlier demo's)
    are refused, not mixed.
    """
    import numpy as np

    from deeplab_dpc.data import pipeline
    from deeplab_dpc.data import synthetic
    from deeplab_dpc.data import tfexample

    try:
        files = tfexample.split_files(data_dir, "train")
    except FileNotFoundError:
        synthetic.build(
            data_dir,
            num_train=num_train,
            num_val=num_val,
            height=crop[0],
            width=crop[1],
        )
        written = "wrote"
    else:
        size = _image_size(files[0])
        if size != tuple(crop):
            raise app.UsageError(
                f"{data_dir} holds {size[0]}x{size[1]} images (an earlier demo's); "
                f"this demo uses {crop[0]}x{crop[1]}: remove {data_dir} "
                "or pass another --demo_dir"
            )
        written = "reused"
    batch = next(
        iter(
            pipeline.make_dataset(
                data_dir,
                "train",
                crop_size=crop,
                batch_size=8,
                is_training=True,
                ignore_label=synthetic.IGNORE_LABEL,
                seed=0,
            )
        )
    )
    labels = batch[pipeline.LABEL].numpy().ravel()
    counts = np.bincount(
        labels[labels != synthetic.IGNORE_LABEL], minlength=synthetic.NUM_CLASSES
    )
    share = ", ".join(
        f"{name} {100 * c / labels.size:.1f}%"
        for name, c in zip(synthetic.CLASS_NAMES, counts)
    )
    return (
        f"{written} the synthetic data set in {data_dir} "
        f"({len(tfexample.split_files(data_dir, 'train'))} train shards); a "
        f"training batch: images {tuple(batch[pipeline.IMAGE].shape)}, labels "
        f"{tuple(batch[pipeline.LABEL].shape)}, pixels per class: {share}, "
        f"ignore {100 * np.mean(labels == synthetic.IGNORE_LABEL):.1f}%"
    )


# Stage -> (heading, how long it took on the 2-core development machine).
STAGE_HEADINGS = {
    "data": ("the built-in data set, read through the pipeline", "under a minute"),
    "heads": ("the published DPC against ASPP (params, MAdds)", "under a minute"),
    "search": ("a small architecture search", "about 9 min"),
    "export": ("SavedModel and TFLite variants, compared in LiteRT", "about 3 min"),
}


def interpreter():
    """The Python running the demo, as a person would type it."""
    path = sys.executable
    inside = os.path.relpath(path, REPO)
    return path if inside.startswith("..") else inside


@contextlib.contextmanager
def stage(name, index, total):
    """Prints a stage's heading with its expected time, then its time taken."""
    heading, expected = STAGE_HEADINGS[name]
    print(f"== Stage {index}/{total}: {heading} ({expected} here) ==", flush=True)
    start = time.monotonic()
    yield
    seconds = time.monotonic() - start
    print(
        f"== Stage {index}/{total} done in {int(seconds // 60)} min "
        f"{int(seconds % 60)} s ==\n",
        flush=True,
    )


def run_program(args):
    """Runs one of the project's programs, its output going to the console."""
    print("$ " + shlex.join([interpreter(), *args]), flush=True)
    env = dict(os.environ)
    if in_checkout():
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        cwd = REPO
    else:
        cwd = None  # Installed: the programs are modules of the package.
    # A stopped or killed demo leaves no program running.
    subprocess.run(
        [sys.executable, *args], check=True, cwd=cwd, **processes.child_kwargs(env)
    )


def search(data_dir, search_dir):
    """Stage 3: the search program on the synthetic set (reused when done)."""
    run_program(
        [
            "-m",
            "deeplab_dpc.search",
            f"--flagfile={PRESET}",
            "--mode=all",
            f"--search_dir={search_dir}",
            f"--dataset_dir={data_dir}",
            *SEARCH_FLAGS,
        ]
    )
    with open(os.path.join(search_dir, "rerank.json")) as f:
        best = json.load(f)["candidates"][0]
    print(
        f"Best cell (trial {best['trial']}): proxy mIOU {best['proxy_miou']:.4f}, "
        f"full mIOU {best['full_miou']:.4f}; report: "
        f"{os.path.join(search_dir, 'report.md')}"
    )
    return best


def export(data_dir, search_dir, export_dir, best):
    """Stage 4: SavedModel and TFLite files of the best model, compared."""
    best_dir = os.path.dirname(best["checkpoint"])
    cell_json = os.path.join(search_dir, "best_cell.json")
    common = [
        f"--flagfile={PRESET}",
        f"--dataset_dir={data_dir}",
        f"--crop_size={_CROP_FLAG}",
        "--overwrite",
    ]
    run_program(
        [
            *export_program("export_model"),
            *common,
            f"--checkpoint_path={best_dir}",
            f"--dense_prediction_cell_json={cell_json}",
            f"--export_path={os.path.join(export_dir, 'saved_model')}",
        ]
    )
    run_program(
        [
            *export_program("compare"),
            *common,
            f"--output_dir={os.path.join(export_dir, 'compare')}",
            f"--models=searched:{best_dir}:{cell_json},"
            f"aspp:{os.path.join(search_dir, 'pretrain')}:aspp",
            "--qat_steps=30",
            "--pruning_steps=30",
            "--fine_tune_batch_size=2",
            "--calibration_steps=10",
            "--max_eval_images=10",
        ]
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    unknown = sorted(set(_STAGES.value) - set(STAGES))
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; choose from {STAGES}")
    data_dir = os.path.abspath(os.path.join(_DEMO_DIR.value, "synthetic"))
    search_dir = os.path.abspath(os.path.join(_DEMO_DIR.value, "search"))
    chosen = [name for name in STAGES if name in _STAGES.value]
    number = {name: i for i, name in enumerate(chosen, start=1)}
    if "data" in chosen:
        with stage("data", number["data"], len(chosen)):
            print(prepare_data(data_dir))
    if "heads" in chosen:
        with stage("heads", number["heads"], len(chosen)):
            print(report(VARIANTS, CROP_SIZE, OUTPUT_STRIDE, NUM_CLASSES))
    best = None
    if "search" in chosen:
        with stage("search", number["search"], len(chosen)):
            best = search(data_dir, search_dir)
    if "export" in chosen:
        with stage("export", number["export"], len(chosen)):
            if best is None:
                with open(os.path.join(search_dir, "rerank.json")) as f:
                    best = json.load(f)["candidates"][0]
            export_dir = os.path.abspath(os.path.join(_DEMO_DIR.value, "export"))
            export(data_dir, search_dir, export_dir, best)


def report(variants, crop_size, output_stride, num_classes):
    """The demo's text: the table and the DPC/ASPP ratios per backbone."""
    from deeplab_dpc.models import accounting

    rows = compare(variants, crop_size, output_stride, num_classes)
    lines = [
        f"DeepLab heads at {crop_size[0]}x{crop_size[1]}, output stride "
        f"{output_stride}, {num_classes} classes (MAdds per image; params "
        f"include batch-norm statistics)",
        accounting.format_table(rows, _COLUMNS),
    ]
    for dpc, aspp in zip(rows[::2], rows[1::2]):
        lines.append(
            f"{dpc['backbone']}: DPC/ASPP head params "
            f"{dpc['head_params'] / aspp['head_params']:.2f}, head MAdds "
            f"{dpc['head_madds'] / aspp['head_madds']:.2f}"
        )
    return "\n".join(lines)


def run():
    cli.run(main, __name__)


if __name__ == "__main__":
    run()
