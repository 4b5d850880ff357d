"""The repository's own import graph, read from the source (no imports run).

Every `import` and `from ... import` statement counts, also those inside
functions (a lazy import is still a dependency). The architecture test and
the BUILD test both read it.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Folders whose modules a file can import by bare name (pytest.ini's
# pythonpath, and a script's own folder).
_BARE_NAME_DIRS = ("tests", "tests/layers", "tests/models", "tests/search")


def module_name(path, root=ROOT):
    """`deeplab_dpc/search/space.py` -> `deeplab_dpc.search.space`."""
    parts = pathlib.Path(path).relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _module_file(name, root):
    """The file of dotted module `name` under `root`, or None."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _statements(tree):
    """(level, module, names) of every import statement of a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", tuple(a.name for a in node.names)


def _resolve(name, root, bare_dirs):
    """The file of module `name` (dotted from `root`, or bare), or None."""
    if not name:
        return None
    hit = _module_file(name, root)
    if hit is None and "." not in name:
        for d in bare_dirs:
            if (d / f"{name}.py").is_file():
                hit = d / f"{name}.py"
                break
    return hit.resolve() if hit is not None else None


def imported_files(path, root=ROOT):
    """The repository files that the module at `path` imports.

    `from package import name` counts as importing the submodule `name` when
    it is one, else the package itself.
    """
    path = pathlib.Path(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bare_dirs = [path.parent] + [root / d for d in _BARE_NAME_DIRS]
    found = set()
    for level, module, names in _statements(tree):
        if level:
            package = module_name(path, root).split(".")
            if path.name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - level + 1]
            module = ".".join(package + ([module] if module else []))
        submodules = [_resolve(f"{module}.{n}", root, bare_dirs) for n in names]
        found.update(f for f in submodules if f is not None)
        if not names or None in submodules:
            # `import a` or `from a import attribute`: a itself.
            hit = _resolve(module, root, bare_dirs)
            if hit is not None:
                found.add(hit)
    found.discard(path.resolve())
    return found


def package_graph(package="deeplab_dpc", root=ROOT):
    """{module name: set of module names it imports} within `package`."""
    graph = {}
    for path in sorted((root / package).rglob("*.py")):
        graph[module_name(path, root)] = {
            module_name(f, root)
            for f in imported_files(path, root)
            if module_name(f, root).split(".")[0] == package
        }
    return graph


def cycles(graph):
    """The import circles of `graph`: lists of modules, each circle once.

    Tarjan's strongly connected components; a component of two or more
    modules is a circle (a module importing itself is not counted).
    """
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
