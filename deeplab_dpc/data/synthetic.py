"""A synthetic multi-scale segmentation data set on which the head matters.

Every image is generated from `(seed, split, index)` alone, with
`np.random.default_rng([seed, SPLIT_IDS[split], index])`, so a shard holds
the same bytes whatever the number of worker processes that wrote it.

The generative rules (all sizes in pixels of the image, `S = min(h, w)`):

* Global cue, the **tint**: the image's background is `TINT_COLORS[tint]`
  ("warm" or "cool") plus Gaussian pixel noise (standard deviation
  `BACKGROUND_NOISE`). Nothing else in the image depends on the tint, so a
  pixel inside a region learns the tint only from background pixels that may
  be far away.
* Regions: one large, one or two medium and two to four small regions, each a
  rectangle or the ellipse inscribed in its box (the shape never decides the
  class). Each box is at least `margin = max(1, round(0.02 S))` pixels away
  from every other box, so regions never touch. A box's height and width are
  drawn independently from `SIZE_BANDS` (fractions of S) for its intended
  size; a region that does not fit after 50 tries is left out, so an image may
  hold fewer regions (or none, when the image is tiny).
* **Size** of a region (`size_category`): with box height bh and width bw,
  `m = (bh + bw) / (2 S)`; small if `m < 0.175`, medium if `m < 0.32`, large
  otherwise. The bands leave a gap around both thresholds, and the class is
  always computed from the box actually drawn, so the rule holds exactly at
  every image size.
* Local cue, the **texture**, painted without noise and anchored to image
  coordinates (so equal textures give equal pixels everywhere): "stripes"
  (`(y // 3) % 2` or `(x // 3) % 2`, horizontal or vertical at random) or
  "checker" (`(y // 3 + x // 3) % 2`), the two values taking the two colors of
  one of `PALETTES`, chosen at random independently of everything else. A
  3x3 or 5x5 patch shows the texture, never the size nor the tint.
* **Class** of a region's pixels (`region_class`): `1 + 3 * texture + rank`,
  where texture is 0 (stripes) or 1 (checker) and `rank = size` for a warm
  image and `(size + 1) % 3` for a cool one (size 0, 1, 2 = small, medium,
  large). So in a warm image stripes small / medium / large are classes
  1 / 2 / 3, in a cool one 2 / 3 / 1; checker is the same plus 3. Every class
  depends on the texture, the region's size and the image's tint together.
* Background pixels are class 0. `IGNORE_LABEL` (255) never occurs in a
  generated label: it is the value the input pipeline pads labels with.

What each scale of context decides, at the demo's and the search
benchmark's geometry (513x513 images, output stride 16: 33x33 features, a
feature 16 pixels; a 3x3 atrous conv at rate r spans 2r + 1 features, a
pooling grid of g averages cells of about 33 / g features):

* the **texture** (stripes or checker, 6-pixel period) lives inside one
  feature's receptive field: the backbone alone, a 1x1 conv or rate 1;
* the **size** needs the region's extent. Small boxes are 0.09-0.15 S
  (46-77 pixels, 3-5 features), medium 0.20-0.28 S (103-144 pixels, 6-9
  features), large 0.36-0.50 S (185-257 pixels, 12-16 features): telling
  small from medium takes rates of about 3-6 or grid 8 (4-feature cells),
  medium from large rates of about 6-12 or grid 4, a large region's far
  edge rates up to 15-21 or grid 2;
* the **tint** is in the background, which a pixel deep inside a large
  region sees only beyond its edge, 6-8 or more features away: large rates
  or image pooling (grid 1).

So no single rate or grid decides every class, which is what a cell of
several branches at different scales is for; at 129x129 (9x9 features)
every rate of 9 or more reads only padding.

Images are uint8 RGB stored as PNG (lossless), labels single-channel PNG, in
DeepLab's tf.Example format (`tfexample`). The registry lists it as
"synthetic" (`--dataset=synthetic`).
"""

import dataclasses
import functools
import numbers

import numpy as np

from deeplab_dpc.data import registry
from deeplab_dpc.data import shard_writer
from deeplab_dpc.data import tfexample

# The data set's facts live in the registry (its "synthetic" entry).
_INFO = registry.get("synthetic")
NUM_CLASSES = _INFO.num_classes
IGNORE_LABEL = _INFO.ignore_label
BACKGROUND = 0
CLASS_NAMES = _INFO.class_names
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SPLIT_SIZES = _INFO.splits

TINTS = ("warm", "cool")
TEXTURES = ("stripes", "checker")
SIZES = ("small", "medium", "large")
SHAPES = ("rectangle", "ellipse")
ORIENTATIONS = ("horizontal", "vertical")

TINT_COLORS = ((176, 122, 84), (84, 122, 176))
BACKGROUND_NOISE = 14.0
# Pairs of colors a texture alternates between; chosen independently of the
# class, so color tells nothing.
PALETTES = (
    ((20, 20, 20), (235, 235, 235)),
    ((200, 40, 40), (40, 190, 190)),
    ((60, 60, 200), (230, 210, 60)),
)
TEXTURE_PERIOD = 3  # pixels per stripe or checker cell
# Box side as a fraction of S = min(height, width), per intended size.
SIZE_BANDS = ((0.09, 0.15), (0.20, 0.28), (0.36, 0.50))
# Mean box side over S: below the first is small, below the second medium.
SIZE_THRESHOLDS = (0.175, 0.32)
_PLACEMENT_TRIES = 50


@dataclasses.dataclass(frozen=True)
class Region:
    """One region of a scene: a box, its shape and its texture.

    Attributes:
      top, left, height, width: ints, the box in pixels.
      shape: str, one of `SHAPES`; an ellipse is inscribed in the box.
      texture: int, index into `TEXTURES`.
      orientation: int, index into `ORIENTATIONS` (stripes only).
      palette: int, index into `PALETTES`.
    """

    top: int
    left: int
    height: int
    width: int
    shape: str
    texture: int
    orientation: int
    palette: int


@dataclasses.dataclass(frozen=True)
class Scene:
    """What an image is drawn from: the tint and the regions.

    Attributes:
      height, width: ints, the image size.
      tint: int, index into `TINTS`.
      regions: tuple of `Region`.
    """

    height: int
    width: int
    tint: int
    regions: tuple


def size_category(box_height, box_width, height, width):
    """The size (0 small, 1 medium, 2 large) of a box in an image.

    Args:
      box_height, box_width: ints, the region's box in pixels.
      height, width: ints, the image size.

    Returns:
      int in {0, 1, 2}, from `m = (box_height + box_width) / (2 min(h, w))`
      against `SIZE_THRESHOLDS`.
    """
    m = (box_height + box_width) / (2.0 * min(height, width))
    if m < SIZE_THRESHOLDS[0]:
        return 0
    if m < SIZE_THRESHOLDS[1]:
        return 1
    return 2


def region_class(texture, size, tint):
    """The class of a region's pixels.

    Args:
      texture: int, index into `TEXTURES`.
      size: int, 0 small, 1 medium, 2 large (`size_category`).
      tint: int, index into `TINTS` (0 warm, 1 cool).

    Returns:
      int in [1, NUM_CLASSES): `1 + 3 * texture + rank`, rank = size for a warm
      image and (size + 1) % 3 for a cool one.

    Raises:
      ValueError: if an argument is out of range.
    """
    for name, value, count in (
        ("texture", texture, len(TEXTURES)),
        ("size", size, len(SIZES)),
        ("tint", tint, len(TINTS)),
    ):
        if not 0 <= value < count:
            raise ValueError(f"{name} must be in [0, {count}), got {value}")
    rank = size if tint == 0 else (size + 1) % len(SIZES)
    return 1 + len(SIZES) * texture + rank


def region_mask(region, height, width):
    """Boolean `[height, width]` mask of a region's pixels."""
    mask = np.zeros((height, width), bool)
    box = (
        slice(region.top, region.top + region.height),
        slice(region.left, region.left + region.width),
    )
    if region.shape == "rectangle":
        mask[box] = True
        return mask
    # Pixel centers inside the ellipse inscribed in the box.
    ys = (np.arange(region.height) + 0.5 - region.height / 2) / (region.height / 2)
    xs = (np.arange(region.width) + 0.5 - region.width / 2) / (region.width / 2)
    mask[box] = ys[:, None] ** 2 + xs[None, :] ** 2 <= 1.0
    return mask


def texture_pattern(texture, orientation, height, width):
    """The 0/1 `[height, width]` pattern of a texture in image coordinates."""
    ys = np.arange(height)[:, None] // TEXTURE_PERIOD
    xs = np.arange(width)[None, :] // TEXTURE_PERIOD
    if TEXTURES[texture] == "checker":
        pattern = ys + xs
    elif ORIENTATIONS[orientation] == "horizontal":
        pattern = ys + 0 * xs
    else:
        pattern = xs + 0 * ys
    return (pattern % 2).astype(np.uint8)


def _check_int(name, value, minimum):
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or value < minimum
    ):
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


def _check_size(height, width):
    _check_int("height", height, 1)
    _check_int("width", width, 1)


def _split_id(split):
    if split not in SPLIT_IDS:
        raise ValueError(
            f"unknown split {split!r}; the synthetic data set has {sorted(SPLIT_IDS)}"
        )
    return SPLIT_IDS[split]


def _overlaps(box, boxes, margin):
    top, left, h, w = box
    for t, l, bh, bw in boxes:
        if (
            top < t + bh + margin
            and t < top + h + margin
            and left < l + bw + margin
            and l < left + w + margin
        ):
            return True
    return False


def sample_scene(rng, height, width):
    """Draws a `Scene` (tint and regions) with `rng`, as the rules say.

    Args:
      rng: a `np.random.Generator`.
      height, width: ints, the image size.

    Returns:
      A `Scene`.
    """
    _check_size(height, width)
    s = min(height, width)
    margin = max(1, round(0.02 * s))
    tint = int(rng.integers(len(TINTS)))
    plan = [2] + [1] * int(rng.integers(1, 3)) + [0] * int(rng.integers(2, 5))
    boxes, regions = [], []
    for size in plan:
        low, high = SIZE_BANDS[size]
        box_h = max(1, round(rng.uniform(low, high) * s))
        box_w = max(1, round(rng.uniform(low, high) * s))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        texture = int(rng.integers(len(TEXTURES)))
        orientation = int(rng.integers(len(ORIENTATIONS)))
        palette = int(rng.integers(len(PALETTES)))
        if box_h > height or box_w > width:
            continue
        for _ in range(_PLACEMENT_TRIES):
            box = (
                int(rng.integers(0, height - box_h + 1)),
                int(rng.integers(0, width - box_w + 1)),
                box_h,
                box_w,
            )
            if not _overlaps(box, boxes, margin):
                boxes.append(box)
                regions.append(Region(*box, shape, texture, orientation, palette))
                break
    return Scene(height=height, width=width, tint=tint, regions=tuple(regions))


def render(scene, rng):
    """Draws a scene's image and label.

    Args:
      scene: a `Scene`.
      rng: a `np.random.Generator`, for the background noise.

    Returns:
      (image, label): uint8 `[h, w, 3]` and uint8 `[h, w]`.
    """
    h, w = scene.height, scene.width
    noise = rng.normal(0.0, BACKGROUND_NOISE, size=(h, w, 3))
    image = np.clip(np.round(np.asarray(TINT_COLORS[scene.tint]) + noise), 0, 255)
    image = image.astype(np.uint8)
    label = np.full((h, w), BACKGROUND, np.uint8)
    for region in scene.regions:
        mask = region_mask(region, h, w)
        pattern = texture_pattern(region.texture, region.orientation, h, w)
        colors = np.asarray(PALETTES[region.palette], np.uint8)
        image[mask] = colors[pattern[mask]]
        size = size_category(region.height, region.width, h, w)
        label[mask] = region_class(region.texture, size, scene.tint)
    return image, label


def example_rng(seed, split, index):
    """The generator of example `index`: `default_rng([seed, split_id, index])`."""
    _check_int("seed", seed, 0)
    _check_int("index", index, 0)
    return np.random.default_rng([int(seed), _split_id(split), int(index)])


def generate_scene(seed, split, index, height=129, width=129):
    """The `Scene` that example `index` of `split` is drawn from.

    Args:
      seed, split, index, height, width: as `generate_example`.

    Returns:
      A `Scene`; `render(scene, rng)` with the same generator, after the scene
      was drawn, gives `generate_example`'s arrays.
    """
    return sample_scene(example_rng(seed, split, index), height, width)


def generate_example(seed, split, index, height=129, width=129):
    """Example `index` of `split`, from the seed alone.

    Args:
      seed: int >= 0.
      split: str, one of `SPLIT_IDS`.
      index: int >= 0, the example's index in the split.
      height, width: ints >= 1, the image size.

    Returns:
      (image, label): uint8 `[height, width, 3]` and uint8 `[height, width]`
      with values in [0, NUM_CLASSES).

    Raises:
      ValueError: for an unknown split or a bad size.
    """
    rng = example_rng(seed, split, index)
    return render(sample_scene(rng, height, width), rng)


def example_filename(split, index):
    """The file name stored with an example: `<split>_%06d`."""
    return "%s_%06d" % (split, index)


def serialized_example(seed, split, height, width, index):
    """Example `index` as a serialized DeepLab `tf.train.Example` (PNG, PNG).

    The argument order lets `functools.partial` fix all but the index, so the
    result is the picklable `make_example` of `shard_writer.write_split`.
    """
    image, label = generate_example(seed, split, index, height, width)
    example = tfexample.encode_example(
        tfexample.encode_png(image),
        example_filename(split, index),
        height,
        width,
        label_data=tfexample.encode_png(label),
        image_format="png",
    )
    # Deterministic map order: equal examples give equal bytes in any process.
    return example.SerializeToString(deterministic=True)


def build(
    output_dir,
    num_train=200,
    num_val=50,
    height=129,
    width=129,
    seed=0,
    num_shards=4,
    overwrite=False,
    num_workers=2,
):
    """Writes the "train" and "val" splits as DeepLab TFRecord shards.

    Args:
      output_dir: str, created if missing.
      num_train, num_val: ints >= 1, examples per split.
      height, width: ints >= 1, the image size.
      seed: int >= 0.
      num_shards: int, shards per split.
      overwrite: bool, replace existing shards of either split.
      num_workers: int, writer processes.

    Returns:
      dict split -> `shard_writer.WriteResult`.

    Raises:
      FileExistsError: shards of a split exist and `overwrite` is False
        (checked for both splits before anything is written).
      ValueError: for bad sizes or counts.
    """
    _check_size(height, width)
    _check_int("seed", seed, 0)
    counts = (("train", num_train), ("val", num_val))
    for split, count in counts:
        _check_int(f"num_{split}", count, 1)
    if not overwrite:
        shard_writer.check_no_shards(output_dir, [split for split, _ in counts])
    results = {}
    with shard_writer.worker_pool(num_workers) as pool:
        for split, count in counts:
            make_example = functools.partial(
                serialized_example, int(seed), split, int(height), int(width)
            )
            results[split] = shard_writer.write_split(
                make_example,
                int(count),
                output_dir,
                split,
                num_shards=num_shards,
                overwrite=overwrite,
                num_workers=num_workers,
                pool=pool,
                description=f"synthetic {split}",
            )
    return results


def dataset_info():
    """The registry's `DatasetInfo` of "synthetic" (split sizes: the defaults)."""
    return registry.get("synthetic")
