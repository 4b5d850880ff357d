"""trainer and losses: learning rate, loss, training, resume and NaN handling."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import synthetic
from deeplab_dpc.models import deeplab
from deeplab_dpc.training import losses
from deeplab_dpc.training import trainer

CROP = (33, 33)


@pytest.fixture
def data_dir(synthetic_data):
    # The same data set as tests/test_train.py's, built once per session.
    return synthetic_data(num_train=16, num_val=2, height=48, width=48)


def _model_options():
    return deeplab.ModelOptions(
        num_classes=synthetic.NUM_CLASSES, crop_size=CROP, depth_multiplier=0.35
    )


def _train_options(data_dir, **overrides):
    values = dict(
        train_batch_size=4,
        training_number_of_steps=3,
        base_learning_rate=0.01,
        dataset_dir=data_dir,
        ignore_label=synthetic.IGNORE_LABEL,
        log_steps=1,
        seed=1,
    )
    values.update(overrides)
    return trainer.TrainOptions(**values)


def test_poly_schedule_with_slow_start_matches_hand_values():
    options = trainer.TrainOptions(
        base_learning_rate=0.01,
        end_learning_rate=0.001,
        learning_power=0.9,
        training_number_of_steps=100,
        slow_start_step=10,
        slow_start_learning_rate=1e-4,
    )
    schedule = trainer.DeepLabLearningRate(options)
    for step in (0, 9):
        assert float(schedule(step)) == pytest.approx(1e-4)
    for step, expected in (
        (10, 0.009 * 0.9**0.9 + 0.001),
        (50, 0.009 * 0.5**0.9 + 0.001),
        (100, 0.001),
        (150, 0.001),
    ):
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_step_schedule_matches_hand_values():
    options = trainer.TrainOptions(
        base_learning_rate=0.1,
        learning_policy="step",
        learning_rate_decay_step=10,
        learning_rate_decay_factor=0.5,
        slow_start_step=3,
        slow_start_learning_rate=0.001,
    )
    schedule = trainer.DeepLabLearningRate(options)
    for step, expected in ((0, 0.001), (2, 0.001), (3, 0.1), (9, 0.1), (10, 0.05)):
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6)
    assert float(schedule(25)) == pytest.approx(0.025, rel=1e-6)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="learning_policy"):
        trainer.TrainOptions(learning_policy="cosine")
    with pytest.raises(ValueError, match="top_k_percent_pixels"):
        trainer.TrainOptions(top_k_percent_pixels=0.0)


def test_top_k_fraction_ramps_linearly():
    assert float(losses.top_k_fraction(0, 0.2, 0)) == pytest.approx(0.2)
    assert float(losses.top_k_fraction(0, 0.2, 100)) == pytest.approx(1.0)
    assert float(losses.top_k_fraction(50, 0.2, 100)) == pytest.approx(0.6)
    assert float(losses.top_k_fraction(500, 0.2, 100)) == pytest.approx(0.2)


def _np_pixel_losses(logits, labels, ignore):
    logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    labels = labels.reshape(-1)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    valid = labels != ignore
    losses = np.zeros(labels.shape)
    losses[valid] = -log_p[valid.nonzero()[0], labels[valid]]
    return losses, valid


def test_loss_ignores_ignore_label_and_mines_top_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 5, 6, 1)).astype(np.int32)
    labels[0, :2] = 255
    expected, valid = _np_pixel_losses(logits, labels, 255)

    total, count = losses.pixel_loss_sum(logits, labels, ignore_label=255)
    assert float(count) == valid.sum()
    assert float(total / count) == pytest.approx(expected[valid].mean(), rel=1e-5)

    k = int(0.25 * expected.size)
    top = np.sort(expected)[::-1][:k]
    total, count = losses.pixel_loss_sum(
        logits, labels, ignore_label=255, top_k_fraction_value=0.25
    )
    assert float(count) == np.count_nonzero(top)
    assert float(total / count) == pytest.approx(top.sum() / k, rel=1e-5)

    # All pixels ignored: no data loss at all (the step loss is then only
    # the regularisation, see `run`'s divide_no_nan).
    ignored = np.full_like(labels, 255)
    total, count = losses.pixel_loss_sum(logits, ignored, ignore_label=255)
    assert float(total) == 0.0 and float(count) == 0.0
    assert float(tf.math.divide_no_nan(total, count)) == 0.0


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_compiled_cross_entropy_matches_tensorflows_kernel(scale):
    # Values and gradients of the XLA-compiled log-sum-exp form against
    # tf.nn's fused kernel; scale 300 checks the log-sum-exp stays finite
    # where a naive log(sum(exp)) overflows.
    rng = np.random.default_rng(1)
    logits = tf.constant(scale * rng.normal(size=(500, 21)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 21, size=500).astype(np.int32))
    upstream = tf.constant(rng.uniform(size=500).astype(np.float32))

    def value_and_gradient(function):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            values = function(logits, labels)
            weighted = tf.reduce_sum(values * upstream)
        return values.numpy(), tape.gradient(weighted, logits).numpy()

    ours, our_grad = value_and_gradient(losses.softmax_cross_entropy)
    theirs, their_grad = value_and_gradient(
        lambda x, y: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=x)
    )
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(our_grad, their_grad, atol=1e-6)


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    data = str(tmp_path / "one")
    # Images of exactly the crop and scale 1: every batch is the same two
    # images, up to random flips.
    synthetic.build(
        data, num_train=2, num_val=1, height=33, width=33, num_workers=1, num_shards=1
    )
    results = trainer.run(
        _model_options(),
        _train_options(
            data,
            train_batch_size=2,
            training_number_of_steps=12,
            base_learning_rate=0.05,
            min_scale_factor=1.0,
            max_scale_factor=1.0,
            scale_factor_step_size=0.0,
        ),
        str(tmp_path / "log"),
    )
    losses = results["losses"]
    assert len(losses) == 12 and results["step"] == 12
    assert np.mean(losses[-3:]) < 0.8 * losses[0]
    assert results["logged_losses"] == losses


def test_resume_continues_from_the_checkpoint(data_dir, tmp_path):
    logdir = str(tmp_path / "log")
    # The first run also mines hard examples (the in-graph top-k path).
    first = trainer.run(
        _model_options(),
        _train_options(data_dir, top_k_percent_pixels=0.5, hard_example_mining_step=2),
        logdir,
    )
    assert all(np.isfinite(first["losses"]))
    assert first["step"] == 3 and len(first["losses"]) == 3
    assert tf.train.latest_checkpoint(logdir).endswith("ckpt-3")

    second = trainer.run(
        _model_options(),
        _train_options(data_dir, training_number_of_steps=5, max_to_keep=1),
        logdir,
    )
    assert second["step"] == 5
    assert len(second["losses"]) == 2  # Steps 4 and 5 only.
    assert second["checkpoint"].endswith("ckpt-5")
    reader = tf.train.load_checkpoint(logdir)
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 5
    assert not os.path.exists(os.path.join(logdir, "ckpt-3.index"))

    # Already at the configured step: nothing to do, nothing rewritten.
    third = trainer.run(
        _model_options(), _train_options(data_dir, training_number_of_steps=5), logdir
    )
    assert third["step"] == 5 and third["losses"] == []


def test_sigterm_right_after_the_first_step_saves_it(data_dir, tmp_path, monkeypatch):
    # The first step's fast paths are logged once it ended: a SIGTERM then
    # (tests/test_sigterm.py sends it on that line) must save the step, not
    # end the run as if nothing were done.
    describe = trainer.fast_paths.describe

    def describe_after_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        return describe()

    monkeypatch.setattr(trainer.fast_paths, "describe", describe_after_sigterm)
    logdir = str(tmp_path / "log")
    result = trainer.run(
        _model_options(), _train_options(data_dir, training_number_of_steps=100), logdir
    )
    assert result["terminated"] and result["step"] == 1
    assert tf.train.latest_checkpoint(logdir).endswith("ckpt-1")


def test_nan_raises_naming_the_step_and_writes_no_nan_checkpoint(data_dir, tmp_path):
    logdir = str(tmp_path / "log")
    with pytest.raises(FloatingPointError, match=r"step \d+"):
        trainer.run(
            _model_options(),
            _train_options(
                data_dir,
                training_number_of_steps=6,
                base_learning_rate=1e30,
                save_interval_secs=1e-9,  # A save after every step.
            ),
            logdir,
        )
    latest = tf.train.latest_checkpoint(logdir)
    if latest is not None:
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), name


def _custom_gradient_names():
    from tensorflow.python.framework import (
        ops,
    )  # pylint: disable=g-direct-tensorflow-import

    return {
        k for k in ops._gradient_registry._registry if k.startswith("CustomGradient-")
    }


def test_released_custom_gradients_frees_the_graphs_that_trained():
    import gc
    import weakref

    @tf.custom_gradient
    def scaled(x):
        return 2.0 * x, lambda dy: 3.0 * dy  # A gradient Keras would not give.

    def train_once():
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = scaled(x)
            return tape.gradient(y, x)

        np.testing.assert_allclose(step(tf.ones([2])), [3.0, 3.0])
        return weakref.ref(step.get_concrete_function(tf.ones([2])).graph)

    before = _custom_gradient_names()
    graph = train_once()  # Outside: TensorFlow keeps its gradient, and graph.
    gc.collect()
    assert graph() is not None
    assert len(_custom_gradient_names() - before) == 1
    before = _custom_gradient_names()
    with trainer.released_custom_gradients():
        graph = train_once()
        assert len(_custom_gradient_names() - before) == 1
    gc.collect()
    assert graph() is None
    assert _custom_gradient_names() == before
    # Gradients traced afterwards still work.
    with trainer.released_custom_gradients():
        train_once()


_STUCK_LOOP = """
import sys, time
from deeplab_dpc.training import trainer
trainer.TERMINATION_GRACE_SECS = 1.0
with trainer._TerminationFlag() as flag:
    flag.unsaved = True  # A step done since the last checkpoint.
    print("ready", flush=True)
    time.sleep(60)  # A loop that never looks at the flag (a hung step).
print("survived", flush=True)
"""


def test_sigterm_ends_a_stuck_loop():
    # With steps to save the loop gets TERMINATION_GRACE_SECS to save them; a
    # loop that never comes back (an op that hangs) is ended by the watchdog
    # all the same. (Nothing to save: tests/test_sigterm.py, the training
    # program's first step.)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-c", _STUCK_LOOP],
        cwd=repo,
        env=dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == trainer.EXIT_TERMINATED, err
    assert "survived" not in out
    assert time.monotonic() - start < 10
    assert "did not stop within 1 s" in err, err
