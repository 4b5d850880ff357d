"""DeepLab's own backbones (test_xception.py, test_resnet_v1_beta.py,
test_mobilenet_v3_seg.py) build, run and map to DeepLab's variable names
under tf_keras (Keras 2), which tensorflow-model-optimization needs.

One tf_keras process builds the three cases: each process pays TensorFlow's
start-up.
"""

import backbone_testing as bt

CASES = [
    dict(
        name="xception_41", kind="backbone", variant="xception_41",
        crop=[33, 33], output_stride=8, multi_grid=[1, 2, 4],
    ),
    dict(
        name="resnet_v1_50_beta", kind="backbone", variant="resnet_v1_50_beta",
        crop=[33, 33], output_stride=16, multi_grid=[1, 2, 4],
    ),
    # The LR-ASPP model of the model zoo's MobileNet-v3 flags.
    dict(
        name="mobilenet_v3_small_seg", kind="deeplab",
        variant="mobilenet_v3_small_seg", crop=[129, 129],
        options=dict(
            model_variant="mobilenet_v3_small_seg", num_classes=19,
            output_stride=32, image_pooling_crop_size=[65, 65],
            image_pooling_stride=[1, 1], aspp_with_squeeze_and_excitation=True,
            aspp_convs_filters=128, aspp_with_concat_projection=False,
            image_se_uses_qsigmoid=True, decoder_output_stride=8,
            decoder_use_sum_merge=True, decoder_filters=19,
            decoder_output_is_logits=True,
        ),
    ),
]


def test_builds_and_maps_under_tf_keras(program_env):
    found = bt.run_under_tf_keras(program_env, CASES)

    xception = found["xception_41"]
    assert xception["shapes"] == {
        "features": [1, 5, 5, 2048], "low_level": [1, 9, 9, 256]
    }
    assert xception["mapped"] == xception["weights"] > 400

    resnet = found["resnet_v1_50_beta"]
    assert resnet["shapes"] == {
        "features": [1, 3, 3, 2048], "low_level": [1, 9, 9, 256]
    }
    # DeepLab's resnet_v1_50_beta_imagenet list.
    assert resnet["mapped"] == resnet["weights"] == 275

    mobilenet = found["mobilenet_v3_small_seg"]
    assert mobilenet["shapes"] == {"logits": [1, 129, 129, 19]}
    assert mobilenet["mapped"] == mobilenet["weights"] == 217
