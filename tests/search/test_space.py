"""Tests for deeplab_dpc.search.space."""

import dataclasses
import json
import os
import random

import pytest

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.cells.cell_spec import BranchSpec
from deeplab_dpc.cells.cell_spec import CellSpec
from deeplab_dpc.search import space


def _b(input, op, rate=(1, 1), grid=(1, 1)):
    return BranchSpec(input=input, op=op, rate=rate, grid=grid)


def _cell(*branches):
    return CellSpec(branches=branches)


# ------------------------------------------------------------ published cell


def test_published_cell_reserializes_to_identical_text():
    with open(cell_spec.published_cell_path(), encoding="utf-8") as f:
        text = f.read()
    assert text.endswith("]\n")
    cell = cell_spec.published_cell()
    assert json.dumps(cell_spec.cell_to_json(cell)) == text[:-1]
    assert cell_spec.cell_to_json_string(cell) == text[:-1]


def test_published_cell_contents():
    cell = cell_spec.published_cell()
    assert cell == _cell(
        _b(-1, cell_spec.OP_SEP3X3, (1, 6)),
        _b(0, cell_spec.OP_SEP3X3, (18, 15)),
        _b(1, cell_spec.OP_SEP3X3, (6, 3)),
        _b(0, cell_spec.OP_SEP3X3, (1, 1)),
        _b(0, cell_spec.OP_SEP3X3, (6, 21)),
    )
    assert cell_spec.describe(cell).splitlines() == [
        "b0 = sep3x3@1x6(F)",
        "b1 = sep3x3@18x15(b0)",
        "b2 = sep3x3@6x3(b1)",
        "b3 = sep3x3@1x1(b0)",
        "b4 = sep3x3@6x21(b0)",
    ]


# ----------------------------------------------------------------- round trip


def test_json_round_trip_random_cells():
    rng = random.Random(0)
    for _ in range(200):
        cell = space.sample_cell(rng, num_branches=rng.randint(1, 7))
        assert cell_spec.cell_from_json(cell_spec.cell_to_json(cell)) == cell
        text = cell_spec.cell_to_json_string(cell)
        assert cell_spec.cell_from_json(json.loads(text)) == cell


def test_file_round_trip(tmp_path):
    rng = random.Random(1)
    for k in range(20):
        cell = space.sample_cell(rng)
        path = tmp_path / f"cell{k}.json"
        cell_spec.dump_cell(cell, path)
        assert path.read_text().endswith("\n")
        assert cell_spec.load_cell(path) == cell
    assert sorted(os.listdir(tmp_path)) == sorted(f"cell{k}.json" for k in range(20))


def test_json_writing_format():
    cell = _cell(
        _b(-1, cell_spec.OP_CONV1X1),
        _b(0, cell_spec.OP_POOL, grid=(2, 4)),
        _b(1, cell_spec.OP_SEP3X3, rate=(3, 21)),
    )
    assert cell_spec.cell_to_json_string(cell) == (
        '[{"kernel": 1, "rate": [1, 1], "op": "conv", "input": -1}, '
        '{"op": "pyramid_pooling", "grid_size": [2, 4], "input": 0}, '
        '{"kernel": 3, "rate": [3, 21], "op": "conv", "input": 1}]'
    )


def test_reads_deeplab_variants():
    cell = cell_spec.cell_from_json(
        [
            {"op": "conv", "kernel": 1, "input": -1},  # No rate on a 1x1: fine.
            {
                "op": "pyramid_pooling",
                "grid_size": [1, 1],
                "target_size": [65, 65],
                "input": -1,
            },
        ]
    )
    assert cell == _cell(_b(-1, cell_spec.OP_CONV1X1), _b(-1, cell_spec.OP_POOL))


# ------------------------------------------------------------------ the space


def test_all_ops():
    ops = cell_spec.all_ops()
    assert len(ops) == cell_spec.NUM_OPS == 81
    assert len(set(ops)) == 81
    assert all(op.input == -1 for op in ops)
    assert ops[0] == _b(-1, cell_spec.OP_CONV1X1)
    assert ops[1] == _b(-1, cell_spec.OP_SEP3X3, (1, 1))
    assert ops[2] == _b(-1, cell_spec.OP_SEP3X3, (1, 3))
    assert ops[64] == _b(-1, cell_spec.OP_SEP3X3, (21, 21))
    assert ops[65] == _b(-1, cell_spec.OP_POOL, grid=(1, 1))
    assert ops[66] == _b(-1, cell_spec.OP_POOL, grid=(1, 2))
    assert ops[80] == _b(-1, cell_spec.OP_POOL, grid=(8, 8))


def test_space_size():
    assert space.space_size(5) == 418_414_128_120
    assert space.space_size(1) == 81
    assert space.space_size(2) == 2 * 81**2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_branches"):
            space.space_size(bad)


def test_sample_cell_ranges_and_reachability():
    rng = random.Random(2)
    seen_inputs = [set() for _ in range(5)]
    seen_ops = set()
    for _ in range(3000):
        cell = space.sample_cell(rng)
        assert len(cell) == 5
        for i, b in enumerate(cell):
            assert -1 <= b.input <= i - 1
            seen_inputs[i].add(b.input)
            seen_ops.add(dataclasses.replace(b, input=-1))
    assert seen_inputs == [set(range(-1, i)) for i in range(5)]
    assert seen_ops == set(cell_spec.all_ops())


def test_sample_cell_is_seeded():
    a = [space.sample_cell(random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_neighbour_changes_exactly_one_field():
    rng = random.Random(3)
    kinds = set()
    for _ in range(500):
        cell = space.sample_cell(rng, num_branches=rng.randint(1, 6))
        new = space.neighbour(cell, rng)
        assert isinstance(new, CellSpec) and new != cell and len(new) == len(cell)
        new.validate()
        diff = [i for i in range(len(cell)) if cell[i] != new[i]]
        assert len(diff) == 1
        old_b, new_b = cell[diff[0]], new[diff[0]]
        same_op = (old_b.op, old_b.rate, old_b.grid) == (
            new_b.op,
            new_b.rate,
            new_b.grid,
        )
        assert same_op != (old_b.input == new_b.input)  # Exactly one changed.
        if diff[0] == 0:
            assert new_b.input == -1
        kinds.add("input" if same_op else "op")
    assert kinds == {"input", "op"}


def test_uniform_op_prior_draws_as_before():
    # Stored studies stay reproducible: "uniform" is a plain choice of the 81.
    for seed in range(20):
        a, b = random.Random(seed), random.Random(seed)
        assert space.sample_op(a, "uniform") == b.choice(cell_spec.all_ops())
        assert a.random() == b.random()  # And no other draw.


def test_kind_op_prior_draws_each_kind_a_third_of_the_time():
    rng = random.Random(5)
    draws = [space.sample_op(rng, "kind") for _ in range(6000)]
    for kind in (cell_spec.OP_CONV1X1, cell_spec.OP_SEP3X3, cell_spec.OP_POOL):
        share = sum(op.op == kind for op in draws) / len(draws)
        assert abs(share - 1 / 3) < 0.03, (kind, share)
    assert set(draws) == set(cell_spec.all_ops())  # Every op still reachable.
    image_pooling = BranchSpec(input=-1, op=cell_spec.OP_POOL, grid=(1, 1))
    # 1/48 (uniform: 1/81): 125 expected, 4 standard deviations either side.
    assert 80 <= draws.count(image_pooling) <= 170


def test_kind_op_prior_cells_and_neighbours():
    rng = random.Random(6)
    for _ in range(300):
        cell = space.sample_cell(rng, 5, op_prior="kind")
        for i, b in enumerate(cell):
            assert -1 <= b.input <= i - 1
        new = space.neighbour(cell, rng, op_prior="kind")
        new.validate()
        assert sum(cell[i] != new[i] for i in range(5)) == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: space.sample_op(random.Random(0), "loguniform"),
        lambda: space.sample_cell(random.Random(0), 5, op_prior="loguniform"),
        lambda: space.neighbour(cell_spec.published_cell(), random.Random(0), "loguniform"),
    ],
)
def test_unknown_op_prior_is_refused_by_name(call):
    with pytest.raises(ValueError, match="op_prior is 'loguniform'; it must be one of uniform, kind"):
        call()


# -------------------------------------------------------------- canonical key


def test_canonical_key_invariant_under_renumbering():
    conv, sep, pool = cell_spec.OP_CONV1X1, cell_spec.OP_SEP3X3, cell_spec.OP_POOL
    # b0 and b1 are siblings under F, each with a child; swap them.
    a = _cell(
        _b(-1, conv),
        _b(-1, sep, (6, 21)),
        _b(0, pool, grid=(2, 4)),
        _b(1, sep, (3, 3)),
        _b(2, conv),
    )
    b = _cell(
        _b(-1, sep, (6, 21)),
        _b(-1, conv),
        _b(1, pool, grid=(2, 4)),
        _b(0, sep, (3, 3)),
        _b(2, conv),
    )
    assert a != b
    assert space.canonical_key(a) == space.canonical_key(b)
    # Same graph, children listed in another order.
    c = _cell(
        _b(-1, sep, (6, 21)),
        _b(0, sep, (3, 3)),
        _b(-1, conv),
        _b(2, pool, grid=(2, 4)),
        _b(3, conv),
    )
    assert space.canonical_key(a) == space.canonical_key(c)


def test_canonical_key_random_permutations():
    rng = random.Random(4)
    for _ in range(100):
        cell = space.sample_cell(rng, num_branches=6)
        # A random topological renumbering: repeatedly pick a ready branch.
        order, placed = [], set()
        while len(order) < len(cell):
            ready = [
                i
                for i in range(len(cell))
                if i not in placed and (cell[i].input < 0 or cell[i].input in placed)
            ]
            j = rng.choice(ready)
            order.append(j)
            placed.add(j)
        new_index = {old: new for new, old in enumerate(order)}
        permuted = _cell(
            *(
                dataclasses.replace(
                    cell[old],
                    input=-1 if cell[old].input < 0 else new_index[cell[old].input],
                )
                for old in order
            )
        )
        assert space.canonical_key(permuted) == space.canonical_key(cell)


def test_canonical_key_path_multiset_counterexample():
    conv, sep = cell_spec.OP_CONV1X1, cell_spec.OP_SEP3X3
    a = _cell(_b(-1, conv), _b(-1, conv), _b(0, sep), _b(0, sep))
    b = _cell(_b(-1, conv), _b(-1, conv), _b(0, sep), _b(1, sep))
    assert space.canonical_key(a) != space.canonical_key(b)


def test_canonical_key_different_ops():
    conv, sep, pool = cell_spec.OP_CONV1X1, cell_spec.OP_SEP3X3, cell_spec.OP_POOL
    keys = {
        space.canonical_key(_cell(_b(-1, conv), dataclasses.replace(op, input=0)))
        for op in cell_spec.all_ops()
    }
    assert len(keys) == 81
    assert space.canonical_key(_cell(_b(-1, sep, (6, 21)))) != space.canonical_key(
        _cell(_b(-1, sep, (21, 6)))
    )
    assert space.canonical_key(_cell(_b(-1, pool, grid=(2, 4)))) != space.canonical_key(
        _cell(_b(-1, pool, grid=(4, 2)))
    )
    # Same ops, different wiring.
    assert space.canonical_key(_cell(_b(-1, conv), _b(-1, sep))) != space.canonical_key(
        _cell(_b(-1, conv), _b(0, sep))
    )


def test_canonical_key_distinguishes_random_cells():
    rng = random.Random(5)
    cells = {space.sample_cell(rng, num_branches=3) for _ in range(300)}
    by_key = {}
    for cell in cells:
        by_key.setdefault(space.canonical_key(cell), []).append(cell)
    for group in by_key.values():  # Equal keys only for equal sorted op lists.
        ops = {tuple(sorted(cell_spec.op_token(b) for b in c)) for c in group}
        assert len(ops) == 1


# ------------------------------------------------------------------ validation


def _conv(rate, input, kernel=3):
    return {"kernel": kernel, "rate": rate, "op": "conv", "input": input}


_GOOD = [_conv([1, 6], -1), _conv([18, 15], 0), _conv([6, 3], 1)]


def _with(index, branch):
    cell = list(_GOOD)
    cell[index] = branch
    return cell


@pytest.mark.parametrize(
    "obj, pattern",
    [
        (
            _with(2, _conv([2, 6], 0)),
            r'branch 2: field "rate" is \[2, 6\]; each rate must be one of 1, 3, 6',
        ),
        (_with(1, _conv([1, 6, 3], 0)), r'branch 1: field "rate" is \[1, 6, 3\]'),
        (_with(1, _conv([1, True], 0)), r'branch 1: field "rate" is \[1, true\]'),
        (_with(1, _conv("1,6", 0)), r'branch 1: field "rate"'),
        (_with(1, _conv([1.0, 6], 0)), r'branch 1: field "rate"'),
        (_with(1, _conv([3, 3], 0, kernel=1)), r'branch 1: field "rate" is \[3, 3\]'),
        (
            _with(1, {"kernel": 3, "op": "conv", "input": 0}),
            r'branch 1: field "rate" is missing',
        ),
        (
            _with(1, {"rate": [1, 1], "op": "conv", "input": 0}),
            r'branch 1: field "kernel" is missing',
        ),
        (_with(1, _conv([1, 1], 0, kernel=5)), r'branch 1: field "kernel" is 5'),
        (_with(1, _conv([1, 1], 0, kernel=True)), r'branch 1: field "kernel" is true'),
        (
            _with(1, {"kernel": 3, "rate": [1, 1], "input": 0}),
            r'branch 1: field "op" is missing',
        ),
        (
            _with(1, {"kernel": 3, "rate": [1, 1], "op": "conv"}),
            r'branch 1: field "input" is missing',
        ),
        (
            _with(1, {"kernel": 3, "rate": [1, 1], "op": "atrous", "input": 0}),
            r'branch 1: field "op" is "atrous"',
        ),
        (
            _with(1, {"kernel": 3, "rate": [1, 1], "op": ["conv"], "input": 0}),
            r'branch 1: field "op"',
        ),
        (
            _with(1, {**_conv([1, 1], 0), "stride": 2}),
            r'branch 1: field "stride" is unknown',
        ),
        (
            _with(1, {**_conv([1, 1], 0), "grid_size": [1, 1]}),
            r'branch 1: field "grid_size" is not used',
        ),
        (
            _with(1, {"op": "pyramid_pooling", "input": 0}),
            r'branch 1: field "grid_size" is missing',
        ),
        (
            _with(1, {"op": "pyramid_pooling", "grid_size": [3, 1], "input": 0}),
            r'branch 1: field "grid_size" is \[3, 1\]; each grid size must be one of 1, 2, 4, 8',
        ),
        (
            _with(1, {"op": "pyramid_pooling", "grid_size": [1, False], "input": 0}),
            r'branch 1: field "grid_size"',
        ),
        (
            _with(
                1,
                {"op": "pyramid_pooling", "kernel": 1, "grid_size": [1, 1], "input": 0},
            ),
            r'branch 1: field "kernel" is not used',
        ),
        (
            _with(2, _conv([1, 1], 2)),
            r'branch 2: field "input" is 2; it must be -1 \(the backbone feature\) or an earlier branch index 0\.\.1',
        ),
        (_with(1, _conv([1, 1], 2)), r'branch 1: field "input" is 2'),
        (_with(0, _conv([1, 1], 0)), r'branch 0: field "input" is 0'),
        (_with(2, _conv([1, 1], -2)), r'branch 2: field "input" is -2'),
        (_with(2, _conv([1, 1], "0")), r'branch 2: field "input" is "0"'),
        (_with(2, _conv([1, 1], False)), r'branch 2: field "input" is false'),
        (_with(2, _conv([1, 1], 0.0)), r'branch 2: field "input" is 0.0'),
        (_with(1, [3, [1, 1], "conv", 0]), r"branch 1: expected a JSON object"),
        ([], r"cell: the cell is empty"),
        ({"branches": _GOOD}, r"cell: the cell must be a JSON list"),
    ],
)
def test_cell_from_json_errors(obj, pattern):
    with pytest.raises(ValueError, match=pattern):
        cell_spec.cell_from_json(obj)


def test_load_cell_errors_name_the_file(tmp_path):
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(_with(2, _conv([2, 6], 0))))
    with pytest.raises(
        ValueError, match=r'cell\.json: branch 2: field "rate" is \[2, 6\]'
    ):
        cell_spec.load_cell(path)
    assert str(path) in _raised(ValueError, cell_spec.load_cell, path)
    path.write_text("[{")
    assert _raised(ValueError, cell_spec.load_cell, path).startswith(
        f"{path}: not valid JSON"
    )
    missing = tmp_path / "nope.json"
    assert str(missing) in _raised(FileNotFoundError, cell_spec.load_cell, missing)


def _raised(kind, fn, *args):
    with pytest.raises(kind) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(input=-1, op="sep5x5"), r'field "op" is \'sep5x5\''),
        (dict(input=-2, op="conv1x1"), r'field "input" is -2'),
        (dict(input=True, op="conv1x1"), r'field "input" is True'),
        (dict(input=-1, op="sep3x3", rate=(2, 6)), r'field "rate" is \(2, 6\)'),
        (
            dict(input=-1, op="conv1x1", rate=(3, 3)),
            r'field "rate" is \(3, 3\); it must be \(1, 1\)',
        ),
        (dict(input=-1, op="pool", grid=(3, 3)), r'field "grid" is \(3, 3\)'),
        (
            dict(input=-1, op="sep3x3", grid=(2, 2)),
            r'field "grid" is \(2, 2\); it must be \(1, 1\)',
        ),
        (dict(input=-1, op="pool", grid=[1, 2, 4]), r'field "grid" is \[1, 2, 4\]'),
    ],
)
def test_branch_spec_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        BranchSpec(**kwargs)


def test_branch_spec_converts_lists():
    b = BranchSpec(input=-1, op=cell_spec.OP_SEP3X3, rate=[6, 21])
    assert b.rate == (6, 21) and b == _b(-1, cell_spec.OP_SEP3X3, (6, 21))
    hash(b)


def test_cell_spec_accepts_dicts_and_lists():
    cell = CellSpec(
        branches=[
            {"input": -1, "op": "pool", "grid": [2, 4]},
            _b(0, cell_spec.OP_CONV1X1),
        ]
    )
    assert isinstance(cell.branches, tuple)
    assert cell[0] == _b(-1, cell_spec.OP_POOL, grid=(2, 4))
    assert list(cell) == list(cell.branches) and len(cell) == 2
    assert CellSpec(branches=[dataclasses.asdict(b) for b in cell]) == cell


@pytest.mark.parametrize(
    "branches, pattern",
    [
        ([], r"the cell is empty"),
        (
            [_b(-1, "conv1x1"), _b(0, "conv1x1"), _b(2, "conv1x1")],
            r'branch 2: field "input" is 2; it must be -1 \(the backbone feature\) or an earlier branch index 0\.\.1',
        ),
        ([_b(-1, "conv1x1"), _b(3, "conv1x1")], r'branch 1: field "input" is 3'),
        ([_b(0, "conv1x1")], r'branch 0: field "input" is 0'),
        (
            [_b(-1, "conv1x1"), {"input": 0, "op": "pool", "grid": (3, 1)}],
            r'branch 1: BranchSpec: field "grid" is \(3, 1\)',
        ),
        (
            [_b(-1, "conv1x1"), {"input": 0, "op": "pool", "size": 3}],
            r'branch 1: field "size" is unknown',
        ),
        ([_b(-1, "conv1x1"), {"op": "pool"}], r"branch 1: .*input"),
        ([_b(-1, "conv1x1"), "conv1x1"], r"branch 1: expected a BranchSpec"),
    ],
)
def test_cell_spec_errors(branches, pattern):
    with pytest.raises(ValueError, match=pattern):
        CellSpec(branches=branches)


# ------------------------------------------------------------------- dump_cell


def test_dump_cell_refuses_to_overwrite(tmp_path):
    path = tmp_path / "cell.json"
    first, second = space.sample_cell(random.Random(8)), space.sample_cell(
        random.Random(9)
    )
    cell_spec.dump_cell(first, path)
    with pytest.raises(FileExistsError, match="cell.json"):
        cell_spec.dump_cell(second, path)
    assert cell_spec.load_cell(path) == first
    cell_spec.dump_cell(second, path, overwrite=True)
    assert cell_spec.load_cell(path) == second
    assert path.read_text() == cell_spec.cell_to_json_string(second) + "\n"
    assert os.listdir(tmp_path) == ["cell.json"]


def test_dump_cell_invalid_cell_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="branch 0"):
        cell_spec.dump_cell([_b(0, cell_spec.OP_CONV1X1)], tmp_path / "bad.json")
    assert os.listdir(tmp_path) == []


def test_cell_json_that_is_a_directory_a_fifo_or_huge_is_refused(tmp_path):
    # A directory was a traceback, a FIFO a hang, 1,000 branches a 95 M-
    # parameter head: each is now one error naming the file.
    assert "a directory" in _raised(ValueError, cell_spec.load_cell, tmp_path)
    fifo = tmp_path / "cell.fifo"
    os.mkfifo(fifo)
    assert f"{fifo}: not a regular file" in _raised(
        ValueError, cell_spec.load_cell, fifo
    )
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"op": "conv", "kernel": 1, "rate": [1, 1], "input": -1}] * 1000))
    message = _raised(ValueError, cell_spec.load_cell, many)
    assert f"{many}: the cell has 1000 branches" in message and f"at most {cell_spec.MAX_BRANCHES}" in message
    CellSpec(branches=[BranchSpec(input=-1, op="conv1x1")] * cell_spec.MAX_BRANCHES)
