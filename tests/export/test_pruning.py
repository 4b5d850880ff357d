"""Magnitude-pruned TFLite files (pruning, under tf_keras)."""

import contextlib
import io
import os

from ai_edge_litert import schema_py_generated as schema
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.export import keras_paths
from deeplab_dpc.export import litert_runner
from tests.export import tflite_testing as tt

TARGET = 0.5
# The export's standard error (its progress lines).
_STDERR = {}


@pytest.fixture(name="pruned", scope="module")
def _pruned(tmp_path_factory):
    """The pruned variant made once (a tf_keras subprocess fine-tunes)."""
    output_dir = str(tmp_path_factory.mktemp("pruned"))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        report = tt.fine_tuned_export(
            output_dir,
            "pruned",
            tt.checks(dataset_dir=None),
            target_sparsity=TARGET,
            pruning_steps=2,
        )
    _STDERR["pruned"] = err.getvalue()
    return os.path.join(output_dir, "pruned.tflite"), report["variants"]["pruned"]


def _conv_filter_sparsity(path):
    """Zeros / weights of the CONV_2D filters stored in a .tflite file."""
    with open(path, "rb") as f:
        content = f.read()
    model = schema.Model.GetRootAs(content, 0)
    subgraph = model.Subgraphs(0)
    zeros = total = 0
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != (
            schema.BuiltinOperator.CONV_2D
        ):
            continue
        tensor = subgraph.Tensors(op.Inputs(1))
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        weights = np.frombuffer(data.tobytes(), np.float32)
        zeros += int(np.sum(weights == 0))
        total += weights.size
    return zeros / total


def test_pruned_kernels_reach_the_target_sparsity(pruned):
    path, entry = pruned
    assert entry["sparsity"] >= TARGET - 0.01
    kernels = [  # Every Conv2D kernel, nested ones too; depthwise ones are kept.
        kernel
        for layer in tt.model().layers
        for kernel in keras_paths.conv_kernels(layer)
        if not isinstance(kernel[1], tf.keras.layers.DepthwiseConv2D)
    ]
    assert entry["num_kernels"] == len(kernels) > 30
    # In the file itself: batch norm is folded into the filters, zeros stay.
    assert _conv_filter_sparsity(path) >= TARGET - 0.02


def test_progress_of_fine_tuning(pruned):
    del pruned  # Made for its standard error.
    lines = _STDERR["pruned"].splitlines()
    steps = [x for x in lines if x.startswith("pruned fine-tuning step")]
    assert [x.split(":")[0] for x in steps] == [
        "pruned fine-tuning step 1/2",
        "pruned fine-tuning step 2/2",
    ]
    assert ", ETA " in steps[0] and steps[1].endswith(", done")


def test_compressed_size_beside_the_raw_size(pruned):
    path, entry = pruned
    assert entry["size_bytes"] == os.path.getsize(path)
    assert entry["gzip_bytes"] < 0.8 * entry["size_bytes"]


def test_pruned_file_reproduces_the_pruned_model(pruned):
    path, entry = pruned
    assert entry["passed"]
    assert entry["fine_tuned_parity"]["relative_max_abs_diff"] <= 1e-3
    assert len(entry["losses"]) == 2
    info = litert_runner.model_info(path)
    assert info.unsupported_ops == () and info.input_types == ("float32",)
