"""Keras layers and weights addressed by layer path, alike in both Keras versions.

A path joins layer names with "/" from a model's top-level layer down to a
nested one, e.g. "dense_prediction_cell/branch0/depthwise". Keras 3 and
tf_keras name variables and order weights differently, but they agree on
layer paths and on the order of an innermost layer's own weights; so
weights keyed `"<layer path>:<index>"` move between the two
(`export/legacy_keras.py` runs TFMOT under tf_keras), and the QAT and
pruning wrappers find the convs they quantize or prune by path.
"""

import numpy as np
import tensorflow as tf


def sublayers(layer, prefix=None):
    """(path, layer) of every nested layer, depth first, each once.

    Paths join layer names with "/" from `layer` (whose own name starts them
    unless `prefix` is given), e.g. "dense_prediction_cell/branch0/depthwise".
    """
    prefix = layer.name if prefix is None else prefix
    seen = set()
    for sub in layer._flatten_layers(  # pylint: disable=protected-access
        include_self=False, recursive=False
    ):
        if id(sub) in seen:
            continue
        seen.add(id(sub))
        path = f"{prefix}/{sub.name}" if prefix else sub.name
        yield path, sub
        yield from sublayers(sub, path)


def conv_kernels(layer):
    """(path, conv layer, kernel attribute) of the convs in a layer.

    The layer itself comes first when it is a Conv2D or DepthwiseConv2D; its
    nested convs follow (DPC, ASPP, decoder).
    """
    found = []
    for path, sub in [(layer.name, layer), *sublayers(layer)]:
        if isinstance(sub, tf.keras.layers.DepthwiseConv2D):
            # tf_keras names it depthwise_kernel, Keras 3 kernel.
            found.append((path, sub, _depthwise_kernel_attribute(sub)))
        elif isinstance(sub, tf.keras.layers.Conv2D):
            found.append((path, sub, "kernel"))
    return found


def _depthwise_kernel_attribute(layer):
    return "depthwise_kernel" if hasattr(layer, "depthwise_kernel") else "kernel"


def _all_layers(model):
    """(path, layer) of the model's layers and all their nested layers."""
    for layer in model.layers:
        yield layer.name, layer
        yield from sublayers(layer)


def layer_weights(model):
    """The weights of a model keyed `"<layer path>:<index>"`.

    The index counts the weights of the innermost layer that owns them
    (e.g. a BatchNormalization's gamma, beta, moving mean and variance), an
    order both Keras versions share.

    Raises:
      ValueError: when a composite layer owns weights itself (they would be
        left out).
    """
    weights = {}
    for path, layer in _all_layers(model):
        if any(True for _ in sublayers(layer)):
            continue
        for index, value in enumerate(layer.get_weights()):
            weights[f"{path}:{index}"] = value
    if len(weights) != len(model.weights):
        raise ValueError(
            f"{len(model.weights) - len(weights)} weights of {model.name} belong "
            "to layers that also hold other layers; they cannot be keyed by path"
        )
    return weights


def save_weights(model, path):
    """Writes `layer_weights(model)` to an .npz file."""
    np.savez(path, **layer_weights(model))


def load_weights(model, path):
    """Sets a model's weights from `save_weights`' file, by layer path.

    Raises:
      ValueError: naming the weights the file lacks, those it has that the
        model does not, or a shape mismatch.
    """
    with np.load(path) as saved:
        values = {key: saved[key] for key in saved.files}
    wanted = layer_weights(model)
    missing = sorted(set(wanted) - set(values))
    extra = sorted(set(values) - set(wanted))
    if missing or extra:
        raise ValueError(
            f"{path} does not fit the model: weights it lacks: {missing or 'none'}; "
            f"weights the model lacks: {extra or 'none'}"
        )
    for name, layer in _all_layers(model):
        current = layer.get_weights()
        if not current or any(True for _ in sublayers(layer)):
            continue
        new = [values[f"{name}:{i}"] for i in range(len(current))]
        for i, (old, value) in enumerate(zip(current, new)):
            if old.shape != value.shape:
                raise ValueError(
                    f"{path}: weight {name}:{i} has shape {value.shape}, the "
                    f"model's has {old.shape}"
                )
        layer.set_weights(new)
