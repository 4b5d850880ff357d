"""How every program starts: `--help` before TensorFlow, quiet native logs,
user errors in one line.

Programs call `cli.run(main, __name__)` where they called `app.run(main)`:

* `--help` (`-h`, `-?`, `--helpshort`) prints the program's docstring, its
  own flags and then each shared flag module it uses, one group each (model
  and data set flags, training flags, ...), and exits 0. The flag modules
  import no TensorFlow, and the programs import the library inside `main`,
  so this takes well under 3 s. `--helpfull` is absl's (every flag, also
  TensorFlow's own).
* Before `main` runs, TensorFlow is imported with its C++ start-up lines
  (CUDA stubs, oneDNN's note, "All log messages before
  absl::InitializeLog()...") sent to /dev/null and `TF_CPP_MIN_LOG_LEVEL=2`,
  unless `--verbosity` >= 1 (or `TF_CPP_MIN_LOG_LEVEL=0` is set) asks for
  them; spawned worker processes (a converter's writers) import it as
  quietly (`processes.start_worker` reads `TF_CPP_MIN_LOG_LEVEL`).
* A flag value its definition refuses (a bound, an enum, a validator, a
  missing required flag), `app.UsageError` and `flags.ValidationError` end
  the program with `error: <message>` and exit status 2; `OSError`, `ValueError`,
  `RuntimeError` and TensorFlow's op errors with the message's first line
  and exit status 1. `--verbosity=1` or `DEEPLAB_DPC_TRACEBACK=1` shows the
  traceback instead.
"""

import os
import re
import sys

from absl import app
from absl import flags

from deeplab_dpc import processes

TRACEBACK_ENV = "DEEPLAB_DPC_TRACEBACK"
HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")
FLAGS_PACKAGE = "deeplab_dpc.flags."
# Shared flag modules in the order `--help` lists them, with their titles.
GROUPS = (
    (
        "deeplab_dpc.flags.common_flags",
        "Model and data set flags (every program; a training run's are in "
        "<train_logdir>/train.flags)",
    ),
    ("deeplab_dpc.flags.eval_flags", "Checkpoint and inference flags"),
    ("deeplab_dpc.flags.export_flags", "Export flags"),
    ("deeplab_dpc.flags.tflite_flags", "TFLite flags"),
    ("deeplab_dpc.flags.train_flags", "Training flags"),
    ("deeplab_dpc.flags.speed_flags", "Speed flags"),
    ("deeplab_dpc.flags.converter_flags", "Output flags"),
)


def main_module_name(module_name):
    """The name absl registers a program's own flags under."""
    return sys.argv[0] if module_name == "__main__" else module_name


def help_text(module_name, doc=None):
    """The `--help` text of the program `module_name` (its `__name__`).

    Args:
      module_name: str, the program module's `__name__`.
      doc: str, the program's description (default: the module's docstring).

    Returns:
      str: the description, the program's flags, then one group per shared
      flag module the program defined flags from.
    """
    if doc is None:
        doc = getattr(sys.modules.get(module_name), "__doc__", None) or ""
    by_module = flags.FLAGS.flags_by_module_dict()
    own = main_module_name(module_name)
    titles = dict(GROUPS)
    shared = [name for name, _ in GROUPS if name in by_module]
    shared += sorted(
        name
        for name in by_module
        if name.startswith(FLAGS_PACKAGE) and name not in titles
    )
    parts = [doc.strip()]
    for name, title in [(own, "Flags of this program")] + [
        (name, titles.get(name, name)) for name in shared
    ]:
        if name not in by_module:
            continue
        body = flags.FLAGS.module_help(name).strip("\n").split("\n", 1)[-1]
        parts.append(f"{title}:\n{body}")
    parts.append("--helpfull lists every flag, also absl's and TensorFlow's.")
    return "\n\n".join(p for p in parts if p) + "\n"


def _verbose(argv):
    """Whether the command line asks for --verbosity >= 1 (before parsing)."""
    for i, arg in enumerate(argv[1:], start=1):
        for name in ("--verbosity", "-verbosity", "--v", "-v"):
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
            elif arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            else:
                continue
            try:
                return int(value) >= 1
            except ValueError:
                return False
    return False


def wants_native_logs():
    """--verbosity >= 1 or TF_CPP_MIN_LOG_LEVEL=0: keep TensorFlow's lines."""
    verbosity = flags.FLAGS["verbosity"].value if "verbosity" in flags.FLAGS else 0
    return verbosity >= 1 or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


def import_tensorflow():
    """Imports TensorFlow, without its C++ start-up lines unless asked.

    Returns:
      the `tensorflow` module.
    """
    if "tensorflow" in sys.modules or wants_native_logs():
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Initialises the devices too, when their lines (cuInit...) go as well.
    return processes.import_tensorflow_quietly()


def _first_line(error):
    """The message's first line, without TensorFlow's node names."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text).strip()
    return (text or type(error).__name__).splitlines()[0]


def _is_user_error(error):
    if isinstance(error, (OSError, ValueError, RuntimeError)):
        return True
    # TensorFlow's op errors (InvalidArgumentError, ...), without importing it.
    return type(error).__module__.startswith("tensorflow")


def _show_traceback():
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0") or (
        "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].value >= 1
    )


def _guarded(main):
    def run_main(argv):
        import_tensorflow()
        try:
            return main(argv)
        except (app.UsageError, flags.ValidationError) as e:
            if _show_traceback():
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # pylint: disable=broad-except
            if not _is_user_error(e) or _show_traceback():
                raise
            print(
                f"error: {_first_line(e)}\n(the traceback: --verbosity=1 or "
                f"{TRACEBACK_ENV}=1)",
                file=sys.stderr,
            )
            sys.exit(1)

    return run_main


def parse_flags(argv):
    """absl's flag parsing, with a bad value as one `error:` line (exit 2).

    absl's own parser prints "FATAL Flags parsing error: ..." and a second
    line, and exits 1: the status of a failure, not of a usage error.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def run(main, module_name, *, required=(), doc=None):
    """Runs a program's `main` as `app.run` does (see the module docstring).

    Args:
      main: the program's `main(argv)`.
      module_name: the program module's `__name__`.
      required: names of flags that must be given (checked after `--help`).
      doc: the `--help` description (default: the module's docstring).
    """
    # Started by another program with `processes.child_kwargs`: die with it.
    processes.die_with_parent_from_env()
    if any(arg in HELP_ARGS for arg in sys.argv[1:]):
        sys.stdout.write(help_text(module_name, doc))
        sys.exit(0)
    if required:
        flags.mark_flags_as_required(list(required))
    if not _verbose(sys.argv) and os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(_guarded(main), flags_parser=parse_flags)
