"""Measures that context matters on the synthetic data set: 1x1 head vs DPC.

  python bench/synthetic_context.py [--steps=1000 --num_train=1000 ...]

Builds the synthetic data set (`deeplab_dpc.data.synthetic`) as DeepLab
TFRecords, reads it back with `tfexample.decode_example`, and trains two
models that differ only in their head, for the same steps, batches and seed:

  stem: three 3x3 conv -> BN -> ReLU layers of stride 2 (output stride 8,
        receptive field 15 pixels), trained with the head;
  head: a `DensePredictionCell` of four branches, either
        "1x1 only":  conv1x1 chained four times, or
        "context":   conv1x1, sep3x3 at rates (3, 3) and (6, 6) (doubled by
                     the cell at output stride 8: 48 and 96 pixels) and
                     pyramid pooling with grid (1, 1), all on the stem output;
  logits: 1x1 conv, bilinear upsampling to the image.

It prints the val mIOU and per-class IoU of each, and the wall time. This is
a measurement script, not a test.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.data import synthetic
from deeplab_dpc.data import tfexample
from deeplab_dpc.layers import dense_prediction_cell
from deeplab_dpc.layers import resize

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    "",
    "Existing synthetic TFRecords (train-*, val-*); empty: build them in a "
    "temporary directory from the flags below.",
)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 1000, "Training examples to build.")
_NUM_VAL = flags.DEFINE_integer("num_val", 100, "Validation examples to build.")
_SIZE = flags.DEFINE_integer("size", 129, "Image height and width (OS*k+1).")
_SEED = flags.DEFINE_integer("seed", 0, "Data and initialisation seed.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps per model.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Batch size.")
_FILTERS = flags.DEFINE_integer("filters", 64, "Channels of every head branch.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 2e-3, "Adam, cosine decay.")

OUTPUT_STRIDE = 8
HEADS = {
    "1x1 only": cell_spec.CellSpec(
        [
            cell_spec.BranchSpec(input=-1, op="conv1x1"),
            cell_spec.BranchSpec(input=0, op="conv1x1"),
            cell_spec.BranchSpec(input=1, op="conv1x1"),
            cell_spec.BranchSpec(input=2, op="conv1x1"),
        ]
    ),
    "context": cell_spec.CellSpec(
        [
            cell_spec.BranchSpec(input=-1, op="conv1x1"),
            cell_spec.BranchSpec(input=-1, op="sep3x3", rate=(3, 3)),
            cell_spec.BranchSpec(input=-1, op="sep3x3", rate=(6, 6)),
            cell_spec.BranchSpec(input=-1, op="pool", grid=(1, 1)),
        ]
    ),
}


def load_split(data_dir, split):
    """All examples of a split as (images float32 in [-1, 1], labels int32)."""
    files = tfexample.split_files(data_dir, split)
    images, labels = [], []
    for element in tf.data.TFRecordDataset(files).map(tfexample.decode_example):
        images.append(element[tfexample.IMAGE].numpy())
        labels.append(element[tfexample.LABEL].numpy()[..., 0])
    images = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return images, np.stack(labels).astype(np.int32)


def build_model(cell, size, filters, num_classes):
    """Stem (output stride 8) -> DPC head -> logits at the image size."""
    inputs = tf.keras.Input([size, size, 3])
    x = inputs
    for i, channels in enumerate((32, 48, 64)):
        x = tf.keras.layers.Conv2D(
            channels, 3, strides=2, padding="same", use_bias=False, name=f"stem{i}"
        )(x)
        x = tf.keras.layers.BatchNormalization(momentum=0.9, name=f"stem{i}_bn")(x)
        x = tf.keras.layers.ReLU(name=f"stem{i}_relu")(x)
    x = dense_prediction_cell.DensePredictionCell(
        cell,
        crop_size=(size, size),
        output_stride=OUTPUT_STRIDE,
        filters=filters,
        norm_momentum=0.9,
        name="head",
    )(x)
    x = tf.keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    outputs = resize.ResizeBilinear((size, size), name="upsample")(x)
    return tf.keras.Model(inputs, outputs)


def confusion(model, images, labels, num_classes, batch_size):
    """`[num_classes, num_classes]` confusion matrix (rows: ground truth)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size], training=False)
        predictions = np.argmax(logits.numpy(), axis=-1).ravel()
        truth = labels[start : start + batch_size].ravel()
        keep = truth < num_classes
        matrix += np.bincount(
            truth[keep] * num_classes + predictions[keep],
            minlength=num_classes**2,
        ).reshape(num_classes, num_classes)
    return matrix


def iou(matrix):
    """Per-class IoU (NaN for a class absent from truth and prediction)."""
    inter = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def train_and_evaluate(
    cell, train, val, *, steps, batch_size, learning_rate, filters, seed
):
    """Trains one model; returns (per-class IoU, seconds)."""
    tf.keras.utils.set_random_seed(seed)
    size = train[0].shape[1]
    model = build_model(cell, size, filters, synthetic.NUM_CLASSES)
    schedule = tf.keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(schedule),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=synthetic.IGNORE_LABEL
        ),
    )
    data = (
        tf.data.Dataset.from_tensor_slices(train)
        .shuffle(len(train[0]), seed=seed)
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .prefetch(2)
    )
    start = time.time()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    seconds = time.time() - start
    return iou(confusion(model, *val, synthetic.NUM_CLASSES, batch_size)), seconds


def run(data_dir, *, steps, batch_size, learning_rate, filters, seed):
    """Trains both heads and prints the table."""
    train = load_split(data_dir, "train")
    val = load_split(data_dir, "val")
    print(
        f"synthetic data: {len(train[0])} train / {len(val[0])} val images of "
        f"{train[0].shape[1]}x{train[0].shape[2]}; {steps} steps of batch "
        f"{batch_size} per model, output stride {OUTPUT_STRIDE}"
    )
    header = "head        mIOU   " + " ".join(
        f"{name[:9]:>9}" for name in synthetic.CLASS_NAMES
    )
    rows = []
    for name, cell in HEADS.items():
        ious, seconds = train_and_evaluate(
            cell,
            train,
            val,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            filters=filters,
            seed=seed,
        )
        rows.append(
            f"{name:<10} {np.nanmean(ious):6.3f}  "
            + " ".join(f"{v:9.3f}" for v in ious)
            + f"   ({seconds:.0f} s)"
        )
    print(header)
    print("\n".join(rows))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = _DATA_DIR.value
        if not data_dir:
            data_dir = os.path.join(tmp, "synthetic")
            synthetic.build(
                data_dir,
                num_train=_NUM_TRAIN.value,
                num_val=_NUM_VAL.value,
                height=_SIZE.value,
                width=_SIZE.value,
                seed=_SEED.value,
                num_workers=2,
            )
        run(
            data_dir,
            steps=_STEPS.value,
            batch_size=_BATCH_SIZE.value,
            learning_rate=_LEARNING_RATE.value,
            filters=_FILTERS.value,
            seed=_SEED.value,
        )
    print(f"wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
