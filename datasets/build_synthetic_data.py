r"""Writes the built-in synthetic data set as DeepLab TFRecords.

  python datasets/build_synthetic_data.py --output_dir=DIR [--num_train=200] \
      [--num_val=50] [--height=129] [--width=129] [--seed=0] [--num_shards=4] \
      [--num_workers=2] [--overwrite]

Writes `train-*` and `val-*` shards (PNG images and labels, 7 classes, ignore
label 255) generated from `--seed` alone: the same flags give byte-identical
shards whatever `--num_workers`. The generative rules are in
`deeplab_dpc/data/synthetic.py`. Use it as `--dataset=synthetic`.
"""

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import converter_flags

_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the TFRecord shards are written."
)
_NUM_TRAIN = flags.DEFINE_integer(
    "num_train", 200, "Examples in the train split.", lower_bound=1
)
_NUM_VAL = flags.DEFINE_integer(
    "num_val", 50, "Examples in the val split.", lower_bound=1
)
_HEIGHT = flags.DEFINE_integer("height", 129, "Image height.", lower_bound=1)
_WIDTH = flags.DEFINE_integer("width", 129, "Image width.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data set.", lower_bound=0)
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "Shards per split.", lower_bound=1)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 2, "Worker processes that write shards.", lower_bound=1
)
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Replace existing shards of the splits."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    from deeplab_dpc.data import synthetic

    with converter_flags.user_errors():
        results = synthetic.build(
            _OUTPUT_DIR.value,
            num_train=_NUM_TRAIN.value,
            num_val=_NUM_VAL.value,
            height=_HEIGHT.value,
            width=_WIDTH.value,
            seed=_SEED.value,
            num_shards=_NUM_SHARDS.value,
            overwrite=_OVERWRITE.value,
            num_workers=_NUM_WORKERS.value,
        )
        converter_flags.write_flagfile(_OUTPUT_DIR.value, "build_synthetic_data")
    for split, result in results.items():
        print(
            f"{split}: {result.num_written} examples in {len(result.shards)} "
            f"shard(s) in {_OUTPUT_DIR.value}"
        )


def run():
    cli.run(main, __name__, required=["output_dir"])


if __name__ == "__main__":
    run()
