"""The eval program: mIOU as a NumPy reference, scales and flips, bad flags."""

import json
import os

from absl import flags
import numpy as np
import program_testing
import pytest
import tensorflow as tf

from deeplab_dpc import eval as eval_program
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import pipeline
from deeplab_dpc.data import synthetic
from deeplab_dpc.evaluation import evaluator
from deeplab_dpc.evaluation import inference
from deeplab_dpc.layers import resize
from deeplab_dpc.models import deeplab

FLAGS = flags.FLAGS
CROP = (65, 65)
OPTIONS = deeplab.ModelOptions(
    num_classes=synthetic.NUM_CLASSES,
    crop_size=CROP,
    depth_multiplier=0.35,
    dense_prediction_cell=cell_spec.published_cell(),
)
STEP = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny data set and a checkpoint (at step 5) of a randomly set model."""
    root = tmp_path_factory.mktemp("eval")
    data_dir = str(root / "data")
    synthetic.build(
        data_dir, num_train=1, num_val=3, height=48, width=56, seed=4, num_workers=1
    )
    tf.keras.utils.set_random_seed(2)
    model = deeplab.build_deeplab(OPTIONS)
    # Batch-norm statistics recalibrated on the images (one pass with
    # momentum 0) and random logits: the predictions then spread over the
    # classes (an untrained model's activations otherwise vanish).
    images = next(iter(_val_batches(data_dir, batch_size=3)))[pipeline.IMAGE]
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]
    for layer in norms:
        layer.momentum = 0.0
    model(images, training=True)
    for variable in model.get_layer("logits").variables:
        variable.assign(tf.random.normal(variable.shape))
    ckpt_dir = str(root / "train")
    step = tf.Variable(STEP, dtype=tf.int64)
    tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, step=step), ckpt_dir, 1, checkpoint_name="ckpt"
    ).save(checkpoint_number=STEP)
    return data_dir, ckpt_dir, model


def _val_batches(data_dir, batch_size=1):
    return list(
        pipeline.make_dataset(
            data_dir,
            "val",
            crop_size=CROP,
            batch_size=batch_size,
            is_training=False,
            ignore_label=synthetic.IGNORE_LABEL,
        )
    )


def _numpy_miou(labels, predictions, num_classes, ignore_label):
    keep = labels != ignore_label
    labels, predictions = labels[keep], predictions[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((labels == c) | (predictions == c))
        if union:
            ious.append(np.sum((labels == c) & (predictions == c)) / union)
    return float(np.mean(ious))


def _reference(data_dir, probabilities_fn):
    """NumPy mIOU of argmax(probabilities) over the val images, uncropped."""
    labels, predictions = [], []
    for batch in _val_batches(data_dir):
        h, w = int(batch[pipeline.ORIGINAL_HEIGHT][0]), int(
            batch[pipeline.ORIGINAL_WIDTH][0]
        )
        probabilities = np.asarray(probabilities_fn(batch[pipeline.IMAGE]))
        predictions.append(probabilities[0, :h, :w].argmax(-1))
        labels.append(batch[pipeline.LABEL].numpy()[0, :h, :w, 0])
    labels, predictions = np.stack(labels), np.stack(predictions)
    assert len(np.unique(predictions)) > 1, "degenerate predictions"
    return _numpy_miou(labels, predictions, synthetic.NUM_CLASSES, 255)


def _program(env, data_dir, ckpt_dir, logdir, *extra):
    return program_testing.run_module(
        "deeplab_dpc.eval",
        f"--checkpoint_dir={ckpt_dir}",
        f"--eval_logdir={logdir}",
        "--dataset=synthetic",
        f"--dataset_dir={data_dir}",
        "--eval_crop_size=65,65",
        "--depth_multiplier=0.35",
        "--head=dpc",
        *extra,
        env=env,
    )


def test_program_miou_equals_numpy_reference(setup, tmp_path, program_env):
    data_dir, ckpt_dir, model = setup
    logdir = str(tmp_path / "eval")
    # Watching the directory: the one checkpoint is evaluated, then the
    # program stops when no new one comes within the timeout. The thread
    # flags size TensorFlow's pools before the first op.
    proc = _program(
        program_env,
        data_dir,
        ckpt_dir,
        logdir,
        "--max_number_of_evaluations=0",
        "--eval_timeout_secs=1",
        "--eval_interval_secs=0.5",
        "--intra_op_parallelism_threads=2",
        "--inter_op_parallelism_threads=1",
        "--float32_math=float32",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(logdir, "eval_results.json")) as f:
        result = json.load(f)
    with open(os.path.join(logdir, f"eval_results-{STEP}.json")) as f:
        assert json.load(f) == result
    expected = _reference(data_dir, lambda x: tf.nn.softmax(model(x)))
    assert result["miou"] == pytest.approx(
        expected, abs=1e-5
    )  # Near-tie pixels: see below.
    assert result["step"] == STEP and result["num_images"] == 3
    assert result["class_names"] == list(synthetic.CLASS_NAMES)
    assert "mIOU" in proc.stderr and "background" in proc.stderr
    assert "Threads: intra-op 2, inter-op 1" in proc.stderr
    # Exact float32 convolutions, as the in-process reference computes.
    assert "Float32 convolutions compute in float32." in proc.stderr
    assert not result["jit_compile"] and result["mixed_precision"] == "none"
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(logdir))


def test_scales_and_flips_average_probabilities(setup):
    data_dir, ckpt_dir, model = setup
    scales = (0.5, 1.0)
    result = evaluator.evaluate_checkpoint(
        OPTIONS,
        ckpt_dir,
        dataset_dir=data_dir,
        split="val",
        batch_size=2,
        ignore_label=255,
        scales=scales,
        add_flipped_images=True,
    )
    # DeepLab's predict_labels_multi_scale, written out: a model per scaled
    # crop with the same weights, logits resized back (through the logits
    # size of multi_scale_logits), softmax averaged.
    models = {}
    for scale in scales:
        crop = tuple(int((c - 1) * scale + 1) for c in CROP)
        scaled = deeplab.build_deeplab(
            deeplab.ModelOptions(**{**OPTIONS.__dict__, "crop_size": crop})
        )
        scaled.set_weights(model.get_weights())
        models[crop] = scaled

    def probabilities(images):
        total = 0
        for crop, scaled in models.items():
            for flip in (False, True):
                x = tf.reverse(images, [2]) if flip else images
                x = tf.compat.v1.image.resize_bilinear(x, crop, align_corners=True)
                # To the crop's logits size (5x5 here), then the image's.
                logits = tf.compat.v1.image.resize_bilinear(
                    scaled(x), (5, 5), align_corners=True
                )
                logits = tf.compat.v1.image.resize_bilinear(
                    logits, CROP, align_corners=True
                )
                p = tf.nn.softmax(logits)
                total += tf.reverse(p, [2]) if flip else p
        return total / (2 * len(models))

    # Eval runs batches of 2, the reference images one by one: kernels that
    # round by batch size (TensorFlow's own, oneDNN's on some CPUs) may flip
    # a near-tie pixel or two, about 1e-6 of mIOU each here.
    assert result["miou"] == pytest.approx(
        _reference(data_dir, probabilities), abs=1e-5
    )
    assert result["eval_scales"] == list(scales) and result["add_flipped_images"]


def test_scaled_crop_must_suit_the_output_stride():
    assert inference.scaled_crop((513, 513), 0.75, 16) == (385, 385)
    with pytest.raises(ValueError, match="scale 0.3"):
        inference.scaled_crop((513, 513), 0.3, 16)
    assert resize.resize_bilinear(tf.zeros([1, 3, 3, 1]), (5, 5)).shape[1] == 5


@pytest.mark.parametrize(
    "values, message",
    [
        ({"eval_crop_size": "64,64"}, "--eval_crop_size"),
        ({"eval_scales": ["0.3"]}, "--eval_scales"),
        ({"eval_split": "nosuch"}, "--eval_split='nosuch'"),
        ({"dataset": "nosuch"}, "nosuch"),
        ({"dataset_dir": None}, "--dataset_dir is required"),
        ({"eval_batch_size": 0}, "--eval_batch_size"),
    ],
)
def test_bad_flags_are_named(setup, parsed_flags, values, message):
    FLAGS.dataset = "synthetic"
    FLAGS.dataset_dir = setup[0]
    FLAGS.eval_crop_size = "65,65"
    for name, value in values.items():
        setattr(FLAGS, name, value)
    with pytest.raises(flags.ValidationError, match=message):
        eval_program.eval_setup()


def test_checkpoint_that_does_not_fit_is_named(setup):
    aspp = deeplab.ModelOptions(
        num_classes=synthetic.NUM_CLASSES, crop_size=CROP, depth_multiplier=0.35
    )
    with pytest.raises(ValueError, match="another architecture"):
        inference.load_model(aspp, setup[1])


def _write_unlabeled_and_empty_splits(data_dir):
    """`test-*` (one record, no label) and `empty-*` (a shard with no record)."""
    from deeplab_dpc.data import tfexample  # pylint: disable=g-import-not-at-top

    image = tfexample.encode_png(np.zeros((8, 8, 3), np.uint8))
    example = tfexample.encode_example(image, "unlabeled", 8, 8, None, "png")
    with tf.io.TFRecordWriter(
        os.path.join(data_dir, tfexample.shard_name("test", 0, 1))
    ) as writer:
        writer.write(example.SerializeToString())
    with tf.io.TFRecordWriter(
        os.path.join(data_dir, tfexample.shard_name("empty", 0, 1))
    ):
        pass


@pytest.mark.parametrize("split", ["test", "empty"])
def test_nothing_labelled_to_evaluate_is_an_error(setup, tmp_path, split):
    # An mIOU of 0.0 over records without labels or an empty shard was the
    # audit's silent result.
    data_dir = str(tmp_path / "data")
    os.makedirs(data_dir)
    _write_unlabeled_and_empty_splits(data_dir)
    with pytest.raises(
        pipeline.DataError, match=f"split '{split}' of .*nothing to evaluate"
    ):
        evaluator.evaluate_checkpoint(
            OPTIONS,
            setup[1],
            dataset_dir=data_dir,
            split=split,
            batch_size=1,
            ignore_label=255,
        )


def test_errors_name_checkpoint_dir(setup, tmp_path):
    missing = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="--checkpoint_dir="):
        inference.resolve_checkpoint(missing, "--checkpoint_dir")
    aspp = deeplab.ModelOptions(
        num_classes=synthetic.NUM_CLASSES, crop_size=CROP, depth_multiplier=0.35
    )
    with pytest.raises(ValueError) as raised:
        inference.load_model(aspp, setup[1], checkpoint_flag="--checkpoint_dir")
    assert "--tf_initial_checkpoint" not in str(raised.value)


def test_program_errors_are_one_line(setup, tmp_path, program_env):
    missing = str(tmp_path / "nothing")
    proc = _program(program_env, setup[0], missing, str(tmp_path / "eval"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.startswith("error: ")][-1]
    assert last.startswith(f"error: --checkpoint_dir={missing!r}"), last
