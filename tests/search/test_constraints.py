"""Hard constraints: no trial of any strategy trains a cell over the budget."""

import importlib.util
import random

import optuna
from optuna.trial import TrialState
import pytest
import search_testing

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import constraints
from deeplab_dpc.search import engine
from deeplab_dpc.search import space

NUM_BRANCHES = 3


def _madds(cell):
    return search_testing.analytic_scores(cell)["madds"]


def _median_budget():
    rng = random.Random(0)
    costs = sorted(_madds(space.sample_cell(rng, NUM_BRANCHES)) for _ in range(200))
    return costs[len(costs) // 2]


_STRATEGIES = [
    ("random_local", ("miou",)),
    ("regularized_evolution", ("miou",)),
    ("tpe", ("miou",)),
    ("nsga2", ("miou", "madds")),
]
if importlib.util.find_spec("vizier") is not None:
    _STRATEGIES.append(("vizier:RANDOM_SEARCH", ("miou",)))


@pytest.mark.parametrize("strategy,objectives", _STRATEGIES)
def test_no_trial_of_any_strategy_exceeds_the_budget(tmp_path, strategy, objectives):
    budget = constraints.HeadBudget(_median_budget(), _madds)
    options = {"population_size": 4, "tournament_size": 2}
    study = engine.create_or_load_study(
        search_dir=tmp_path / "search",
        strategy=strategy,
        objectives=objectives,
        num_branches=NUM_BRANCHES,
        seed=1,
        pruner=optuna.pruners.NopPruner(),
        feasible=budget,
        **options,
    )
    trained = []
    objective = search_testing.make_objective()

    def counting(cell, report):
        trained.append(cell)
        return objective(cell, report)

    stats = engine.run_worker(study, counting, num_trials_total=10, feasible=budget)
    counted = study.get_trials(states=engine.COUNTED_STATES)
    assert len(counted) == 10
    assert all(budget(c) for c in trained), [budget.cost(c) for c in trained]
    assert all(t.user_attrs["madds"] <= budget.max_head_madds for t in counted)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert stats.infeasible == len(failed)
    for t in failed:
        cell = cell_spec.cell_from_json(t.user_attrs[engine.ATTR_CELL])
        assert not budget(cell)
        assert "exceed --max_head_madds" in t.user_attrs[engine.ATTR_INFEASIBLE]
        assert "miou" not in t.user_attrs  # Never trained.
    if strategy in ("random_local", "regularized_evolution"):
        assert not failed  # The cell samplers only propose feasible cells.


def test_a_budget_no_cell_meets_stops_with_a_clear_error(tmp_path):
    budget = constraints.HeadBudget(1, _madds)
    study = engine.create_or_load_study(
        search_dir=tmp_path / "search",
        strategy="random_local",
        num_branches=NUM_BRANCHES,
        seed=0,
        feasible=budget,
    )
    with pytest.raises(constraints.InfeasibleConstraints, match="relax them"):
        engine.run_worker(
            study, search_testing.make_objective(), num_trials_total=2, feasible=budget
        )


def test_the_engine_gives_up_on_endless_infeasible_proposals(tmp_path):
    budget = constraints.HeadBudget(1, _madds)
    study = engine.create_or_load_study(
        search_dir=tmp_path / "search", strategy="tpe", num_branches=2, seed=0
    )
    with pytest.raises(constraints.InfeasibleConstraints, match="in a row"):
        engine.run_worker(
            study, search_testing.make_objective(), num_trials_total=2, feasible=budget
        )
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == engine.MAX_INFEASIBLE_IN_A_ROW


@pytest.mark.parametrize(
    "text,expected",
    [
        ("8e8", 800_000_000),
        ("123456", 123_456),
        ("1.1xaspp", 1_100),
        ("2 x ASPP", 2_000),
    ],
)
def test_budget_forms(text, expected):
    assert constraints.parse_max_head_madds(text, aspp_madds=1000) == expected


@pytest.mark.parametrize("text", ["-5", "0", "lots", "1.1xaspp?", "nan"])
def test_bad_budgets_name_the_flag(text):
    with pytest.raises(ValueError, match="--max_head_madds"):
        constraints.parse_max_head_madds(text, aspp_madds=1000)


def test_relative_budget_needs_aspp():
    with pytest.raises(ValueError, match="ASPP"):
        constraints.parse_max_head_madds("1.1xaspp")


def test_costs_are_computed_once_per_graph():
    calls = []

    def cost(cell):
        calls.append(cell)
        return 10

    budget = constraints.HeadBudget(10, cost)
    a = cell_spec.CellSpec(
        [
            cell_spec.BranchSpec(input=-1, op="conv1x1"),
            cell_spec.BranchSpec(input=-1, op="sep3x3", rate=(3, 6)),
        ]
    )
    reordered = cell_spec.CellSpec(list(reversed(a.branches)))
    assert budget(a) and budget(reordered) and budget.reason(a) == ""
    assert len(calls) == 1
    assert not constraints.HeadBudget(9, cost)(a)


def test_draw_feasible_takes_the_first_feasible_draw_and_names_who_gives_up():
    draws = iter(range(10))
    assert constraints.draw_feasible(lambda: next(draws), lambda n: n >= 3, "x") == 3
    assert constraints.draw_feasible(lambda: 7, None, "x") == 7
    calls = []

    def draw():
        calls.append(1)
        return 0

    with pytest.raises(
        constraints.InfeasibleConstraints,
        match=r"^the sampler: none of 1000 proposals met the constraints",
    ):
        constraints.draw_feasible(draw, lambda n: False, "the sampler")
    assert len(calls) == constraints.MAX_INFEASIBLE_PROPOSALS
