"""Segmentation metrics: a streaming confusion matrix and mean IoU.

DeepLab's eval.py reports `tf.metrics.mean_iou` over the pixels whose label
is not the ignore label: a confusion matrix summed over the split, then per
class IoU = TP / (TP + FP + FN), and the mean over the classes whose
denominator is not zero (a class neither in the labels nor predicted
anywhere in the split does not count). Everything here follows that; the
eval program, the search's proxy trial and the export's parity checks all
use this one module, so their mIOUs agree.
"""

import numpy as np
import tensorflow as tf


def confusion_matrix(labels, predictions, *, num_classes, ignore_label):
    """One batch's confusion matrix, in TensorFlow.

    Args:
      labels: int tensor of true labels, any shape.
      predictions: int tensor of predicted classes, same shape.
      num_classes: int.
      ignore_label: int; pixels with this label do not count.

    Returns:
      int64 `[num_classes, num_classes]` tensor, rows true, columns
      predicted.

    Raises:
      tf.errors.InvalidArgumentError: when a counted label or a prediction
        is outside `[0, num_classes)`.
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    keep = tf.not_equal(labels, ignore_label)
    labels = tf.boolean_mask(labels, keep)
    predictions = tf.boolean_mask(predictions, keep)
    checks = [
        tf.debugging.assert_less(
            labels,
            tf.constant(num_classes, tf.int64),
            message=f"a label is >= num_classes ({num_classes}) and is not the "
            f"ignore label ({ignore_label})",
        ),
        tf.debugging.assert_non_negative(labels, message="a label is negative"),
        tf.debugging.assert_less(
            predictions,
            tf.constant(num_classes, tf.int64),
            message=f"a prediction is >= num_classes ({num_classes})",
        ),
    ]
    with tf.control_dependencies(checks):
        index = labels * num_classes + predictions
    counts = tf.math.bincount(
        index, minlength=num_classes * num_classes, dtype=tf.int64
    )
    return tf.reshape(counts[: num_classes * num_classes], [num_classes] * 2)


def per_class_iou(matrix):
    """IoU of each class from a confusion matrix (rows true, columns predicted).

    Returns:
      float64 array `[num_classes]`; NaN for a class neither labelled nor
      predicted anywhere.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, true_positive / denominator, np.nan)


def mean_iou(matrix):
    """DeepLab's mIOU: the mean IoU over classes with a non-zero denominator.

    Returns:
      float; 0.0 for an all-zero matrix (nothing counted), as
      `tf.metrics.mean_iou`.
    """
    iou = per_class_iou(matrix)
    present = ~np.isnan(iou)
    if not present.any():
        return 0.0
    return float(iou[present].mean())


def pixel_accuracy(matrix):
    """The fraction of counted pixels predicted right (0.0 when none)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


class StreamingMeanIoU:
    """Sums confusion matrices over batches (the split's streaming metric).

    Usage:
      metric = StreamingMeanIoU(num_classes=19, ignore_label=255)
      for labels, predictions in ...:
        metric.update(labels, predictions)
      metric.result()  # {"miou": ..., "per_class_iou": [...], ...}
    """

    def __init__(self, *, num_classes, ignore_label):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.matrix = np.zeros([self.num_classes] * 2, dtype=np.int64)

    def update(self, labels, predictions):
        """Adds a batch (tensors or arrays of the same shape)."""
        self.matrix += confusion_matrix(
            labels,
            predictions,
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
        ).numpy()

    def merge(self, matrix):
        """Adds a confusion matrix counted elsewhere (e.g. another replica)."""
        self.matrix += np.asarray(matrix, dtype=np.int64)

    def result(self, class_names=None):
        """The split's figures.

        Args:
          class_names: optional sequence of `num_classes` names.

        Returns:
          dict: "miou", "pixel_accuracy", "per_class_iou" (list, None for a
          class absent from labels and predictions), "num_pixels", and
          "class_names" when given.
        """
        iou = per_class_iou(self.matrix)
        result = {
            "miou": mean_iou(self.matrix),
            "pixel_accuracy": pixel_accuracy(self.matrix),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
            "num_pixels": int(self.matrix.sum()),
        }
        if class_names is not None:
            if len(class_names) != self.num_classes:
                raise ValueError(
                    f"{len(class_names)} class names for {self.num_classes} " "classes"
                )
            result["class_names"] = list(class_names)
        return result
