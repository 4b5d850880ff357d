"""The Dense Prediction Cell's vocabulary (Chen et al., 2018), without TensorFlow.

Branch i of a cell reads the backbone feature F (`input=-1`) or an earlier
branch and applies one of 81 ops: conv1x1, sep3x3 at rate (r_h, r_w) in
RATES^2, or pool with grid (g_h, g_w) in GRIDS^2. Holds the specs
(`BranchSpec`, `CellSpec`), their validation and DeepLab's JSON format
(unchanged). The model (`layers/dense_prediction_cell.py`) and the search
(`search/space.py`: sampling, mutation, canonical keys) both build on it.
"""

import dataclasses
import json
import numbers
import os
import stat
from typing import Any, Callable, Iterator

from deeplab_dpc import file_io

RATES = (1, 3, 6, 9, 12, 15, 18, 21)
GRIDS = (1, 2, 4, 8)
OP_CONV1X1 = "conv1x1"
OP_SEP3X3 = "sep3x3"
OP_POOL = "pool"
NUM_OPS = 81

_OPS = (OP_CONV1X1, OP_SEP3X3, OP_POOL)
_PUBLISHED_FILE = "dense_prediction_cell_branch5_top1_cityscapes.json"
_JSON_CONV = "conv"
_JSON_POOL = "pyramid_pooling"
# Keys each DeepLab op may carry; `target_size` is filled in by DeepLab itself.
_JSON_KEYS = {
    _JSON_CONV: ("op", "kernel", "rate", "input"),
    _JSON_POOL: ("op", "grid_size", "input", "target_size"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _json_show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _field_error(
    field: str, value: Any, reason: str, show: Callable[[Any], str] = repr
) -> str:
    return f'field "{field}" is {show(value)}; {reason}'


def _check_pair(value: Any, allowed: tuple, noun: str):
    """Returns `(normalized_tuple, None)` or `(None, reason)`."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_int(v) for v in value)
    ):
        return None, "it must be a list of two integers"
    if any(int(v) not in allowed for v in value):
        return None, f"each {noun} must be one of {', '.join(map(str, allowed))}"
    return (int(value[0]), int(value[1])), None


def _input_reason(index: int) -> str:
    if index == 0:
        return "it must be -1 (the backbone feature); branch 0 has no earlier branch"
    return (
        "it must be -1 (the backbone feature) or an earlier branch index "
        f"0..{index - 1}"
    )


@dataclasses.dataclass(frozen=True)
class BranchSpec:
    """One branch of a cell: an input and one of the 81 operations.

    Args:
        input: int, -1 for the backbone feature F, else the index of an
            earlier branch (checked against the position by `CellSpec`).
        op: str, one of `OP_CONV1X1`, `OP_SEP3X3`, `OP_POOL`.
        rate: pair of ints in RATES, the dilation of `sep3x3`; (1, 1) otherwise.
        grid: pair of ints in GRIDS, the pooling grid of `pool`; (1, 1) otherwise.

    Raises:
        ValueError: if a field has the wrong type or value. Lists given for
            `rate` or `grid` are converted to tuples.
    """

    input: int
    op: str
    rate: tuple[int, int] = (1, 1)
    grid: tuple[int, int] = (1, 1)

    def __post_init__(self):
        def fail(field, value, reason):
            raise ValueError("BranchSpec: " + _field_error(field, value, reason))

        if not _is_int(self.input) or self.input < -1:
            fail(
                "input",
                self.input,
                "it must be -1 (the backbone feature) " "or a branch index >= 0",
            )
        object.__setattr__(self, "input", int(self.input))
        if self.op not in _OPS:
            fail("op", self.op, f"it must be one of {', '.join(map(repr, _OPS))}")
        for field, allowed, owner in (
            ("rate", RATES, OP_SEP3X3),
            ("grid", GRIDS, OP_POOL),
        ):
            value = getattr(self, field)
            pair, reason = _check_pair(value, allowed, field)
            if reason:
                fail(field, value, reason)
            if self.op != owner and pair != (1, 1):
                fail(field, value, f'it must be (1, 1) unless op is "{owner}"')
            object.__setattr__(self, field, pair)


_ALL_OPS = (
    (BranchSpec(input=-1, op=OP_CONV1X1),)
    + tuple(
        BranchSpec(input=-1, op=OP_SEP3X3, rate=(rh, rw))
        for rh in RATES
        for rw in RATES
    )
    + tuple(
        BranchSpec(input=-1, op=OP_POOL, grid=(gh, gw)) for gh in GRIDS for gw in GRIDS
    )
)
_OP_INDEX = {op: i for i, op in enumerate(_ALL_OPS)}


def all_ops() -> tuple:
    """The 81 operations in a fixed order.

    Returns:
        A tuple of `BranchSpec` with `input=-1`: conv1x1, then the 64 sep3x3
        in row-major (r_h, r_w) order, then the 16 pools in row-major
        (g_h, g_w) order. Use `dataclasses.replace(op, input=i)` to place one.
    """
    return _ALL_OPS


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """A Dense Prediction Cell: branches in order, each reading F or an earlier one.

    Args:
        branches: sequence of `BranchSpec` or of dicts of `BranchSpec` fields
            (as made by `dataclasses.asdict`); stored as a tuple of `BranchSpec`.

    Raises:
        ValueError: if the cell is empty, a branch is malformed, or branch i
            reads anything but F or a branch 0..i-1.
    """

    branches: tuple[BranchSpec, ...]

    def __post_init__(self):
        if not isinstance(self.branches, (list, tuple)):
            raise ValueError(
                "CellSpec: branches must be a list or tuple of "
                f"BranchSpec, got {type(self.branches).__name__}"
            )
        names = {f.name for f in dataclasses.fields(BranchSpec)}
        converted = []
        for i, branch in enumerate(self.branches):
            if isinstance(branch, dict):
                unknown = sorted(set(branch) - names, key=str)
                if unknown:
                    raise ValueError(
                        f'branch {i}: field "{unknown[0]}" is unknown; '
                        f"known fields are {', '.join(sorted(names))}"
                    )
                try:
                    branch = BranchSpec(**branch)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"branch {i}: {err}") from err
            elif not isinstance(branch, BranchSpec):
                raise ValueError(
                    f"branch {i}: expected a BranchSpec or a dict, "
                    f"got {type(branch).__name__}"
                )
            converted.append(branch)
        object.__setattr__(self, "branches", tuple(converted))
        self.validate()

    def validate(self) -> None:
        """Checks the graph structure.

        Raises:
            ValueError: if the cell is empty or an input is out of range.
        """
        if not self.branches:
            raise ValueError("the cell is empty; it needs at least one branch")
        if len(self.branches) > MAX_BRANCHES:
            raise ValueError(
                f"the cell has {len(self.branches)} branches; at most "
                f"{MAX_BRANCHES} are accepted (DeepLab's cells have 5)"
            )
        for i, branch in enumerate(self.branches):
            if not -1 <= branch.input <= i - 1:
                raise ValueError(
                    f"branch {i}: "
                    + _field_error("input", branch.input, _input_reason(i))
                )

    def __len__(self) -> int:
        return len(self.branches)

    def __iter__(self) -> Iterator[BranchSpec]:
        return iter(self.branches)

    def __getitem__(self, index):
        return self.branches[index]


# A sane limit: DeepLab's search space has 5 branches; 1,000 (accepted once)
# made a 95 M-parameter head.
MAX_BRANCHES = 32
# A cell file is a few hundred bytes; this refuses e.g. /dev/zero's like.
_MAX_JSON_BYTES = 1 << 20


def as_cell(cell) -> CellSpec:
    """Returns `cell` as a `CellSpec` (a sequence of `BranchSpec` is wrapped)."""
    return cell if isinstance(cell, CellSpec) else CellSpec(branches=cell)


def _branch_from_json(i: int, obj: Any, source: str) -> BranchSpec:
    def fail(field, value, reason):
        raise ValueError(
            f"{source}: branch {i}: " + _field_error(field, value, reason, _json_show)
        )

    def bad_key(key, problem):
        raise ValueError(f'{source}: branch {i}: field "{key}" {problem}')

    if not isinstance(obj, dict):
        raise ValueError(
            f"{source}: branch {i}: expected a JSON object, " f"got {_json_show(obj)}"
        )
    known = set(_JSON_KEYS[_JSON_CONV]) | set(_JSON_KEYS[_JSON_POOL])
    for key in obj:
        if key not in known:
            bad_key(key, f"is unknown; known fields are {', '.join(sorted(known))}")
    for key in ("op", "input"):
        if key not in obj:
            bad_key(key, "is missing")
    op = obj["op"]
    if not isinstance(op, str) or op not in _JSON_KEYS:
        fail("op", op, f'it must be "{_JSON_CONV}" or "{_JSON_POOL}"')
    for key in obj:
        if key not in _JSON_KEYS[op]:
            bad_key(key, f'is not used by op "{op}"')
    index = obj["input"]
    if not _is_int(index) or not -1 <= index <= i - 1:
        fail("input", index, _input_reason(i))

    if op == _JSON_POOL:
        if "grid_size" not in obj:
            bad_key("grid_size", "is missing")
        grid, reason = _check_pair(obj["grid_size"], GRIDS, "grid size")
        if reason:
            fail("grid_size", obj["grid_size"], reason)
        return BranchSpec(input=int(index), op=OP_POOL, grid=grid)

    if "kernel" not in obj:
        bad_key("kernel", "is missing")
    kernel = obj["kernel"]
    if not _is_int(kernel) or kernel not in (1, 3):
        fail("kernel", kernel, "it must be 1 or 3")
    if kernel == 3 and "rate" not in obj:
        bad_key("rate", "is missing (required when kernel is 3)")
    rate, reason = _check_pair(obj.get("rate", [1, 1]), RATES, "rate")
    if reason:
        fail("rate", obj["rate"], reason)
    if kernel == 1:
        if rate != (1, 1):
            fail("rate", obj["rate"], "it must be [1, 1] when kernel is 1")
        return BranchSpec(input=int(index), op=OP_CONV1X1)
    return BranchSpec(input=int(index), op=OP_SEP3X3, rate=rate)


def cell_from_json(obj: Any, *, source: str = "cell") -> CellSpec:
    """Builds a cell from DeepLab's parsed JSON.

    Args:
        obj: list of branch dicts: `op`, `input`, and `kernel`/`rate` ("conv")
            or `grid_size` ("pyramid_pooling"; a `target_size` is ignored).
        source: str, names the origin in error messages (e.g. a file path).

    Returns:
        A `CellSpec`.

    Raises:
        ValueError: naming the source, branch index and field of the problem.
    """
    if not isinstance(obj, list):
        raise ValueError(
            f"{source}: the cell must be a JSON list of branch "
            f"objects, got {type(obj).__name__}"
        )
    if not obj:
        raise ValueError(f"{source}: the cell is empty; it needs at least one branch")
    if len(obj) > MAX_BRANCHES:
        raise ValueError(
            f"{source}: the cell has {len(obj)} branches; at most "
            f"{MAX_BRANCHES} are accepted (DeepLab's cells have 5)"
        )
    return CellSpec(
        branches=tuple(_branch_from_json(i, b, source) for i, b in enumerate(obj))
    )


def cell_to_json(cell) -> list:
    """Returns a `CellSpec` (or what `CellSpec` accepts) as DeepLab JSON dicts.

    Conv branches have keys kernel, rate, op, input (in that order); pooling
    branches have op, grid_size, input.
    """
    out = []
    for b in as_cell(cell):
        if b.op == OP_POOL:
            out.append({"op": _JSON_POOL, "grid_size": list(b.grid), "input": b.input})
        else:
            kernel = 1 if b.op == OP_CONV1X1 else 3
            out.append(
                {
                    "kernel": kernel,
                    "rate": list(b.rate),
                    "op": _JSON_CONV,
                    "input": b.input,
                }
            )
    return out


def cell_to_json_string(cell) -> str:
    """Returns the cell as one line of DeepLab JSON (no trailing newline)."""
    return json.dumps(cell_to_json(cell))


def load_cell(path) -> CellSpec:
    """Reads a `CellSpec` from the DeepLab JSON file at `path` (str or path-like).

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if `path` is not a regular file (a directory or a FIFO,
            checked before opening, so a FIFO never blocks), is larger than
            1 MiB, or the text is not JSON (also nested deeper than the
            parser's recursion) or not a valid cell (the message names the
            file, branch and field).
    """
    path = os.fspath(path)
    try:
        status = os.stat(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"cell JSON file not found: {path}") from err
    if not stat.S_ISREG(status.st_mode):
        kind = "a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise ValueError(f"{path}: {kind}; expected a cell JSON file")
    if status.st_size > _MAX_JSON_BYTES:
        raise ValueError(
            f"{path}: {status.st_size} bytes, too large for a cell JSON file"
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(_MAX_JSON_BYTES + 1)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text: {err}") from err
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    except RecursionError as err:  # "[[[[...": deeper than the parser goes.
        raise ValueError(
            f"{path}: JSON nested too deeply; a cell is a list of branch objects"
        ) from err
    return cell_from_json(obj, source=path)


def dump_cell(cell, path, *, overwrite: bool = False) -> None:
    """Writes a cell as DeepLab JSON, atomically, with a trailing newline.

    Args:
        cell: a `CellSpec` (or a sequence accepted by `CellSpec`).
        path: str or path-like, the file to write (its folder is created).
        overwrite: bool, replace an existing file.

    Raises:
        FileExistsError: if `path` exists and `overwrite` is False.
    """
    text = cell_to_json_string(cell) + "\n"
    file_io.write_text(path, text, overwrite=overwrite)


def published_cell_path() -> str:
    """Returns the path of the shipped top-1 Cityscapes cell JSON."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _PUBLISHED_FILE)


def published_cell() -> CellSpec:
    """Returns the published top-1 Cityscapes cell (Chen et al., 2018)."""
    return load_cell(published_cell_path())


def op_token(branch: BranchSpec) -> str:
    """The op of `branch` as a short token, e.g. `sep3x3@6x21` or `pool@2x4`."""
    if branch.op == OP_SEP3X3:
        return f"{OP_SEP3X3}@{branch.rate[0]}x{branch.rate[1]}"
    if branch.op == OP_POOL:
        return f"{OP_POOL}@{branch.grid[0]}x{branch.grid[1]}"
    return OP_CONV1X1


def describe(cell) -> str:
    """Returns one line per branch, e.g. `b1 = sep3x3@18x15(b0)`."""
    return "\n".join(
        f"b{i} = {op_token(b)}({'F' if b.input < 0 else f'b{b.input}'})"
        for i, b in enumerate(as_cell(cell))
    )
