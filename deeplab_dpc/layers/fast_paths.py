"""Where each fast path runs: a cached probe of the real op on each device.

Several layers of this package compute on a faster formulation than Keras'
own when TensorFlow has a kernel for it; which kernels exist depends on the
device and on how TensorFlow was built and started, not on the code:

- `NATIVE_DILATED_DEPTHWISE`: an atrous depthwise conv on
  `DepthwiseConv2dNative` with `dilations` (`dilated_depthwise`). Only
  oneDNN's CPU kernel takes dilations. TensorFlow 2.21 turns oneDNN on by
  default only on some x86 CPUs; with it off (AMD and ARM CPUs, Apple
  silicon, `TF_ENABLE_ONEDNN_OPTS=0`) and in the GPU kernel (float32 NHWC)
  the op raises `UnimplementedError`. Portable: `tf.nn.depthwise_conv2d`'s
  SpaceToBatchND route (Keras' own call).
- `STRIDED_UPSAMPLING_GRADIENT`: the gradient of an align-corners
  upsampling as one strided depthwise conv (`resize`). TensorFlow's own
  CPU kernel takes only equal strides on both axes. Portable:
  `ResizeBilinearGrad`.
- `FUSED_BATCH_NORM`: batch norm's training step on `FusedBatchNormV3`
  (`fused_batch_norm`), per dtype. Portable: Keras' moments.
- `FAST_DROPOUT`: dropout from 16-bit numbers of a uint32 Philox draw
  (`fast_dropout`). Portable: Keras' `Dropout`.
- `XLA`: the loss's XLA-compiled cross-entropy (`losses`) and the
  `--jit_compile` lever. Portable: TensorFlow's kernels, uncompiled.

(oneDNN's bfloat16 math behind `--float32_math` has its own probe,
`speed.float32_math_in_effect`.)

`available(path, key)` runs a small instance of the fast op and of its
portable formulation on every device type this process has (CPU, and GPU
when one is visible: soft placement may put an op on either) and answers
True only if the fast op ran everywhere and gave the portable values
(gradients included where the fast path has its own). The answer is cached
for the process (TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` once, at import)
and logged once at INFO with its reason. The probe runs eagerly in a
thread of its own, also when asked while a `tf.function` traces.

`portable()` turns the fast paths off within a block (this thread): exports
trace in it, so a SavedModel or TFLite file holds only ops that run on
every device, whatever machine exported it. The environment variable
`DEEPLAB_DPC_FAST_PATHS=off` turns them off for the whole process.

Layers record the route each took (`record`); `taken()` lists them and
`describe()` prints the decisions, e.g. in `python -m deeplab_dpc.flops
--profile`.
"""

import contextlib
import os
import re
import threading

from absl import logging
import numpy as np
import tensorflow as tf

NATIVE_DILATED_DEPTHWISE = "native_dilated_depthwise"
STRIDED_UPSAMPLING_GRADIENT = "strided_upsampling_gradient"
FUSED_BATCH_NORM = "fused_batch_norm"
FAST_DROPOUT = "fast_dropout"
XLA = "xla"
PATHS = (
    NATIVE_DILATED_DEPTHWISE,
    STRIDED_UPSAMPLING_GRADIENT,
    FUSED_BATCH_NORM,
    FAST_DROPOUT,
    XLA,
)
PORTABLE = {
    NATIVE_DILATED_DEPTHWISE: "tf.nn.depthwise_conv2d (SpaceToBatchND route)",
    STRIDED_UPSAMPLING_GRADIENT: "ResizeBilinearGrad",
    FUSED_BATCH_NORM: "Keras' BatchNormalization (moments)",
    FAST_DROPOUT: "Keras' Dropout",
    XLA: "TensorFlow's kernels, not compiled",
}
ENV = "DEEPLAB_DPC_FAST_PATHS"
ENV_VALUES = ("auto", "off")

_LOCK = threading.Lock()
_CACHE = {}  # (path, key) -> (bool, reason)
_TAKEN = {}  # (layer name, path) -> route ("fast" | "portable")
_STATE = threading.local()


class Decision(tuple):
    """(available, reason): truthy when the fast path is available."""

    def __new__(cls, ok, reason):
        return super().__new__(cls, (bool(ok), str(reason)))

    def __bool__(self):
        return self[0]

    @property
    def reason(self):
        return self[1]


def onednn_enabled():
    """Whether this process runs TensorFlow's oneDNN CPU kernels.

    TensorFlow decides at import from the CPU and `TF_ENABLE_ONEDNN_OPTS`;
    read from TensorFlow itself, falling back on the variable.
    """
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "") not in ("", "0", "false")


def device_types():
    """The device types ops of this process may be placed on ("CPU", "GPU")."""
    kinds = ["CPU"]
    if tf.config.list_logical_devices("GPU"):
        kinds.append("GPU")
    return tuple(kinds)


def _env_off():
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in ENV_VALUES:
        raise ValueError(f"{ENV} must be one of {ENV_VALUES}, got {value!r}")
    return value == "off"


@contextlib.contextmanager
def portable(*paths):
    """Within the block (this thread), `paths` (default: all) are not taken."""
    previous = getattr(_STATE, "off", frozenset())
    _STATE.off = previous | frozenset(paths or PATHS)
    try:
        yield
    finally:
        _STATE.off = previous


def check_close(a, b, what):
    """Raises AssertionError unless fast value `a` matches portable `b`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.max(np.abs(b))))
    error = float(np.max(np.abs(a - b))) / scale
    if not np.isfinite(error) or error > 1e-4:
        raise AssertionError(f"{what} differs from the portable one by {error:.3g}")


def _probe_native_dilated_depthwise(key):
    rate = tuple(key) if key else (2, 3)
    rng = np.random.default_rng(0)
    size = 2 * max(rate) + 3
    x = tf.constant(rng.standard_normal([1, size, size, 4]), tf.float32)
    k = tf.constant(rng.standard_normal([3, 3, 4, 1]), tf.float32)
    fast = tf.raw_ops.DepthwiseConv2dNative(
        input=x,
        filter=k,
        strides=[1, 1, 1, 1],
        padding="SAME",
        dilations=[1, *rate, 1],
    )
    slow = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME", dilations=rate)
    check_close(fast, slow, f"DepthwiseConv2dNative at rate {rate}")


def _probe_fused_batch_norm(key):
    dtype = tf.as_dtype(key or "float32")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal([2, 3, 3, 4]), tf.float32)
    gamma, beta = tf.ones([4]), tf.zeros([4])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.compat.v1.nn.fused_batch_norm(
            tf.cast(x, dtype), gamma, beta, epsilon=1e-3, is_training=True
        )[0]
        fast = tf.reduce_sum(tf.cast(y, tf.float32) ** 2 * tf.range(4.0))
    grad = tape.gradient(fast, x)
    if dtype == tf.float32:
        with tf.GradientTape() as tape:
            tape.watch(x)
            mean, var = tf.nn.moments(x, [0, 1, 2])
            z = tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-3)
            slow = tf.reduce_sum(z**2 * tf.range(4.0))
        check_close(y, z, "FusedBatchNormV3")
        check_close(grad, tape.gradient(slow, x), "FusedBatchNormGradV3")
    elif not np.all(np.isfinite(grad.numpy())):
        raise AssertionError(f"FusedBatchNormV3 in {dtype.name}: non-finite")


def _probe_fast_dropout(key):
    del key
    words = tf.random.stateless_uniform(
        [8], [1, 2], minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])
    if int(tf.size(halves)) != 16:
        raise AssertionError("bitcast of uint32 to uint16 gave another size")


def _probe_xla(key):
    del key
    x = tf.constant(np.random.default_rng(0).standard_normal([4, 3]), tf.float32)
    fast = tf.function(lambda a: tf.reduce_logsumexp(a, -1), jit_compile=True)(x)
    check_close(fast, tf.reduce_logsumexp(x, -1), "XLA's logsumexp")


_PROBES = {
    NATIVE_DILATED_DEPTHWISE: _probe_native_dilated_depthwise,
    FUSED_BATCH_NORM: _probe_fused_batch_norm,
    FAST_DROPOUT: _probe_fast_dropout,
    XLA: _probe_xla,
}


def _probe_eagerly(path, key, kind):
    """Runs one probe on device type `kind`; None if it passed, else why not."""
    try:
        with tf.device(f"/{kind}:0"):
            _PROBES[path](key)
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(e)).strip()
        first = text.splitlines()[0] if text else ""
        return f"{kind}: {type(e).__name__}: {first[:160]}"
    return None


def _probe(path, key):
    # In a thread of its own: TensorFlow starts each thread eager, outside
    # any graph being traced, device scope, strategy or gradient tape of the
    # caller (`tf.init_scope` would pause the probe's own tapes).
    failures = []
    for kind in device_types():
        thread = threading.Thread(
            target=lambda k=kind: failures.append(_probe_eagerly(path, key, k)),
            name=f"fast-path-probe-{path}",
        )
        thread.start()
        thread.join()
        if failures[-1] is not None:
            return Decision(False, failures[-1])
    return Decision(True, "the op ran on " + ", ".join(device_types()))


def _describe_key(key):
    return "" if key is None else f" {key}"


def register_probe(path, probe):
    """Adds the probe of a fast path that a layer module owns.

    `probe(key)` runs the fast op and its portable form on small inputs and
    raises unless both run and agree (see `check_close`). The module that
    implements a path registers its probe at import, so this module needs
    none of the layers.
    """
    if path not in PATHS:
        raise ValueError(f"unknown fast path {path!r}; known: {PATHS}")
    _PROBES[path] = probe


def available(path, key=None):
    """Whether fast path `path` (one of `PATHS`) is taken for `key` here.

    Args:
      path: one of `PATHS`.
      key: what the probe depends on: the rate (int, int) of
        `NATIVE_DILATED_DEPTHWISE`, the factors of
        `STRIDED_UPSAMPLING_GRADIENT`, the dtype name of `FUSED_BATCH_NORM`;
        None for the others.

    Returns:
      a `Decision`: truthy when taken, with the reason.
    """
    if path not in PATHS:
        raise ValueError(f"unknown fast path {path!r}; known: {PATHS}")
    if path not in _PROBES:
        raise ValueError(
            f"fast path {path!r} has no probe: import the layer module that "
            "registers it (fast_paths.register_probe) first"
        )
    if path in getattr(_STATE, "off", ()):
        return Decision(False, "turned off in this block (fast_paths.portable)")
    if _env_off():
        return Decision(False, f"turned off by {ENV}=off")
    cache_key = (path, key)
    with _LOCK:
        decision = _CACHE.get(cache_key)
    if decision is not None:
        return decision
    decision = _probe(path, key)
    with _LOCK:
        if cache_key not in _CACHE:
            _CACHE[cache_key] = decision
            logging.info(
                "Fast path %s%s: %s (%s; oneDNN %s).%s",
                path,
                _describe_key(key),
                "taken" if decision else "not available",
                decision.reason,
                "on" if onednn_enabled() else "off",
                "" if decision else f" Using {PORTABLE[path]}.",
            )
    return decision


def layer_key(layer):
    """A layer's unique name for `record`: its Keras path where it has one.

    Sublayers of different blocks share names (each split separable conv's
    "depthwise"); Keras 3's `Layer.path` names the block too.
    """
    return getattr(layer, "path", None) or layer.name


def record(layer_name, path, fast):
    """Notes the route layer `layer_name` took for `path` (the last trace).

    Traces inside `portable()` (exports) are not recorded: they are portable
    by design, and would hide the route that training and eval take.
    """
    if getattr(_STATE, "off", None):
        return
    with _LOCK:
        _TAKEN[(layer_name, path)] = "fast" if fast else "portable"


def taken():
    """{(layer name, path): "fast" | "portable"} of the layers traced so far."""
    with _LOCK:
        return dict(_TAKEN)


def decisions():
    """{(path, key): Decision} of every probe run so far in this process."""
    with _LOCK:
        return dict(_CACHE)


def clear():
    """Forgets probes and recorded routes (tests)."""
    with _LOCK:
        _CACHE.clear()
        _TAKEN.clear()


def describe():
    """Lines naming oneDNN's state, each probe's decision and the routes taken."""
    lines = [
        f"oneDNN: {'on' if onednn_enabled() else 'off'}; devices: "
        + ", ".join(device_types())
        + (f"; {ENV}=off" if _env_off() else "")
    ]
    for (path, key), decision in sorted(decisions().items(), key=str):
        lines.append(
            f"{path}{_describe_key(key)}: "
            + ("taken" if decision else f"portable ({PORTABLE[path]})")
            + f" - {decision.reason}"
        )
    counts = {}
    for (_, path), route in taken().items():
        counts.setdefault(path, {"fast": 0, "portable": 0})[route] += 1
    for path, c in sorted(counts.items()):
        lines.append(
            f"{path}: {c['fast']} layer(s) on the fast path, "
            f"{c['portable']} on the portable one"
        )
    return lines


def jit_compile(requested):
    """The `--jit_compile` in effect: `requested` where XLA runs, else False.

    Asking for XLA where the probe finds it does not compile on every device
    of the process logs a warning with the reason and runs uncompiled.
    """
    if not requested:
        return False
    decision = available(XLA)
    if not decision:
        logging.warning(
            "--jit_compile has no effect: XLA is not available here (%s); "
            "running TensorFlow's kernels uncompiled.",
            decision.reason,
        )
    return bool(decision)
