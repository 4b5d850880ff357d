"""The streaming confusion matrix and mIOU against plain NumPy counting."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.evaluation import metrics

IGNORE = 255


def numpy_miou(labels, predictions, num_classes, ignore_label):
    """mIOU by counting pixels class by class (an independent route)."""
    keep = labels != ignore_label
    labels, predictions = labels[keep], predictions[keep]
    ious = []
    for c in range(num_classes):
        union = np.sum((labels == c) | (predictions == c))
        if union:
            ious.append(np.sum((labels == c) & (predictions == c)) / union)
    return float(np.mean(ious))


def test_streaming_miou_equals_numpy_with_ignore_and_absent_classes():
    rng = np.random.default_rng(3)
    # Classes 0-2 in the labels, 3 only predicted, 4 nowhere; some ignored.
    labels = rng.integers(0, 3, (2, 3, 17, 19))
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    predictions = rng.integers(0, 4, labels.shape)
    metric = metrics.StreamingMeanIoU(num_classes=5, ignore_label=IGNORE)
    for batch in range(2):
        metric.update(tf.constant(labels[batch]), tf.constant(predictions[batch]))
    result = metric.result(class_names=list("abcde"))

    assert result["miou"] == pytest.approx(numpy_miou(labels, predictions, 5, IGNORE))
    assert result["per_class_iou"][3] == 0.0  # predicted, never labelled
    assert result["per_class_iou"][4] is None  # absent from both
    assert result["num_pixels"] == int(np.sum(labels != IGNORE))
    assert result["class_names"] == list("abcde")
    keep = labels != IGNORE
    assert result["pixel_accuracy"] == pytest.approx(
        np.mean(labels[keep] == predictions[keep])
    )


def test_perfect_predictions_and_empty_matrix():
    labels = np.array([[0, 1], [IGNORE, 1]])
    metric = metrics.StreamingMeanIoU(num_classes=3, ignore_label=IGNORE)
    metric.update(labels, np.where(labels == IGNORE, 2, labels))
    assert metric.result()["miou"] == 1.0
    assert metrics.mean_iou(np.zeros((3, 3))) == 0.0


def test_out_of_range_label_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        metrics.confusion_matrix(
            np.array([0, 7]), np.array([0, 1]), num_classes=3, ignore_label=IGNORE
        )
