"""Hard constraints a user puts on the searched cell, e.g. a head-MAdds budget.

A constraint is a callable `feasible(cell) -> bool`. The cell samplers
(`strategies.CellSampler`) draw again until their proposal is feasible; the
engine (`engine.run_worker`) checks every proposal of any strategy before
training it and fails an infeasible one without training it, so no trial of
any strategy trains or reports a cell over the budget.

Example: the best cell no costlier than 1.1x DeepLab's ASPP head.

>>> budget = HeadBudget(parse_max_head_madds("1.1xaspp", aspp_madds=7.2e8),
...                     cost_fn=lambda cell: 7.0e8)
>>> budget.max_head_madds
792000000
"""

import re
import threading
from typing import Callable

from deeplab_dpc.search import space

# Proposals drawn for one feasible cell before giving up on the constraints.
MAX_INFEASIBLE_PROPOSALS = 1000
# The user attribute of a trial the engine failed for breaking the
# constraints (its value says how); samplers read it to learn from the trial.
ATTR_INFEASIBLE = "infeasible"


class InfeasibleConstraints(RuntimeError):
    """No cell the strategy proposes meets the user's constraints."""


def draw_feasible(draw: Callable, feasible, who: str):
    """The first of up to `MAX_INFEASIBLE_PROPOSALS` cells `draw()` gives that
    `feasible` accepts (any cell when `feasible` is None).

    Raises:
        InfeasibleConstraints: naming `who` and the constraints, when none is.
    """
    for _ in range(MAX_INFEASIBLE_PROPOSALS):
        cell = draw()
        if feasible is None or feasible(cell):
            return cell
    raise InfeasibleConstraints(
        f"{who}: none of {MAX_INFEASIBLE_PROPOSALS} proposals met the "
        f"constraints ({feasible!r}); relax them"
    )


_RELATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*aspp\s*$", re.IGNORECASE)


def parse_max_head_madds(text, *, aspp_madds=None):
    """The budget of `--max_head_madds`: a number, or `<k>xaspp`.

    Args:
      text: "8e8", "800000000", or "1.1xaspp" (k times the head MAdds of
        DeepLab's ASPP, rates 6/12/18 + image pooling, at the same crop).
      aspp_madds: the ASPP head's MAdds; needed for the relative form.

    Returns:
      int > 0.

    Raises:
      ValueError: naming the flag and what is wrong.
    """
    match = _RELATIVE.match(str(text))
    if match:
        if aspp_madds is None:
            raise ValueError("--max_head_madds: the relative form needs ASPP's MAdds")
        value = float(match.group(1)) * float(aspp_madds)
    else:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"--max_head_madds={text!r}: give a number of MAdds (e.g. 8e8) "
                "or a multiple of ASPP's head (e.g. 1.1xaspp)"
            ) from None
    if not value > 0 or value != value:
        raise ValueError(f"--max_head_madds={text!r} must be positive")
    return int(round(value))


class HeadBudget:
    """Feasible when the cell's head MAdds are at most `max_head_madds`.

    Costs are computed by `cost_fn(cell)` once per distinct cell (by
    `space.canonical_key`) and kept.

    Args:
      max_head_madds: int > 0.
      cost_fn: callable `CellSpec -> MAdds` (e.g. `proxy.head_cost` at the
        search's target crop).
    """

    def __init__(self, max_head_madds: int, cost_fn: Callable):
        if isinstance(max_head_madds, bool) or not max_head_madds > 0:
            raise ValueError(f"max_head_madds is {max_head_madds!r}; it must be > 0")
        self.max_head_madds = int(max_head_madds)
        self._cost_fn = cost_fn
        self._costs = {}
        self._lock = threading.Lock()

    def cost(self, cell) -> int:
        key = space.canonical_key(cell)
        with self._lock:
            if key in self._costs:
                return self._costs[key]
        value = int(self._cost_fn(cell))
        with self._lock:
            self._costs[key] = value
        return value

    def __call__(self, cell) -> bool:
        return self.cost(cell) <= self.max_head_madds

    def reason(self, cell) -> str:
        """Why `cell` is infeasible (or an empty string)."""
        cost = self.cost(cell)
        if cost <= self.max_head_madds:
            return ""
        return f"head MAdds {cost:,} exceed --max_head_madds={self.max_head_madds:,}"

    def __repr__(self):
        return f"HeadBudget(max_head_madds={self.max_head_madds})"
