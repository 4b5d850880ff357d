"""Tests for bench/peer_process.py's workers and benchlib's worker protocol."""

import io
import json
import os
import sys

import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import benchlib  # pylint: disable=wrong-import-position
import peer_process  # pylint: disable=wrong-import-position

from deeplab_dpc.training import speed  # pylint: disable=wrong-import-position


class _Handlers:
    COMMANDS = ("add", "fail")

    def add(self, a, b):
        return {"sum": a + b}

    def fail(self):
        raise ValueError("no good")

    def hidden(self):
        return {"reached": True}


def _serve(*requests):
    lines = [json.dumps(r) if isinstance(r, dict) else r for r in requests]
    out = io.StringIO()
    benchlib.serve(_Handlers(), io.StringIO("\n".join(lines) + "\n"), out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_serve_answers_each_line_and_stops_at_quit():
    replies = _serve(
        {"cmd": "add", "a": 2, "b": 3},
        "",
        {"cmd": "fail"},
        {"cmd": "hidden"},
        "not json",
        {"cmd": "quit"},
        {"cmd": "add", "a": 1, "b": 1},
    )
    assert len(replies) == 5  # The blank line is skipped, nothing after quit.
    assert replies[0] == {"sum": 5, "ok": True}
    assert replies[1]["ok"] is False
    assert replies[1]["error"] == "ValueError: no good"
    assert "in fail" in replies[1]["traceback"]
    # Only the methods named in COMMANDS are commands.
    assert replies[2]["ok"] is False
    assert "unknown command 'hidden'" in replies[2]["error"]
    assert "['add', 'fail', 'quit']" in replies[2]["error"]
    assert replies[3]["ok"] is False and "JSONDecodeError" in replies[3]["error"]
    assert replies[4] == {"ok": True}


def test_dead_worker_error_names_it_and_quotes_its_stderr():
    script = "import sys; sys.stderr.write('the end of its log'); sys.exit(3)"
    with peer_process.Worker("dying", [sys.executable, "-c", script]) as worker:
        with pytest.raises(peer_process.WorkerError) as error:
            worker.call("info")
    message = str(error.value)
    assert "worker dying exited (code 3)" in message
    assert '"cmd": "info"' in message
    assert "the end of its log" in message


def test_started_worker_answers_times_and_is_closed_on_error():
    with pytest.raises(peer_process.WorkerError) as error:
        with peer_process.started(("ours_aspp",), crop=33) as workers:
            worker = workers["ours_aspp"]
            info = worker.call("info")
            timed = peer_process.timed_rounds(
                workers, "infer", rounds=2, repeats=3, warmup=1
            )
            worker.call("nope")
    assert info["head"] == "aspp" and info["crop"] == 33
    assert info["output_shape"] == [1, 33, 33, peer_process.NUM_CLASSES]
    assert info["madds"] > 0 and info["params"] > 0
    replies = timed["ours_aspp"]["replies"]
    assert [len(reply["ms"]) for reply in replies] == [3, 3]
    assert all(ms > 0 for reply in replies for ms in reply["ms"])
    assert timed["ours_aspp"]["peak_rss_mb"] > 0
    message = str(error.value)
    assert "worker ours_aspp: nope failed" in message
    assert "unknown command 'nope'" in message
    # Leaving the block closed the worker, although a command failed.
    with pytest.raises(ProcessLookupError):
        worker.peak_rss_mb()


def test_bf16_math_worker_trains_the_same_model_with_rounded_convolutions():
    names = ("ours_dpc", "ours_dpc" + peer_process.BF16_MATH)
    with peer_process.started(names, crop=33) as workers:
        infos = {name: w.call("info") for name, w in workers.items()}
        losses = {
            name: w.call("train", batch=2, repeats=1, warmup=0)["loss"]
            for name, w in workers.items()
        }
    exact, rounded = names
    assert infos[exact]["float32_math"] == "float32"
    assert infos[exact]["params"] == infos[rounded]["params"]
    # Same seed, weights and batch: the first step's losses agree to the
    # rounding of bfloat16 inputs (8 bits of mantissa), and differ only where
    # this CPU computes bfloat16.
    assert losses[rounded] == pytest.approx(losses[exact], rel=0.02)
    if speed.bfloat16_math_possible():
        assert infos[rounded]["float32_math"] == "bfloat16"
        assert losses[rounded] != losses[exact]
    else:
        assert infos[rounded]["float32_math"] == "float32"


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="ours_dpc_bf16math"):
        peer_process.start("ours_dpc_fp8")
    with pytest.raises(ValueError, match="unknown model 'model_garden_bf16math'"):
        peer_process.start("model_garden" + peer_process.BF16_MATH)


def _conv_relu6_forward(tf, bias):
    """A Keras conv + ReLU6 at batch 1 with the given bias, as a concrete function."""
    conv = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu6")
    model = tf.keras.Sequential([tf.keras.Input([17, 17, 3]), conv])
    conv.bias.assign(tf.fill([8], bias))
    return tf.function(lambda images: model(images)).get_concrete_function(
        tf.TensorSpec([1, 17, 17, 3], tf.float32)
    )


def test_op_type_profile_times_the_graph_the_forward_runs():
    import tensorflow as tf

    image = tf.random.uniform([1, 17, 17, 3])
    profiles = {
        bias: benchlib.op_type_profile(tf, _conv_relu6_forward(tf, bias), image, 2)
        for bias in (0.0, 0.5)
    }
    for profile in profiles.values():
        assert profile["wall_ms"] > 0 and sum(profile["ms"].values()) > 0
        assert profile["ms"].keys() == profile["count"].keys()
        assert all(n >= 1 for n in profile["count"].values())
        assert not any("::" in op for op in profile["ms"])
    # A bias of zeros is still a variable: the conv fuses with its bias add
    # and ReLU6 as with any other bias (a frozen graph would drop the add of
    # zeros and run ReLU6 on its own).
    assert profiles[0.0]["count"] == profiles[0.5]["count"]
    assert "Relu6" not in profiles[0.0]["count"]
