"""The vis program: colorized and raw PNGs, and Cityscapes labelIds that
the official `cityscapesscripts` evaluator reads and scores as eval does;
`--colormap_file` colours the predictions."""

import json
import os

import numpy as np
from PIL import Image
import program_testing
import pytest
import tensorflow as tf

from deeplab_dpc.data import cityscapes
from deeplab_dpc.data import converters
from deeplab_dpc.data import pipeline
from deeplab_dpc.data import registry
from deeplab_dpc.evaluation import evaluator
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.evaluation import visualizer
from deeplab_dpc.models import deeplab

CROP = (33, 49)
OPTIONS = deeplab.ModelOptions(
    num_classes=cityscapes.NUM_CLASSES, crop_size=CROP, depth_multiplier=0.35
)
NAMES = ("frankfurt_000000_000019", "frankfurt_000001_000019")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A two-image Cityscapes val tree, its TFRecords and a checkpoint."""
    root = tmp_path_factory.mktemp("vis")
    tree = root / "cityscapes"
    rng = np.random.default_rng(5)
    for name in NAMES:
        image_dir = tree / "leftImg8bit" / "val" / "frankfurt"
        label_dir = tree / "gtFine" / "val" / "frankfurt"
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
        Image.fromarray(image).save(image_dir / f"{name}_leftImg8bit.png")
        # Blocks of labelIds (some of them ignored in evaluation, e.g. 0-6).
        blocks = rng.integers(0, 34, (6, 9), dtype=np.uint8)
        label_ids = np.kron(blocks, np.ones((5, 5), np.uint8))
        Image.fromarray(label_ids).save(label_dir / f"{name}_gtFine_labelIds.png")
        Image.fromarray(label_ids).save(label_dir / f"{name}_gtFine_instanceIds.png")
    data_dir = str(root / "data")
    cityscapes.convert_cityscapes(
        str(tree),
        data_dir,
        ["val_fine"],
        converters.WriteOptions(num_shards=1, num_workers=1),
    )
    tf.keras.utils.set_random_seed(3)
    model = deeplab.build_deeplab(OPTIONS)
    # Recalibrated batch norm and random logits spread the predictions.
    images = next(
        iter(
            pipeline.make_dataset(
                data_dir,
                "val_fine",
                crop_size=CROP,
                batch_size=2,
                is_training=False,
                ignore_label=255,
            )
        )
    )[pipeline.IMAGE]
    for layer in model._flatten_layers():
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(images, training=True)
    for variable in model.get_layer("logits").variables:
        variable.assign(tf.random.normal(variable.shape))
    ckpt_dir = str(root / "train")
    tf.train.Checkpoint(model=model).save(os.path.join(ckpt_dir, "ckpt"))
    return tree, data_dir, ckpt_dir, model


def _vis(env, data_dir, ckpt_dir, logdir, *extra):
    return program_testing.run_module(
        "deeplab_dpc.vis",
        f"--checkpoint_dir={ckpt_dir}",
        f"--vis_logdir={logdir}",
        "--dataset=cityscapes",
        f"--dataset_dir={data_dir}",
        "--vis_split=val_fine",
        "--vis_crop_size=33,49",
        "--depth_multiplier=0.35",
        "--also_save_raw_predictions",
        *extra,
        env=env,
    )


def test_vis_writes_pngs_the_official_evaluator_scores_as_eval(
    setup, tmp_path, program_env
):
    tree, data_dir, ckpt_dir, model = setup
    logdir = tmp_path / "vis"
    proc = _vis(program_env, data_dir, ckpt_dir, str(logdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The progress bar counts images against the split's size.
    assert f"| {len(NAMES)}/{len(NAMES)} [" in proc.stderr, proc.stderr[-3000:]

    seg = logdir / visualizer.SEGMENTATION_DIR
    raw = logdir / visualizer.RAW_SEGMENTATION_DIR
    assert sorted(os.listdir(raw)) == [f"{n}_gtFine_labelIds.png" for n in NAMES]
    colormap = registry.colormap("cityscapes")
    metric = metrics.StreamingMeanIoU(num_classes=19, ignore_label=255)
    for name in NAMES:
        folder = tree / "leftImg8bit" / "val" / "frankfurt"
        image = np.asarray(Image.open(folder / f"{name}_leftImg8bit.png"))
        padded = np.full(CROP + (3,), 127.5, np.float32)
        padded[:30, :45] = image
        expected = model(padded[None]).numpy()[0, :30, :45].argmax(-1)
        label_ids = np.asarray(Image.open(raw / f"{name}_gtFine_labelIds.png"))
        prediction = cityscapes.label_ids_to_train_ids(label_ids)
        # Graph and eager runs may break a near-tie differently.
        assert np.mean(prediction == expected) > 0.99
        colored = np.asarray(Image.open(seg / f"{name}_prediction.png"))
        np.testing.assert_array_equal(colored, colormap[prediction])
        np.testing.assert_array_equal(
            np.asarray(Image.open(seg / f"{name}_image.png")), image
        )
        truth = np.asarray(
            Image.open(
                tree / "gtFine" / "val" / "frankfurt" / f"{name}_gtFine_labelIds.png"
            )
        )
        metric.update(cityscapes.label_ids_to_train_ids(truth), prediction)

    # The official evaluator finds the predictions by name and scores them.
    export = tmp_path / "official"
    export.mkdir()
    official = program_testing.run_module(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        env=dict(
            program_env,
            CITYSCAPES_DATASET=str(tree),
            CITYSCAPES_RESULTS=str(raw),
            CITYSCAPES_EXPORT_DIR=str(export),
        ),
    )
    assert official.returncode == 0, official.stdout[-3000:] + official.stderr[-3000:]
    with open(export / "resultPixelLevelSemanticLabeling.json") as f:
        official_miou = json.load(f)["averageScoreClasses"]
    ours = evaluator.evaluate_checkpoint(
        OPTIONS,
        ckpt_dir,
        dataset_dir=data_dir,
        split="val_fine",
        batch_size=2,
        ignore_label=255,
    )
    assert official_miou > 0
    assert official_miou == pytest.approx(metric.result()["miou"], abs=1e-9)
    assert official_miou == pytest.approx(ours["miou"], abs=0.01)

    # Results already there are not overwritten unless asked.
    again = _vis(program_env, data_dir, ckpt_dir, str(logdir))
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_vis_colormap_file_overrides_the_colormap(setup, tmp_path, program_env):
    _, data_dir, ckpt_dir, _ = setup
    colors = np.random.default_rng(8).integers(0, 256, (19, 3), dtype=np.uint8)
    palette = tmp_path / "palette.txt"
    palette.write_text("".join(f"{r} {g} {b}\n" for r, g, b in colors))
    logdir = tmp_path / "vis"
    proc = _vis(
        program_env,
        data_dir,
        ckpt_dir,
        str(logdir),
        f"--colormap_file={palette}",
        "--intra_op_parallelism_threads=2",
        "--inter_op_parallelism_threads=1",
        "--float32_math=float32",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The speed flags vis shares with eval apply.
    assert "Threads: intra-op 2, inter-op 1" in proc.stderr
    assert "Float32 convolutions compute in float32." in proc.stderr
    for name in NAMES:
        label_ids = np.asarray(
            Image.open(
                logdir / visualizer.RAW_SEGMENTATION_DIR / f"{name}_gtFine_labelIds.png"
            )
        )
        prediction = cityscapes.label_ids_to_train_ids(label_ids)
        colored = np.asarray(
            Image.open(logdir / visualizer.SEGMENTATION_DIR / f"{name}_prediction.png")
        )
        np.testing.assert_array_equal(colored, colors[prediction])


def test_colorize_numpy_and_tensor_agree():
    labels = np.array([[0, 1], [18, 255]])
    colors = registry.colorize(labels, "cityscapes")
    np.testing.assert_array_equal(
        registry.colorize(tf.constant(labels), "cityscapes").numpy(), colors
    )
    assert tuple(colors[0, 0]) == (128, 64, 128)  # road
    assert visualizer.output_names("a/x_leftImg8bit.png", True) == (
        "x_leftImg8bit",
        "x_gtFine_labelIds.png",
    )
    assert visualizer.output_names("2007_000033.jpg", False) == (
        "2007_000033",
        "2007_000033.png",
    )


class _ZeroPredictor:
    """Predicts class 0 everywhere (visualize needs only `predictions`)."""

    def predictions(self, images):
        return tf.zeros(tf.shape(images)[:3], tf.int32)


def _batch(name):
    from deeplab_dpc.data import pipeline  # pylint: disable=g-import-not-at-top

    return {
        pipeline.IMAGE: tf.zeros([1, 4, 4, 3]),
        pipeline.ORIGINAL_HEIGHT: tf.constant([4]),
        pipeline.ORIGINAL_WIDTH: tf.constant([4]),
        pipeline.FILENAME: tf.constant([name]),
    }


def test_vis_marks_a_complete_folder_and_a_killed_one_is_not(tmp_path):
    marker = tmp_path / visualizer.COMPLETE_FILE
    count = visualizer.visualize(
        _ZeroPredictor(), [_batch("a"), _batch("b")], str(tmp_path), colormap_type="pascal"
    )
    assert count == 2 and json.loads(marker.read_text()) == {"num_images": 2}

    def interrupted():
        yield _batch("a")
        raise KeyboardInterrupt  # As a kill in the middle.

    with pytest.raises(KeyboardInterrupt):
        visualizer.visualize(
            _ZeroPredictor(), interrupted(), str(tmp_path), colormap_type="pascal"
        )
    assert not marker.exists()
