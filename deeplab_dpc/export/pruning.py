"""Magnitude pruning of a DeepLab model with tensorflow-model-optimization.

Runs under tf_keras only (`TF_USE_LEGACY_KERAS=1`, in the subprocess of
`legacy_keras`): TFMOT 0.8 does not accept Keras 3 models.

Every Conv2D kernel is pruned: those of the top-level layers (TFMOT's
registry knows them) and those inside the project's composite layers (DPC,
ASPP, decoder), which TFMOT cannot see into: those layers get a
`get_prunable_weights` method listing their nested kernels, which
`prune_low_magnitude` accepts. As in TFMOT's registry, depthwise kernels
(few weights, sensitive), batch-norm parameters and biases are not pruned.
The sparsity ramps polynomially from 0 to the target over the fine-tuning
steps (`schedule`), and `strip` removes the wrappers, leaving the same
architecture with zeros in its kernels.
"""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from deeplab_dpc.export import keras_paths


def schedule(target_sparsity, steps):
    """The polynomial schedule from 0 to `target_sparsity` over `steps`.

    The masks are updated every `frequency = max(1, steps // 10)` steps, the
    last time at the last multiple of it, so the target is reached within
    the fine-tuning.

    Raises:
      ValueError: for a target outside (0, 1) or steps < 1.
    """
    if not 0.0 < target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in (0, 1), got {target_sparsity}")
    if steps < 1:
        raise ValueError(f"pruning_steps must be >= 1, got {steps}")
    frequency = max(1, steps // 10)
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=float(target_sparsity),
        begin_step=0,
        end_step=(steps // frequency) * frequency,
        frequency=frequency,
    )


def pruned_kernels(layer):
    """(path, layer, attribute) of the kernels pruning applies to in a layer."""
    return [
        kernel
        for kernel in keras_paths.conv_kernels(layer)
        if not isinstance(kernel[1], tf.keras.layers.DepthwiseConv2D)
    ]


def prunable(model, pruning_schedule):
    """A copy of `model` whose convolution kernels get pruning wrappers.

    The copy shares its layers (and weights) with `model`.

    Args:
      model: a tf_keras DeepLab model.
      pruning_schedule: a TFMOT `PruningSchedule`.

    Returns:
      the functional tf_keras model with `PruneLowMagnitude` layers.
    """

    def wrap(layer):
        kernels = pruned_kernels(layer)
        if not kernels:
            return layer
        if kernels[0][1] is not layer:  # Kernels TFMOT's registry cannot see.
            weights = [getattr(sub, attribute) for _, sub, attribute in kernels]
            layer.get_prunable_weights = lambda: weights
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer, pruning_schedule=pruning_schedule
        )

    return tf.keras.models.clone_model(model, clone_function=wrap)


class StepHooks:
    """The pruning step bookkeeping `UpdatePruningStep` does in `fit`.

    Args:
      model: from `prunable`.
    """

    def __init__(self, model):
        self.callback = tfmot.sparsity.keras.UpdatePruningStep()
        self.callback.set_model(model)

    def begin(self):
        """Before the first step."""
        self.callback.on_train_begin()

    def end(self):
        """After the last step: applies the masks to the weights."""
        self.callback.on_epoch_end(-1)


def strip(model):
    """The model without its pruning wrappers (TFMOT's `strip_pruning`)."""
    return tfmot.sparsity.keras.strip_pruning(model)


def sparsity(model):
    """The fraction of zeros in the pruned kernels of a model.

    Args:
      model: a (stripped) tf_keras DeepLab model.

    Returns:
      dict with "sparsity" (zeros / elements over all kernels),
      "num_kernels", "num_weights" and "num_zeros".
    """
    zeros, total, count = 0, 0, 0
    for layer in model.layers:
        for _, sub, attribute in pruned_kernels(layer):
            value = getattr(sub, attribute).numpy()
            zeros += int(np.sum(value == 0))
            total += value.size
            count += 1
    return {
        "sparsity": zeros / max(total, 1),
        "num_kernels": count,
        "num_weights": total,
        "num_zeros": zeros,
    }
