"""DeepLab's training loss: pixel-wise softmax cross-entropy, hard mining.

The same value whatever the number of replicas (`trainer.run` sums them):

* softmax cross-entropy per pixel, in float32 whatever the logits' dtype;
  pixels labelled `ignore_label` weigh 0;
* without hard example mining (`top_k_percent_pixels == 1`): DeepLab's mean
  over valid pixels. Each replica sums its pixel losses and divides by the
  number of valid pixels of the GLOBAL batch (an all-reduce), so the sum of
  the replicas' losses (and of their gradients, which the optimizer
  all-reduces) is the mean over the global batch;
* with hard example mining: the fraction of pixels kept ramps linearly from
  1 to `top_k_percent_pixels` over the first `hard_example_mining_step`
  steps (DeepLab's `_compute_top_k_percent_pixels`); each replica keeps its
  `int(fraction * pixels)` largest weighted pixel losses; the loss is their
  sum over the non-zero kept losses of the global batch (DeepLab divides by
  the number of non-zero kept losses). The top k is taken per replica, as in
  DeepLab's per-clone loss, so this one depends on the replica split. It is
  a mask over the sorted losses, so that every shape is static (XLA);
* plus the model's regularisation losses (`model.losses`), each replica
  adding `1 / num_replicas` of them.
"""

import tensorflow as tf

from deeplab_dpc.layers import fast_paths


def top_k_fraction(step, top_k_percent_pixels, hard_example_mining_step):
    """The fraction of pixels hard example mining keeps at `step`.

    DeepLab's linear ramp from 1.0 (step 0) to `top_k_percent_pixels`
    (at and after `hard_example_mining_step`).

    Args:
      step: int or scalar tensor, steps already taken.
      top_k_percent_pixels: float in (0, 1].
      hard_example_mining_step: int >= 0.

    Returns:
      A float32 scalar tensor.
    """
    if hard_example_mining_step == 0:
        return tf.constant(top_k_percent_pixels, tf.float32)
    ratio = tf.minimum(1.0, tf.cast(step, tf.float32) / float(hard_example_mining_step))
    return ratio * top_k_percent_pixels + (1.0 - ratio)


def _cross_entropy(logits, labels):
    num_classes = tf.shape(logits)[-1]
    picked = tf.reduce_sum(logits * tf.one_hot(labels, num_classes), axis=-1)
    return tf.reduce_logsumexp(logits, axis=-1) - picked


_xla_cross_entropy = tf.function(
    _cross_entropy, jit_compile=True, reduce_retracing=True
)


def softmax_cross_entropy(logits, labels):
    """Per-row softmax cross-entropy: `logsumexp(logits) - logits[label]`.

    What `tf.nn.sparse_softmax_cross_entropy_with_logits` computes (same
    values and gradients within float32 rounding), compiled by XLA, which
    fuses the log-sum-exp, the label's logit and their gradient
    (`softmax - one_hot`) into a few passes over the logits. The logits at
    crop size are the largest tensor of a training step (513x513 pixels x
    the classes per image): on the CPU, TensorFlow's kernel took about a
    tenth of a MobileNet-v2 + DPC step (513x513, batch 8), and this form
    makes the whole step about 8% faster. Where XLA does not compile on
    every device of the process (`fast_paths.available(XLA)`), or inside
    `fast_paths.portable()`, it is TensorFlow's
    `sparse_softmax_cross_entropy_with_logits`.

    Args:
      logits: float32 `[pixels, num_classes]`.
      labels: int32 `[pixels]`, each in `[0, num_classes)`.

    Returns:
      float32 `[pixels]`.
    """
    if fast_paths.available(fast_paths.XLA):
        return _xla_cross_entropy(logits, labels)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def pixel_loss_sum(logits, labels, *, ignore_label, top_k_fraction_value=1.0):
    """The summed pixel losses of one (replica) batch and their count.

    Args:
      logits: float `[batch, height, width, num_classes]`.
      labels: int `[batch, height, width, 1]` (or `[batch, height, width]`).
      ignore_label: int, pixels with this label weigh 0.
      top_k_fraction_value: float or scalar tensor in (0, 1]; below 1 only
        the `int(fraction * pixels)` largest weighted losses are kept.

    Returns:
      (loss_sum, count), float32 scalars: the sum of the kept losses and the
      number of valid pixels (fraction 1) or of non-zero kept losses
      (fraction < 1). The loss is `loss_sum / count`, the counts summed over
      replicas.
    """
    num_classes = tf.shape(logits)[-1]
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1, num_classes])
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    valid = tf.not_equal(labels, ignore_label)
    weights = tf.cast(valid, tf.float32)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    pixel_losses = weights * softmax_cross_entropy(logits, safe_labels)
    fraction = tf.convert_to_tensor(top_k_fraction_value, tf.float32)

    def mean_over_valid():
        return tf.reduce_sum(pixel_losses), tf.reduce_sum(weights)

    def top_k():
        # The k largest losses as a mask over all of them, sorted: the shapes
        # stay static whatever k (`tf.nn.top_k` with a tensor k does not
        # compile with XLA, and the ramp must not retrace the step).
        num_pixels = tf.size(pixel_losses)
        k = tf.cast(fraction * tf.cast(num_pixels, tf.float32), tf.int32)
        ranked = tf.sort(pixel_losses, direction="DESCENDING")
        kept = tf.cast(tf.range(num_pixels) < tf.maximum(1, k), tf.float32)
        return tf.reduce_sum(ranked * kept), tf.reduce_sum(
            kept * tf.cast(tf.not_equal(ranked, 0.0), tf.float32)
        )

    return tf.cond(fraction >= 1.0, mean_over_valid, top_k)


def scale_labels(labels, size):
    """Labels at the logits' size, as DeepLab's `upsample_logits=False`.

    DeepLab's other way to train (its train.py flag `upsample_logits`,
    default True: the logits are upsampled to the label size): the labels
    are resized to the logits' size by nearest neighbour with
    `align_corners=True`, so at output stride 16 a 513x513 label keeps every
    16th pixel, the one at each feature's centre of the grid. The loss then
    costs the logits' pixels, not the image's.

    Args:
      labels: int `[batch, height, width]` (or with a trailing 1).
      size: (height, width) of the logits, ints or a shape tensor.

    Returns:
      int32 `[batch, size[0], size[1]]`.
    """
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == 3:
        labels = labels[..., tf.newaxis]
    scaled = tf.compat.v1.image.resize_nearest_neighbor(
        labels, size, align_corners=True
    )
    return scaled[..., 0]


def regularized_loss(model, logits, labels, *, ignore_label):
    """One replica's loss: the mean over valid pixels plus the model's L2.

    What the training step computes without a strategy (the proxy trial and
    the QAT/pruning fine-tunes); `trainer.run` divides by the global pixel
    count.
    """
    loss_sum, count = pixel_loss_sum(logits, labels, ignore_label=ignore_label)
    loss = tf.math.divide_no_nan(loss_sum, count)
    if model.losses:
        loss += tf.add_n(model.losses)
    return loss
