"""The cell space and the objectives as Optuna sees them.

A cell of B branches is flattened to 2B categorical parameters: `op_<i>` over
the 81 op tokens (`OP_TOKENS`, e.g. "sep3x3@6x21") and `input_<i>` over the
legal inputs of branch i (-1 for the backbone feature, else 0..i-1). Every
assignment of these parameters is a valid cell, so any sampler proposes only
valid cells. Objectives are named (`OBJECTIVES`) and map to Optuna's study
directions.
"""

import dataclasses
from typing import Sequence

from optuna.distributions import CategoricalDistribution
from optuna.study import StudyDirection

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import space

# Objective name -> direction; values come from the trial result of that name.
OBJECTIVES = {
    "miou": StudyDirection.MAXIMIZE,
    "madds": StudyDirection.MINIMIZE,
    "params": StudyDirection.MINIMIZE,
}
OP_TOKENS = tuple(cell_spec.op_token(op) for op in cell_spec.all_ops())
_OP_BY_TOKEN = dict(zip(OP_TOKENS, cell_spec.all_ops()))


def _check_num_branches(num_branches) -> None:
    space.space_size(num_branches)  # Raises ValueError naming the value.


def distributions(num_branches: int) -> dict:
    """The flattened search space.

    Args:
        num_branches: int >= 1, the number of branches B.

    Returns:
        Dict from parameter name to `CategoricalDistribution`, in the order
        op_0, input_0, op_1, input_1, ...; `input_0` has the single choice -1.

    Raises:
        ValueError: if `num_branches` is not an int >= 1.
    """
    _check_num_branches(num_branches)
    out = {}
    for i in range(num_branches):
        out[f"op_{i}"] = CategoricalDistribution(OP_TOKENS)
        out[f"input_{i}"] = CategoricalDistribution(tuple(range(-1, i)))
    return out


def cell_to_params(cell) -> dict:
    """Returns the flattened parameters of a `CellSpec` (or what it accepts)."""
    cell = cell if isinstance(cell, cell_spec.CellSpec) else cell_spec.CellSpec(cell)
    params = {}
    for i, branch in enumerate(cell):
        params[f"op_{i}"] = cell_spec.op_token(branch)
        params[f"input_{i}"] = branch.input
    return params


def params_to_cell(params: dict, num_branches: int) -> cell_spec.CellSpec:
    """Builds the cell of flattened parameters.

    Args:
        params: dict with `op_<i>` (an op token) and `input_<i>` (an int) for
            i in 0..num_branches-1; other keys are ignored.
        num_branches: int >= 1.

    Returns:
        A valid `CellSpec`.

    Raises:
        ValueError: naming the parameter that is missing or out of range.
    """
    _check_num_branches(num_branches)
    branches = []
    for i in range(num_branches):
        for name in (f"op_{i}", f"input_{i}"):
            if name not in params:
                raise ValueError(
                    f'parameter "{name}" is missing; a cell of {num_branches} '
                    f"branches needs op_0..op_{num_branches - 1} and "
                    f"input_0..input_{num_branches - 1}"
                )
        token, source = params[f"op_{i}"], params[f"input_{i}"]
        if token not in _OP_BY_TOKEN:
            raise ValueError(
                f'parameter "op_{i}" is {token!r}; it must be one of the 81 op '
                "tokens such as 'conv1x1', 'sep3x3@6x21' or 'pool@2x4'"
            )
        if not isinstance(source, int) or not -1 <= source <= i - 1:
            raise ValueError(
                f'parameter "input_{i}" is {source!r}; it must be an int in '
                f"-1..{i - 1}"
            )
        branches.append(dataclasses.replace(_OP_BY_TOKEN[token], input=source))
    return cell_spec.CellSpec(branches=tuple(branches))


def directions(objectives: Sequence[str]) -> list:
    """Returns the `StudyDirection` of each objective name.

    Raises:
        ValueError: if `objectives` is empty, repeats a name or has an
            unknown one.
    """
    objectives = tuple(objectives)
    if not objectives or len(set(objectives)) != len(objectives):
        raise ValueError(
            f"objectives is {objectives!r}; it must list distinct names out of "
            f"{', '.join(OBJECTIVES)}"
        )
    for name in objectives:
        if name not in OBJECTIVES:
            raise ValueError(
                f"objective {name!r} is unknown; known objectives are "
                f"{', '.join(OBJECTIVES)}"
            )
    return [OBJECTIVES[name] for name in objectives]
