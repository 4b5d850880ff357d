"""The cell space and the objectives as Optuna sees them.

A cell of B branches is flattened to categorical parameters, in one of two
forms named by the op priors of `space.OP_PRIORS`:

* "uniform": 2B parameters, `op_<i>` over the 81 op tokens (`OP_TOKENS`,
  e.g. "sep3x3@6x21") and `input_<i>` over the legal inputs of branch i (-1
  for the backbone feature, else 0..i-1). Drawn uniformly, each op is 1/81.
* "kind": 4B parameters, `kind_<i>` over the paper's three kinds of op
  (`KINDS`: the 1x1 conv, the 3x3 atrous separable conv, average pyramid
  pooling), `sep_<i>` over the 64 separable convs' tokens, `pool_<i>` over
  the 16 pooling grids' tokens, and `input_<i>`. Branch i's op is the 1x1
  conv, `sep_<i>` or `pool_<i>` as `kind_<i>` says; the other of the two is
  unused. Every parameter is always present (no conditional parameters, so
  every sampler, TPE's multivariate model and Vizier's included, sees one
  fixed space), and drawn uniformly they give `space.sample_op`'s "kind"
  prior: the 1x1 conv 1/3, each pooling grid 1/48, each separable conv 1/192.

Every assignment of the parameters is a valid cell, so any sampler proposes
only valid cells; `params_to_cell` reads either form. Objectives are named
(`OBJECTIVES`) and map to Optuna's study directions.
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
# The "kind" form: the kinds (`BranchSpec.op`) and, for the two with
# settings, the parameter prefix (`<prefix>_<i>`) and its tokens.
KINDS = (cell_spec.OP_CONV1X1, cell_spec.OP_SEP3X3, cell_spec.OP_POOL)
_PREFIX = {cell_spec.OP_SEP3X3: "sep", cell_spec.OP_POOL: "pool"}
_CONV1X1_TOKEN = cell_spec.op_token(
    cell_spec.BranchSpec(input=-1, op=cell_spec.OP_CONV1X1)
)
_KIND_PARAMS = {
    kind: tuple(t for t, op in _OP_BY_TOKEN.items() if op.op == kind)
    for kind in _PREFIX
}


def _check_num_branches(num_branches) -> None:
    space.space_size(num_branches)  # Raises ValueError naming the value.


def distributions(num_branches: int, op_prior: str = "uniform") -> dict:
    """The flattened search space.

    Args:
        num_branches: int >= 1, the number of branches B.
        op_prior: the form (`space.OP_PRIORS`; see the module docstring).

    Returns:
        Dict from parameter name to `CategoricalDistribution`, in the order
        op_0, input_0, op_1, input_1, ... ("uniform") or kind_0, sep_0,
        pool_0, input_0, ... ("kind"); `input_0` has the single choice -1.

    Raises:
        ValueError: if `num_branches` is not an int >= 1, or for an unknown
            `op_prior`.
    """
    _check_num_branches(num_branches)
    space.check_op_prior(op_prior)
    out = {}
    for i in range(num_branches):
        if op_prior == "uniform":
            out[f"op_{i}"] = CategoricalDistribution(OP_TOKENS)
        else:
            out[f"kind_{i}"] = CategoricalDistribution(KINDS)
            for kind, tokens in _KIND_PARAMS.items():
                out[f"{_PREFIX[kind]}_{i}"] = CategoricalDistribution(tokens)
        out[f"input_{i}"] = CategoricalDistribution(tuple(range(-1, i)))
    return out


def cell_to_params(cell, op_prior: str = "uniform", rng=None) -> dict:
    """Returns the flattened parameters of a `CellSpec` (or what it accepts).

    In the "kind" form a branch's unused settings parameter (`sep_<i>` of a
    pooling branch, both of a 1x1 conv) takes its first choice, or a random
    one drawn from `rng` (a `random.Random`), so that a model fitted to the
    parameters does not see one filler value again and again.

    Raises:
        ValueError: for an unknown `op_prior`.
    """
    space.check_op_prior(op_prior)
    cell = cell if isinstance(cell, cell_spec.CellSpec) else cell_spec.CellSpec(cell)
    params = {}
    for i, branch in enumerate(cell):
        token = cell_spec.op_token(branch)
        if op_prior == "uniform":
            params[f"op_{i}"] = token
        else:
            params[f"kind_{i}"] = branch.op
            for kind, tokens in _KIND_PARAMS.items():
                if branch.op == kind:
                    filler = token
                else:
                    filler = tokens[0] if rng is None else rng.choice(tokens)
                params[f"{_PREFIX[kind]}_{i}"] = filler
        params[f"input_{i}"] = branch.input
    return params


def _token(params: dict, i: int) -> str:
    """Branch i's op token, from `op_<i>` or from `kind_<i>` and its setting."""
    if f"op_{i}" in params or f"kind_{i}" not in params:
        return params[f"op_{i}"]
    kind = params[f"kind_{i}"]
    if kind == cell_spec.OP_CONV1X1:
        return _CONV1X1_TOKEN
    if kind not in _KIND_PARAMS:
        raise ValueError(
            f'parameter "kind_{i}" is {kind!r}; it must be one of '
            f"{', '.join(KINDS)}"
        )
    name = f"{_PREFIX[kind]}_{i}"
    if name not in params:
        raise ValueError(f'parameter "{name}" is missing; "kind_{i}" is {kind!r}')
    token = params[name]
    if token not in _KIND_PARAMS[kind]:
        raise ValueError(
            f'parameter "{name}" is {token!r}; it must be a {kind} token such as '
            f"{_KIND_PARAMS[kind][0]!r}"
        )
    return token


def params_to_cell(params: dict, num_branches: int) -> cell_spec.CellSpec:
    """Builds the cell of flattened parameters.

    Args:
        params: dict with `input_<i>` (an int) and either `op_<i>` (an op
            token) or `kind_<i>` with its setting (`sep_<i>` or `pool_<i>`)
            for i in 0..num_branches-1; other keys are ignored.
        num_branches: int >= 1.

    Returns:
        A valid `CellSpec`.

    Raises:
        ValueError: naming the parameter that is missing or out of range.
    """
    _check_num_branches(num_branches)
    branches = []
    for i in range(num_branches):
        op_name = f"op_{i}" if f"kind_{i}" not in params else f"kind_{i}"
        for name in (op_name, f"input_{i}"):
            if name not in params:
                raise ValueError(
                    f'parameter "{name}" is missing; a cell of {num_branches} '
                    f"branches needs op_0..op_{num_branches - 1} (or "
                    f"kind_0..kind_{num_branches - 1} with their settings) and "
                    f"input_0..input_{num_branches - 1}"
                )
        token, source = _token(params, i), params[f"input_{i}"]
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
