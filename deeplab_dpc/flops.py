r"""Params and multiply-adds of a DeepLab model, per module.

  python -m deeplab_dpc.flops --model_variant=mobilenet_v2 \
      --dense_prediction_cell_json=cell.json --crop_size=1025,2049 \
      --output_stride=16 [--decoder_output_stride=4] [--json]

Prints one JSON object `{"modules": {"backbone": {"params": .., "madds": ..},
"head": .., "head_branches": .., "decoder": .., "logits": .., "total": ..}}`
with --json (no "decoder" when off), else a table. With --profile, also
TensorFlow's profiler FLOPs and the fast paths this process takes for the
model (`fast_paths.describe()`: oneDNN's state, each kernel probe's decision
and how many layers take the fast route and how many the portable one).
"""

import json

from absl import app
from absl import flags

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import common_flags

_CROP_SIZE = flags.DEFINE_string(
    "crop_size", "513,513", "Input size 'H,W' (output_stride * k + 1)."
)
_JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of a table.")
_PROFILE = flags.DEFINE_boolean(
    "profile",
    False,
    "Also report TensorFlow's profiler FLOPs as a check, and which fast "
    "paths (kernels) this process takes for the model's layers in training "
    "and inference (deeplab_dpc/layers/fast_paths.py).",
)


def trace_training_step(model):
    """Traces (does not run) a training step's gradients, batch 1.

    So that every layer decides its training route (`fast_paths.taken`).
    """
    import tensorflow as tf

    from deeplab_dpc.training import losses

    spec = tf.TensorSpec([1, *model.input.shape[1:]], tf.float32)

    @tf.function
    def gradients(images):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            flat = tf.reshape(logits, [-1, logits.shape[-1]])
            labels = tf.zeros(tf.shape(flat)[:1], tf.int32)
            loss = tf.reduce_mean(losses.softmax_cross_entropy(flat, labels))
        return tape.gradient(loss, model.trainable_variables)

    gradients.get_concrete_function(spec)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    from deeplab_dpc.layers import fast_paths
    from deeplab_dpc.models import accounting
    from deeplab_dpc.models import deeplab

    options = common_flags.model_options_from_flags(
        common_flags.parse_size(_CROP_SIZE.value, "crop_size")
    )
    model = deeplab.build_deeplab(options)
    modules = accounting.count(model)
    result = {"modules": modules}
    if _PROFILE.value:
        result["profiler_flops"] = accounting.profiler_flops(model)
        trace_training_step(model)
        result["fast_paths"] = fast_paths.describe()
    if _JSON.value:
        print(json.dumps(result))
        return
    rows = [{"module": name, **value} for name, value in modules.items()]
    print(
        f"{options.model_variant} + {options.head}, crop "
        f"{options.crop_size[0]}x{options.crop_size[1]}, output stride "
        f"{options.output_stride}"
    )
    print(
        accounting.format_table(
            rows, [("module", "module"), ("params", "params"), ("madds", "MAdds")]
        )
    )
    if _PROFILE.value:
        ratio = result["profiler_flops"] / (2 * modules["total"]["madds"])
        print(
            f"profiler FLOPs {result['profiler_flops']:,} = {ratio:.4f} x " f"2 x MAdds"
        )
        print("fast paths:")
        for line in result["fast_paths"]:
            print(f"  {line}")


def run():
    cli.run(main, __name__)


if __name__ == "__main__":
    run()
