"""Random mutations of the published cell JSON: a valid cell or a clear error.

The audit of issue 25 fed 3,000 random mutations of
`deeplab_dpc/cells/*.json` to the loader. This reruns it with a fixed seed:
keys deleted or added, values of the wrong type, rates and grids out of
range, lists of the wrong length or huge, branches duplicated by the
thousand, deep nesting, byte-level damage (truncation, flipped and inserted
bytes, non-UTF-8, a BOM, NaN). Each mutated file must either load as a
valid cell (which then survives a round trip through DeepLab's JSON) or
raise `ValueError` with a one-line message that names the file; never
another exception, never a hang.

By hand, with more mutations and the counts printed:

  python tests/test_cell_json_mutations.py 3000
"""

import glob
import json
import os
import random
import sys
import tempfile
import time

from deeplab_dpc.cells import cell_spec

CELLS = sorted(
    glob.glob(
        os.path.join(os.path.dirname(os.path.abspath(cell_spec.__file__)), "*.json")
    )
)
SEED = 25
NUM_MUTATIONS = 300

_KEYS = ("op", "kernel", "rate", "grid_size", "input", "target_size")
_WRONG_VALUES = (
    None,
    True,
    False,
    "",
    "conv",
    "pyramid_pooling",
    "3",
    3.0,
    6.5,
    -1,
    0,
    2,
    10**30,
    -(10**30),
    [],
    [1],
    [1, 2, 3],
    [6, 6],
    [1.0, 6.0],
    ["1", "6"],
    [None, None],
    [[1], [6]],
    {},
    {"op": "conv"},
    [True, False],
)


def _branch(rng, cell):
    return rng.randrange(len(cell)) if cell else None


def _mutate_value(rng, cell):
    """One change to the parsed JSON (a list of branch dicts); returns it."""
    kind = rng.randrange(15)
    i = _branch(rng, cell)
    if i is None:
        return [{"op": "conv", "kernel": 1, "input": -1}]
    branch = cell[i] if isinstance(cell[i], dict) else {}
    if kind == 0 and branch:  # Delete a key.
        branch.pop(rng.choice(sorted(branch)), None)
    elif kind == 1:  # A wrong value for a key (present or not).
        branch[rng.choice(_KEYS)] = rng.choice(_WRONG_VALUES)
    elif kind == 2:  # Rates or grids out of range.
        key = rng.choice(("rate", "grid_size"))
        branch[key] = [rng.randint(-50, 50), rng.randint(-50, 50)]
    elif kind == 3:  # A pair of the wrong length, up to huge.
        key = rng.choice(("rate", "grid_size"))
        branch[key] = [rng.choice((1, 2, 6))] * rng.choice((0, 1, 3, 100, 100000))
    elif kind == 4:  # Branches duplicated, up to huge.
        cell = cell + [branch] * rng.choice((1, 5, 27, 28, 1000, 20000))
    elif kind == 5 and len(cell) > 1:  # A branch deleted: inputs now dangle.
        del cell[i]
    elif kind == 6:  # Branches shuffled: inputs point forward.
        rng.shuffle(cell)
    elif kind == 7:  # Another op, or none known.
        branch["op"] = rng.choice(("conv", "pyramid_pooling", "Conv", "pool", "", 7))
    elif kind == 8:  # An unknown key.
        branch[rng.choice(("name", "Op", "rates", "kernel_size", ""))] = 1
    elif kind == 9:  # An input out of range.
        branch["input"] = rng.randint(-5, len(cell) + 5)
    elif kind == 10:  # Not a list of objects.
        return rng.choice(
            (
                {"branches": cell},
                cell[0],
                "cell",
                5,
                None,
                [],
                [cell],
                [[b] for b in cell],
                [None] * 3,
            )
        )
    elif kind == 11:  # A pooling branch, maybe with conv's keys.
        branch.clear()
        branch.update(op="pyramid_pooling", grid_size=[1, 1], input=-1)
        if rng.random() < 0.5:
            branch[rng.choice(("kernel", "rate"))] = 3
    elif kind == 12:  # Kernel 1 with a rate, or kernel 3 without.
        branch.update(op="conv", kernel=rng.choice((1, 3)))
        if rng.random() < 0.5:
            branch.pop("rate", None)
        else:
            branch["rate"] = [rng.choice(cell_spec.RATES), rng.choice((1, 3))]
    elif kind == 13:  # A branch replaced by a non-object.
        cell[i] = rng.choice(("conv", 1, None, [], [branch]))
    else:  # Nested deeper.
        branch[rng.choice(_KEYS)] = [[[rng.choice(_WRONG_VALUES)]]]
    if kind in (0, 1, 2, 3, 7, 8, 9, 11, 12, 14):  # Changed `branch` in place.
        cell[i] = branch
    return cell


def _mutate_bytes(rng, data):
    """One change to the file's bytes."""
    kind = rng.randrange(10)
    if not data:
        return rng.choice((b"", b"[", data))
    if kind == 0:  # Truncated.
        return data[: rng.randrange(len(data) + 1)]
    if kind == 1:  # Bytes flipped.
        data = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 2:  # Random bytes inserted.
        at = rng.randrange(len(data) + 1)
        return data[:at] + os.urandom(rng.randint(1, 20)) + data[at:]
    if kind == 3:  # Not UTF-8.
        return rng.choice((b"\xff\xfe", b"\x80", b"\xc3\x28")) + data
    if kind == 4:  # A byte-order mark, or UTF-16.
        utf16 = data.decode("utf-8", "replace").encode("utf-16")
        return rng.choice((b"\xef\xbb\xbf" + data, utf16))
    if kind == 5:  # Nested deeper than the parser's recursion.
        depth = rng.choice((100, 10000, 200000))
        return b"[" * depth + b"]" * depth
    if kind == 6:  # Empty, whitespace, or a different JSON value.
        return rng.choice((b"", b"   \n", b"null", b"{}", b"[]", b'"x"', b"1e999"))
    if kind == 7:  # NaN and infinities where numbers go.
        token = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-0"))
        return data.replace(b"6", token, 1)
    if kind == 8:  # A lone surrogate or a NUL in a string.
        return data.replace(b'"conv"', rng.choice((b'"\\ud800"', b'"co\\u0000nv"')), 1)
    return data + rng.choice((b"]", b",", b"}", b"\n\n", b" // comment"))


def mutations(rng, original):
    """Yields (kind, bytes) of mutated cell files, forever."""
    text = original.decode()
    while True:
        if rng.random() < 0.6:
            cell = json.loads(text)
            for _ in range(rng.randint(1, 3)):
                cell = _mutate_value(rng, cell) if isinstance(cell, list) else cell
            yield "value", json.dumps(cell).encode()
        else:
            data = original
            for _ in range(rng.randint(1, 2)):
                data = _mutate_bytes(rng, data)
            yield "bytes", data


def audit(num_mutations, seed=SEED, folder=None):
    """Loads `num_mutations` mutated cells; returns counts and the failures.

    Returns:
      dict: "valid", "clear" (ValueError naming the file), "unclear"
      (ValueError not naming the file, or over several lines), "other"
      (any other exception) and "failures" (up to 20 descriptions),
      "slowest" (seconds).
    """
    rng = random.Random(seed)
    counts = {"valid": 0, "clear": 0, "unclear": 0, "other": 0, "failures": []}
    slowest = 0.0
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = os.path.join(tmp, "mutated_cell.json")
        sources = [open(p, "rb").read() for p in CELLS]
        streams = [mutations(rng, source) for source in sources]
        for k in range(num_mutations):
            kind, data = next(streams[k % len(streams)])
            with open(path, "wb") as f:
                f.write(data)
            start = time.monotonic()
            try:
                cell = cell_spec.load_cell(path)
            except ValueError as e:
                message = str(e)
                if message.startswith(path) and "\n" not in message:
                    counts["clear"] += 1
                else:
                    counts["unclear"] += 1
                    counts["failures"].append(f"{kind} {data[:80]!r}: {message[:200]}")
            except Exception as e:  # pylint: disable=broad-except
                counts["other"] += 1
                counts["failures"].append(
                    f"{kind} {data[:80]!r}: {type(e).__name__}: {str(e)[:200]}"
                )
            else:
                counts["valid"] += 1
                assert isinstance(cell, cell_spec.CellSpec)
                assert cell_spec.cell_from_json(cell_spec.cell_to_json(cell)) == cell
            slowest = max(slowest, time.monotonic() - start)
    counts["failures"] = counts["failures"][:20]
    counts["slowest"] = slowest
    return counts


def test_every_mutation_loads_or_fails_clearly(tmp_path):
    assert CELLS, "no published cell JSON"
    counts = audit(NUM_MUTATIONS, folder=str(tmp_path))
    assert counts["other"] == 0 and counts["unclear"] == 0, counts["failures"]
    # Both outcomes occur: the mutations are neither all harmless nor all fatal.
    assert counts["valid"] > 0 and counts["clear"] > NUM_MUTATIONS // 2, counts
    assert counts["slowest"] < 2.0, counts  # Nothing hangs.


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else NUM_MUTATIONS
    started = time.monotonic()
    result = audit(n)
    print(
        f"{n} mutations in {time.monotonic() - started:.1f} s: "
        f"{result['valid']} valid cells, {result['clear']} clear errors, "
        f"{result['unclear']} unclear errors, {result['other']} other exceptions; "
        f"slowest load {result['slowest']:.3f} s"
    )
    for failure in result["failures"]:
        print("  " + failure)
