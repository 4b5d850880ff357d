"""Speed levers shared by training and inference: precision and threads.

The third lever, XLA, is a `jit_compile` switch of `trainer.TrainOptions`
and `inference.Predictor`.

Mixed precision: `dtype_policy(mixed_precision)` sets Keras's global dtype
policy while a model is built (layers take the policy in force when they are
made): "none" is float32, "bfloat16" Keras's `mixed_bfloat16` (CPUs with
AMX or AVX-512 BF16, TPUs), "float16" `mixed_float16` (GPUs; training then
scales the loss with a `LossScaleOptimizer`). Variables stay float32 under
every policy, so checkpoints load whatever the policy that wrote or reads
them. `deeplab.build_deeplab` keeps its logits layer and their upsampling in
float32, so the logits, the softmax and the loss are float32.

Float32 math: `set_float32_math("bfloat16")` lets oneDNN, TensorFlow's CPU
kernels, compute float32 convolutions with bfloat16 inputs and float32
accumulation (`TF_SET_ONEDNN_FPMATH_MODE=BF16`; AMX tiles on CPUs that have
them): tensors, variables, the loss and the checkpoints stay float32, what
TensorFloat-32 is to float32 on NVIDIA GPUs. Unlike `mixed_bfloat16`, no
activation is stored or computed in bfloat16 outside the convolutions, so
the memory-bound ops (batch norm, ReLU6, depthwise backprop) keep their
float32 kernels. TensorFlow reads the setting once, at its first oneDNN
op: it must be set before any model runs. Only oneDNN reads it: where
oneDNN is off (`fast_paths.onednn_enabled()`; AMD and ARM CPUs by
TensorFlow's default) the probe `float32_math_in_effect` finds float32 and
the lever says it has no effect.

Threads: `set_threads(intra_op, inter_op)` sizes TensorFlow's two thread
pools (DeepLab's `--intra_op_parallelism_threads` and
`--inter_op_parallelism_threads`; 0 keeps TensorFlow's choice, which
honours `TF_NUM_INTRAOP_THREADS` / `TF_NUM_INTEROP_THREADS`, the variables
`search.engine.thread_env` sets for search workers). It must run before the
first op: TensorFlow sizes the pools once.
"""

import contextlib
import functools
import os
import subprocess
import sys

from absl import logging
import tensorflow as tf

from deeplab_dpc import processes
from deeplab_dpc.layers import fast_paths

MIXED_PRECISION_NONE = "none"
# --mixed_precision value -> Keras dtype policy name.
KERAS_POLICIES = {
    MIXED_PRECISION_NONE: "float32",
    "bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
}
MIXED_PRECISION_VALUES = tuple(KERAS_POLICIES)
LOSS_SCALED = ("float16",)

FLOAT32_MATH_EXACT = "float32"
FLOAT32_MATH_BFLOAT16 = "bfloat16"
FLOAT32_MATH_VALUES = (FLOAT32_MATH_EXACT, FLOAT32_MATH_BFLOAT16)
# TensorFlow's oneDNN setting (read once per process): "BF16" or unset.
ONEDNN_FPMATH_ENV = "TF_SET_ONEDNN_FPMATH_MODE"


def check_mixed_precision(mixed_precision):
    """Returns the Keras policy name of a `--mixed_precision` value.

    Raises:
      ValueError: naming the value and the accepted ones.
    """
    if mixed_precision not in KERAS_POLICIES:
        raise ValueError(
            f"mixed_precision must be one of {MIXED_PRECISION_VALUES}, got "
            f"{mixed_precision!r}"
        )
    return KERAS_POLICIES[mixed_precision]


def mixed_precision_of(model):
    """The `--mixed_precision` value a Keras model was built under.

    Raises:
      ValueError: for a policy this module does not set (e.g. "bfloat16",
        where variables are not float32).
    """
    name = model.dtype_policy.name
    for value, policy in KERAS_POLICIES.items():
        if policy == name:
            return value
    raise ValueError(
        f"model {model.name!r} has dtype policy {name!r}, none of "
        f"{sorted(KERAS_POLICIES.values())}"
    )


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """Builds models under the dtype policy of `mixed_precision` in the block.

    The previous global policy is restored on exit, so models built later
    (and other tests) are unaffected.

    Args:
      mixed_precision: "none", "bfloat16" or "float16".

    Yields:
      str, the Keras policy name in force.

    Raises:
      ValueError: for another value.
    """
    name = check_mixed_precision(mixed_precision)
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def cpu_computes_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU has bfloat16 arithmetic (AVX-512 BF16 or AMX BF16).

    Read from Linux's `cpuinfo` flags; False where the file is missing.
    """
    try:
        with open(cpuinfo) as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


# `float32_math_in_effect` itself, in a fresh interpreter.
_FRESH_PROBE = (
    "from deeplab_dpc.training import speed; print(speed.float32_math_in_effect())"
)


@functools.lru_cache(maxsize=None)
def fresh_process_computes_bfloat16():
    """Whether oneDNN's BF16 math takes effect in a fresh process here.

    Runs `float32_math_in_effect`'s probe in a new interpreter with
    `TF_SET_ONEDNN_FPMATH_MODE=BF16` set before TensorFlow starts (and this
    process's `TF_ENABLE_ONEDNN_OPTS`). The CPU's flags do not tell: an AMD
    EPYC with AVX-512 BF16 was seen to compute float32 all the same.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env[ONEDNN_FPMATH_ENV] = "BF16"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _FRESH_PROBE],
            **processes.child_kwargs(env),
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    lines = proc.stdout.split()
    return proc.returncode == 0 and lines[-1:] == [FLOAT32_MATH_BFLOAT16]


def bfloat16_math_possible(cpuinfo="/proc/cpuinfo"):
    """Whether `--float32_math=bfloat16` can take effect in this process.

    oneDNN must be on (`fast_paths.onednn_enabled()`: only oneDNN reads
    `TF_SET_ONEDNN_FPMATH_MODE`), the CPU must have bfloat16 arithmetic
    (`cpu_computes_bfloat16`), and oneDNN must use it: a fresh process is
    asked (`fresh_process_computes_bfloat16`).
    """
    return (
        fast_paths.onednn_enabled()
        and cpu_computes_bfloat16(cpuinfo)
        and fresh_process_computes_bfloat16()
    )


def float32_math_in_effect():
    """How this process computes float32 CPU convolutions: "float32" or "bfloat16".

    Runs a probe: a 1x1 convolution of 16 channels of `1 + 2**-10` (exact in
    float32, 1 in bfloat16) with unit weights is 16.015625 computed in
    float32 and 16 with bfloat16 inputs.
    """
    with tf.device("/CPU:0"):
        x = tf.fill([1, 2, 2, 16], 1.0 + 2.0**-10)
        y = tf.nn.conv2d(x, tf.ones([1, 1, 16, 1]), strides=1, padding="VALID")
    exact = float(y[0, 0, 0, 0]) == 16.0 * (1.0 + 2.0**-10)
    return FLOAT32_MATH_EXACT if exact else FLOAT32_MATH_BFLOAT16


def set_float32_math(float32_math):
    """Sets how oneDNN computes float32 convolutions; before any model runs.

    Args:
      float32_math: "float32" (exact) or "bfloat16" (bfloat16 inputs,
        float32 accumulation).

    Returns:
      the mode in effect (`float32_math_in_effect`): "float32" also after
      asking for "bfloat16" on a CPU oneDNN computes no bfloat16 on, which
      is logged.

    Raises:
      ValueError: for another value, naming the accepted ones.
      RuntimeError: when the process computes in another mode than asked
        because TensorFlow read `TF_SET_ONEDNN_FPMATH_MODE` before (at its
        first oneDNN op), naming the variable.
    """
    if float32_math not in FLOAT32_MATH_VALUES:
        raise ValueError(
            f"float32_math must be one of {FLOAT32_MATH_VALUES}, got "
            f"{float32_math!r}"
        )
    if float32_math == FLOAT32_MATH_BFLOAT16:
        os.environ[ONEDNN_FPMATH_ENV] = "BF16"
    else:
        os.environ.pop(ONEDNN_FPMATH_ENV, None)
    in_effect = float32_math_in_effect()
    if in_effect == float32_math:
        return in_effect
    if float32_math == FLOAT32_MATH_BFLOAT16:
        if not fast_paths.onednn_enabled():
            reason = (
                "oneDNN is off in this process (TensorFlow leaves it off on "
                "this CPU, or TF_ENABLE_ONEDNN_OPTS=0), and only oneDNN reads "
                f"{ONEDNN_FPMATH_ENV}"
            )
        elif not cpu_computes_bfloat16():
            reason = "this CPU has no AVX-512 BF16 or AMX BF16"
        elif not fresh_process_computes_bfloat16():
            reason = (
                "oneDNN computes no bfloat16 on this CPU, though it lists "
                "AVX-512 BF16 or AMX BF16 (a fresh process with "
                f"{ONEDNN_FPMATH_ENV}=BF16 computed float32)"
            )
        else:
            reason = f"TensorFlow ran a oneDNN op before {ONEDNN_FPMATH_ENV} was set"
        logging.warning(
            "--float32_math=bfloat16 has no effect: float32 convolutions "
            "stay exact (%s).",
            reason,
        )
        return in_effect
    raise RuntimeError(
        f"--float32_math={float32_math}: this process computes float32 "
        f"convolutions with bfloat16 inputs because {ONEDNN_FPMATH_ENV}=BF16 "
        "was set when TensorFlow ran its first oneDNN op; unset it in the "
        "environment"
    )


def set_threads(intra_op=0, inter_op=0):
    """Sizes TensorFlow's intra-op and inter-op thread pools.

    Args:
      intra_op: int >= 0, threads one op (a convolution) uses; 0 keeps
        TensorFlow's default (all cores, or `TF_NUM_INTRAOP_THREADS`).
      inter_op: int >= 0, ops run concurrently; 0 keeps the default.

    Returns:
      (intra_op, inter_op) as TensorFlow now reports them (0: its default).

    Raises:
      ValueError: for a negative count, naming the flag.
      RuntimeError: when TensorFlow already runs with other pool sizes (an
        op ran before), naming the flag.
    """
    settings = (
        (
            "intra_op_parallelism_threads",
            intra_op,
            tf.config.threading.get_intra_op_parallelism_threads,
            tf.config.threading.set_intra_op_parallelism_threads,
        ),
        (
            "inter_op_parallelism_threads",
            inter_op,
            tf.config.threading.get_inter_op_parallelism_threads,
            tf.config.threading.set_inter_op_parallelism_threads,
        ),
    )
    for flag, value, get, set_ in settings:
        if value < 0:
            raise ValueError(
                f"--{flag} must be >= 0 (0: TensorFlow's default), got {value}"
            )
        if value == 0 or get() == value:
            continue
        try:
            set_(value)
        except RuntimeError as e:
            raise RuntimeError(
                f"--{flag}={value}: TensorFlow has already started its thread "
                f"pools ({get()} threads, 0 meaning its default); set threads "
                "before any TensorFlow op runs"
            ) from e
    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
