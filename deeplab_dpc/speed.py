"""Speed levers shared by training and inference: mixed precision and threads.

The third lever, XLA, is a `jit_compile` switch of `train_lib.TrainOptions`
and `inference.Predictor`.

Mixed precision: `dtype_policy(mixed_precision)` sets Keras's global dtype
policy while a model is built (layers take the policy in force when they are
made): "none" is float32, "bfloat16" Keras's `mixed_bfloat16` (CPUs with
AMX or AVX-512 BF16, TPUs), "float16" `mixed_float16` (GPUs; training then
scales the loss with a `LossScaleOptimizer`). Variables stay float32 under
every policy, so checkpoints load whatever the policy that wrote or reads
them. `deeplab.build_deeplab` keeps its logits layer and their upsampling in
float32, so the logits, the softmax and the loss are float32.

Threads: `set_threads(intra_op, inter_op)` sizes TensorFlow's two thread
pools (DeepLab's `--intra_op_parallelism_threads` and
`--inter_op_parallelism_threads`; 0 keeps TensorFlow's choice, which
honours `TF_NUM_INTRAOP_THREADS` / `TF_NUM_INTEROP_THREADS`, the variables
`search.engine.thread_env` sets for search workers). It must run before the
first op: TensorFlow sizes the pools once.
"""

import contextlib

import tensorflow as tf

MIXED_PRECISION_NONE = "none"
# --mixed_precision value -> Keras dtype policy name.
KERAS_POLICIES = {
    MIXED_PRECISION_NONE: "float32",
    "bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
}
MIXED_PRECISION_VALUES = tuple(KERAS_POLICIES)
LOSS_SCALED = ("float16",)


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
