"""Open Source Vizier algorithms as an Optuna sampler over flattened cells.

Vizier's algorithms take no conditional parameters, so a cell is flattened as
the engine suggests it (`optuna_space`, in the form of the op prior): one
categorical `op_<i>` over the 81 op tokens, or `kind_<i>`, `sep_<i>` and
`pool_<i>`, and one categorical `input_<i>` per branch (Vizier categories are
strings, so inputs travel as "-1", "0", ...; branch 0 has no choice and is
left out). For each
trial the sampler builds the algorithm's designer afresh, replays the study's
finished trials from the shared storage (with the Vizier metadata each
suggestion carried, e.g. Eagle's parent firefly) and asks for one suggestion,
so every worker of a study works from the same history. A pruned trial
reaches the designer as Vizier's service records an early-stopped one: its
last intermediate value is its final measurement (see `designer_trials`).

Constraints (`feasible`, e.g. `constraints.HeadBudget`): a suggestion that
breaks them goes back to the designer as an infeasible trial and another is
asked for, as do trials the engine failed as infeasible. (Without this the
Gaussian-process bandit, which learns nothing from a failed trial, proposed
the same over-budget cell 200 times in a row and the engine gave up.) After
`MAX_INFEASIBLE_SUGGESTIONS` in a row for one trial, the trial takes a
feasible cell drawn at random (by the op prior) and says so in a warning.

Vizier is an optional extra: `pip install .[vizier]`.
"""

import math
import random
import types
from typing import Optional, Sequence
import warnings
import zlib

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from deeplab_dpc.search import constraints
from deeplab_dpc.search import optuna_space
from deeplab_dpc.search import space

ALGORITHMS = ("RANDOM_SEARCH", "EAGLE_STRATEGY", "GAUSSIAN_PROCESS_BANDIT")
# Suggestions asked of one designer for one trial while they break the
# constraints; then a uniform feasible cell is drawn instead.
MAX_INFEASIBLE_SUGGESTIONS = 20
# Trial system attribute holding the suggestion's Vizier metadata.
METADATA_ATTR = "vizier_metadata"


def _import_vizier() -> types.SimpleNamespace:
    """Imports Vizier's pieces, or explains how to install them."""
    try:
        # pylint: disable=import-outside-toplevel
        from vizier import algorithms as vza
        from vizier import pyvizier as vz
        from vizier._src.algorithms.designers import gp_bandit
        from vizier._src.algorithms.designers import random as random_designer
        from vizier._src.algorithms.designers.eagle_strategy import eagle_strategy

        # pylint: enable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(
            "the vizier:<ALGORITHM> strategies need Open Source Vizier, which "
            f"is not installed ({err}); install the extra with "
            "`pip install .[vizier]` (google-vizier-dev with jax and equinox)"
        ) from err
    factories = {
        "RANDOM_SEARCH": lambda problem, seed: random_designer.RandomDesigner(
            problem.search_space, seed=seed
        ),
        "EAGLE_STRATEGY": lambda problem, seed: eagle_strategy.EagleStrategyDesigner(
            problem, seed=seed
        ),
        "GAUSSIAN_PROCESS_BANDIT": gp_bandit.VizierGPBandit.from_problem,
    }
    return types.SimpleNamespace(vz=vz, vza=vza, factories=factories)


class VizierSampler(optuna.samplers.BaseSampler):
    """Proposes cells with an Open Source Vizier algorithm.

    Args:
        algorithm: one of `ALGORITHMS`.
        num_branches: int >= 1, branches per cell.
        objectives: objective names of the study (`optuna_space.OBJECTIVES`),
            in the study's order.
        seed: int or None; the designer of trial n is seeded by (seed, n).
        feasible: callable `CellSpec -> bool`, or None (no constraint).
        op_prior: the form of the parameters (`space.OP_PRIORS`,
            `optuna_space.distributions`); the study's (`engine`).

    Raises:
        ValueError: for an unknown algorithm, or one that cannot optimise
            these objectives (Eagle takes one).
        ImportError: if Vizier is not installed.
    """

    def __init__(
        self,
        algorithm: str,
        *,
        num_branches: int = 5,
        objectives: Sequence[str] = ("miou",),
        seed: Optional[int] = None,
        feasible=None,
        op_prior: str = "uniform",
    ):
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"strategy vizier:{algorithm} is unknown; supported algorithms "
                f"are {', '.join(ALGORITHMS)}"
            )
        self._vizier = _import_vizier()
        self._algorithm = algorithm
        self._space = optuna_space.distributions(num_branches, op_prior)
        self._op_prior = op_prior
        self._num_branches = num_branches
        self._objectives = tuple(objectives)
        self._seed = seed
        self._feasible = feasible
        self._independent = optuna.samplers.RandomSampler(seed=seed)
        self._problem = self._make_problem(optuna_space.directions(objectives))
        try:
            self._new_designer(0)
        except ValueError as err:
            raise ValueError(
                f"strategy vizier:{algorithm} cannot optimise objectives "
                f"{self._objectives!r}: {err}"
            ) from err

    def _make_problem(self, goals):
        vz = self._vizier.vz
        problem = vz.ProblemStatement()
        root = problem.search_space.root
        for name, dist in self._space.items():
            if len(dist.choices) > 1:
                root.add_categorical_param(name, [str(c) for c in dist.choices])
        for name, goal in zip(self._objectives, goals):
            problem.metric_information.append(
                vz.MetricInformation(
                    name,
                    goal=(
                        vz.ObjectiveMetricGoal.MAXIMIZE
                        if goal == StudyDirection.MAXIMIZE
                        else vz.ObjectiveMetricGoal.MINIMIZE
                    ),
                )
            )
        return problem

    def _new_designer(self, trial_number: int):
        if self._seed is None:
            seed = random.getrandbits(31)
        else:
            seed = zlib.crc32(f"{self._seed}:{trial_number}".encode()) & 0x7FFFFFFF
        return self._vizier.factories[self._algorithm](self._problem, seed)

    def _to_vizier(self, trial):
        vz = self._vizier.vz
        parameters = {
            name: str(trial.params[name])
            for name, dist in self._space.items()
            if len(dist.choices) > 1
        }
        out = vz.Trial(id=trial.number + 1, parameters=parameters)
        for namespace, key, value in trial.system_attrs.get(METADATA_ATTR, ()):
            out.metadata.abs_ns(vz.Namespace.decode(namespace))[key] = value
        return out

    def infer_relative_search_space(self, study, trial) -> dict:
        del study, trial  # The space is fixed.
        return dict(self._space)

    def designer_trials(self, study, exclude: Optional[int] = None):
        """The study's history as the designer gets it.

        COMPLETE trials are completed with their values. PRUNED trials are
        completed as Vizier's service completes an early-stopped trial: with
        their intermediate values as measurements and the last one as the
        final measurement (the pruner judged the cell on it), or infeasible
        if they reported none. RUNNING trials are active. FAIL trials the
        engine failed for breaking the constraints are completed infeasible;
        other FAIL trials, and trials without every parameter, are left out.

        Args:
            study: an `optuna.Study` of this sampler's cells.
            exclude: a trial number to leave out (the trial being sampled).

        Returns:
            (completed, active): lists of `vizier.pyvizier.Trial`, whose id
            is the Optuna trial number + 1.
        """
        completed, active = [], []
        for past in study.get_trials(
            deepcopy=False,
            states=(
                TrialState.COMPLETE,
                TrialState.PRUNED,
                TrialState.RUNNING,
                TrialState.FAIL,
            ),
        ):
            if past.number == exclude or not all(
                name in past.params for name in self._space
            ):
                continue
            infeasible = past.user_attrs.get(constraints.ATTR_INFEASIBLE)
            if past.state == TrialState.FAIL and not infeasible:
                continue
            converted = self._to_vizier(past)
            if past.state == TrialState.FAIL:
                completed.append(converted)
                converted.complete(
                    self._vizier.vz.Measurement(), infeasibility_reason=str(infeasible)
                )
                continue
            if past.state == TrialState.RUNNING:
                active.append(converted)
                continue
            completed.append(converted)
            if past.state == TrialState.COMPLETE:
                metrics = dict(zip(self._objectives, past.values))
                converted.complete(self._vizier.vz.Measurement(metrics=metrics))
            else:
                self._complete_pruned(converted, past.intermediate_values)
        return completed, active

    def _complete_pruned(self, converted, intermediate_values) -> None:
        vz = self._vizier.vz
        steps = sorted(
            step for step, value in intermediate_values.items() if math.isfinite(value)
        )
        if len(self._objectives) > 1 or not steps:
            # No finite value, or not one per objective (Optuna's intermediate
            # values are single numbers): nothing to measure it by.
            converted.stopping_reason = "pruned"
            converted.complete(
                vz.Measurement(), infeasibility_reason="pruned without a measurement"
            )
            return
        converted.stopping_reason = f"pruned at step {steps[-1]}"
        converted.measurements = [
            vz.Measurement(
                metrics={self._objectives[0]: intermediate_values[step]}, steps=step
            )
            for step in steps
        ]
        converted.complete(converted.measurements[-1])

    def sample_relative(self, study, trial, search_space) -> dict:
        if not search_space or trial.params or "fixed_params" in trial.system_attrs:
            return {}  # A retried or enqueued trial: its cell is already set.
        vza = self._vizier.vza
        completed, active = self.designer_trials(study, exclude=trial.number)
        designer = self._new_designer(trial.number)
        designer.update(vza.CompletedTrials(completed), vza.ActiveTrials(active))
        suggestion = self._feasible_suggestion(designer, completed, active)
        if suggestion is None:
            warnings.warn(
                f"trial {trial.number}: vizier:{self._algorithm} suggested "
                f"{MAX_INFEASIBLE_SUGGESTIONS} cells in a row that break the "
                "constraints; this trial takes a feasible cell drawn at random "
                "(by the op prior)",
                stacklevel=2,
            )
            return self._random_feasible(trial)
        metadata = [
            [namespace.encode(), key, value]
            for namespace, key, value in suggestion.metadata.all_items()
            if isinstance(value, str)
        ]
        # Optuna has no public setter for samplers; its own GA samplers do this.
        study._storage.set_trial_system_attr(  # pylint: disable=protected-access
            trial._trial_id, METADATA_ATTR, metadata  # pylint: disable=protected-access
        )
        return self._params(suggestion)

    def _params(self, suggestion) -> dict:
        params = {}
        for name, dist in self._space.items():
            if len(dist.choices) == 1:
                params[name] = dist.choices[0]
            elif name.startswith("input_"):
                params[name] = int(suggestion.parameters[name].value)
            else:
                params[name] = str(suggestion.parameters[name].value)
        return params

    def _is_feasible(self, params) -> bool:
        if self._feasible is None:
            return True
        return bool(
            self._feasible(optuna_space.params_to_cell(params, self._num_branches))
        )

    def _feasible_suggestion(self, designer, completed, active):
        """The designer's first suggestion meeting the constraints, or None.

        Each one breaking them is completed as infeasible and handed back to
        the designer (with an id past every trial it holds; the designer is
        this trial's alone) before it is asked again.
        """
        vza, vz = self._vizier.vza, self._vizier.vz
        next_id = max((t.id for t in completed + active), default=0) + 1
        for attempt in range(MAX_INFEASIBLE_SUGGESTIONS):
            suggestion = designer.suggest(1)[0]
            if self._is_feasible(self._params(suggestion)):
                return suggestion
            rejected = suggestion.to_trial(next_id + attempt)
            rejected.complete(
                vz.Measurement(), infeasibility_reason="breaks the constraints"
            )
            designer.update(vza.CompletedTrials([rejected]), vza.ActiveTrials(active))
        return None

    def _random_feasible(self, trial) -> dict:
        seed = None if self._seed is None else f"{self._seed}:{trial.number}:uniform"
        rng = random.Random(seed)
        cell = constraints.draw_feasible(
            lambda: space.sample_cell(rng, self._num_branches, self._op_prior),
            self._feasible,
            f"vizier:{self._algorithm}'s random fallback",
        )
        return optuna_space.cell_to_params(cell, self._op_prior, rng)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._independent.sample_independent(
            study, trial, param_name, param_distribution
        )
