"""`pip install .` installs every program, also those of datasets/ and
export/ (and the presets of configs/), and they run outside the repository.

Builds the wheel from a copy of the sources (a build writes build/ and
*.egg-info beside setup.py), offline and without build isolation, installs
it with `pip install --target` and runs each console script's `--help` from
a folder outside the repository, with only the target on PYTHONPATH.
"""

import ast
import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import deeplab_dpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The repository's program folders and the packages they install as.
FOLDERS = {"datasets": "deeplab_dpc.datasets", "export": "deeplab_dpc.export_programs"}
PACKAGE_PROGRAMS = (
    "deeplab_dpc.demo",
    "deeplab_dpc.eval",
    "deeplab_dpc.flops",
    "deeplab_dpc.import_checkpoint",
    "deeplab_dpc.predict",
    "deeplab_dpc.search.program",
    "deeplab_dpc.train",
    "deeplab_dpc.vis",
)


def _setup_programs():
    """setup.py's PROGRAMS: {console script: module}."""
    return _setup_value("PROGRAMS")


def _setup_value(name):
    """A literal assignment of setup.py, read, not run."""
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (value,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == [name]
    ]
    return ast.literal_eval(value)


def _folder_programs():
    """The installed module of each program in datasets/ and export/."""
    return {
        f"{package}.{name[:-3]}"
        for folder, package in FOLDERS.items()
        for name in os.listdir(os.path.join(REPO, folder))
        if name.endswith(".py")
    }


def test_setup_names_every_program():
    programs = _setup_programs()
    assert set(programs.values()) == _folder_programs() | set(PACKAGE_PROGRAMS)
    for script, module in programs.items():
        name = module.replace(".search.program", ".search").rsplit(".", 1)[-1]
        assert script == f"deeplab_dpc_{name}", script


def test_the_package_maps_the_folders_as_setup_does():
    # deeplab_dpc/__init__.py serves checkouts and editable installs.
    assert _setup_value("PROGRAM_FOLDERS") == {
        f"deeplab_dpc.{name}": folder
        for name, folder in deeplab_dpc.PROGRAM_FOLDERS.items()
    }


@pytest.mark.parametrize(
    "module", ["deeplab_dpc.datasets.build_synthetic_data", "deeplab_dpc.export_programs.compare"]
)
def test_installed_module_names_work_in_a_checkout(module, program_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=tmp_path,
        env=program_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Flags of this program:" in proc.stdout


@pytest.fixture(name="wheel", scope="module")
def _wheel(tmp_path_factory):
    """The wheel of a copy of the sources."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy(os.path.join(REPO, "setup.py"), src)
    for folder in ("deeplab_dpc", "configs", *FOLDERS):
        shutil.copytree(os.path.join(REPO, folder), src / folder, ignore=ignore)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(root / "wheels"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (root / "wheels").iterdir()
    return wheel


def test_the_wheel_holds_the_programs_and_their_scripts(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode())
    for module in _folder_programs() | set(PACKAGE_PROGRAMS):
        assert module.replace(".", "/") + ".py" in names, module
    # No top-level `datasets` or `export` package (Hugging Face owns the name).
    assert not any(n.startswith(("datasets/", "export/")) for n in names)
    assert "deeplab_dpc/cells/dense_prediction_cell_branch5_top1_cityscapes.json" in names
    for preset in os.listdir(os.path.join(REPO, "configs")):
        assert f"deeplab_dpc/configs/{preset}" in names, preset
    scripts = dict(parser["console_scripts"])
    assert scripts == {
        script: f"{module}:run" for script, module in _setup_programs().items()
    }


def test_installed_programs_run_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "target"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Only the installed copy of deeplab_dpc: not the repository, not the
    # editable install of the environment (its .pth file stays, but the
    # target comes first on sys.path).
    env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="2")
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import deeplab_dpc.datasets.build_seg_data as m; print(m.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(target)), where.stdout
    # The installed demo runs the installed export programs with the
    # installed preset.
    demo = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from deeplab_dpc import demo; "
            "print(demo.in_checkout(), os.path.isfile(demo.PRESET), "
            "demo.PRESET.startswith(os.environ['PYTHONPATH']), "
            "' '.join(demo.export_program('compare')))",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert demo.stdout.split("\n")[0] == (
        "False True True -m deeplab_dpc.export_programs.compare"
    ), demo.stderr
    module_help = subprocess.run(
        [sys.executable, "-m", "deeplab_dpc.export_programs.compare", "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module_help.returncode == 0, module_help.stderr[-2000:]
    assert "--models" in module_help.stdout
    # Every script's module resolves inside the target (one process; importing
    # them all there would define clashing flags).
    modules = sorted(set(_setup_programs().values()))
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, sys\n"
            "for name in sys.argv[1:]:\n"
            "    print(importlib.util.find_spec(name).origin)",
            *modules,
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    origins = found.stdout.split()
    assert len(origins) == len(modules)
    assert all(o.startswith(str(target)) for o in origins), origins
    # And scripts of each kind run: a converter, an export program, the
    # search (a package's program; tests/flags/test_cli.py runs every
    # program's --help in the repository).
    for script in (
        "deeplab_dpc_build_synthetic_data",
        "deeplab_dpc_serving_client",
        "deeplab_dpc_search",
    ):
        proc = subprocess.run(
            [str(target / "bin" / script), "--help"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, (script, proc.stderr[-2000:])
        assert "Flags of this program:" in proc.stdout or (
            "Training flags:" in proc.stdout
        ), script
        assert "--helpfull lists every flag" in proc.stdout, script
