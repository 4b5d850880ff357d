"""The Dense Prediction Cell search space (Chen et al., 2018): the search's view.

The cells themselves (`BranchSpec`, `CellSpec`, the 81 ops, DeepLab's JSON)
are `deeplab_dpc.cells.cell_spec`; this module adds what only a search needs:
the space's size, uniform sampling, one-step mutation and a canonical key
that is equal for the same graph up to branch order. No TensorFlow.
"""

import dataclasses
import math
import numbers
import random

from deeplab_dpc.cells import cell_spec

_ALL_OPS = cell_spec.all_ops()
_OP_INDEX = {op: i for i, op in enumerate(_ALL_OPS)}
# The paper's three kinds of op, in `all_ops` order: the 1x1 conv, the 64
# 3x3 atrous separable convs, the 16 average pyramid poolings.
_KINDS = tuple(
    tuple(op for op in _ALL_OPS if op.op == kind)
    for kind in dict.fromkeys(op.op for op in _ALL_OPS)
)
# How an op is drawn (`sample_op`).
OP_PRIORS = ("uniform", "kind")
# The op prior of the search's cell samplers (`strategies.make_sampler`,
# `--op_prior`) unless told; `sample_cell` and `neighbour` themselves default
# to "uniform", the space as it is. Measured (bench/search_efficacy.py, 10
# trials a search): drawing the op's kind first finds far better cells end
# to end than drawing each of the 81 ops alike, where 64 of 81 draws are
# atrous separable convs and the 1x1 conv comes up once in 81.
DEFAULT_OP_PRIOR = "kind"


def space_size(num_branches: int) -> int:
    """Number of cells with `num_branches` branches: B! * 81**B.

    Raises:
        ValueError: if `num_branches` is not an int >= 1.
    """
    if (
        not isinstance(num_branches, numbers.Integral)
        or isinstance(num_branches, bool)
        or num_branches < 1
    ):
        raise ValueError(f"num_branches is {num_branches!r}; it must be an int >= 1")
    return math.factorial(num_branches) * cell_spec.NUM_OPS**num_branches


def check_op_prior(op_prior: str) -> None:
    """Raises ValueError naming `op_prior` unless it is one of `OP_PRIORS`."""
    if op_prior not in OP_PRIORS:
        raise ValueError(
            f"op_prior is {op_prior!r}; it must be one of {', '.join(OP_PRIORS)}"
        )


def _draw_op(rng: random.Random, op_prior: str) -> cell_spec.BranchSpec:
    if op_prior == "uniform":
        return rng.choice(_ALL_OPS)
    return rng.choice(rng.choice(_KINDS))


def sample_op(rng: random.Random, op_prior: str = "uniform") -> cell_spec.BranchSpec:
    """Draws one of the 81 ops (a `BranchSpec` reading input -1).

    Args:
        rng: `random.Random`, the only source of randomness.
        op_prior: "uniform": each op 1/81, so 64 of 81 draws are atrous
            separable convs, 16 poolings and 1 the 1x1 conv. "kind": the kind
            first, uniformly among the paper's three (1x1 conv, 3x3 atrous
            separable conv, average pyramid pooling), then its rates or grid
            uniformly: the 1x1 conv 1/3, each pooling grid 1/48 (global image
            pooling among them), each separable conv 1/192.

    Raises:
        ValueError: for an unknown `op_prior`.
    """
    check_op_prior(op_prior)
    return _draw_op(rng, op_prior)


def sample_cell(
    rng: random.Random, num_branches: int = 5, op_prior: str = "uniform"
) -> cell_spec.CellSpec:
    """Samples a `CellSpec`: branch i's input uniformly over -1..i-1, its op by `op_prior`.

    Args:
        rng: `random.Random`, the only source of randomness.
        num_branches: int >= 1.
        op_prior: how each op is drawn (`sample_op`); "uniform" draws the
            cell uniformly from the space.

    Raises:
        ValueError: if `num_branches` is not an int >= 1, or for an unknown
            `op_prior`.
    """
    space_size(num_branches)  # Validates.
    check_op_prior(op_prior)
    return cell_spec.CellSpec(
        branches=tuple(
            dataclasses.replace(
                _draw_op(rng, op_prior), input=rng.randrange(i + 1) - 1
            )
            for i in range(num_branches)
        )
    )


def neighbour(cell, rng: random.Random, op_prior: str = "uniform") -> cell_spec.CellSpec:
    """Changes one branch's op or input.

    A branch is picked uniformly; then its op is changed (to one of the 80
    others: uniformly, or with `op_prior="kind"` drawn as `sample_op` draws
    until it differs), or with probability 1/2 its input instead (to another
    allowed one, uniformly) when it has a choice (branch 0 does not).

    Raises:
        ValueError: for an unknown `op_prior`.

    Returns:
        A valid `CellSpec` differing from `cell` in one field of one branch.
    """
    check_op_prior(op_prior)
    cell = cell_spec.as_cell(cell)
    i = rng.randrange(len(cell))
    branch = cell[i]
    if i > 0 and rng.random() < 0.5:
        new_input = rng.randrange(i) - 1  # The i other choices in -1..i-1.
        if new_input >= branch.input:
            new_input += 1
        new = dataclasses.replace(branch, input=new_input)
    elif op_prior == "uniform":
        current = _OP_INDEX[dataclasses.replace(branch, input=-1)]
        k = rng.randrange(cell_spec.NUM_OPS - 1)
        if k >= current:
            k += 1
        new = dataclasses.replace(_ALL_OPS[k], input=branch.input)
    else:
        current = dataclasses.replace(branch, input=-1)
        op = _draw_op(rng, op_prior)
        while op == current:
            op = _draw_op(rng, op_prior)
        new = dataclasses.replace(op, input=branch.input)
    branches = list(cell.branches)
    branches[i] = new
    return cell_spec.CellSpec(branches=tuple(branches))


def canonical_key(cell) -> str:
    """A key equal for two cells iff they are the same graph up to branch order.

    Each branch has one input, so a cell is a rooted tree with F at the root;
    the key is the tree's canonical form with sorted children, such as
    `F(conv1x1(),sep3x3@6x21(pool@2x4()))`.
    """
    cell = cell_spec.as_cell(cell)
    children: list[list[str]] = [[] for _ in range(len(cell) + 1)]  # Last: F.
    for i in reversed(range(len(cell))):  # Children come after their parent.
        key = f"{cell_spec.op_token(cell[i])}({','.join(sorted(children[i]))})"
        children[cell[i].input].append(key)  # Input -1 goes to the F slot.
    return f"F({','.join(sorted(children[-1]))})"
