"""The speed-lever flags of the programs: train, eval, vis, search (see `speed`).

`--jit_compile` (XLA), `--mixed_precision=none|bfloat16|float16`,
`--float32_math=float32|bfloat16`, `--fold_batch_norm` (inference only) and
DeepLab's `--intra_op_parallelism_threads` / `--inter_op_parallelism_threads`
(0: TensorFlow's default). Defined once here so one flagfile serves every
program; each calls `apply_threads` and then `apply_float32_math` first in
`main`, before any model runs (the search program applies only these two;
its proxy trials and re-rank take no `--jit_compile` or `--mixed_precision`).
"""

from absl import flags
from absl import logging

# `speed`'s values (`deeplab_dpc.training.speed` imports TensorFlow).
MIXED_PRECISION_VALUES = ("none", "bfloat16", "float16")
FLOAT32_MATH_VALUES = ("float32", "bfloat16")

JIT_COMPILE = flags.DEFINE_boolean(
    "jit_compile",
    False,
    "XLA-compile the training step (train) or the model's inference (eval).",
)
MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision",
    MIXED_PRECISION_VALUES[0],
    list(MIXED_PRECISION_VALUES),
    "Keras mixed precision: none (float32), bfloat16 (CPUs with AMX/AVX-512 "
    "BF16, TPUs) or float16 (GPUs, with loss scaling). Variables, logits and "
    "loss stay float32.",
)
FLOAT32_MATH = flags.DEFINE_enum(
    "float32_math",
    FLOAT32_MATH_VALUES[0],
    list(FLOAT32_MATH_VALUES),
    "How CPU convolutions compute on float32 tensors: float32, or bfloat16 "
    "inputs with float32 accumulation (oneDNN's TF_SET_ONEDNN_FPMATH_MODE=BF16, "
    "on CPUs with AMX or AVX-512 BF16; what TensorFloat-32 is on GPUs). "
    "Tensors, variables and the loss stay float32.",
)
FOLD_BATCH_NORM = flags.DEFINE_boolean(
    "fold_batch_norm",
    True,
    "Inference (eval, vis, export_model) runs the model with its batch norms "
    "folded into the convs: the same predictions up to float rounding, about "
    "0.7x the latency on CPU. --nofold_batch_norm runs the model as trained.",
)
INTRA_OP_PARALLELISM_THREADS = flags.DEFINE_integer(
    "intra_op_parallelism_threads",
    0,
    "Threads of one op (0: TensorFlow's default, all cores).",
    lower_bound=0,
)
INTER_OP_PARALLELISM_THREADS = flags.DEFINE_integer(
    "inter_op_parallelism_threads",
    0,
    "Ops run concurrently (0: TensorFlow's default).",
    lower_bound=0,
)


def apply_threads():
    """Applies the thread flags; call before any TensorFlow op runs.

    Returns:
      (intra_op, inter_op), the pool sizes TensorFlow reports (0: default).

    Raises:
      flags.ValidationError: naming the flag when TensorFlow's pools already
        run with other sizes.
    """
    from deeplab_dpc.training import speed

    try:
        threads = speed.set_threads(
            INTRA_OP_PARALLELISM_THREADS.value, INTER_OP_PARALLELISM_THREADS.value
        )
    except (RuntimeError, ValueError) as e:
        raise flags.ValidationError(str(e)) from e
    logging.info(
        "Threads: intra-op %d, inter-op %d (0: TensorFlow's default).", *threads
    )
    return threads


def apply_float32_math():
    """Applies `--float32_math`; call before any model runs.

    Returns:
      the mode in effect ("float32" or "bfloat16").

    Raises:
      flags.ValidationError: naming the flag when the process already
        computes in another mode (see `speed.set_float32_math`).
    """
    from deeplab_dpc.training import speed

    try:
        in_effect = speed.set_float32_math(FLOAT32_MATH.value)
    except RuntimeError as e:
        raise flags.ValidationError(str(e)) from e
    logging.info("Float32 convolutions compute in %s.", in_effect)
    return in_effect
