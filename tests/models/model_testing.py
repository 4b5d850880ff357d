"""Shared settings and helpers of the tests of deeplab_dpc.models.

Not a test module: the test files import it as `import model_testing` (the
folder is on `pythonpath` in pytest.ini). Models built by `model` are cached
across the test files of a run.
"""

import functools
import random

import numpy as np
import tensorflow as tf

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.models import deeplab
from deeplab_dpc.search import space

ALPHA = 0.35
C = 112  # MobileNet-v2 (alpha 0.35) feature channels.
C_LOW = 48  # Its stride-4 low-level channels.
FILTERS = 256  # Every head and decoder conv.
LOW_FILTERS = 48

PUBLISHED = cell_spec.published_cell()
SAMPLED = space.sample_cell(random.Random(0))


def options(**kwargs):
    """`ModelOptions` of a small MobileNet-v2 model without weights."""
    kwargs.setdefault("model_variant", "mobilenet_v2")
    kwargs.setdefault("depth_multiplier", ALPHA)
    kwargs.setdefault("num_classes", 5)
    kwargs.setdefault("backbone_weights", None)
    return deeplab.ModelOptions(**kwargs)


@functools.lru_cache(maxsize=None)
def model(model_options):
    """Builds (once per options) a model. Tests that change its weights set
    all of them first."""
    tf.keras.utils.set_random_seed(0)
    return deeplab.build_deeplab(model_options)


def images(crop, batch=1, seed=0):
    """Random images in [0, 255] of the crop size."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, (batch, *crop, 3)).astype(np.float32)


def random_weights(keras_model, seed=0):
    """Random kernels and 1-D weights in [0.5, 1.5] (valid BN statistics)."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.uniform(0.5, 1.5, w.shape)
            if w.ndim == 1
            else rng.normal(0.0, 0.1, w.shape)
        ).astype(np.float32)
        for w in keras_model.get_weights()
    ]


def feature_size(crop, output_stride):
    """The feature size of a crop at an output stride."""
    return tuple((c - 1) // output_stride + 1 for c in crop)


DPC_DECODER = options(
    crop_size=(65, 65),
    output_stride=16,
    dense_prediction_cell=PUBLISHED,
    decoder_output_stride=4,
)
ASPP_DECODER = options(
    crop_size=(65, 65),
    output_stride=16,
    atrous_rates=(6, 12, 18),
    decoder_output_stride=4,
)
ASPP_PLAIN = options(crop_size=(33, 33), output_stride=16, atrous_rates=())
