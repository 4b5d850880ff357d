"""DeepLab's training augmentation and evaluation preprocessing.

Graph-mode TensorFlow functions on one decoded element (the dict of
`tfexample.decode_example`), as DeepLab's `input_preprocess.py`:

* training: random scale (DeepLab's discrete steps), pad bottom/right to at
  least the crop with the mean pixel (image) and the ignore label (label),
  random crop at one offset for both, random left-right flip of both;
* evaluation: no randomness; pad bottom/right to the eval crop, and fail with
  a clear error when an image is larger than the crop (DeepLab never resizes
  eval images: raise `--eval_crop_size` instead).

Images are resized bilinearly, labels only with nearest neighbour. All
randomness is stateless and comes from one `[2]` integer seed per element,
so the same seed gives the same result whatever the element order, the
parallelism or other random ops.
Outputs are float32 images in [0, 255] (the model normalises) and int32
labels.
"""

import tensorflow as tf

from deeplab_dpc.data import tfexample

# Keys this module adds to elements: the image size before preprocessing, so
# that predictions on the padded crop can be cut back to the image.
ORIGINAL_HEIGHT = "original_height"
ORIGINAL_WIDTH = "original_width"

# DeepLab's default mean pixel for MobileNet and Xception (`[127.5] * 3`).
MEAN_PIXEL = (127.5, 127.5, 127.5)

RESIZE_METHODS = ("bilinear", "nearest")

# Tolerance in DeepLab's `int((max - min) / step + 1)`, so that float rounding
# (e.g. (1.0 - 0.7) / 0.1 = 2.9999...) does not drop the last scale.
_STEPS_EPSILON = 1e-6


def scale_factors(min_scale_factor, max_scale_factor, scale_factor_step_size):
    """The scales DeepLab's `get_random_scale` picks from.

    DeepLab's semantics: `num_steps = int((max - min) / step + 1)` and the
    scales are `linspace(min, max, num_steps)`, so a step that does not divide
    the range is stretched to end at `max` (0.5, 2.0, 0.4 gives 0.5, 1.0, 1.5,
    2.0). Unlike DeepLab, `num_steps` is computed with a 1e-6 tolerance so that
    float rounding never drops a step.

    Args:
      min_scale_factor: float > 0, the smallest scale.
      max_scale_factor: float >= `min_scale_factor`, the largest scale.
      scale_factor_step_size: float >= 0; 0 means a continuous uniform scale.

    Returns:
      A tuple of Python floats, or None when the scale is continuous
      (step 0 and min < max).

    Raises:
      ValueError: on a non-positive minimum, min > max or a negative step.
    """
    lo, hi, step = (
        float(min_scale_factor),
        float(max_scale_factor),
        float(scale_factor_step_size),
    )
    if lo <= 0 or lo > hi:
        raise ValueError(
            f"scale factors need 0 < min_scale_factor <= max_scale_factor, got "
            f"min_scale_factor={min_scale_factor}, "
            f"max_scale_factor={max_scale_factor}"
        )
    if step < 0:
        raise ValueError(
            f"scale_factor_step_size must be >= 0 (0 = continuous), got "
            f"{scale_factor_step_size}"
        )
    if lo == hi:
        return (lo,)
    if step == 0:
        return None
    num_steps = int((hi - lo) / step + 1 + _STEPS_EPSILON)
    if num_steps < 2:
        return (lo,)
    return tuple(lo + (hi - lo) * i / (num_steps - 1) for i in range(num_steps))


def check_crop_size(crop_size):
    """Validates a crop size.

    Args:
      crop_size: (height, width), two positive ints.

    Returns:
      (height, width) as Python ints.

    Raises:
      ValueError: naming the bad value.
    """
    try:
        height, width = (int(s) for s in crop_size)
    except (TypeError, ValueError):
        height = width = 0
    if height < 1 or width < 1:
        raise ValueError(
            f"crop_size must be two positive ints (height, width), got "
            f"{crop_size!r}"
        )
    return height, width


def random_scale(seed, min_scale_factor, max_scale_factor, scale_factor_step_size):
    """A random scale factor, as DeepLab's `get_random_scale`.

    Args:
      seed: int `[2]` tensor, the stateless seed.
      min_scale_factor, max_scale_factor, scale_factor_step_size: see
        `scale_factors`.

    Returns:
      float32 scalar tensor: one of `scale_factors(...)` drawn uniformly, or
      uniform in `[min, max)` when the step is 0.

    Raises:
      ValueError: as `scale_factors`.
    """
    factors = scale_factors(min_scale_factor, max_scale_factor, scale_factor_step_size)
    if factors is None:
        return tf.random.stateless_uniform(
            [],
            seed=seed,
            minval=float(min_scale_factor),
            maxval=float(max_scale_factor),
            dtype=tf.float32,
        )
    if len(factors) == 1:
        return tf.constant(factors[0], tf.float32)
    index = tf.random.stateless_uniform(
        [], seed=seed, minval=0, maxval=len(factors), dtype=tf.int32
    )
    return tf.gather(tf.constant(factors, tf.float32), index)


def scale_image_and_label(image, label, scale, image_resize_method="bilinear"):
    """Resizes image and label to `floor(size * scale)`, as DeepLab.

    Args:
      image: `[height, width, 3]` tensor.
      label: `[height, width, 1]` integer tensor (same size as the image).
      scale: float scalar (tensor).
      image_resize_method: "bilinear" (DeepLab) or "nearest". The label is
        always resized with nearest neighbour.

    Returns:
      (image float32, label int32), both `[floor(height * scale),
      floor(width * scale), c]` (at least 1 pixel per side).

    Raises:
      ValueError: on an unknown `image_resize_method`.
    """
    if image_resize_method not in RESIZE_METHODS:
        raise ValueError(
            f"image_resize_method must be one of {RESIZE_METHODS}, got "
            f"{image_resize_method!r}"
        )
    size = tf.cast(tf.shape(image)[:2], tf.float32) * tf.cast(scale, tf.float32)
    size = tf.maximum(tf.cast(size, tf.int32), 1)
    image = tf.image.resize(
        tf.cast(image, tf.float32), size, method=image_resize_method
    )
    label = tf.image.resize(tf.cast(label, tf.int32), size, method="nearest")
    return image, label


def pad_image_and_label(
    image, label, height, width, *, ignore_label, mean_pixel=MEAN_PIXEL
):
    """Pads image and label at the bottom and right to `[height, width]`.

    The image is padded with `mean_pixel`, the label with `ignore_label`
    (DeepLab's `pad_to_bounding_box`). The caller makes sure that the target
    is at least the current size. A `[0, 0, 1]` label (record without label)
    comes out filled with `ignore_label`.

    Args:
      image: `[h, w, 3]` tensor.
      label: `[h, w, 1]` (or `[0, 0, 1]`) integer tensor.
      height, width: int scalars (tensors), the target size.
      ignore_label: int, the label's fill value.
      mean_pixel: 3 floats, the image's fill value per channel.

    Returns:
      (image float32 `[height, width, 3]`, label int32 `[height, width, 1]`).
    """
    image = tf.cast(image, tf.float32)
    label = tf.cast(label, tf.int32)

    def paddings(x):
        shape = tf.shape(x)
        return [[0, height - shape[0]], [0, width - shape[1]]]

    # One channel at a time, so that each gets its own fill value and the
    # image's own pixels are left bit-exact.
    image = tf.stack(
        [
            tf.pad(image[..., c], paddings(image), constant_values=float(mean))
            for c, mean in enumerate(_mean_pixel(mean_pixel))
        ],
        axis=-1,
    )
    label = tf.pad(label[..., 0], paddings(label), constant_values=int(ignore_label))[
        ..., None
    ]
    return image, label


def random_crop(image, label, crop_height, crop_width, seed):
    """A `[crop_height, crop_width]` crop at the same random offset of both.

    Args:
      image: `[h, w, 3]` tensor with h >= crop_height, w >= crop_width (pad
        it first with `pad_image_and_label`).
      label: `[h, w, 1]` tensor.
      crop_height, crop_width: ints.
      seed: int `[2]` tensor, the stateless seed.

    Returns:
      (image, label) crops; the offset is uniform over every valid position.
    """
    shape = tf.shape(image)
    seeds = _split_seed(seed, 2)
    offset_y = tf.random.stateless_uniform(
        [], seed=seeds[0], minval=0, maxval=shape[0] - crop_height + 1, dtype=tf.int32
    )
    offset_x = tf.random.stateless_uniform(
        [], seed=seeds[1], minval=0, maxval=shape[1] - crop_width + 1, dtype=tf.int32
    )
    image = tf.slice(image, [offset_y, offset_x, 0], [crop_height, crop_width, -1])
    label = tf.slice(label, [offset_y, offset_x, 0], [crop_height, crop_width, -1])
    return image, label


def random_flip(image, label, seed):
    """Flips image and label left-right together with probability 1/2.

    Args:
      image: `[h, w, c]` tensor.
      label: `[h, w, 1]` tensor.
      seed: int `[2]` tensor, the stateless seed.

    Returns:
      (image, label), both flipped or both unchanged.
    """
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    return tf.cond(
        flip,
        lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
        lambda: (image, label),
    )


def preprocess_for_train(
    element,
    seed,
    *,
    crop_size,
    ignore_label,
    min_scale_factor=0.5,
    max_scale_factor=2.0,
    scale_factor_step_size=0.25,
    mean_pixel=MEAN_PIXEL,
    image_resize_method="bilinear",
):
    """DeepLab's training augmentation of one decoded element.

    Random scale, pad bottom/right to at least `crop_size` (mean pixel /
    ignore label), random crop at one offset for image and label, random
    left-right flip of both.

    Args:
      element: dict from `tfexample.decode_example`.
      seed: int `[2]` tensor; the same seed gives the same output.
      crop_size: (height, width) ints, `--train_crop_size`.
      ignore_label: int, fills the label's padding.
      min_scale_factor, max_scale_factor, scale_factor_step_size: the scale
        (see `scale_factors`).
      mean_pixel: 3 floats, fills the image's padding.
      image_resize_method: "bilinear" (DeepLab) or "nearest" (for images that
        are maps themselves); labels always use nearest neighbour.

    Returns:
      dict with `tfexample.IMAGE` (float32 `[crop_h, crop_w, 3]` in [0, 255]),
      `tfexample.LABEL` (int32 `[crop_h, crop_w, 1]`), `tfexample.FILENAME`,
      and `ORIGINAL_HEIGHT`, `ORIGINAL_WIDTH` (int32, the decoded size).

    Raises:
      ValueError: on bad arguments (eagerly, while building the graph).
      tf.errors.InvalidArgumentError: when the record has no label (training
        needs labels) or a label whose size differs from its image's.
    """
    crop_height, crop_width = check_crop_size(crop_size)
    image, label = element[tfexample.IMAGE], element[tfexample.LABEL]
    filename = element[tfexample.FILENAME]
    shape = tf.shape(image)
    checks = [
        tf.debugging.Assert(
            tf.size(label) > 0,
            [
                "training needs labels, but this record has no "
                f"'{tfexample.LABEL_ENCODED}' (a test split?); train on a "
                "split with labels, or use evaluation/visualisation mode. "
                "Record:",
                filename,
            ],
        ),
        _assert_label_matches_image(image, label, filename, allow_empty=True),
    ]
    with tf.control_dependencies(checks):
        image, label = tf.identity(image), tf.identity(label)
    scale_seed, crop_seed, flip_seed = tf.unstack(_split_seed(seed, 3))
    scale = random_scale(
        scale_seed, min_scale_factor, max_scale_factor, scale_factor_step_size
    )
    image, label = scale_image_and_label(image, label, scale, image_resize_method)
    scaled = tf.shape(image)
    image, label = pad_image_and_label(
        image,
        label,
        tf.maximum(scaled[0], crop_height),
        tf.maximum(scaled[1], crop_width),
        ignore_label=ignore_label,
        mean_pixel=mean_pixel,
    )
    image, label = random_crop(image, label, crop_height, crop_width, crop_seed)
    image, label = random_flip(image, label, flip_seed)
    image.set_shape([crop_height, crop_width, 3])
    label.set_shape([crop_height, crop_width, 1])
    return {
        tfexample.IMAGE: image,
        tfexample.LABEL: label,
        tfexample.FILENAME: filename,
        ORIGINAL_HEIGHT: shape[0],
        ORIGINAL_WIDTH: shape[1],
    }


def preprocess_for_eval(element, *, crop_size, ignore_label, mean_pixel=MEAN_PIXEL):
    """Deterministic evaluation preprocessing: pad to `crop_size`.

    The image is padded at the bottom and right with `mean_pixel` and the
    label with `ignore_label`, as DeepLab does with `--eval_crop_size`; the
    image is never resized. A record without label gives a label filled with
    `ignore_label`. `ORIGINAL_HEIGHT`/`ORIGINAL_WIDTH` keep the image size,
    so that predictions can be cut back with `[:height, :width]`.

    Args:
      element: dict from `tfexample.decode_example`.
      crop_size: (height, width) ints, `--eval_crop_size` (or
        `--vis_crop_size`); must be at least every image's size.
      ignore_label: int, fills the label's padding.
      mean_pixel: 3 floats, fills the image's padding.

    Returns:
      dict with `tfexample.IMAGE` (float32 `[crop_h, crop_w, 3]`),
      `tfexample.LABEL` (int32 `[crop_h, crop_w, 1]`), `tfexample.FILENAME`,
      `ORIGINAL_HEIGHT`, `ORIGINAL_WIDTH` (int32 scalars).

    Raises:
      ValueError: on bad arguments (eagerly, while building the graph).
      tf.errors.InvalidArgumentError: when the image is larger than
        `crop_size` (raise `--eval_crop_size`), or the label's size differs
        from the image's.
    """
    crop_height, crop_width = check_crop_size(crop_size)
    image, label = element[tfexample.IMAGE], element[tfexample.LABEL]
    filename = element[tfexample.FILENAME]
    shape = tf.shape(image)
    fits = tf.logical_and(shape[0] <= crop_height, shape[1] <= crop_width)
    checks = [
        tf.debugging.Assert(
            fits,
            [
                f"image larger than the eval crop size {crop_height},"
                f"{crop_width}: DeepLab pads eval images and never resizes "
                "them, so raise --eval_crop_size (or --vis_crop_size) to at "
                "least the largest 'height,width' of the split. Record, "
                "height, width:",
                filename,
                shape[0],
                shape[1],
            ],
        ),
        _assert_label_matches_image(image, label, filename, allow_empty=True),
    ]
    with tf.control_dependencies(checks):
        image, label = tf.identity(image), tf.identity(label)
    image, label = pad_image_and_label(
        image,
        label,
        crop_height,
        crop_width,
        ignore_label=ignore_label,
        mean_pixel=mean_pixel,
    )
    image.set_shape([crop_height, crop_width, 3])
    label.set_shape([crop_height, crop_width, 1])
    return {
        tfexample.IMAGE: image,
        tfexample.LABEL: label,
        tfexample.FILENAME: filename,
        ORIGINAL_HEIGHT: shape[0],
        ORIGINAL_WIDTH: shape[1],
    }


def _assert_label_matches_image(image, label, filename, allow_empty=False):
    """An assert op that fails, naming the record, when label and image sizes
    differ (an empty label, i.e. no label, passes with `allow_empty`)."""
    image_size, label_size = tf.shape(image)[:2], tf.shape(label)[:2]
    ok = tf.reduce_all(tf.equal(image_size, label_size))
    if allow_empty:
        ok = tf.logical_or(ok, tf.equal(tf.size(label), 0))
    return tf.debugging.Assert(
        ok,
        [
            "label size differs from image size. Record, image height/width, "
            "label height/width:",
            filename,
            image_size,
            label_size,
        ],
    )


def _split_seed(seed, num):
    """`num` independent stateless seeds (`[num, 2]` int32) from one seed."""
    return tf.random.stateless_uniform(
        [num, 2], seed=seed, minval=None, maxval=None, dtype=tf.int32
    )


def _mean_pixel(mean_pixel):
    """Validates the mean pixel: three numbers, one per RGB channel."""
    values = tuple(float(m) for m in mean_pixel)
    if len(values) != 3:
        raise ValueError(f"mean_pixel must have 3 values (RGB), got {mean_pixel!r}")
    return values
