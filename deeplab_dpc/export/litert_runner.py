"""Runs .tflite files in LiteRT (`ai-edge-litert`), as a mobile runtime does.

* `model_info` reads a file's flatbuffer (LiteRT's own schema): every op of
  every subgraph (builtin names, `CUSTOM:<code>` for custom ops, Flex ops as
  `FLEX:<TF op>`) and every tensor's type, so that a test or the exporter can
  prove "builtin ops only" and "no int64 tensor anywhere".
* `Runner` wraps `ai_edge_litert.interpreter.Interpreter` (XNNPACK, the given
  number of threads) and hides the input and output conventions of the
  export variants: float32 images, quantized int8 inputs (quantized here with
  the file's scale and zero point), raw uint8 pixels (`--include_preprocessing`),
  logits (dequantized when int8) or int32 predictions (`--include_argmax`).
* `latency` times `invoke()` (median of N runs after warm-up);
  `peak_memory` loads and runs a file in a fresh Python process that imports
  only NumPy and LiteRT and reports how far its resident set size peaked
  above the size before loading (load, allocation, one inference).
* `compare_outputs` measures how closely a file reproduces reference logits.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from ai_edge_litert import interpreter as litert
from ai_edge_litert import schema_py_generated as schema
import numpy as np

from deeplab_dpc import processes

_OP_NAMES = {
    value: name
    for name, value in vars(schema.BuiltinOperator).items()
    if not name.startswith("_")
}
_TYPE_NAMES = {
    value: name.lower()
    for name, value in vars(schema.TensorType).items()
    if not name.startswith("_")
}
_FLEX_PREFIX = "Flex"

# Run in a fresh interpreter by `peak_memory`: NumPy and LiteRT only. Linux
# keeps `ru_maxrss` across fork and exec (the child would report its parent's
# peak), so this reads VmRSS/VmHWM of /proc/self/status and resets the peak
# (VmHWM) after the imports by writing 5 to /proc/self/clear_refs.
_PEAK_MEMORY_SCRIPT = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
def status():
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0])
    return values
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = status()
interpreter = Interpreter(model_path=sys.argv[1], num_threads=int(sys.argv[2]))
interpreter.allocate_tensors()
for detail in interpreter.get_input_details():
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
interpreter.invoke()
after = status()
print(json.dumps({"before_kib": before["VmRSS"], "peak_kib": after["VmHWM"],
                  "peak_reset": reset,
                  "tensorflow_loaded": "tensorflow" in sys.modules}))
"""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a .tflite file holds.

    Attributes:
      ops: sorted distinct op names of all subgraphs ("CONV_2D", ...;
        "CUSTOM:<code>" for custom ops, "FLEX:<op>" for Select TF ops).
      tensor_types: dict tensor name -> type name ("float32", "int8", ...),
        over all subgraphs (names prefixed "<subgraph>:" beyond the first).
      input_types, output_types: type names of the main subgraph's inputs
        and outputs.
      size_bytes: int, the file size.
    """

    ops: tuple
    tensor_types: dict
    input_types: tuple
    output_types: tuple
    size_bytes: int

    @property
    def unsupported_ops(self):
        """The ops that are not LiteRT builtins (Flex and custom ops)."""
        return tuple(op for op in self.ops if op.startswith(("FLEX:", "CUSTOM:")))

    def tensors_of_type(self, type_name):
        """Names of the tensors of one type (e.g. "int64")."""
        return sorted(n for n, t in self.tensor_types.items() if t == type_name)


def _op_name(code):
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin != schema.BuiltinOperator.CUSTOM:
        return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")
    custom = (code.CustomCode() or b"").decode("utf-8")
    if custom.startswith(_FLEX_PREFIX):
        return f"FLEX:{custom[len(_FLEX_PREFIX):]}"
    return f"CUSTOM:{custom}"


def model_info(content):
    """Reads the ops and tensor types of a .tflite flatbuffer.

    Args:
      content: bytes of the file, or its path.

    Returns:
      a `ModelInfo`.
    """
    if isinstance(content, (str, os.PathLike)):
        with open(content, "rb") as f:
            content = f.read()
    model = schema.Model.GetRootAs(content, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    ops, types = set(), {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            ops.add(_op_name(codes[subgraph.Operators(i).OpcodeIndex()]))
        prefix = f"{s}:" if s else ""
        for i in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(i)
            name = prefix + (tensor.Name() or b"").decode("utf-8", "replace")
            types[name] = _type_name(tensor)
    main = model.Subgraphs(0)
    return ModelInfo(
        ops=tuple(sorted(ops)),
        tensor_types=types,
        input_types=tuple(
            _type_name(main.Tensors(main.Inputs(i))) for i in range(main.InputsLength())
        ),
        output_types=tuple(
            _type_name(main.Tensors(main.Outputs(i)))
            for i in range(main.OutputsLength())
        ),
        size_bytes=len(content),
    )


def _type_name(tensor):
    return _TYPE_NAMES.get(tensor.Type(), str(tensor.Type()))


def _quantization(detail):
    scale, zero_point = detail["quantization"]
    return float(scale), int(zero_point)


class Runner:
    """One .tflite file in a LiteRT interpreter, batch 1.

    Args:
      model: bytes of the file, or its path.
      num_threads: int >= 1, threads of the interpreter (and XNNPACK).

    Raises:
      ValueError: when the file has not exactly one input and one output
        (LiteRT raises its own errors for a file it cannot load or run).
    """

    def __init__(self, model, num_threads=1):
        if isinstance(model, (bytes, bytearray)):
            kwargs = {"model_content": bytes(model)}
        else:
            kwargs = {"model_path": os.fspath(model)}
        self.interpreter = litert.Interpreter(num_threads=int(num_threads), **kwargs)
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"expected one input and one output, got {len(inputs)} and "
                f"{len(outputs)}"
            )
        self._input, self._output = inputs[0], outputs[0]

    @property
    def input_dtype(self):
        return np.dtype(self._input["dtype"])

    @property
    def input_shape(self):
        """The input's shape signature (-1 for a resizable dimension)."""
        return tuple(int(d) for d in self._input["shape_signature"])

    @property
    def outputs_predictions(self):
        """True when the output is int32 classes (`--include_argmax`)."""
        return np.dtype(self._output["dtype"]) == np.int32

    def resize(self, height, width):
        """Resizes a resizable input (`--allow_resize`) and reallocates.

        Raises:
          ValueError: for a file of a fixed input size, naming it.
        """
        if -1 not in self.input_shape[1:3]:
            raise ValueError(
                f"the file takes {self.input_shape[1]}x{self.input_shape[2]} "
                f"images only, not {int(height)}x{int(width)}: it was exported "
                "without --allow_resize"
            )
        self.interpreter.resize_tensor_input(
            self._input["index"], [1, int(height), int(width), 3], strict=True
        )
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]

    def set_input(self, image):
        """Sets the input to one image, quantized or cast as the file needs.

        Args:
          image: float `[h, w, 3]` or `[1, h, w, 3]` in [0, 255]; another
            size resizes a resizable input.
        """
        image = np.asarray(image, np.float32).reshape([1, *np.shape(image)[-3:]])
        if tuple(image.shape) != tuple(self._input["shape"]):
            self.resize(*image.shape[1:3])
        dtype = self.input_dtype
        if dtype != np.float32:
            scale, zero_point = _quantization(self._input)
            if scale:
                image = image / scale + zero_point
            info = np.iinfo(dtype)
            image = np.clip(np.round(image), info.min, info.max)
        self.interpreter.set_tensor(self._input["index"], image.astype(dtype))

    def run(self, image):
        """The output for one image: logits (dequantized) or int32 classes.

        Args:
          image: float `[h, w, 3]` or `[1, h, w, 3]` in [0, 255].
        """
        self.set_input(image)
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self._output["index"])
        size_in = tuple(int(d) for d in self._input["shape"][1:3])
        if tuple(output.shape[1:3]) != size_in:
            # A file exported for a fixed crop, resized anyway: its head still
            # pools and reshapes for the crop (a 33x33 input gave 65x65).
            raise ValueError(
                f"the file returned a {output.shape[1]}x{output.shape[2]} output "
                f"for a {size_in[0]}x{size_in[1]} input: it was exported for a "
                "fixed crop; export it with --allow_resize, or send images of "
                "its crop size"
            )
        if output.dtype in (np.int8, np.uint8):
            scale, zero_point = _quantization(self._output)
            output = (output.astype(np.float32) - zero_point) * scale
        return output

    def predict(self, images):
        """Predicted classes `[batch, h, w]` (int32) of float images."""
        outputs = [self.run(image) for image in np.asarray(images, np.float32)]
        if self.outputs_predictions:
            return np.concatenate(outputs).astype(np.int32)
        return np.argmax(np.concatenate(outputs), axis=-1).astype(np.int32)


def compare_outputs(runner, images, reference):
    """How closely a file reproduces reference logits on some images.

    Args:
      runner: a `Runner`.
      images: float `[n, h, w, 3]` in [0, 255].
      reference: float logits `[n, h, w, num_classes]` of the same images.

    Returns:
      dict with "agreement" (fraction of pixels whose class equals the
      reference's argmax) and, for a file that outputs logits,
      "relative_max_abs_diff" (max |logits - reference| / max(1, max
      |reference|)), else None.
    """
    outputs = np.concatenate([runner.run(image) for image in images])
    expected = np.argmax(reference, axis=-1)
    if runner.outputs_predictions:
        agreement = float(np.mean(outputs == expected))
        return {"agreement": agreement, "relative_max_abs_diff": None}
    scale = max(1.0, float(np.max(np.abs(reference))))
    return {
        "agreement": float(np.mean(np.argmax(outputs, axis=-1) == expected)),
        "relative_max_abs_diff": float(np.max(np.abs(outputs - reference))) / scale,
    }


def latency(runner, runs=20, warmup=3, image=None):
    """Times `invoke()`; the input is set once, outside the timing.

    Args:
      runner: a `Runner`.
      runs: int >= 1, timed runs.
      warmup: int >= 0, untimed runs first.
      image: float `[h, w, 3]`; default: mid-grey at the input's size.

    Returns:
      dict with "median_ms", "min_ms", "max_ms" and "runs".
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got {runs}, {warmup}")
    if image is None:
        shape = [d if d > 0 else 1 for d in runner.input_shape[1:]]
        image = np.full(shape, 127.0, np.float32)
    runner.set_input(image)
    for _ in range(warmup):
        runner.interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": runs,
    }


def peak_memory(path, num_threads=1, timeout=300):
    """Peak memory of loading and running a file once, in a fresh process.

    The child (Linux) imports only NumPy and LiteRT, resets its peak
    resident set size (VmHWM) to the current one, builds the interpreter,
    allocates its tensors and runs one inference on zeros; the peak minus
    the resident size before loading is the memory the model needed at its
    peak (weights, arena, delegate packing), without the Python runtime.

    Args:
      path: str, a .tflite file.
      num_threads: int >= 1.
      timeout: seconds.

    Returns:
      dict with "peak_rss_delta_mib", "peak_rss_mib" (the child's peak) and
      "peak_reset" (False when the kernel refused the reset: the peak then
      includes the imports').

    Raises:
      RuntimeError: when the child fails, with its error output.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_SCRIPT, os.fspath(path), str(num_threads)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **processes.child_kwargs(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"LiteRT could not run {path}: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["tensorflow_loaded"]:
        raise RuntimeError("the memory probe loaded TensorFlow; its figure is void")
    return {
        "peak_rss_delta_mib": (result["peak_kib"] - result["before_kib"]) / 1024.0,
        "peak_rss_mib": result["peak_kib"] / 1024.0,
        "peak_reset": result["peak_reset"],
    }
