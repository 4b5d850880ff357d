"""A model moves between machines with and without oneDNN.

On one training logdir, three processes alternate `TF_ENABLE_ONEDNN_OPTS`
(what an Intel AVX-512 machine and an AMD/ARM machine, or a GPU, differ in):

1. oneDNN on: train 2 steps, export a SavedModel;
2. oneDNN off: serve that SavedModel, resume the training from its
   checkpoint to step 4, export again;
3. oneDNN on: serve the second SavedModel, resume to step 6.

Each served SavedModel must equal, in the serving process, the checkpoint it
was exported from, and hold only ops that run on every device (no dilated
`DepthwiseConv2dNative`, which only oneDNN's kernel runs). The model is the
published DPC (atrous rates up to 21) with the decoder.
"""

import json
import sys
import textwrap

import program_testing

_STEP = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from deeplab_dpc.evaluation import inference
    from deeplab_dpc.training import trainer
    from deeplab_dpc.data import synthetic
    from deeplab_dpc.export import saved_model
    from deeplab_dpc.layers import fast_paths
    from deeplab_dpc.models import deeplab
    from deeplab_dpc.cells import cell_spec

    data_dir, logdir, export_path, serve_version, steps, export_version = sys.argv[1:]
    options = deeplab.ModelOptions(
        num_classes=synthetic.NUM_CLASSES, crop_size=(33, 33),
        depth_multiplier=0.35, dense_prediction_cell=cell_spec.published_cell(),
        decoder_output_stride=4)
    out = {"onednn": fast_paths.onednn_enabled(),
           "native": bool(fast_paths.available(
               fast_paths.NATIVE_DILATED_DEPTHWISE))}

    def dilated_ops(export_dir):
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        graph = proto.meta_graphs[0].graph_def
        nodes = [*graph.node, *[n for f in graph.library.function for n in f.node_def]]
        return [n.name for n in nodes if n.op == "DepthwiseConv2dNative"
                and list(n.attr["dilations"].list.i) not in ([], [1, 1, 1, 1])]

    if serve_version != "0":
        export_dir = os.path.join(export_path, serve_version)
        image = np.random.default_rng(0).integers(0, 256, (1, 33, 33, 3), np.uint8)
        served = tf.saved_model.load(export_dir).signatures["serving_default"](
            ImageTensor=tf.constant(image))["SemanticProbabilities"]
        checkpoint = tf.train.latest_checkpoint(logdir)
        model = inference.load_model(options, checkpoint)
        expected = inference.Predictor(model, options).probabilities(
            tf.cast(image, tf.float32))
        out["served_from"] = checkpoint
        out["max_difference"] = float(np.max(np.abs(served - expected)))
        out["dilated_ops"] = dilated_ops(export_dir)
        tf.keras.backend.clear_session()

    results = trainer.run(options, trainer.TrainOptions(
        train_batch_size=2, training_number_of_steps=int(steps),
        base_learning_rate=0.01, dataset_dir=data_dir,
        ignore_label=synthetic.IGNORE_LABEL, seed=1), logdir)
    out["trained_steps"] = len(results["losses"])
    out["losses_finite"] = bool(np.all(np.isfinite(results["losses"])))
    out["checkpoint"] = results["checkpoint"]
    if export_version != "0":
        tf.keras.backend.clear_session()
        model = inference.load_model(options, results["checkpoint"])
        saved_model.export_saved_model(
            model, options, export_path, model_version=int(export_version))
    print("RESULT " + json.dumps(out))
    """)


def _step(onednn, data_dir, logdir, export_path, serve, steps, export):
    env = program_testing.environment(TF_ENABLE_ONEDNN_OPTS=onednn)
    env.pop("DEEPLAB_DPC_FAST_PATHS", None)
    args = [data_dir, logdir, export_path, str(serve), str(steps), str(export)]
    proc = program_testing.run([sys.executable, "-c", _STEP, *args], env)
    assert proc.returncode == 0, (onednn, args, proc.stderr[-3000:])
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_train_export_resume_and_serve_across_onednn_settings(synthetic_data, tmp_path):
    data_dir = synthetic_data(num_train=8, num_val=2, height=40, width=40)
    paths = (data_dir, str(tmp_path / "train"), str(tmp_path / "export"))
    on = _step("1", *paths, serve=0, steps=2, export=1)
    off = _step("0", *paths, serve=1, steps=4, export=2)
    back = _step("1", *paths, serve=2, steps=6, export=0)

    assert on["checkpoint"].endswith("ckpt-2") and on["trained_steps"] == 2
    # Without oneDNN the native dilated kernel is not taken, and the
    # checkpoint written with it resumes.
    assert not off["onednn"] and not off["native"]
    assert off["served_from"].endswith("ckpt-2")
    assert off["checkpoint"].endswith("ckpt-4") and off["trained_steps"] == 2
    assert back["served_from"].endswith("ckpt-4")
    assert back["checkpoint"].endswith("ckpt-6") and back["trained_steps"] == 2
    for step in (on, off, back):
        assert step["losses_finite"]
    for served in (off, back):
        assert served["dilated_ops"] == []
        assert served["max_difference"] < 1e-4, served
