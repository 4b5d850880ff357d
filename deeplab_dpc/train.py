"""Trains DeepLab (with a DPC or ASPP head), as DeepLab's train.py.

  python -m deeplab_dpc.train --train_logdir=DIR --dataset=synthetic \
      --dataset_dir=DATA [--train_crop_size=513,513] [--train_batch_size=8] \
      [--distribution_strategy=default|mirrored|multi_worker_mirrored]

Model and data set flags come from `deeplab_dpc.flags.common_flags`. The program
writes them to `<train_logdir>/train.flags` (the flagfile of every later
program: eval, vis, predict, export...) and its other flags to
`<train_logdir>/train_run.flags` (the run's record), then runs
`trainer.run`; a restarted run resumes from the latest checkpoint. A run
whose model flags differ from the `train.flags` of a logdir that holds
checkpoints stops before writing anything, naming the flags.
`--tf_initial_checkpoint` (with `--initialize_last_layer`,
`--last_layers_contain_logits_only`) initialises a new run's model weights
from another run's checkpoint, as DeepLab's fine-tuning flags.
`multi_worker_mirrored` reads the cluster from `TF_CONFIG`. A run stopped by
SIGTERM saves a checkpoint and exits with status `trainer.EXIT_TERMINATED`
(143, 128 + SIGTERM), not 0, so that schedulers restart it. The speed levers
`--jit_compile`, `--mixed_precision`, `--float32_math` and the thread flags
come from `deeplab_dpc.flags.speed_flags`.
"""

import os

from absl import app
from absl import flags
from absl import logging

from deeplab_dpc.flags import cli
from deeplab_dpc.flags import recorded
from deeplab_dpc.flags import speed_flags
from deeplab_dpc.flags import train_flags


def make_strategy(name, num_gpus):
    """The `tf.distribute.Strategy` named by --distribution_strategy."""
    import tensorflow as tf

    if name == "mirrored":
        found = len(tf.config.list_physical_devices("GPU"))
        if num_gpus > found:
            raise app.UsageError(
                f"--num_gpus={num_gpus} but this machine has {found} GPU(s) "
                "visible to TensorFlow; pass --num_gpus=0 (all devices) or fewer"
            )
        devices = [f"/gpu:{i}" for i in range(num_gpus)] if num_gpus else None
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        # TFConfigClusterResolver reads the cluster from TF_CONFIG.
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def check_resume(train_logdir):
    """Refuses to resume a logdir's checkpoints with other model flags.

    Raises:
      flags.ValidationError: naming the differing flags and the way out.
    """
    if not os.path.isfile(os.path.join(train_logdir, "checkpoint")):
        return
    differing = recorded.differing_model_flags(train_logdir)
    if differing:
        raise flags.ValidationError(recorded.resume_error(train_logdir, differing))


def write_flags(train_logdir):
    """Writes `train.flags` (model and data set flags) and `train_run.flags`
    (the others) into `train_logdir`, atomically.

    Returns:
      the path of `train.flags`.
    """
    from deeplab_dpc import file_io

    path = os.path.join(train_logdir, recorded.SHARED_FLAGS_FILE)
    file_io.write_text(path, recorded.shared_flags_into_string())
    file_io.write_text(
        os.path.join(train_logdir, recorded.RUN_FLAGS_FILE),
        recorded.program_flags_into_string(),
    )
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    check_resume(train_flags.TRAIN_LOGDIR.value)
    from deeplab_dpc.training import trainer

    try:
        speed_flags.apply_threads()
    except flags.ValidationError as e:
        raise app.UsageError(str(e)) from e
    strategy = make_strategy(
        train_flags.DISTRIBUTION_STRATEGY.value, train_flags.NUM_GPUS.value
    )
    try:
        # After the strategy: MultiWorkerMirroredStrategy must come before
        # the first op, and this runs one (a probe convolution).
        speed_flags.apply_float32_math()
        model_options, train_options = train_flags.options_from_flags(
            strategy.num_replicas_in_sync
        )
    except flags.ValidationError as e:
        raise app.UsageError(str(e)) from e
    if trainer.is_chief(strategy):
        write_flags(train_flags.TRAIN_LOGDIR.value)
    results = trainer.run(
        model_options, train_options, train_flags.TRAIN_LOGDIR.value, strategy
    )
    logging.info(
        "Stopped at step %d (%s); last checkpoint %s.",
        results["step"],
        "SIGTERM" if results["terminated"] else "done",
        results["checkpoint"],
    )
    if results["terminated"]:
        # Not 0: a scheduler must tell a stopped run (to restart) from a
        # finished one.
        raise SystemExit(trainer.EXIT_TERMINATED)


def run():
    cli.run(main, __name__, required=["train_logdir"])


if __name__ == "__main__":
    run()
