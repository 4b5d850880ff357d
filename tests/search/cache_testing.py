"""Shared pieces of the search tests that need a feature cache.

The data set, the "pretrained" checkpoint and the cache are built once per
test process in the session's base temp dir; every module that calls
`shared_search` finds the same files, and `cache.build_cache` reuses the
cache (same settings).
"""

import os

import numpy as np
import tensorflow as tf

from deeplab_dpc.data import synthetic
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import cache

CROP = (65, 65)
SEED = 3
COPIES = 2
NUM_TRAIN, NUM_VAL = 8, 4
OPTIONS = deeplab.ModelOptions(
    model_variant="mobilenet_v2",
    depth_multiplier=0.35,
    num_classes=synthetic.NUM_CLASSES,
    crop_size=CROP,
    output_stride=16,
)


def write_pretrained(options, directory, seed=0):
    """A training-program checkpoint of a He-initialised DeepLab model.

    Keras' default initialisation shrinks MobileNet-v2's activations to
    about 1e-10 (zero in float16); He-normal kernels keep them near 1, like a
    trained backbone's.
    """
    tf.keras.utils.set_random_seed(seed)
    model = deeplab.build_deeplab(options)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)):
            shape = layer.kernel.shape
            depthwise = isinstance(layer, tf.keras.layers.DepthwiseConv2D)
            fan_in = np.prod(shape[:2] if depthwise else shape[:-1])
            layer.kernel.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), directory, 1, checkpoint_name="ckpt"
    )
    return model, manager.save(checkpoint_number=1)


def shared_search(tmp_path_factory):
    """Data, checkpoint and cache that every module of tests/search shares.

    The first module builds them in the session's base temp dir; later ones
    find the same files, and `build_cache` reuses the cache (same settings).

    Returns:
      (search_dir, dataset_dir, checkpoint_dir, CacheInfo).
    """
    base = tmp_path_factory.getbasetemp() / "search_shared"
    data, pretrained = str(base / "data"), str(base / "pretrained")
    if not os.path.exists(data):
        synthetic.build(
            data,
            num_train=NUM_TRAIN,
            num_val=NUM_VAL,
            height=CROP[0],
            width=CROP[1],
            num_workers=1,
            num_shards=2,
        )
    if tf.train.latest_checkpoint(pretrained) is None:
        write_pretrained(OPTIONS, pretrained)
    search = str(base / "search")
    info = build(search, data, pretrained)
    return search, data, pretrained, info


def build(search, data, pretrained, **overrides):
    """`cache.build_cache` with the shared settings, some overridden."""
    kwargs = dict(
        dataset_dir=data,
        train_split="train",
        val_split="val",
        model_options=OPTIONS,
        checkpoint=pretrained,
        cache_copies=COPIES,
        ignore_label=synthetic.IGNORE_LABEL,
        seed=SEED,
        progress=False,
        batch_size=4,
    )
    kwargs.update(overrides)
    return cache.build_cache(search, **kwargs)
