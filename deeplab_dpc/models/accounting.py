"""Exact multiply-accumulate (MAdds) and parameter counts per module.

One multiply-accumulate of a convolution or dense layer counts 1; batch
norm, activations, pooling and resizing count 0. Counts are per image at the
model's (fixed) input size. Each layer of the model is traced on its own
input shape and the Conv2D, DepthwiseConv2dNative, MatMul and BatchMatMul
ops of its graph are counted from their static shapes; an atrous depthwise
conv, which TensorFlow runs between SpaceToBatchND and BatchToSpaceND,
counts at the size of its dense output, not its padded batch. Layers are
traced under `dilated_depthwise.all_taps()`: a 3x3 atrous kernel counts its 9
taps even where a rate reaches past a small feature map and the layer skips
the taps that would read only padding.
"""

import tensorflow as tf

from deeplab_dpc.layers import dilated_depthwise
from deeplab_dpc.models import deeplab

MODULE_ORDER = ("backbone", "head", "head_branches", "decoder", "logits", "total")
_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative")
_MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def graph_madds(graph):
    """Multiply-accumulates of the conv and matmul ops of a graph.

    Args:
      graph: a `tf.Graph` with static shapes.

    Returns:
      int, the MAdds.

    Raises:
      ValueError: if a counted op has an unknown shape.
    """
    total = 0
    for op in graph.get_operations():
        if op.type in _CONV_OPS:
            out = op.outputs[0]
            consumers = out.consumers()
            if len(consumers) == 1 and consumers[0].type == "BatchToSpaceND":
                out = consumers[0].outputs[0]
            kh, kw, cin, _ = op.inputs[1].shape
            per_output = kh * kw * (cin if op.type == "Conv2D" else 1)
            total += _num_elements(out, op) * per_output
        elif op.type in _MATMUL_OPS:
            a = op.inputs[0].shape
            transpose_a = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
            inner = a[-2] if transpose_a else a[-1]
            total += _num_elements(op.outputs[0], op) * inner
    return int(total)


def _num_elements(tensor, op):
    if not tensor.shape.is_fully_defined():
        raise ValueError(
            f"op {op.name} has an unknown output shape "
            f"{tensor.shape}; build the model at a fixed size"
        )
    return tensor.shape.num_elements()


def _specs(tensors):
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec([1, *t.shape[1:]], t.dtype), tensors
    )


def layer_madds(layer, input_specs):
    """MAdds of one call of `layer` on inputs of the given specs."""
    fn = tf.function(lambda x: layer(x, training=False))
    with dilated_depthwise.all_taps():
        graph = fn.get_concrete_function(input_specs).graph
    return graph_madds(graph)


def _has_kernel(layer):
    return any(len(w.shape) >= 2 for w in layer.weights)


def count(model):
    """Params and MAdds of a DeepLab model per module.

    Args:
      model: a model from `deeplab.build_deeplab`.

    Returns:
      dict module -> {"params": int, "madds": int} for "backbone", "head",
      "head_branches" (the head's branch ops, without its concat projection,
      as the DPC paper's tables count), "decoder" (only when the model has
      one), "logits" and "total". Params are all weights (Keras
      `count_params`, batch-norm statistics included).
    """
    result = {
        name: {"params": 0, "madds": 0} for name in MODULE_ORDER if name != "decoder"
    }
    for layer in model.layers:
        module = deeplab.module_of(layer.name)
        if module == "decoder":
            result.setdefault("decoder", {"params": 0, "madds": 0})
        entry = result[module]
        entry["params"] += layer.count_params()
        if _has_kernel(layer):
            entry["madds"] += layer_madds(layer, _specs(layer.input))
        if module == "head" and getattr(layer, "concat_projection", None) is None:
            result["head_branches"] = dict(entry)
        elif module == "head":
            projection = layer.concat_projection
            h, w = layer.output.shape[1:3]
            spec = tf.TensorSpec([1, h, w, projection.conv.kernel.shape[2]])
            result["head_branches"] = {
                "params": layer.count_params() - projection.count_params(),
                "madds": entry["madds"] - layer_madds(projection, spec),
            }
    for name in ("params", "madds"):
        result["total"][name] = sum(
            v[name] for k, v in result.items() if k not in ("total", "head_branches")
        )
    return {name: result[name] for name in MODULE_ORDER if name in result}


def profiler_flops(model):
    """FLOPs of the model's frozen inference graph by TensorFlow's profiler.

    An independent check of `count`: the profiler counts 2 FLOPs per
    multiply-accumulate of convs and matmuls, plus the few FLOPs of bias adds,
    residual adds and pooling.

    Args:
      model: a Keras model with a fixed input shape.

    Returns:
      int, the profiler's `float_ops` for one image.
    """
    from tensorflow.python.framework import (
        convert_to_constants,
    )  # pylint: disable=g-direct-tensorflow-import

    fn = tf.function(lambda x: model(x, training=False))
    with dilated_depthwise.all_taps():
        concrete = fn.get_concrete_function(_specs(model.input))
    frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        stats = tf.compat.v1.profiler.profile(
            graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
        )
    return int(stats.total_float_ops)


def format_table(rows, columns):
    """A plain-text table.

    Args:
      rows: list of dicts.
      columns: list of (key, title) pairs; ints are printed with thousands
        separators.

    Returns:
      str, the table with a header line and a rule.
    """

    def cell(value):
        return f"{value:,}" if isinstance(value, int) else str(value)

    cells = [[title for _, title in columns]]
    cells += [[cell(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        )
        for r in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
