"""Tests for deeplab_dpc.search.strategies and deeplab_dpc.search.vizier_sampler."""

import collections
import datetime
import random

import optuna
from optuna.trial import TrialState
import pytest
import search_testing

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import engine
from deeplab_dpc.search import optuna_space
from deeplab_dpc.search import space
from deeplab_dpc.search import strategies

# ---------------------------------------------------------------- flattening


def test_distributions_cover_the_space_exactly():
    dists = optuna_space.distributions(3)
    assert list(dists) == ["op_0", "input_0", "op_1", "input_1", "op_2", "input_2"]
    assert len(set(optuna_space.OP_TOKENS)) == 81 == len(dists["op_0"].choices)
    assert all(isinstance(token, str) for token in optuna_space.OP_TOKENS)
    assert optuna_space.OP_TOKENS[:2] == ("conv1x1", "sep3x3@1x1")
    assert optuna_space.OP_TOKENS[-1] == "pool@8x8"
    assert dists["input_0"].choices == (-1,)
    assert dists["input_2"].choices == (-1, 0, 1)
    assignments = 1
    for dist in dists.values():
        assignments *= len(dist.choices)
    assert assignments == space.space_size(3)


def test_params_round_trip():
    rng = random.Random(0)
    cells = [cell_spec.published_cell()]
    cells += [space.sample_cell(rng, rng.randint(1, 6)) for _ in range(200)]
    for cell in cells:
        params = optuna_space.cell_to_params(cell)
        assert set(params) == set(optuna_space.distributions(len(cell)))
        assert optuna_space.params_to_cell(params, len(cell)) == cell
    published = optuna_space.cell_to_params(cell_spec.published_cell())
    assert published["op_1"] == "sep3x3@18x15" and published["input_1"] == 0


def test_kind_distributions_draw_ops_by_kind():
    """Drawn uniformly, the "kind" form gives `space.sample_op`'s kind prior."""
    dists = optuna_space.distributions(2, "kind")
    assert list(dists) == [
        "kind_0", "sep_0", "pool_0", "input_0", "kind_1", "sep_1", "pool_1", "input_1"
    ]  # fmt: skip
    assert dists["kind_0"].choices == optuna_space.KINDS == ("conv1x1", "sep3x3", "pool")
    assert len(dists["sep_1"].choices) == 64 and len(dists["pool_1"].choices) == 16
    # Every assignment of branch 0's parameters, counted by the op it makes.
    ops = collections.Counter(
        optuna_space.params_to_cell(
            {"kind_0": k, "sep_0": s, "pool_0": p, "input_0": -1}, 1
        )[0]
        for k in dists["kind_0"].choices
        for s in dists["sep_0"].choices
        for p in dists["pool_0"].choices
    )
    assert len(ops) == 81
    total = sum(ops.values())
    for op, count in ops.items():
        expected = {"conv1x1": 1 / 3, "sep3x3": 1 / 192, "pool": 1 / 48}[op.op]
        assert count / total == pytest.approx(expected)


def test_kind_params_round_trip():
    rng = random.Random(1)
    cells = [cell_spec.published_cell()]
    cells += [space.sample_cell(rng, rng.randint(1, 6), "kind") for _ in range(200)]
    for cell in cells:
        params = optuna_space.cell_to_params(cell, "kind")
        assert set(params) == set(optuna_space.distributions(len(cell), "kind"))
        for name, value in params.items():  # Fillers are legal choices too.
            assert value in optuna_space.distributions(len(cell), "kind")[name].choices
        assert optuna_space.params_to_cell(params, len(cell)) == cell
    published = optuna_space.cell_to_params(cell_spec.published_cell(), "kind")
    assert published["kind_1"] == "sep3x3" and published["sep_1"] == "sep3x3@18x15"
    # Fillers: the first choice, or drawn from an rng (the same cell back).
    conv1x1 = cell_spec.CellSpec([cell_spec.BranchSpec(input=-1, op="conv1x1")])
    first = optuna_space.distributions(1, "kind")["sep_0"].choices[0]
    assert optuna_space.cell_to_params(conv1x1, "kind")["sep_0"] == first
    drawn = [optuna_space.cell_to_params(conv1x1, "kind", rng) for _ in range(50)]
    assert len({(p["sep_0"], p["pool_0"]) for p in drawn}) > 10
    assert all(optuna_space.params_to_cell(p, 1) == conv1x1 for p in drawn)
    with pytest.raises(ValueError, match="op_prior is 'kinds'"):
        optuna_space.distributions(2, "kinds")
    with pytest.raises(ValueError, match="op_prior is 'flat'"):
        optuna_space.cell_to_params(cell_spec.published_cell(), "flat")


def test_param_space_and_op_prior_by_strategy():
    for strategy in ("tpe", "nsga2", "vizier:GAUSSIAN_PROCESS_BANDIT"):
        assert strategies.takes_op_prior(strategy)
        for prior in space.OP_PRIORS:
            assert strategies.param_space(strategy, prior) == prior
    for strategy in ("random_local", "regularized_evolution"):
        assert strategies.takes_op_prior(strategy)
        assert strategies.param_space(strategy, "kind") == "uniform"
    assert not strategies.takes_op_prior("one_shot")
    assert strategies.param_space("one_shot", "kind") == "uniform"
    with pytest.raises(ValueError, match="op_prior is 'kinds'"):
        strategies.param_space("tpe", "kinds")


@pytest.mark.parametrize(
    "form, name, value, message",
    [
        ("uniform", "input_3", None, 'parameter "input_3" is missing'),
        ("uniform", "op_2", "sep3x3@2x2", "parameter \"op_2\" is 'sep3x3@2x2'"),
        ("uniform", "input_2", 2, 'parameter "input_2" is 2; it must be an int in -1..1'),
        ("uniform", "input_1", "0", "parameter \"input_1\" is '0'"),
        ("kind", "kind_2", "conv3x3", "parameter \"kind_2\" is 'conv3x3'; it must be one of"),
        ("kind", "sep_1", None, 'parameter "sep_1" is missing; "kind_1" is \'sep3x3\''),
        ("kind", "sep_1", "pool@1x1", "parameter \"sep_1\" is 'pool@1x1'; it must be a sep3x3"),
        ("kind", "input_4", 5, 'parameter "input_4" is 5'),
        ("kind", "kind_0", None, 'parameter "op_0" is missing'),
    ],
)
def test_params_to_cell_names_the_bad_parameter(form, name, value, message):
    params = optuna_space.cell_to_params(cell_spec.published_cell(), form)
    if value is None:
        del params[name]
    else:
        params[name] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        optuna_space.params_to_cell(params, 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="grid"), "strategy 'grid' is unknown; choose one of"),
        (
            dict(strategy="random_local", objectives=("miou", "madds")),
            "random_local optimises one objective",
        ),
        (dict(strategy="tpe", objectives=("miou", "flops")), "'flops' is unknown"),
        (dict(strategy="tpe", objectives=()), "objectives is"),
        (dict(strategy="random_local", explore_prob=1.5), "explore_prob is 1.5"),
        (dict(strategy="random_local", local_top_k=0), "local_top_k is 0"),
        (
            dict(strategy="regularized_evolution", population_size=3),
            "tournament_size is 5; it must not exceed population_size",
        ),
        (
            dict(strategy="nsga2", population_size=1, objectives=("miou", "madds")),
            "nsga2 needs at least 2",
        ),
        (dict(strategy="tpe", num_branches=0), "num_branches is 0"),
        (dict(strategy="tpe", worker=-1), "worker is -1; it must be an int >= 0"),
        (dict(strategy="one_shot"), "needs the supernet's ranking"),
        (
            dict(strategy="one_shot", ranking=[], objectives=("miou", "madds")),
            "optimises one objective",
        ),
        (
            dict(strategy="one_shot", num_branches=3, ranking=[cell_spec.published_cell()]),
            "ranked cell 0 has 5 branches",
        ),
        (dict(strategy="random_local", op_prior="kinds"), "op_prior is 'kinds'"),
        (dict(strategy="regularized_evolution", op_prior=""), "op_prior is ''"),
    ],
)
def test_make_sampler_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        strategies.make_sampler(**kwargs)


# --------------------------------------------------------------- strategies


def _new_study(tmp_path, strategy, objectives=("miou",), **kwargs):
    options = dict(num_branches=3, seed=0, local_top_k=2, population_size=4)
    options.update(kwargs)
    return engine.create_or_load_study(
        search_dir=tmp_path,
        strategy=strategy,
        objectives=objectives,
        tournament_size=2,
        pruner=optuna.pruners.NopPruner(),
        **options,
    )


def _check_trials(study, total, objectives, num_branches=3):
    """Every trial is a valid cell whose values are the objective's."""
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == total
    trained_keys = []
    for trial in trials:
        cell = cell_spec.cell_from_json(trial.user_attrs[engine.ATTR_CELL])
        assert cell == optuna_space.params_to_cell(trial.params, num_branches)
        assert trial.user_attrs[engine.ATTR_KEY] == space.canonical_key(cell)
        scores = search_testing.analytic_scores(cell)
        assert trial.values == pytest.approx([scores[name] for name in objectives])
        if engine.ATTR_DUPLICATE not in trial.user_attrs:
            trained_keys.append(trial.user_attrs[engine.ATTR_KEY])
    assert len(trained_keys) == len(set(trained_keys))
    return trials


@pytest.mark.parametrize(
    "strategy, objectives",
    [
        ("random_local", ("miou",)),
        ("regularized_evolution", ("miou",)),
        ("tpe", ("miou",)),
        ("nsga2", ("miou", "madds")),
    ],
)
def test_strategy_completes_trials_with_valid_cells(tmp_path, strategy, objectives):
    study = _new_study(tmp_path, strategy, objectives)
    stats = engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=10, poll_seconds=0.01
    )
    assert stats.trials == 10 and stats.trained + stats.duplicates == 10
    _check_trials(study, 10, objectives)


def test_one_shot_proposes_the_ranking_best_first_then_uniform(tmp_path):
    rng = random.Random(1)
    ranking = [space.sample_cell(rng, 3) for _ in range(4)]
    ranking.insert(2, ranking[0])  # A repeat is proposed once.
    study = _new_study(tmp_path, "one_shot", ranking=ranking)
    stats = engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=6, poll_seconds=0.01
    )
    assert stats.trained == 6 and stats.duplicates == 0
    trials = _check_trials(study, 6, ("miou",))
    keys = [t.user_attrs[engine.ATTR_KEY] for t in trials]
    expected = [space.canonical_key(c) for c in ranking[:2] + ranking[3:]]
    assert keys[:4] == expected
    assert keys[4] not in expected  # The ranking is used up: a uniform sample.


def _ask_cells(samplers, num_trials, num_branches=3):
    """Trial number -> params, the samplers taking turns on one study.

    Each sampler is one worker's: its own `optuna.Study` object on a shared
    storage, as the engine's workers. The trials stay running.
    """
    storage = optuna.storages.InMemoryStorage()
    studies = [
        optuna.create_study(storage=storage, sampler=samplers[0], study_name="s")
    ]
    studies += [
        optuna.load_study(storage=storage, sampler=sampler, study_name="s")
        for sampler in samplers[1:]
    ]
    fixed = optuna_space.distributions(num_branches)
    asked = {}
    for n in range(num_trials):
        trial = studies[n % len(studies)].ask(fixed_distributions=fixed)
        asked[trial.number] = trial.params
    return asked


@pytest.mark.parametrize(
    "strategy, options",
    [
        ("random_local", dict(explore_prob=1.0)),
        ("regularized_evolution", dict(population_size=20)),  # Still uniform.
    ],
)
def test_cell_samplers_propose_the_same_cells_with_any_number_of_workers(
    strategy, options
):
    def sampler(worker, seed=7):
        return strategies.make_sampler(
            strategy, num_branches=3, seed=seed, worker=worker, **options
        )

    alone = _ask_cells([sampler(0)], 8)
    assert len({str(sorted(p.items())) for p in alone.values()}) == 8
    assert _ask_cells([sampler(0), sampler(1)], 8) == alone
    assert _ask_cells([sampler(1), sampler(0), sampler(2)], 8) == alone
    # The seed still decides.
    assert _ask_cells([sampler(0, seed=8)], 8) != alone


def test_optuna_samplers_give_each_worker_its_own_stream():
    def tpe(seed, worker):
        return strategies.make_sampler("tpe", num_branches=3, seed=seed, worker=worker)

    first, second = _ask_cells([tpe(7, 0)], 4), _ask_cells([tpe(7, 1)], 4)
    assert first != second
    # Worker w of seed s draws what worker 0 of seed s + w draws.
    assert second == _ask_cells([tpe(8, 0)], 4)
    assert first == _ask_cells([tpe(7, 0)], 4)


@pytest.mark.parametrize("strategy", ["random_local", "regularized_evolution"])
def test_cell_samplers_draw_ops_by_their_prior(tmp_path, strategy):
    """With op_prior="kind" a third of the branches are 1x1 convs (uniform: 1/81)."""
    study = _new_study(
        tmp_path, strategy, num_branches=5, op_prior="kind", population_size=10
    )
    engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=30, poll_seconds=0.01
    )
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    branches = [
        b
        for t in trials
        for b in cell_spec.cell_from_json(t.user_attrs[engine.ATTR_CELL])
    ]
    share = sum(b.op == cell_spec.OP_CONV1X1 for b in branches) / len(branches)
    assert 0.2 < share < 0.5, share


@pytest.mark.parametrize("strategy", ["tpe", "nsga2", "vizier:RANDOM_SEARCH"])
def test_parameter_samplers_draw_ops_by_their_prior(tmp_path, strategy):
    """TPE's and NSGA-II's first (random) trials, and Vizier's random search,
    draw 1x1 convs a third of the time in the "kind" form, 1 in 81 uniform."""
    shares = {}
    for prior in space.OP_PRIORS:
        study = _new_study(
            tmp_path / prior,
            strategy,
            num_branches=5,
            op_prior=prior,
            population_size=10,
        )
        assert study.user_attrs[engine.ATTR_PARAM_SPACE] == prior
        engine.run_worker(
            study, search_testing.make_objective(), num_trials_total=10, poll_seconds=0.01
        )
        trials = _check_trials(study, 10, ("miou",), num_branches=5)
        assert set(trials[0].params) == set(optuna_space.distributions(5, prior))
        branches = [
            b
            for t in trials
            for b in cell_spec.cell_from_json(t.user_attrs[engine.ATTR_CELL])
        ]
        shares[prior] = sum(b.op == cell_spec.OP_CONV1X1 for b in branches) / 50
    assert shares["kind"] > 0.15 and shares["uniform"] < 0.1, shares


def test_a_study_keeps_its_parameter_form(tmp_path):
    study = _new_study(tmp_path, "tpe", op_prior="uniform")
    engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=2, poll_seconds=0.01
    )
    message = (
        "holds tpe parameters of op prior 'uniform', not 'kind'; "
        "pass --op_prior=uniform"
    )
    with pytest.raises(ValueError, match=message):
        _new_study(tmp_path, "tpe", op_prior="kind")
    again = _new_study(tmp_path, "tpe", op_prior="uniform")
    assert again.user_attrs[engine.ATTR_PARAM_SPACE] == "uniform"
    # A study stored before the form was kept: its trials are "uniform".
    # pylint: disable-next=protected-access
    study._storage.set_study_user_attr(study._study_id, engine.ATTR_PARAM_SPACE, None)
    # pylint: disable-next=protected-access
    old = optuna.load_study(study_name=study.study_name, storage=study._storage)
    assert old.user_attrs[engine.ATTR_PARAM_SPACE] is None
    with pytest.raises(ValueError, match="op prior 'uniform', not 'kind'"):
        _new_study(tmp_path, "tpe")  # The default prior, "kind".
    # The cell samplers hand cells over in the "uniform" form whatever their prior.
    for prior in space.OP_PRIORS:
        sampled = _new_study(tmp_path / "rl", "random_local", op_prior=prior)
        assert sampled.user_attrs[engine.ATTR_PARAM_SPACE] == "uniform"


def test_random_local_proposes_neighbours_of_the_top_k(tmp_path):
    top_k, num_branches = 3, 4
    study = _new_study(
        tmp_path,
        "random_local",
        num_branches=num_branches,
        explore_prob=0.0,
        local_top_k=top_k,
    )
    engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=16, poll_seconds=0.01
    )
    trials = _check_trials(study, 16, ("miou",), num_branches)
    for n, trial in enumerate(trials):
        cell = optuna_space.params_to_cell(trial.params, num_branches)
        if n < top_k:
            continue  # Uniform samples until top_k trials have completed.
        ranked = sorted(trials[:n], key=lambda t: t.value, reverse=True)
        top = []
        for earlier in ranked:
            earlier_cell = optuna_space.params_to_cell(earlier.params, num_branches)
            if all(
                space.canonical_key(earlier_cell) != space.canonical_key(c) for c in top
            ):
                top.append(earlier_cell)
        top = top[:top_k]
        assert min(search_testing.param_distance(cell, c) for c in top) == 1, n
    best = max(trial.value for trial in trials)
    assert best > trials[0].value  # Local search improved on the first sample.


def test_regularized_evolution_ages_out_the_oldest():
    size, num_branches = 4, 5
    sampler = strategies.RegularizedEvolutionSampler(
        num_branches, population_size=size, tournament_size=size, seed=0
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    rng = random.Random(0)
    cells = []
    while len(cells) < 2 * size:
        cell = space.sample_cell(rng, num_branches)
        if all(search_testing.param_distance(cell, c) >= 4 for c in cells):
            cells.append(cell)
    old, young = cells[:size], cells[size:]
    dists = optuna_space.distributions(num_branches)
    start = datetime.datetime(2026, 1, 1)
    # The young cells get the LOWER trial numbers but complete later; the old
    # ones are far better, so only aging by completion keeps them out.
    for i, cell in enumerate(young + old):
        trial = optuna.trial.create_trial(
            params=optuna_space.cell_to_params(cell),
            distributions=dists,
            value=0.1 * (i + 1) if i < size else 0.9,
        )
        trial.datetime_start = start
        trial.datetime_complete = start + datetime.timedelta(
            minutes=10 * i if i < size else -10 * i
        )
        study.add_trial(trial)
    parents = collections.Counter()
    for _ in range(24):
        trial = study.ask(dists)
        child = optuna_space.params_to_cell(trial.params, num_branches)
        study.tell(trial, state=TrialState.FAIL)
        assert min(search_testing.param_distance(child, c) for c in old) >= 3
        distances = [search_testing.param_distance(child, c) for c in young]
        assert min(distances) == 1
        parents[distances.index(1)] += 1
    # Tournaments favour the best young cell (the last one, value 0.4).
    assert parents.most_common(1)[0][0] == size - 1


def test_nsga2_front_is_non_dominated(tmp_path):
    objectives = ("miou", "madds")
    study = _new_study(tmp_path, "nsga2", objectives, population_size=4)
    engine.run_worker(
        study, search_testing.make_objective(), num_trials_total=12, poll_seconds=0.01
    )
    trials = _check_trials(study, 12, objectives)
    front = study.best_trials
    assert front

    def dominates(a, b):
        return (
            a.values[0] >= b.values[0]
            and a.values[1] <= b.values[1]
            and a.values != b.values
        )

    for member in front:
        assert not any(dominates(other, member) for other in trials)
    for other in trials:
        if other.number not in {m.number for m in front}:
            assert any(dominates(m, other) or m.values == other.values for m in front)


# ------------------------------------------------------------------- vizier


def test_vizier_algorithms_propose_valid_cells(tmp_path):
    # GAUSSIAN_PROCESS_BANDIT proposes in the next test (its fit is slow).
    for algorithm, total in (("RANDOM_SEARCH", 4), ("EAGLE_STRATEGY", 4)):
        study = engine.create_or_load_study(
            search_dir=tmp_path,
            study_name=algorithm,
            strategy="vizier:" + algorithm,
            num_branches=2,
            seed=0,
            pruner=optuna.pruners.NopPruner(),
        )
        engine.run_worker(
            study,
            search_testing.make_objective(),
            num_trials_total=total,
            poll_seconds=0.01,
        )
        trials = _check_trials(study, total, ("miou",), num_branches=2)
        for trial in trials:
            assert isinstance(trial.system_attrs["vizier_metadata"], list)
        if algorithm == "EAGLE_STRATEGY":  # Each trial names its parent firefly.
            for trial in trials:
                keys = [key for _, key, _ in trial.system_attrs["vizier_metadata"]]
                assert "parent_fly_id" in keys


@pytest.mark.parametrize(
    "algorithm, total", [("EAGLE_STRATEGY", 5), ("GAUSSIAN_PROCESS_BANDIT", 3)]
)
def test_vizier_designers_learn_from_pruned_trials(tmp_path, algorithm, total):
    # A cell pruned at step 1 (its analytic mIOU is 0.48, reported as 0.24 at
    # step 1, below the threshold 0.3) and one pruned before any report.
    weak = cell_spec.CellSpec(
        [
            cell_spec.BranchSpec(input=-1, op="pool", grid=(1, 1)),
            cell_spec.BranchSpec(input=0, op="conv1x1"),
        ]
    )
    silent = cell_spec.CellSpec([cell_spec.BranchSpec(input=-1, op="conv1x1")] * 2)
    study = engine.create_or_load_study(
        search_dir=tmp_path,
        strategy="vizier:" + algorithm,
        num_branches=2,
        seed=0,
        pruner=optuna.pruners.ThresholdPruner(lower=0.3),
    )
    form = study.user_attrs[engine.ATTR_PARAM_SPACE]  # "kind", the default prior.
    assert form == space.DEFAULT_OP_PRIOR
    study.enqueue_trial(optuna_space.cell_to_params(weak, form))
    study.enqueue_trial(optuna_space.cell_to_params(silent, form))
    train = search_testing.make_objective()

    def objective(cell, report):
        if cell == silent:
            raise optuna.TrialPruned("judged before reporting")
        return train(cell, report)

    engine.run_worker(study, objective, num_trials_total=total, poll_seconds=0.01)
    trials = study.get_trials()
    assert len(trials) == total
    assert trials[0].state == trials[1].state == TrialState.PRUNED
    for trial in trials[2:]:  # Proposed with the pruned trials in the history.
        assert "vizier_metadata" in trial.system_attrs
        cell = optuna_space.params_to_cell(trial.params, 2)
        assert trial.user_attrs[engine.ATTR_KEY] == space.canonical_key(cell)
    # What the designer of the next trial would get: every trial.
    completed, active = study.sampler.designer_trials(study)
    assert not active
    seen = {converted.id: converted for converted in completed}
    assert sorted(seen) == [trial.number + 1 for trial in trials]
    measured = seen[1]
    assert not measured.infeasible and measured.stopping_reason == "pruned at step 1"
    assert measured.final_measurement.steps == 1
    assert measured.final_measurement.metrics["miou"].value == pytest.approx(0.24)
    assert seen[2].infeasible and not seen[2].final_measurement.metrics
    for trial in trials[2:]:
        final = seen[trial.number + 1].final_measurement.metrics["miou"].value
        assert final == pytest.approx(trial.value)  # COMPLETE, or pruned on it.


def test_vizier_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="vizier:GRID is unknown; supported"):
        strategies.make_sampler("vizier:GRID")
    with pytest.raises(ValueError, match="EAGLE_STRATEGY cannot optimise objectives"):
        strategies.make_sampler("vizier:EAGLE_STRATEGY", objectives=("miou", "madds"))


def _first_op_is_pool(cell):
    return cell[0].op == "pool"


def _constrained_vizier_study(path, algorithm, total, sampler_knows=True):
    """A 2-branch Vizier study run by the engine under `_first_op_is_pool`
    (about 1 cell in 5 is feasible); the sampler is told the constraint only
    when `sampler_knows`. Returns (study, the engine's stats)."""
    study = engine.create_or_load_study(
        search_dir=path,
        strategy="vizier:" + algorithm,
        num_branches=2,
        seed=0,
        pruner=optuna.pruners.NopPruner(),
        feasible=_first_op_is_pool if sampler_knows else None,
    )
    stats = engine.run_worker(
        study,
        search_testing.make_objective(),
        num_trials_total=total,
        poll_seconds=0.01,
        feasible=_first_op_is_pool,
    )
    return study, stats


def _assert_all_complete_and_feasible(study, total):
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * total
    for trial in trials:
        assert _first_op_is_pool(optuna_space.params_to_cell(trial.params, 2))


def test_vizier_hands_infeasible_suggestions_back_and_proposes_feasible_cells(
    tmp_path,
):
    # The engine fails any infeasible proposal; the sampler never makes one,
    # whatever the designer suggests.
    study, stats = _constrained_vizier_study(tmp_path, "EAGLE_STRATEGY", 4)
    assert stats.infeasible == 0
    _assert_all_complete_and_feasible(study, 4)


def test_vizier_designers_see_the_engines_infeasible_trials(tmp_path):
    # A sampler that does not know the constraints: the engine fails its
    # infeasible proposals, and the next designer gets them as infeasible.
    study, _ = _constrained_vizier_study(
        tmp_path, "RANDOM_SEARCH", 3, sampler_knows=False
    )
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert failed and all(t.user_attrs[engine.ATTR_INFEASIBLE] for t in failed)
    completed, _ = study.sampler.designer_trials(study)
    by_id = {converted.id: converted for converted in completed}
    for trial in failed:
        assert by_id[trial.number + 1].infeasible
    assert sum(not c.infeasible for c in completed) == 3


def test_vizier_falls_back_to_a_random_feasible_cell(tmp_path, monkeypatch):
    from deeplab_dpc.search import vizier_sampler  # pylint: disable=import-outside-toplevel

    # No suggestion asked of the designer: every trial takes the fallback.
    monkeypatch.setattr(vizier_sampler, "MAX_INFEASIBLE_SUGGESTIONS", 0)
    with pytest.warns(UserWarning, match="takes a feasible cell drawn at random"):
        study, _ = _constrained_vizier_study(tmp_path, "RANDOM_SEARCH", 2)
    _assert_all_complete_and_feasible(study, 2)
