"""Shared helpers and checks of the tests of DeepLab's own backbones
(test_xception.py, test_resnet_v1_beta.py, test_mobilenet_v3_seg.py).

Not a test module: the test files import it as `import backbone_testing`
(the folder is on `pythonpath` in pytest.ini). Each test file writes its
backbone out again in `tf.nn` ops (its oracle); the checks that are the same
for every backbone are here: the oracle's agreement, atrous consistency,
the config and `.keras` round trip, and the tf_keras build.

Backbones built by `backbone` are cached for the test process (one build per
variant, crop, output stride and multi-grid): tests that change weights set
all of them first.
"""

import copy
import functools
import json
import subprocess
import sys

import numpy as np
import tensorflow as tf

from deeplab_dpc.models import backbones
from deeplab_dpc.models import tf1_checkpoint


@functools.lru_cache(maxsize=None)
def backbone(variant, crop, output_stride, multi_grid=None):
    """A backbone of a square crop, built once per arguments."""
    tf.keras.utils.set_random_seed(0)
    return backbones.build_backbone(
        variant, (crop, crop), output_stride, multi_grid=multi_grid
    )


def images(crop, batch=1, seed=0):
    """Random images in [0, 255] of a crop (an int: square, or (h, w))."""
    rng = np.random.default_rng(seed)
    shape = (batch, *crop, 3) if isinstance(crop, tuple) else (batch, crop, crop, 3)
    return rng.uniform(0.0, 255.0, shape).astype(np.float32)


def randomize(model, seed=0, bias_std=0.05, kernel_gain=1.0):
    """He-normal kernels (times `kernel_gain`; fan-in kh * kw of depthwise
    kernels), BN gamma and variance near 1, 1-D weights N(0, bias_std): a
    live signal throughout."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        kind = variable.name.split("/")[-1].split(":")[0]
        if kind in ("gamma", "moving_variance"):
            value = rng.uniform(0.8, 1.2, shape)
        elif len(shape) == 1:
            value = rng.normal(0.0, bias_std, shape)
        else:
            fan_in = np.prod(shape[:2]) * (1 if shape[-1] == 1 else shape[2])
            value = rng.normal(0.0, kernel_gain * np.sqrt(2.0 / fan_in), shape)
        variable.assign(value.astype(np.float32))
    return model


def deeplab_weights(model, variant):
    """{DeepLab name: value} of a model's variables."""
    return {
        name: variable.numpy()
        for name, (variable, _) in tf1_checkpoint.tf1_variable_names(
            model, variant
        ).items()
    }


def close(want, got, rtol=1e-4):
    """|got - want| <= rtol * max |want|, elementwise (and want not all 0)."""
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def check_matches_reference(model, x, want_features, want_low, low_is_linear):
    """The backbone's two endpoints on `x` are the oracle's.

    `low_is_linear`: the low-level endpoint is a batch norm's output (no
    activation), so the oracle's has negative values.
    """
    out = model(x, training=False)
    close(np.asarray(want_features), out[backbones.FEATURES].numpy())
    close(np.asarray(want_low), out[backbones.LOW_LEVEL].numpy())
    if low_is_linear:
        assert np.asarray(want_low).min() < 0


def check_atrous_consistency(m_fine, m_coarse, x, other=None):
    """Same weights (`m_fine`'s, copied): the finer features subsampled by 2
    are the coarser; not trivially (the fine map has content between the
    samples), and, given `other` images, not vacuously (the features depend
    on the image by far more than the tolerance)."""
    m_coarse.set_weights(m_fine.get_weights())
    f_fine = m_fine(x, training=False)[backbones.FEATURES].numpy()
    f_coarse = m_coarse(x, training=False)[backbones.FEATURES].numpy()
    close(f_coarse, f_fine[:, ::2, ::2])
    if other is not None:
        g = m_coarse(other, training=False)[backbones.FEATURES].numpy()
        assert np.abs(g - f_coarse).max() > 1e-2 * np.abs(f_coarse).max()
    assert not np.allclose(f_fine[:, 1::2, 1::2], f_fine[:, :-1:2, :-1:2])


def _outputs(out):
    """A model's outputs as a list of arrays (a dict's in key order)."""
    if isinstance(out, dict):
        return [out[key].numpy() for key in sorted(out)]
    return [out.numpy()]


def check_config_round_trip_and_keras_file(model, x, path):
    """get_config -> from_config -> get_config is JSON-equal, and the model
    saved to a `.keras` file at `path` loads and computes the same on `x`."""
    config = model.get_config()
    clone = tf.keras.Model.from_config(copy.deepcopy(config))
    assert json.dumps(clone.get_config(), sort_keys=True, default=str) == json.dumps(
        config, sort_keys=True, default=str
    )
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    want = _outputs(model(x, training=False))
    got = _outputs(loaded(x, training=False))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# A tf_keras (Keras 2) process (tensorflow-model-optimization needs tf_keras
# models) builds each case, runs it on zeros and maps its variables to
# DeepLab's names; it prints one JSON line per case.
_TF_KERAS_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf
assert tf.keras.Model.__module__.startswith("tf_keras")
from deeplab_dpc.models import backbones, deeplab, tf1_checkpoint
for case in json.loads(sys.argv[1]):
    tf.keras.backend.clear_session()
    if case["kind"] == "backbone":
        model = backbones.build_backbone(
            case["variant"], tuple(case["crop"]), case["output_stride"],
            multi_grid=case.get("multi_grid"))
    else:
        options = dict(case["options"], crop_size=tuple(case["crop"]))
        for key in ("image_pooling_crop_size", "image_pooling_stride"):
            if key in options:
                options[key] = tuple(options[key])
        model = deeplab.build_deeplab(deeplab.ModelOptions(**options))
    out = model(np.zeros((1, *case["crop"], 3), np.float32), training=False)
    shapes = {k: list(v.shape) for k, v in out.items()} if isinstance(out, dict) \\
        else {"logits": list(out.shape)}
    names = tf1_checkpoint.tf1_variable_names(model, case["variant"])
    print("CASE " + json.dumps({"name": case["name"], "shapes": shapes,
                                "mapped": len(names), "weights": len(model.weights)}))
"""


def run_under_tf_keras(program_env, cases):
    """Builds every case in one tf_keras process.

    Args:
      program_env: the `program_env` fixture's environment.
      cases: dicts with "name", "variant", "crop" ([h, w]), "kind"
        ("backbone", with "output_stride" and optional "multi_grid"; or
        "deeplab", with "options": `ModelOptions` keyword arguments).

    Returns:
      {name: {"shapes": {output: shape}, "mapped": DeepLab names mapped,
      "weights": the model's weights}}.
    """
    result = subprocess.run(
        [sys.executable, "-c", _TF_KERAS_SCRIPT, json.dumps(cases)],
        env=dict(program_env, TF_USE_LEGACY_KERAS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = [
        json.loads(line[len("CASE ") :])
        for line in result.stdout.splitlines()
        if line.startswith("CASE ")
    ]
    assert [f["name"] for f in found] == [c["name"] for c in cases], result.stdout
    return {f.pop("name"): f for f in found}
