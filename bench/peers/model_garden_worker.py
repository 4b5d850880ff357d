r"""TF Model Garden's DeepLab v3 MobileNet-v2, served to the benchmark drivers.

Runs under the peers venv only (bench/peers/setup.sh: tf-models-official,
TensorFlow 2.20); it never imports deeplab_dpc. Started by
`bench/peer_process.py`:

  bench/.peers-venv/bin/python bench/peers/model_garden_worker.py \
      [--experiment=mnv2_deeplabv3_pascal] [--crop=513] \
      [--intra_op_threads=2] [--inter_op_threads=2] [--no-upsample_logits]

The model is Model Garden's registered experiment (`exp_factory`), built by
its registered task's `build_model` (its L2 regularizer included) at a fixed
`crop` x `crop` input, with random weights: no checkpoint is read. Its
forward gives logits at the head's level (stride 16 for
`mnv2_deeplabv3_pascal`); with `--upsample_logits` (the default) the timed
forward resizes them bilinearly to the input size, as Model Garden's loss
and evaluation do and as our models' forward does, so both do the same work.

It speaks `benchlib.serve`'s line protocol (a JSON object per line):

  {"cmd": "info"} -> {"params", "madds" (`graph_madds`), "madds_method",
      "madds_profiler" (tf.compat.v1.profiler float ops / 2), "tf_version",
      "experiment", "crop", "upsample_logits", "threads", "output_shape"}
  {"cmd": "infer", "repeats": N, "warmup": W} -> {"ms": [N per-call ms]} of
      the batch-1 `tf.function` forward (random image, [0, 255])
  {"cmd": "train", "batch": B, "repeats": N, "warmup": W} -> {"seconds": [N]}
      per step of a plain `tf.GradientTape` SGD step (momentum 0.9): softmax
      cross-entropy of the logits resized to the crop (as Model Garden's
      loss with `use_groundtruth_dimension`) on random labels of all classes,
      plus the model's L2 losses
  {"cmd": "tflite", "path": P, "quantize": "float32" | "int8"} -> {"path",
      "bytes"}: TF 2.20's converter on the frozen batch-1 forward; "int8" is
      full-integer (int8 input and output, builtin int8 ops only) calibrated
      on random images
  {"cmd": "profile", "runs": N} -> {"ms": {op type: ms per run}, "count",
      "wall_ms"} of the batch-1 forward (`benchlib.op_type_profile`)
  {"cmd": "rss", "reset": R} -> {"peak_rss_mb", "rss_mb", "reset"} of this
      process: the peak since the start or the last reset; with R true the
      peak is then reset to the current RSS (`benchlib.ModelWorker.rss`)
  {"cmd": "quit"}
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import benchlib  # noqa: E402  (bench/, on the path only now)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="mnv2_deeplabv3_pascal")
    parser.add_argument("--crop", type=int, default=513, help="square input size")
    parser.add_argument("--intra_op_threads", type=int, default=2)
    parser.add_argument("--inter_op_threads", type=int, default=2)
    parser.add_argument(
        "--upsample_logits",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resize the logits to the input size inside the forward",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.crop < 1 or args.intra_op_threads < 0 or args.inter_op_threads < 0:
        parser.error("--crop must be >= 1 and the thread counts >= 0")
    return args


def graph_madds(graph):
    """Multiply-accumulates of a graph's conv and matmul ops.

    The rule of `deeplab_dpc.models.accounting.graph_madds` (not imported:
    this worker runs in another venv), so both sides count alike: one per
    multiply-accumulate of Conv2D, DepthwiseConv2dNative (an atrous one at
    the size of its BatchToSpaceND output) and MatMul; nothing else.

    Raises:
      ValueError: for an op with an unknown output shape.
    """
    total = 0
    for op in graph.get_operations():
        if op.type in ("Conv2D", "DepthwiseConv2dNative"):
            out = op.outputs[0]
            consumers = out.consumers()
            if len(consumers) == 1 and consumers[0].type == "BatchToSpaceND":
                out = consumers[0].outputs[0]
            kh, kw, cin, _ = op.inputs[1].shape
            per_output = kh * kw * (cin if op.type == "Conv2D" else 1)
        elif op.type in ("MatMul", "BatchMatMulV2"):
            out = op.outputs[0]
            transpose = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            per_output = op.inputs[0].shape[-2 if transpose else -1]
        else:
            continue
        if not out.shape.is_fully_defined():
            raise ValueError(f"op {op.name} has an unknown shape {out.shape}")
        total += out.shape.num_elements() * per_output
    return int(total)


class ModelGardenWorker(benchlib.ModelWorker):
    """The command handlers, around one Model Garden model."""

    def __init__(self, args):
        import tensorflow as tf

        super().__init__(tf, args)
        from official.core import exp_factory
        from official.core import task_factory
        import official.vision  # noqa: F401  (registers the experiments)

        tf.random.set_seed(args.seed)
        params = exp_factory.get_exp_config(args.experiment)
        params.task.model.input_size = [args.crop, args.crop, 3]
        params.task.init_checkpoint = None
        self.num_classes = params.task.model.num_classes
        self.task = task_factory.get_task(params.task)
        self.model = self.task.build_model()
        self.image = tf.random.uniform([1, args.crop, args.crop, 3], 0.0, 255.0)
        spec = tf.TensorSpec([1, args.crop, args.crop, 3], tf.float32)
        self.forward = tf.function(self._forward).get_concrete_function(spec)

    def _forward(self, images, training=False):
        logits = self.model(images, training=training)["logits"]
        if self.args.upsample_logits:
            logits = self.tf.image.resize(
                logits, self.tf.shape(images)[1:3], method="bilinear"
            )
        return logits

    def info(self):
        tf = self.tf
        graph = self._frozen_graph()
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        stats = tf.compat.v1.profiler.profile(
            graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
        )
        return {
            "params": int(self.model.count_params()),
            "madds": graph_madds(graph),
            "madds_method": (
                "conv/matmul multiply-accumulates from the frozen forward graph's "
                "static shapes (the rule of deeplab_dpc.models.accounting)"
            ),
            "madds_profiler": int(stats.total_float_ops // 2),
            "experiment": self.args.experiment,
            "upsample_logits": self.args.upsample_logits,
            **self._runtime_info(),
        }

    def _frozen_graph(self):
        """The batch-1 forward with variables folded in, pruned to its output.

        (The backbone also builds MobileNet-v2's final 1x1 conv to 1280
        channels, which no output uses: freezing drops it, as the runtime
        does, so it is not counted.)
        """
        tf = self.tf
        from tensorflow.python.framework import convert_to_constants

        frozen = convert_to_constants.convert_variables_to_constants_v2(self.forward)
        graph_def = frozen.graph.as_graph_def()
        with tf.Graph().as_default() as graph:
            tf.graph_util.import_graph_def(graph_def, name="")
        return graph

    def _build_train_step(self, batch):
        import tf_keras

        tf = self.tf
        optimizer = tf_keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
        crop = self.args.crop
        images = tf.random.uniform([batch, crop, crop, 3], 0.0, 255.0)
        labels = tf.random.uniform(
            [batch, crop, crop], 0, self.num_classes, dtype=tf.int32
        )
        model = self.model

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                logits = model(images, training=True)["logits"]
                logits = tf.image.resize(logits, [crop, crop], method="bilinear")
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=labels, logits=logits
                    )
                )
                if model.losses:
                    loss += tf.add_n(model.losses)
            variables = model.trainable_variables
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        return step

    def tflite(self, path, quantize="float32"):
        tf = self.tf
        from tensorflow.python.framework import convert_to_constants

        if quantize not in ("float32", "int8"):
            raise ValueError(f"quantize must be float32 or int8, got {quantize!r}")
        frozen = convert_to_constants.convert_variables_to_constants_v2(self.forward)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
        if quantize == "int8":
            crop = self.args.crop
            rng = tf.random.Generator.from_seed(self.args.seed)
            images = [
                rng.uniform([1, crop, crop, 3], 0.0, 255.0).numpy()
                for _ in range(self.CALIBRATION_IMAGES)
            ]
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([i] for i in images)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        else:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        content = converter.convert()
        directory = os.path.dirname(os.path.abspath(path))
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        return {"path": path, "bytes": len(content)}


def main(argv):
    args = parse_args(argv)
    replies = benchlib.claim_stdout()
    benchlib.serve(ModelGardenWorker(args), stdout=replies)


if __name__ == "__main__":
    main(sys.argv[1:])
