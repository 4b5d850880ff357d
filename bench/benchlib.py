"""Helpers shared by the benchmark scripts of bench/ (standard library only).

Conventions (every bench script follows them):

* figures are compared as ratios measured in the same run, alternating the
  compared things (A B A B ...) with `alternate`, and summarised by `median`
  after a warm-up that is not timed;
* peak memory is the peak resident set size (MB) of the measured process:
  `peak_rss_mb` for this process, `child_peak_rss_mb` for a running child;
* `write_result` writes one JSON object per script atomically:
  {"benchmark", "command", "machine": {"cpu", "cores"}, "figures": [...]},
  each figure made by `figure` (name, value, unit, detail);
* `serve` is the line protocol of long-lived benchmark workers (one JSON
  object per line on stdin, one JSON reply per line on stdout), so that a
  driver alternates rounds between models without rebuilding them; a model
  worker's handlers subclass `ModelWorker`, which answers the commands both
  model workers answer alike. Model Garden's worker runs them under another
  virtual environment, which is why this module imports nothing outside the
  standard library at load time (`op_type_profile` and `ModelWorker` are
  handed the `tensorflow` module by their caller; `write_text` imports
  `deeplab_dpc.file_io` when called, in the project's venv);
* `report` prints a script's figures and writes its result file.
"""

import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

_KIB_PER_MB = 1024.0


def median(values):
    """The median of a non-empty sequence of numbers.

    Raises:
      ValueError: for an empty sequence.
    """
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def paired_ratios(numerator_rounds, denominator_rounds):
    """Per-round ratios of two alternated things' median timings.

    Rounds alternate A and B close in time, so a round's ratio cancels the
    machine's slow drift; their spread says how far one run's ratio of
    medians can be trusted.

    Args:
      numerator_rounds, denominator_rounds: equal-length sequences, one
        non-empty sequence of timings per round.

    Returns:
      list of floats: median(numerator round) / median(denominator round).

    Raises:
      ValueError: for different round counts or no rounds.
    """
    numerator_rounds = list(numerator_rounds)
    denominator_rounds = list(denominator_rounds)
    if not numerator_rounds or len(numerator_rounds) != len(denominator_rounds):
        raise ValueError(
            f"need the same number (>= 1) of rounds, got {len(numerator_rounds)} "
            f"and {len(denominator_rounds)}"
        )
    return [median(n) / median(d) for n, d in zip(numerator_rounds, denominator_rounds)]


def describe_ratios(ratios):
    """A figure's words for the spread of its per-round ratios.

    Raises:
      ValueError: for no ratios.
    """
    ratios = sorted(ratios)
    if not ratios:
        raise ValueError("no per-round ratios to describe")
    return (
        f"per-round ratios (each round's medians, the compared things "
        f"alternating): min {ratios[0]:.3f}, median {median(ratios):.3f}, "
        f"max {ratios[-1]:.3f} over {len(ratios)} rounds"
    )


def alternate(callables, rounds):
    """Calls each callable once per round, in turn: A B C A B C ...

    Args:
      callables: a dict name -> zero-argument callable, or a sequence of them.
      rounds: int >= 1.

    Returns:
      the return values of every call: a dict name -> list (one per round)
      for a dict, else a list of such lists in the callables' order.

    Raises:
      ValueError: for rounds < 1 or no callables.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    named = isinstance(callables, dict)
    items = list(callables.items()) if named else list(enumerate(callables))
    if not items:
        raise ValueError("nothing to alternate")
    results = {key: [] for key, _ in items}
    for _ in range(rounds):
        for key, fn in items:
            results[key].append(fn())
    return results if named else [results[key] for key, _ in items]


def time_calls(fn, repeats, warmup=1):
    """Calls `fn` `warmup` times untimed, then `repeats` times timed.

    Returns:
      (seconds of each timed call, the last call's return value).
    """
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def _status_kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name == key:
                    return int(value.split()[0])
    except OSError:
        return None
    return None


def peak_rss_mb():
    """Peak resident set size of this process, in MB.

    VmHWM of /proc/self/status (Linux) counts from this program's exec. The
    fallback, `ru_maxrss`, can include the parent's size at the fork, as
    Linux carries it across exec.
    """
    kib = _status_kib("/proc/self/status", "VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / _KIB_PER_MB


def current_rss_mb():
    """Current resident set size (VmRSS) of this process, in MB (0 if unknown)."""
    return (_status_kib("/proc/self/status", "VmRSS") or 0) / _KIB_PER_MB


def reset_peak_rss():
    """Resets this process's peak RSS (VmHWM) to its current RSS (Linux).

    Returns:
      True when reset (writing 5 to /proc/self/clear_refs), False when the
      kernel does not allow it: the peak then counts from the start.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def child_peak_rss_mb(pid):
    """Peak resident set size (VmHWM) of a running process, in MB.

    Raises:
      ProcessLookupError: when /proc/<pid>/status cannot be read (the
        process has exited, or this is not Linux).
    """
    kib = _status_kib(f"/proc/{int(pid)}/status", "VmHWM")
    if kib is None:
        raise ProcessLookupError(f"no VmHWM for process {pid}; has it exited?")
    return kib / _KIB_PER_MB


# CPU flags that change what the levers buy: bfloat16 math (`--float32_math`,
# `--mixed_precision`) needs AVX512_BF16 or AMX to pay; int8 uses VNNI.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def machine(cpuinfo="/proc/cpuinfo"):
    """{"cpu": model name, "cores": usable cores, "flags": `SPEED_FLAGS` it has}."""
    cpu = platform.processor() or platform.machine()
    flags = []
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    present = set(value.split())
                    flags = [flag for flag in SPEED_FLAGS if flag in present]
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return {"cpu": cpu, "cores": cores or os.cpu_count(), "flags": flags}


def onednn_state(python=None):
    """ "on" or "off": whether TensorFlow runs oneDNN under this environment.

    Asked of a fresh interpreter (`python`, default this one), since
    TensorFlow decides at import, from the CPU and `TF_ENABLE_ONEDNN_OPTS`,
    which every benchmark process (Model Garden's workers included)
    inherits; followed by the variable's value when it is set.
    """
    code = (
        "from tensorflow.python.util import _pywrap_util_port as p; "
        "print('on' if p.IsMklEnabled() else 'off')"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run(
            [python or sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = proc.stdout.strip().splitlines()
        state = lines[-1] if proc.returncode == 0 and lines else "unknown"
    except (OSError, subprocess.SubprocessError):
        state = "unknown"
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return state if value is None else f"{state} (TF_ENABLE_ONEDNN_OPTS={value})"


def figure(name, value, unit, detail=""):
    """One figure of a result: {"name", "value" (float), "unit", "detail"}."""
    return {"name": name, "value": float(value), "unit": unit, "detail": detail}


def command_line(argv=None):
    """The command that ran this script, as a shell would take it."""
    argv = list(sys.argv if argv is None else argv)
    python = sys.executable
    relative = os.path.relpath(python)
    if not relative.startswith(".."):
        python = relative
    return shlex.join([python, *argv])


def write_result(path, benchmark, figures, argv=None, details=None, onednn=None):
    """Writes a result JSON object atomically (temporary name, then rename).

    Args:
      path: str, the JSON file.
      benchmark: str, the script's name (e.g. "inference").
      figures: list of `figure` dicts.
      argv: the script's argv; default `sys.argv`.
      details: str or None, Markdown (tables, a plot) that `run_all` puts in
        results.md below the figures.
      onednn: str or None, `onednn_state()` of the run, recorded when given
        (run_all records it itself for the benchmarks it runs).

    Returns:
      the dict written.
    """
    result = {
        "benchmark": benchmark,
        "command": command_line(argv),
        "machine": machine(),
        "figures": list(figures),
    }
    if details:
        result["details"] = details
    if onednn:
        result["onednn"] = onednn
    write_text(path, json.dumps(result, indent=1) + "\n")
    return result


def report(
    benchmark, figures, output_json=None, argv=None, details=None, onednn=None
):
    """Prints the figures as a table, then writes them to `output_json` if set.

    Args:
      benchmark, figures, argv, details, onednn: as `write_result`.
      output_json: str or None, the script's `--output_json`.
    """
    print(format_figures(figures))
    if output_json:
        write_result(output_json, benchmark, figures, argv, details, onednn)


def write_text(path, text):
    """Writes `text` to `path` under a temporary name, then renames it.

    `deeplab_dpc.file_io.write_text`, imported only here: Model Garden's
    worker imports this module under the peers venv, which has no deeplab_dpc
    and never writes results.
    """
    from deeplab_dpc import file_io  # pylint: disable=import-outside-toplevel

    file_io.write_text(path, text)


def _format_value(value):
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:.3e}"


def format_figures(figures):
    """A plain-text table of figures: name, value, unit, detail."""
    rows = [
        (f["name"], _format_value(f["value"]), f["unit"], f["detail"]) for f in figures
    ]
    widths = [max([len(r[i]) for r in rows] + [1]) for i in range(3)]
    return "\n".join(
        f"{n:<{widths[0]}}  {v:>{widths[1]}} {u:<{widths[2]}}  {d}".rstrip()
        for n, v, u, d in rows
    )


def fp32_peak(peak_json=None, threads=2, quick=False, output_json=None):
    """fma_peak.py's "fp32_peak" figure: from its JSON, or measured now.

    Args:
      peak_json: str or None, fma_peak.py's result file. None means
        `fma_peak.json` beside `output_json` when it exists (bench/run_all.py
        writes every result in one folder, the peak first), else running
        bench/fma_peak.py in a child process.

      threads, quick: fma_peak.py's `--threads` and `--quick` when it runs.
      output_json: the calling script's `--output_json`, or None.

    Returns:
      the figure dict (its "value" in GFLOP/s).

    Raises:
      RuntimeError: when fma_peak.py fails.
      ValueError: when the JSON has no "fp32_peak" figure.
    """
    if peak_json is None and output_json:
        beside = os.path.join(
            os.path.dirname(os.path.abspath(output_json)), "fma_peak.json"
        )
        if os.path.exists(beside):
            peak_json = beside
    if peak_json is None:
        with tempfile.TemporaryDirectory() as tmp:
            peak_json = os.path.join(tmp, "fma_peak.json")
            command = [
                sys.executable,
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.py"),
                f"--threads={threads}",
                f"--output_json={peak_json}",
            ] + (["--quick"] if quick else [])
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            )
            if done.returncode:
                raise RuntimeError(
                    f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
                )
            return fp32_peak(peak_json, threads, quick)
    with open(peak_json) as f:
        figures = json.load(f)["figures"]
    for fig in figures:
        if fig["name"] == "fp32_peak":
            return fig
    raise ValueError(f"{peak_json} has no 'fp32_peak' figure (run bench/fma_peak.py)")


class ModelWorker:
    """The command handlers that every model worker answers alike.

    A subclass (one per worker program) calls `__init__` first, then builds
    its model and sets:
      forward: the batch-1 forward, a concrete function of one image;
      image: a batch-1 input of `forward`;
    and defines `info()`, `tflite(path, quantize)` and
    `_build_train_step(batch)` (a zero-argument callable running one training
    step on a fixed batch of `batch` images and returning its loss tensor).
    `serve` answers the commands in `COMMANDS` with the methods of the same
    names.

    Args:
      tf: the `tensorflow` module, just imported (this module imports none):
        its threads are set here, before TensorFlow starts its runtime.
      args: the worker's parsed flags, with `crop`, `intra_op_threads` and
        `inter_op_threads`.
    """

    COMMANDS = ("info", "infer", "train", "tflite", "profile", "rss")
    # Random images that calibrate the "int8" TFLite conversion.
    CALIBRATION_IMAGES = 8

    def __init__(self, tf, args):
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
        self.tf = tf
        self.args = args
        self._train_steps = {}

    def _runtime_info(self):
        """The entries of "info" that do not depend on the model's origin."""
        tf = self.tf
        return {
            "tf_version": tf.__version__,
            "crop": self.args.crop,
            "threads": [
                tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads(),
            ],
            "output_shape": self.forward.structured_outputs.shape.as_list(),
        }

    def infer(self, repeats, warmup=1):
        """{"ms": per-call ms of `repeats` forwards after `warmup` untimed}."""
        seconds, _ = time_calls(
            lambda: self.forward(self.image).numpy(), repeats, warmup
        )
        return {"ms": [s * 1000.0 for s in seconds]}

    def train(self, batch, repeats, warmup=1):
        """{"seconds": per-step seconds, "loss": the last step's loss}.

        The step of a batch size is built at its first call, then reused.
        """
        batch = int(batch)
        if batch not in self._train_steps:
            self._train_steps[batch] = self._build_train_step(batch)
        step = self._train_steps[batch]
        seconds, loss = time_calls(lambda: float(step().numpy()), repeats, warmup)
        return {"seconds": seconds, "loss": loss}

    def profile(self, runs=3):
        """`op_type_profile` of the forward at the worker's threads."""
        return op_type_profile(self.tf, self.forward, self.image, runs)

    def rss(self, reset=False):
        """This process's memory in MB: {"peak_rss_mb", "rss_mb", "reset"}.

        Args:
          reset: after reading, reset the peak to the current RSS, so that
            the next reply's peak covers only what ran in between.
        """
        reply = {"peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb()}
        reply["reset"] = reset_peak_rss() if reset else False
        return reply


def claim_stdout():
    """Keeps standard output for a worker's protocol replies alone.

    Points file descriptor 1 (where native code such as TensorFlow's converter
    may write) and `sys.stdout` at stderr, and returns a text stream on the
    original stdout. Call it before anything else prints.
    """
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return stream


def serve(handlers, stdin=None, stdout=None):
    """Runs a worker's line protocol until {"cmd": "quit"} or end of input.

    Each input line is a JSON object with a "cmd" key naming one of
    `handlers.COMMANDS`; the other keys are passed to the handler method of
    that name as keyword arguments. Its return value (a JSON-serialisable
    dict) is written back as one line with "ok": true; an exception is
    written as {"ok": false, "error": ..., "traceback": ...} and the worker
    goes on.

    Args:
      handlers: an object whose `COMMANDS` (a sequence of names) are methods
        returning dicts, e.g. a `ModelWorker`.
      stdin: text stream of requests; default `sys.stdin`.
      stdout: text stream for the replies; default `claim_stdout()`.
    """
    stdin = stdin or sys.stdin
    out = stdout or claim_stdout()
    commands = list(handlers.COMMANDS)
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            command = request.pop("cmd")
            if command == "quit":
                _reply(out, {"ok": True})
                return
            if command not in commands:
                raise KeyError(
                    f"unknown command {command!r}; known: "
                    f"{sorted(commands) + ['quit']}"
                )
            reply = dict(getattr(handlers, command)(**request))
            reply["ok"] = True
        except Exception as e:  # Reported to the driver, which raises.
            reply = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
        _reply(out, reply)


def _reply(stream, obj):
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def op_type_profile(tf, concrete_function, image, runs):
    """Time per op type of a forward as it runs, from `tf.profiler`'s trace.

    The function itself is traced while it runs `runs` times, after one
    untraced call: its variables stay variables, so grappler rewrites and
    fuses it as in the timed calls. (Freezing the variables into constants
    would not profile the same graph: grappler folds away a bias add whose
    constant is all zeros, as a fresh batch norm folds to, and the conv then
    no longer fuses with the activation after it.) An op's time is the span
    of its kernel on the executor thread that ran it, its intra-op work
    included; with two inter-op threads two ops may overlap, so the op times
    may add up to more than the wall time. Threads are the process's own
    settings. `tf` is passed in so that this module itself imports no
    TensorFlow.

    Args:
      tf: the `tensorflow` module.
      concrete_function: one input (the image) -> one output.
      image: the input value.
      runs: int >= 1, traced runs.

    Returns:
      {"ms": {op type: mean ms per run}, "count": {op type: ops per run},
       "wall_ms": median traced wall time per run}.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    def call():
        for t in tf.nest.flatten(concrete_function(image)):
            t.numpy()

    call()
    walls = []
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(runs):
                start = time.perf_counter()
                call()
                walls.append((time.perf_counter() - start) * 1000.0)
        finally:
            tf.profiler.experimental.stop()
        paths = [
            os.path.join(root, name)
            for root, _, names in os.walk(logdir)
            for name in names
            if name.endswith(".xplane.pb")
        ]
        if len(paths) != 1:
            raise RuntimeError(f"expected one .xplane.pb under {logdir}, got {paths}")
        space = xplane_pb2.XSpace()
        with open(paths[0], "rb") as f:
            space.ParseFromString(f.read())
    picos, counts = {}, {}
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor threads
                continue
            for event in line.events:
                # An op kernel's event is "<node name>:<op type>"; the
                # executor's and thread pool's own are "Class::method".
                name = plane.event_metadata[event.metadata_id].name
                if "::" in name or ":" not in name:
                    continue
                op = name.rsplit(":", 1)[1]
                picos[op] = picos.get(op, 0) + event.duration_ps
                counts[op] = counts.get(op, 0) + 1
    if not counts:
        raise RuntimeError("the profiler recorded no op of the forward")
    return {
        "ms": {op: ps / runs / 1e9 for op, ps in picos.items()},
        "count": {op: n // runs for op, n in counts.items()},
        "wall_ms": median(walls),
    }


def search_program(search_dir, data_dir, flags, preexec_fn=None):
    """Runs the search program on the synthetic set; output to search_dir/bench.log.

    Args:
      search_dir, data_dir: the program's `--search_dir` and `--dataset_dir`.
      flags: further flags of the program.
      preexec_fn: runs in the child before the program (e.g. CPU affinity).

    Raises:
      RuntimeError: naming the command and the log when the program fails.
    """
    command = [
        sys.executable,
        "-m",
        "deeplab_dpc.search",
        f"--search_dir={search_dir}",
        "--dataset=synthetic",
        f"--dataset_dir={data_dir}",
        *flags,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    log_path = os.path.join(search_dir, "bench.log")
    returncode = run_logged(command, log_path, env, preexec_fn)
    if returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({returncode}); see {log_path}")


def run_logged(command, log_path, env, preexec_fn=None):
    """Runs `command`, its output appended to `log_path`; returns its status.

    The child dies with the benchmark, however the benchmark ends (SIGTERM,
    SIGKILL): `deeplab_dpc.processes.child_kwargs`, as the demo starts the
    search program. `preexec_fn` runs in the child after that (e.g. CPU
    affinity).
    """
    # Imported here: Model Garden's worker imports benchlib under the peers'
    # venv, which has no deeplab_dpc.
    from deeplab_dpc import processes  # pylint: disable=import-outside-toplevel

    kwargs = processes.child_kwargs(env)
    if preexec_fn is not None:
        die_with_parent = kwargs["preexec_fn"]

        def preexec():
            die_with_parent()
            preexec_fn()

        kwargs["preexec_fn"] = preexec
    with open(log_path, "a") as log:
        return subprocess.run(
            command, stdout=log, stderr=log, check=False, **kwargs
        ).returncode
