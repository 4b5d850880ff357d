r"""Input pipeline throughput vs the training step's consumption, 513x513.

  .venv/bin/python bench/input_pipeline.py [--height=1025 --width=2049]

Writes a synthetic data set of large images (Cityscapes-like 1025x2049 by
default) to a temporary folder, then measures, in one run:
  1. the training pipeline (decode, DeepLab's random scale 0.5-2.0, pad,
     513x513 crop, flip, batch 8) in images/s, after a warm-up;
  2. a MobileNet-v2 + published-DPC training step (forward, backward, SGD)
     at batch 8 and 513x513 crops on this machine, in images/s;
and prints both and their ratio (the pipeline must outrun the step).
"""

import tempfile
import time

from absl import app
from absl import flags
import tensorflow as tf

from deeplab_dpc.data import pipeline
from deeplab_dpc.data import synthetic
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import space

_HEIGHT = flags.DEFINE_integer("height", 1025, "Image height.")
_WIDTH = flags.DEFINE_integer("width", 2049, "Image width.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 24, "Images to generate.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Batches timed per figure.")
_CROP = 513
_BATCH = 8


def pipeline_rate(dataset_dir, batches):
    dataset = pipeline.make_dataset(
        dataset_dir,
        "train",
        crop_size=(_CROP, _CROP),
        batch_size=_BATCH,
        is_training=True,
        ignore_label=synthetic.IGNORE_LABEL,
        seed=0,
    )
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    batch[pipeline.IMAGE].numpy()
    return batches * _BATCH / (time.perf_counter() - start)


def train_step_rate(batches):
    options = deeplab.ModelOptions(
        model_variant="mobilenet_v2",
        crop_size=(_CROP, _CROP),
        num_classes=synthetic.NUM_CLASSES,
        dense_prediction_cell=space.published_cell(),
    )
    model = deeplab.build_deeplab(options)
    optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    images = tf.random.uniform([_BATCH, _CROP, _CROP, 3], 0, 255)
    labels = tf.random.uniform(
        [_BATCH, _CROP, _CROP, 1], 0, synthetic.NUM_CLASSES, tf.int32
    )

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(2):
        step().numpy()
    start = time.perf_counter()
    for _ in range(batches):
        loss = step()
    loss.numpy()
    return batches * _BATCH / (time.perf_counter() - start)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthetic.build(
            tmp,
            num_train=_NUM_IMAGES.value,
            num_val=1,
            height=_HEIGHT.value,
            width=_WIDTH.value,
            seed=0,
            num_shards=4,
        )
        print(
            f"generated {_NUM_IMAGES.value} {_HEIGHT.value}x{_WIDTH.value} "
            f"images in {time.perf_counter() - start:.1f} s"
        )
        data = pipeline_rate(tmp, _BATCHES.value)
    print(f"input pipeline: {data:.1f} images/s (513x513 crops, batch 8)")
    step = train_step_rate(max(2, _BATCHES.value // 4))
    print(f"training step (MobileNet-v2 + DPC): {step:.2f} images/s")
    print(f"pipeline / step = {data / step:.1f}x")


if __name__ == "__main__":
    app.run(main)
