"""Tests of TFDS as a source, on TFDS's own mock data (nothing downloaded)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from cityscapesscripts.helpers import labels as cs_labels

from deeplab_dpc.data import tfds_source
from deeplab_dpc.data import tfexample


def _decode_example_spec():
    example = tfexample.encode_example(
        tfexample.encode_png(np.zeros((3, 4, 3), np.uint8)),
        "x",
        3,
        4,
        label_data=tfexample.encode_png(np.zeros((3, 4), np.uint8)),
        image_format="png",
    )
    dataset = tf.data.Dataset.from_tensors(example.SerializeToString())
    return dataset.map(tfexample.decode_example).element_spec


def _cityscapes_expected(label_ids):
    # Independent of the module: straight from the official table.
    lookup = np.full(256, 255, np.uint8)
    for label in cs_labels.labels:
        if 0 <= label.id < 256 and 0 <= label.trainId < 19:
            lookup[label.id] = label.trainId
    return lookup[label_ids]


def _raw(name, split, image_key, label_key):
    """The mock examples with the image and label files undecoded."""
    skip = tfds.decode.SkipDecoding()
    return list(
        tfds.load(name, split=split, decoders={image_key: skip, label_key: skip})
    )


def _check_elements(elements, raw, image_key, label_key, expected_label):
    assert len(elements) == len(raw) == 2
    for element, example in zip(elements, raw):
        image = element[tfexample.IMAGE].numpy()
        np.testing.assert_array_equal(
            image, tf.io.decode_image(example[image_key], channels=3).numpy()
        )
        assert image.dtype == np.uint8 and image.shape[-1] == 3
        label = element[tfexample.LABEL].numpy()
        assert label.dtype == np.uint8 and label.shape[-1] == 1
        red = tf.io.decode_png(example[label_key]).numpy()[..., 0]
        np.testing.assert_array_equal(label[..., 0], expected_label(red))
        assert element[tfexample.HEIGHT].dtype == tf.int32
        assert (element[tfexample.HEIGHT], element[tfexample.WIDTH]) == image.shape[:2]


def test_cityscapes_mock_data_gives_decode_example_elements_with_train_ids():
    name = "tfds:cityscapes/semantic_segmentation"
    with tfds.testing.mock_data(num_examples=2, max_value=40):
        dataset = tfds_source.load(name, "val_fine", data_dir=None)
        elements = list(dataset)
        raw = _raw("cityscapes", "validation", "image_left", "segmentation_label")
    assert dataset.element_spec == _decode_example_spec()
    _check_elements(
        elements, raw, "image_left", "segmentation_label", _cityscapes_expected
    )
    labels = np.concatenate([e[tfexample.LABEL].numpy().ravel() for e in elements])
    # Mock labelIds span 0..40: all 19 trainIds and the ignore label occur.
    assert set(np.unique(labels)) == set(range(19)) | {255}
    assert [e[tfexample.FILENAME].numpy() for e in elements] == [
        r["image_id"].numpy() for r in raw
    ]


def test_scene_parse150_mock_data_gives_ade20k_labels():
    with tfds.testing.mock_data(num_examples=2, max_value=120):
        dataset = tfds_source.load("tfds:scene_parse150", "val", data_dir=None)
        elements = list(dataset)
        raw = _raw("scene_parse150", "test", "image", "annotation")
    assert dataset.element_spec == _decode_example_spec()

    def expected(red):
        # Spot checks by name (instance category -> objectInfo150 index).
        known = {0: 0, 1: 8, 4: 13, 9: 21, 58: 90, 85: 131, 100: 150, 101: 0}
        for category, ade in known.items():
            assert tfds_source.ade20k_lookup()[category] == ade
        return tfds_source.ade20k_lookup()[red]

    _check_elements(elements, raw, "image", "annotation", expected)
    for element in elements:
        filename = element[tfexample.FILENAME].numpy().decode()
        assert filename.startswith("scene_parse150-test")
    labels = np.concatenate([e[tfexample.LABEL].numpy().ravel() for e in elements])
    assert labels.max() <= 150 and 0 in labels


def test_instance_categories_map_to_distinct_ade20k_classes():
    table = tfds_source.INSTANCE100_TO_ADE150
    assert len(table) == len(set(table)) == 100
    assert list(table) == sorted(table) and 1 <= min(table) and max(table) == 150


def test_cityscapes_lookup_matches_the_official_table():
    np.testing.assert_array_equal(
        tfds_source.cityscapes_lookup(), _cityscapes_expected(np.arange(256))
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("tfds:cityscapes", "cityscapes/semantic_segmentation"),
        ("tfds:cityscapes/semantic_segmentation", "cityscapes/semantic_segmentation"),
        (
            "tfds:cityscapes/semantic_segmentation_extra:1.0.0",
            "cityscapes/semantic_segmentation_extra:1.0.0",
        ),
        ("tfds:scene_parse150", "scene_parse150"),
        ("tfds:scene_parse150:1.0.0", "scene_parse150:1.0.0"),
    ],
)
def test_parse_dataset_name(name, expected):
    assert tfds_source.parse_dataset_name(name) == expected


def test_parse_dataset_name_rejects_other_names():
    with pytest.raises(ValueError, match="not a TFDS data set name"):
        tfds_source.parse_dataset_name("cityscapes")
    with pytest.raises(ValueError, match="unsupported.*tfds:scene_parse150"):
        tfds_source.parse_dataset_name("tfds:cityscapes/stereo_disparity")
    assert tfds_source.is_tfds_name("tfds:mnist")
    assert not tfds_source.is_tfds_name("synthetic")


def test_split_aliases_and_dataset_info():
    assert tfds_source.tfds_split("tfds:cityscapes", "train_fine") == "train"
    assert tfds_source.tfds_split("tfds:cityscapes", "val_fine") == "validation"
    assert tfds_source.tfds_split("scene_parse150", "val") == "test"
    assert tfds_source.tfds_split("scene_parse150", "train[:10]") == "train[:10]"
    info = tfds_source.dataset_info("tfds:scene_parse150")
    assert (info.num_classes, info.ignore_label) == (151, 0)
    assert info.split_size("test") == 2000
    info = tfds_source.dataset_info("tfds:cityscapes")
    assert (info.num_classes, info.ignore_label) == (19, 255)
    assert info.name == "tfds:cityscapes/semantic_segmentation"
    assert info.split_size("validation") == 500


def test_load_without_prepared_data_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build scene_parse150"):
        tfds_source.load("tfds:scene_parse150", "train", data_dir=str(tmp_path))
