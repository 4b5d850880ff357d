"""docs/model_zoo.md: every import command there parses and builds valid
model options (the flags and crop of each documented checkpoint).

The commands are parsed by the import program's own flags in a subprocess:
importing the program here would define its flags (`--output_dir`,
`--crop_size`, ...) in the test process, where other programs' flag modules
define the same names.
"""

import json
import pathlib
import re
import shlex
import sys
import textwrap

import program_testing
import pytest

DOC = pathlib.Path(program_testing.REPO) / "docs" / "model_zoo.md"
COMMAND = re.compile(r"python -m deeplab_dpc\.import_checkpoint (.*?)\n```", re.S)

_PARSE = textwrap.dedent(
    """
    import json, sys
    from absl import flags
    from absl.testing import flagsaver
    from deeplab_dpc import import_checkpoint  # noqa: F401 (its flags)
    from deeplab_dpc.flags import common_flags

    results = []
    for argv in json.loads(sys.stdin.read()):
        with flagsaver.flagsaver():
            flags.FLAGS.unparse_flags()
            try:
                flags.FLAGS(["import_checkpoint", *argv])
                _, options = common_flags.model_options_for_crop_flag(
                    "crop_size", flags.FLAGS.crop_size)
                results.append({
                    "num_classes": options.num_classes,
                    "model_variant": options.model_variant,
                    "paths": bool(flags.FLAGS.tf1_checkpoint and flags.FLAGS.output_dir),
                })
            except Exception as e:  # pylint: disable=broad-except
                results.append({"error": f"{type(e).__name__}: {e}"})
    print("RESULT " + json.dumps(results))
    """
)


def commands():
    text = DOC.read_text()
    return [shlex.split(m.replace("\\\n", " ")) for m in COMMAND.findall(text)]


@pytest.fixture(name="parsed", scope="module")
def _parsed():
    proc = program_testing.run(
        [sys.executable, "-c", _PARSE],
        program_testing.environment(),
        input=json.dumps(commands()),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def test_every_released_model_has_a_command():
    assert len(commands()) == 14
    assert DOC.read_text().count("### ") == 14


@pytest.mark.parametrize(
    "index,argv",
    list(enumerate(commands())),
    ids=lambda a: a[-1].rsplit("/", 1)[-1] if isinstance(a, list) else str(a),
)
def test_command_builds_valid_options(parsed, index, argv):
    result = parsed[index]
    assert "error" not in result, result.get("error")
    assert result["paths"]
    assert result["num_classes"] in (19, 21, 151)
    assert result["model_variant"] in argv[1]
