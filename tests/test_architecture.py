"""The package's rooms and the direction of their imports (README: "How the
code is laid out").

Read from the source: every import counts, also one inside a function.
"""

import re

import import_graph
import pytest

PACKAGE = "deeplab_dpc"
# `python -m deeplab_dpc.<program>`; nothing in the library imports them.
PROGRAMS = {
    "deeplab_dpc.train",
    "deeplab_dpc.eval",
    "deeplab_dpc.vis",
    "deeplab_dpc.flops",
    "deeplab_dpc.predict",
    "deeplab_dpc.import_checkpoint",
    "deeplab_dpc.demo",
    "deeplab_dpc.search.__main__",
    "deeplab_dpc.search.program",
}
FLAGS_ROOM = "flags"
# Room -> the rooms it may import. A room is the first folder under the
# package (or the root module's name); anyone may import the package root.
ALLOWED = {
    "file_io": set(),
    "processes": set(),
    "progress": set(),
    "cells": {"file_io"},
    "layers": {"cells"},
    "models": {"cells", "layers", "file_io"},
    "data": {"file_io", "processes"},
    "training": {"cells", "layers", "models", "data", "file_io", "processes"},
    "evaluation": {"cells", "layers", "models", "data", "training", "file_io"},
    "search": {
        "cells",
        "layers",
        "models",
        "data",
        "training",
        "evaluation",
        "file_io",
        "processes",
        "progress",
    },
    "export": {
        "cells",
        "layers",
        "models",
        "data",
        "training",
        "evaluation",
        "file_io",
        "processes",
        "progress",
    },
}
_DEFINES_FLAGS = re.compile(r"\bflags\.DEFINE_\w+\(|\bapp\.run\(")


def room(module):
    """`deeplab_dpc.search.space` -> "search"; the root package -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(graph, programs=PROGRAMS):
    """What breaks the rules, one line each (empty when all hold)."""
    found = []
    for module, imports in sorted(graph.items()):
        if module in programs:
            continue
        own = room(module)
        for imported in sorted(imports):
            other = room(imported)
            if imported in programs:
                found.append(f"{module} imports the program {imported}")
            elif other == FLAGS_ROOM and own != FLAGS_ROOM:
                found.append(f"{module} imports the flags module {imported}")
            elif own in ALLOWED and other not in (None, own):
                if other not in ALLOWED[own]:
                    found.append(f"{module} ({own}/) imports {imported} ({other}/)")
    for circle in import_graph.cycles(graph):
        found.append("import circle: " + " -> ".join(circle))
    return found


@pytest.fixture(name="graph", scope="module")
def _graph():
    return import_graph.package_graph(PACKAGE)


def test_the_package_keeps_its_rules(graph):
    assert not violations(graph), "\n".join(violations(graph))


def test_every_room_is_known(graph):
    rooms = {room(m) for m in graph if m not in PROGRAMS} - {None}
    assert rooms <= set(ALLOWED) | {FLAGS_ROOM}, rooms - set(ALLOWED)


def test_flags_are_defined_only_by_programs_and_flags_modules(graph):
    root = import_graph.ROOT
    for module in graph:
        if module in PROGRAMS or room(module) == FLAGS_ROOM:
            continue
        parts = module.split(".")
        path = root.joinpath(*parts).with_suffix(".py")
        if not path.is_file():
            path = root.joinpath(*parts, "__init__.py")
        assert not _DEFINES_FLAGS.search(
            path.read_text(encoding="utf-8")
        ), f"{module} defines absl flags or runs app.run: move it to flags/ or PROGRAMS"


def test_programs_exist(graph):
    assert PROGRAMS <= set(graph), PROGRAMS - set(graph)


def test_the_rules_catch_each_kind_of_breach():
    graph = {
        "deeplab_dpc.layers.a": {"deeplab_dpc.search.space"},
        "deeplab_dpc.models.b": {"deeplab_dpc.data.pipeline", "deeplab_dpc.cells.c"},
        "deeplab_dpc.models.m": {"deeplab_dpc.training.trainer"},
        "deeplab_dpc.training.t": {"deeplab_dpc.flags.common_flags"},
        "deeplab_dpc.search.s": {"deeplab_dpc.train"},
        "deeplab_dpc.data.x": {"deeplab_dpc.data.y"},
        "deeplab_dpc.data.y": {"deeplab_dpc.data.x"},
        "deeplab_dpc.flags.common_flags": {"deeplab_dpc.models.b"},
        "deeplab_dpc.train": {"deeplab_dpc.flags.common_flags"},
    }
    found = violations(graph)
    assert found == [
        "deeplab_dpc.layers.a (layers/) imports deeplab_dpc.search.space (search/)",
        "deeplab_dpc.models.b (models/) imports deeplab_dpc.data.pipeline (data/)",
        "deeplab_dpc.models.m (models/) imports deeplab_dpc.training.trainer "
        "(training/)",
        "deeplab_dpc.search.s imports the program deeplab_dpc.train",
        "deeplab_dpc.training.t imports the flags module "
        "deeplab_dpc.flags.common_flags",
        "import circle: deeplab_dpc.data.x -> deeplab_dpc.data.y",
    ]


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py"):
        (pkg / name).write_text("")
    (pkg / "sub" / "a.py").write_text(
        "def f():\n    from pkg.sub import b  # lazy\n    return b\n"
    )
    (pkg / "sub" / "b.py").write_text("from . import a\nfrom pkg import sub\n")
    graph = import_graph.package_graph("pkg", root=tmp_path)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.sub.a", "pkg.sub"}
    assert import_graph.cycles(graph) == [["pkg.sub.a", "pkg.sub.b"]]
