"""Tests for deeplab_dpc.data.augment."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import augment
from deeplab_dpc.data import tfexample

H, W = 17, 23
IGNORE = 255
DEEPLAB_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _element(image, label, filename="img"):
    """A decoded element, as `tfexample.decode_example` returns it."""
    image = tf.constant(image, tf.uint8)
    label = tf.constant(label, tf.uint8)
    if label.shape.rank == 2:
        label = label[..., None]
    return {
        tfexample.IMAGE: image,
        tfexample.LABEL: label,
        tfexample.FILENAME: tf.constant(filename),
        tfexample.HEIGHT: tf.shape(image)[0],
        tfexample.WIDTH: tf.shape(image)[1],
    }


def _train_fn(element, **kwargs):
    """`preprocess_for_train` of one element, traced once, called per seed."""
    kwargs.setdefault("ignore_label", IGNORE)

    @tf.function
    def run(seed):
        out = augment.preprocess_for_train(element, seed, **kwargs)
        return out[tfexample.IMAGE], out[tfexample.LABEL]

    return lambda s: [t.numpy() for t in run(tf.constant([s, 7], tf.int64))]


def _scaled_sizes(factors):
    """floor(size * scale) in float32, as the graph computes it."""
    return {
        (
            int(np.floor(np.float32(H) * np.float32(s))),
            int(np.floor(np.float32(W) * np.float32(s))),
        )
        for s in factors
    }


# --- scale factors -----------------------------------------------------------


def test_scale_factors_follow_deeplab_linspace():
    assert augment.scale_factors(0.5, 2.0, 0.25) == DEEPLAB_SCALES
    # int((2.0 - 0.5) / 0.4 + 1) = 4 steps: linspace, not 0.5, 0.9, 1.3, 1.7.
    assert augment.scale_factors(0.5, 2.0, 0.4) == (0.5, 1.0, 1.5, 2.0)
    # (1.0 - 0.7) / 0.1 is 2.9999... in floats: the tolerance keeps 4 steps.
    np.testing.assert_allclose(
        augment.scale_factors(0.7, 1.0, 0.1), (0.7, 0.8, 0.9, 1.0)
    )
    assert augment.scale_factors(1.0, 1.0, 0.25) == (1.0,)
    assert augment.scale_factors(0.5, 2.0, 0) is None


@pytest.mark.parametrize(
    "lo, hi, step", [(0.0, 2.0, 0.25), (2.0, 0.5, 0.25), (0.5, 2.0, -0.1)]
)
def test_scale_factors_reject_bad_ranges(lo, hi, step):
    with pytest.raises(ValueError, match="scale"):
        augment.scale_factors(lo, hi, step)


def _region_sizes(run, seeds):
    """Height and width of the non-ignore region of each seed's label."""
    sizes = []
    for s in seeds:
        _, label = run(s)
        valid = label[..., 0] != IGNORE
        sizes.append((int(valid.any(1).sum()), int(valid.any(0).sum())))
    return sizes


def test_random_scale_takes_only_deeplab_steps():
    # A crop larger than any scaled image: the crop is the whole padded image,
    # so the non-ignore region is exactly the scaled size.
    rng = np.random.default_rng(0)
    element = _element(rng.integers(0, 256, (H, W, 3)), rng.integers(0, 20, (H, W)))
    run = _train_fn(element, crop_size=(64, 64))
    sizes = _region_sizes(run, range(120))
    assert set(sizes) == _scaled_sizes(DEEPLAB_SCALES)

    run = _train_fn(element, crop_size=(64, 64), scale_factor_step_size=0.4)
    assert set(_region_sizes(run, range(60))) == _scaled_sizes((0.5, 1.0, 1.5, 2.0))


def test_random_scale_step_zero_is_continuous():
    rng = np.random.default_rng(1)
    element = _element(rng.integers(0, 256, (H, W, 3)), rng.integers(0, 20, (H, W)))
    run = _train_fn(element, crop_size=(64, 64), scale_factor_step_size=0)
    sizes = _region_sizes(run, range(60))
    assert len(set(sizes)) > len(DEEPLAB_SCALES)
    heights, widths = zip(*sizes)
    assert min(heights) >= H // 2 and max(heights) <= 2 * H
    assert min(widths) >= W // 2 and max(widths) <= 2 * W


# --- image / label alignment -------------------------------------------------


def test_train_alignment_is_exact_with_nearest_image_resize():
    # The label is the image's channel 0, so with the image also resized by
    # nearest neighbour every geometric step must keep them equal exactly.
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (H, W, 3))
    image[..., 0] = rng.integers(0, 21, (H, W))
    element = _element(image, image[..., 0])
    run = _train_fn(element, crop_size=(24, 24), image_resize_method="nearest")
    padded_heights = set()
    for s in range(80):
        out_image, out_label = run(s)
        assert out_image.shape == (24, 24, 3) and out_image.dtype == np.float32
        assert out_label.shape == (24, 24, 1) and out_label.dtype == np.int32
        valid = out_label[..., 0] != IGNORE
        np.testing.assert_array_equal(
            out_image[..., 0][valid], out_label[..., 0][valid]
        )
        # Padding: ignore label in the label exactly where the image has the
        # mean pixel (the image's own values are integers, never 127.5).
        np.testing.assert_array_equal((out_image == 127.5).all(-1), ~valid)
        np.testing.assert_array_equal((out_image == 127.5).any(-1), ~valid)
        if not valid.all():
            padded_heights.add(int(valid.any(1).sum()))
    # Scales 0.5, 0.75, 1.0 and 1.25 pad a 17-pixel height to the 24 crop.
    assert padded_heights == {8, 12, 17, 21}


def test_train_alignment_with_bilinear_image_resize():
    # Image channels 1 and 2 are 10 * row and 10 * column: bilinear resizing is
    # exact on such ramps, so the image gives each output pixel's fractional
    # source position. Labels row / column give the nearest-neighbour source
    # pixel. Both sample at half-pixel centres, so they differ by at most half
    # a source pixel; any offset between image and label (crop, flip) breaks
    # this bound.
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    image = np.stack([np.zeros((H, W)), 10 * rows, 10 * cols], -1)
    run_rows = _train_fn(_element(image, rows), crop_size=(24, 24))
    run_cols = _train_fn(_element(image, cols), crop_size=(24, 24))
    fractional = False
    for s in range(60):
        out_image, label_rows = run_rows(s)
        out_image_again, label_cols = run_cols(s)
        np.testing.assert_array_equal(out_image, out_image_again)
        valid = label_rows[..., 0] != IGNORE
        np.testing.assert_array_equal(valid, label_cols[..., 0] != IGNORE)
        np.testing.assert_array_equal(out_image[..., 0] == 127.5, ~valid)
        np.testing.assert_array_equal(out_image[~valid], 127.5)
        for channel, label in ((1, label_rows), (2, label_cols)):
            position = out_image[..., channel][valid] / 10.0
            assert np.abs(position - label[..., 0][valid]).max() <= 0.5 + 1e-4
            fractional |= bool(np.any(np.abs(position - np.round(position)) > 0.1))
    assert fractional, "no seed resized bilinearly"


def test_flip_flips_image_and_label_together():
    # Scale 1 and a crop of the image's size: the output is the element
    # itself or its mirror, for the image and the label alike.
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (H, W, 3))
    label = rng.integers(0, 21, (H, W, 1))
    run = _train_fn(
        _element(image, label),
        crop_size=(H, W),
        min_scale_factor=1.0,
        max_scale_factor=1.0,
    )
    outcomes = set()
    for s in range(30):
        out_image, out_label = run(s)
        flipped = bool(np.array_equal(out_image, image[:, ::-1]))
        assert flipped or np.array_equal(out_image, image)
        np.testing.assert_array_equal(out_label, label[:, ::-1] if flipped else label)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_random_flip_and_crop_use_one_offset():
    image = tf.reshape(tf.range(H * W * 3, dtype=tf.float32), [H, W, 3])
    label = tf.cast(image[..., :1], tf.int32)
    offsets = set()
    for s in range(20):
        seed = tf.constant([s, 0])
        crop_image, crop_label = augment.random_crop(image, label, 5, 6, seed)
        flip_image, flip_label = augment.random_flip(crop_image, crop_label, seed)
        np.testing.assert_array_equal(
            tf.cast(flip_image[..., :1], tf.int32).numpy(), flip_label.numpy()
        )
        offsets.add(int(crop_label[0, 0, 0]))
    assert len(offsets) > 5


def test_train_is_a_function_of_the_seed():
    rng = np.random.default_rng(4)
    element = _element(rng.integers(0, 256, (H, W, 3)), rng.integers(0, 21, (H, W)))
    run = _train_fn(element, crop_size=(9, 9))
    first, again = run(11), run(11)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(first[0], run(s)[0]) for s in range(12, 15))


def test_train_outputs_original_size():
    element = _element(np.zeros((H, W, 3)), np.zeros((H, W)))
    out = augment.preprocess_for_train(
        element, tf.constant([0, 0]), crop_size=(9, 9), ignore_label=IGNORE
    )
    assert int(out[augment.ORIGINAL_HEIGHT]) == H
    assert int(out[augment.ORIGINAL_WIDTH]) == W


def test_train_rejects_record_without_label():
    element = _element(np.zeros((H, W, 3)), np.zeros((0, 0, 1)), "no_label")
    with pytest.raises(tf.errors.InvalidArgumentError, match="training needs labels"):
        augment.preprocess_for_train(
            element, tf.constant([0, 0]), crop_size=(9, 9), ignore_label=IGNORE
        )


def test_train_rejects_label_of_another_size():
    element = _element(np.zeros((H, W, 3)), np.zeros((H, W - 1)), "odd")
    with pytest.raises(tf.errors.InvalidArgumentError, match="label size differs"):
        augment.preprocess_for_train(
            element, tf.constant([0, 0]), crop_size=(9, 9), ignore_label=IGNORE
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"crop_size": (0, 9)}, "crop_size"),
        ({"crop_size": (9,)}, "crop_size"),
        ({"image_resize_method": "bicubic"}, "image_resize_method"),
        ({"mean_pixel": (127.5, 127.5)}, "mean_pixel"),
        ({"min_scale_factor": 3.0}, "min_scale_factor"),
    ],
)
def test_train_rejects_bad_arguments(kwargs, match):
    kwargs = {"crop_size": (9, 9), "ignore_label": IGNORE, **kwargs}
    element = _element(np.zeros((H, W, 3)), np.zeros((H, W)))
    with pytest.raises(ValueError, match=match):
        augment.preprocess_for_train(element, tf.constant([0, 0]), **kwargs)


# --- evaluation --------------------------------------------------------------


def test_eval_pads_bottom_right_exactly():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (H, W, 3))
    label = rng.integers(0, 21, (H, W, 1))
    mean = (10.0, 20.5, 30.0)
    out = augment.preprocess_for_eval(
        _element(image, label), crop_size=(20, 30), ignore_label=IGNORE, mean_pixel=mean
    )
    out_image, out_label = out[tfexample.IMAGE].numpy(), out[tfexample.LABEL].numpy()
    assert out_image.shape == (20, 30, 3) and out_image.dtype == np.float32
    assert out_label.shape == (20, 30, 1) and out_label.dtype == np.int32
    np.testing.assert_array_equal(out_image[:H, :W], image)
    np.testing.assert_array_equal(out_label[:H, :W], label)
    pad = np.ones((20, 30), bool)
    pad[:H, :W] = False
    np.testing.assert_array_equal(out_image[pad], np.broadcast_to(mean, (pad.sum(), 3)))
    np.testing.assert_array_equal(out_label[pad], IGNORE)
    assert int(out[augment.ORIGINAL_HEIGHT]) == H
    assert int(out[augment.ORIGINAL_WIDTH]) == W
    assert out[tfexample.FILENAME].numpy() == b"img"


def test_eval_is_identity_at_the_image_size():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (H, W, 3))
    label = rng.integers(0, 21, (H, W, 1))
    out = augment.preprocess_for_eval(
        _element(image, label), crop_size=(H, W), ignore_label=0
    )
    np.testing.assert_array_equal(out[tfexample.IMAGE].numpy(), image)
    np.testing.assert_array_equal(out[tfexample.LABEL].numpy(), label)


def test_eval_without_label_gives_ignore_filled_label():
    out = augment.preprocess_for_eval(
        _element(np.zeros((H, W, 3)), np.zeros((0, 0, 1))),
        crop_size=(20, 30),
        ignore_label=IGNORE,
    )
    np.testing.assert_array_equal(
        out[tfexample.LABEL].numpy(), np.full((20, 30, 1), IGNORE)
    )


@pytest.mark.parametrize("crop_size", [(H - 1, W), (H, W - 1)])
def test_eval_rejects_image_larger_than_crop(crop_size):
    element = _element(np.zeros((H, W, 3)), np.zeros((H, W)), "big")
    with pytest.raises(tf.errors.InvalidArgumentError, match="raise --eval_crop_size"):
        augment.preprocess_for_eval(element, crop_size=crop_size, ignore_label=IGNORE)
