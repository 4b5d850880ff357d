"""BUILD declares every module and test, and only files that exist.

Bazel cannot run here, so this parses BUILD (Starlark is Python syntax).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("deeplab_dpc", "datasets", "export", "bench", "tests")
RULES = ("py_library", "py_binary", "py_test")


def _string_list(node):
    if isinstance(node, ast.List):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    if isinstance(node, ast.Constant):
        return [node.value]
    return []


def parse_build(text):
    """Returns [(rule, {attribute: value})] for the Python rules of BUILD."""
    targets = []
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in RULES
        ):
            attrs = {}
            for kw in node.keywords:
                if kw.arg == "deps":
                    attrs["deps"] = [
                        e.value
                        for e in getattr(kw.value, "elts", [])
                        if isinstance(e, ast.Constant)
                    ]
                elif kw.arg in ("name", "main"):
                    attrs[kw.arg] = kw.value.value
                elif kw.arg in ("srcs", "data"):
                    attrs[kw.arg] = _string_list(kw.value)
            targets.append((node.func.id, attrs))
    return targets


@pytest.fixture(name="targets", scope="module")
def _targets():
    return parse_build((ROOT / "BUILD").read_text())


def test_every_python_file_is_declared(targets):
    declared = {src for _, attrs in targets for src in attrs.get("srcs", [])}
    present = {
        str(p.relative_to(ROOT))
        for d in SOURCE_DIRS
        for p in (ROOT / d).rglob("*.py")
        # Hidden folders hold no sources: e.g. bench/.peers-venv, the peers'
        # virtual environment.
        if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
    }
    missing = sorted(present - declared)
    assert not missing, f"BUILD does not declare: {missing}"


def test_every_declared_file_exists(targets):
    for _, attrs in targets:
        for path in attrs.get("srcs", []) + attrs.get("data", []):
            assert (
                ROOT / path
            ).is_file(), (
                f"BUILD target {attrs['name']} names {path}, which does not exist"
            )


def test_tests_are_py_tests_and_modules_are_not(targets):
    for rule, attrs in targets:
        for src in attrs["srcs"]:
            is_test = pathlib.Path(src).name.startswith("test_")
            assert is_test == (
                rule == "py_test"
            ), f"{src} is declared by a {rule} ({attrs['name']})"


def test_names_are_unique_and_deps_resolve(targets):
    names = [attrs["name"] for _, attrs in targets]
    assert len(names) == len(set(names)), f"duplicate target names: {names}"
    for _, attrs in targets:
        for dep in attrs.get("deps", []):
            assert (
                dep.lstrip(":") in names
            ), f"target {attrs['name']} depends on undefined {dep}"


def test_parser_sees_a_missing_file(tmp_path):
    text = 'py_library(name = "x", srcs = ["deeplab_dpc/nope.py"])'
    ((rule, attrs),) = parse_build(text)
    assert rule == "py_library" and attrs["srcs"] == ["deeplab_dpc/nope.py"]
    assert not (ROOT / attrs["srcs"][0]).exists()


def test_deps_name_every_target_a_file_imports(targets):
    """A target's deps cover the repository files its sources import."""
    import import_graph  # pylint: disable=import-outside-toplevel

    owner = {}
    for _, attrs in targets:
        for src in attrs.get("srcs", []):
            owner[(ROOT / src).resolve()] = attrs["name"]
    missing = []
    for _, attrs in targets:
        deps = {dep.lstrip(":") for dep in attrs.get("deps", [])}
        for src in attrs.get("srcs", []):
            for imported in import_graph.imported_files(ROOT / src):
                target = owner.get(imported)
                if target and target != attrs["name"] and target not in deps:
                    missing.append(f"{attrs['name']} ({src}) needs :{target}")
    assert not missing, "BUILD deps lack:\n" + "\n".join(sorted(set(missing)))
