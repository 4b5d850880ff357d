"""Search strategies over Dense Prediction Cells, as Optuna samplers.

Samplers propose the flattened parameters of `optuna_space` (every
assignment is a valid cell). The paper's random + local search and aging evolution are Optuna
samplers that read the history from the study's storage, so every worker of a
study sees the same history. `one_shot` proposes the cells a weight-sharing
supernet ranked (`one_shot.load_or_build_ranking`), best first.
"""

import abc
import random
from typing import Optional, Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import constraints
from deeplab_dpc.search import optuna_space
from deeplab_dpc.search import space

VIZIER_PREFIX = "vizier:"
STRATEGIES = (
    "random_local",
    "regularized_evolution",
    "tpe",
    "nsga2",
    "one_shot",
    VIZIER_PREFIX + "<ALGORITHM>",
)
# Strategies that take exactly one objective.
_SINGLE_OBJECTIVE = ("random_local", "regularized_evolution", "one_shot")
# Tries to propose a cell no trial of the study holds before settling for one.
_MAX_ATTEMPTS = 100
# The cell samplers, which draw cells themselves by an op prior.
_CELL_SAMPLERS = ("random_local", "regularized_evolution")
# The samplers that learn from Optuna's parameters: their op prior is the
# form of those parameters (`optuna_space`), the engine's and theirs.
_PARAM_SAMPLERS = ("tpe", "nsga2")
_SEEN_STATES = (
    TrialState.COMPLETE,
    TrialState.PRUNED,
    TrialState.RUNNING,
    TrialState.WAITING,
)


def _models_params(strategy: str) -> bool:
    return strategy in _PARAM_SAMPLERS or strategy.startswith(VIZIER_PREFIX)


def takes_op_prior(strategy: str) -> bool:
    """Whether `strategy`'s proposals follow an op prior (`space.OP_PRIORS`).

    Every strategy but `one_shot` (whose cells a supernet ranked) does.
    """
    return strategy in _CELL_SAMPLERS or _models_params(strategy)


def param_space(strategy: str, op_prior: str) -> str:
    """The form of a study's Optuna parameters (`optuna_space.distributions`).

    TPE, NSGA-II and Vizier model the parameters, so their op prior is the
    form the engine suggests (drawn uniformly, the "kind" form draws ops by
    kind); the cell samplers draw cells by their prior and hand them over in
    the "uniform" form, as does `one_shot`.

    Raises:
        ValueError: for an unknown `op_prior`.
    """
    space.check_op_prior(op_prior)
    return op_prior if _models_params(strategy) else "uniform"


class CellSampler(optuna.samplers.BaseSampler):
    """Base of the samplers that propose a whole cell at once.

    Subclasses implement `propose`. A proposal that breaks the constraints
    (`feasible`, e.g. `constraints.HeadBudget`) is always drawn again (up to
    `constraints.MAX_INFEASIBLE_PROPOSALS` times, then
    `constraints.InfeasibleConstraints`); a
    feasible one is drawn again (up to 100 times) while a trial of the study
    already holds the same cell (by `space.canonical_key`); the engine reuses
    results of any repeat that remains. Randomness is seeded by (seed, trial
    number), so a study is reproducible with one worker and workers never
    share a random stream.

    Args:
        num_branches: int >= 1, the number of branches B.
        seed: int or None (None: fresh entropy for every trial).
        feasible: callable `CellSpec -> bool`, or None (no constraint).
        op_prior: how random samples and mutations draw an op
            (`space.OP_PRIORS`, see `space.sample_op`; "uniform" samples
            the space uniformly).
    """

    def __init__(
        self,
        num_branches: int,
        seed: Optional[int] = None,
        feasible=None,
        op_prior: str = "uniform",
    ):
        self._space = optuna_space.distributions(num_branches)
        self._num_branches = num_branches
        self._seed = seed
        self._feasible = feasible
        space.check_op_prior(op_prior)
        self._op_prior = op_prior
        self._independent = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial) -> dict:
        del study, trial  # The space is fixed.
        return dict(self._space)

    def sample_relative(self, study, trial, search_space) -> dict:
        if not search_space:
            return {}
        if len(study.directions) > 1:
            raise ValueError(
                f"{type(self).__name__} optimises one objective; this study has "
                f"{len(study.directions)} (use nsga2, tpe or vizier:<ALGORITHM>)"
            )
        if self._seed is None:
            rng = random.Random()
        else:
            rng = random.Random(f"{self._seed}:{trial.number}")
        history, seen = self.history(study)
        maximize = study.direction == StudyDirection.MAXIMIZE
        for _ in range(_MAX_ATTEMPTS):
            cell = self._propose_feasible(history, rng, maximize)
            if space.canonical_key(cell) not in seen:
                break
        return optuna_space.cell_to_params(cell)

    def _propose_feasible(self, history, rng, maximize):
        return constraints.draw_feasible(
            lambda: self.propose(history, rng, maximize),
            self._feasible,
            type(self).__name__,
        )

    def history(self, study):
        """(COMPLETE trials as (FrozenTrial, CellSpec), keys of every cell tried).

        The keys (`space.canonical_key`) are those of the COMPLETE, PRUNED,
        RUNNING and WAITING trials that have chosen their cell.
        """
        history, seen = [], set()
        for past in study.get_trials(deepcopy=False, states=_SEEN_STATES):
            if not all(name in past.params for name in self._space):
                continue  # Still choosing its cell.
            cell = optuna_space.params_to_cell(past.params, self._num_branches)
            seen.add(space.canonical_key(cell))
            if past.state == TrialState.COMPLETE:
                history.append((past, cell))
        return history, seen

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._independent.sample_independent(
            study, trial, param_name, param_distribution
        )

    @abc.abstractmethod
    def propose(self, history: list, rng: random.Random, maximize: bool):
        """Returns a `CellSpec` to try next.

        Args:
            history: list of (FrozenTrial, CellSpec) of the COMPLETE trials in
                trial-number order.
            rng: `random.Random`, the only source of randomness.
            maximize: bool, whether a larger trial value is better.
        """


class RandomLocalSampler(CellSampler):
    """The paper's search: random samples plus neighbours of the best cells.

    Until `local_top_k` trials have completed every proposal is a random
    sample (`space.sample_cell`, ops drawn by `op_prior`). Then, with
    probability `explore_prob`, a random sample; otherwise `space.neighbour`
    (one branch's op or input changed) of a cell drawn uniformly from the
    `local_top_k` best distinct completed cells.

    Args:
        num_branches: int >= 1.
        explore_prob: float in [0, 1].
        local_top_k: int >= 1.
        seed: int or None.
        feasible: callable `CellSpec -> bool` or None (see `CellSampler`).
        op_prior: see `CellSampler`.
    """

    def __init__(
        self,
        num_branches: int,
        *,
        explore_prob: float = 0.5,
        local_top_k: int = 5,
        seed: Optional[int] = None,
        feasible=None,
        op_prior: str = "uniform",
    ):
        super().__init__(num_branches, seed, feasible, op_prior)
        if not 0.0 <= explore_prob <= 1.0:
            raise ValueError(f"explore_prob is {explore_prob!r}; it must be in [0, 1]")
        _check_positive("local_top_k", local_top_k)
        self._explore_prob = explore_prob
        self._local_top_k = local_top_k

    def top_cells(self, history: list, maximize: bool) -> list:
        """The best `local_top_k` distinct cells of `history`, best first."""
        # Stable, also reversed: of equal values the earlier trial ranks first.
        ranked = sorted(history, key=lambda item: item[0].value, reverse=maximize)
        top, keys = [], set()
        for _, cell in ranked:
            key = space.canonical_key(cell)
            if key not in keys:
                keys.add(key)
                top.append(cell)
            if len(top) == self._local_top_k:
                break
        return top

    def propose(self, history, rng, maximize):
        if len(history) < self._local_top_k or rng.random() < self._explore_prob:
            return space.sample_cell(rng, self._num_branches, self._op_prior)
        return space.neighbour(
            rng.choice(self.top_cells(history, maximize)), rng, self._op_prior
        )


class RegularizedEvolutionSampler(CellSampler):
    """Aging evolution (Real et al., 2019).

    The population is the `population_size` most recently completed trials
    (by completion time), so the oldest member leaves as a new one joins.
    Each proposal is `space.neighbour` of the best of `tournament_size`
    members drawn at random (with replacement). Until the population is full,
    proposals are random samples (ops drawn by `op_prior`).

    Args:
        num_branches: int >= 1.
        population_size: int >= 1.
        tournament_size: int in 1..population_size.
        seed: int or None.
        feasible: callable `CellSpec -> bool` or None (see `CellSampler`).
        op_prior: see `CellSampler`.
    """

    def __init__(
        self,
        num_branches: int,
        *,
        population_size: int = 20,
        tournament_size: int = 5,
        seed: Optional[int] = None,
        feasible=None,
        op_prior: str = "uniform",
    ):
        super().__init__(num_branches, seed, feasible, op_prior)
        _check_positive("population_size", population_size)
        _check_positive("tournament_size", tournament_size)
        if tournament_size > population_size:
            raise ValueError(
                f"tournament_size is {tournament_size}; it must not exceed "
                f"population_size ({population_size})"
            )
        self._population_size = population_size
        self._tournament_size = tournament_size

    def population(self, history: list) -> list:
        """The most recently completed `population_size` items of `history`."""
        by_age = sorted(
            history, key=lambda item: (item[0].datetime_complete, item[0].number)
        )
        return by_age[-self._population_size :]

    def propose(self, history, rng, maximize):
        if len(history) < self._population_size:
            return space.sample_cell(rng, self._num_branches, self._op_prior)
        population = self.population(history)
        sample = [rng.choice(population) for _ in range(self._tournament_size)]
        sign = 1.0 if maximize else -1.0
        _, parent = max(sample, key=lambda item: sign * item[0].value)
        return space.neighbour(parent, rng, self._op_prior)


class OneShotSampler(CellSampler):
    """Proposes the cells a supernet ranked, best first, each once.

    Each trial takes the best-ranked cell no trial of the study holds yet
    (by `space.canonical_key`) that meets the constraints (`feasible`); once
    the ranking is used up, uniform samples. The ranking comes from `one_shot.load_or_build_ranking`
    (a supernet trained once per study on the cached features), so every
    worker proposes from the same list.

    Args:
        num_branches: int >= 1.
        ranking: sequence of `CellSpec` (or what `CellSpec` accepts), best
            first; each must have `num_branches` branches.
        seed: int or None, seeds the uniform samples after the ranking.
        feasible: callable `CellSpec -> bool` or None (see `CellSampler`).

    Raises:
        ValueError: for a cell with another number of branches.
    """

    def __init__(
        self, num_branches: int, ranking, seed: Optional[int] = None, feasible=None
    ):
        super().__init__(num_branches, seed, feasible)
        self._ranking = []
        for rank, cell in enumerate(ranking):
            cell = cell_spec.as_cell(cell)
            if len(cell) != num_branches:
                raise ValueError(
                    f"ranked cell {rank} has {len(cell)} branches; the study's "
                    f"cells have {num_branches}"
                )
            self._ranking.append((space.canonical_key(cell), cell))

    def sample_relative(self, study, trial, search_space) -> dict:
        if search_space and len(study.directions) == 1:
            _, seen = self.history(study)
            for key, cell in self._ranking:
                if key not in seen and (self._feasible is None or self._feasible(cell)):
                    return optuna_space.cell_to_params(cell)
        return super().sample_relative(study, trial, search_space)

    def propose(self, history, rng, maximize):
        return space.sample_cell(rng, self._num_branches)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} is {value!r}; it must be an int >= 1")


def make_sampler(
    strategy: str,
    *,
    num_branches: int = 5,
    seed: Optional[int] = None,
    explore_prob: float = 0.5,
    local_top_k: int = 5,
    population_size: int = 20,
    tournament_size: int = 5,
    objectives: Sequence[str] = ("miou",),
    worker: int = 0,
    feasible=None,
    ranking: Optional[Sequence] = None,
    op_prior: str = space.DEFAULT_OP_PRIOR,
) -> optuna.samplers.BaseSampler:
    """Builds the sampler of a strategy.

    Args:
        strategy: one of `random_local`, `regularized_evolution`, `tpe`,
            `nsga2`, `one_shot` or `vizier:<ALGORITHM>` (see `vizier_sampler.ALGORITHMS`).
        num_branches: int >= 1, branches per cell.
        seed: int or None, the study's seed.
        explore_prob, local_top_k: `random_local` settings.
        population_size: `regularized_evolution` and `nsga2` population.
        tournament_size: `regularized_evolution` tournament.
        objectives: objective names (`OBJECTIVES`); `random_local` and
            `regularized_evolution` take exactly one.
        op_prior: how proposals draw an op (`space.sample_op`; default
            `space.DEFAULT_OP_PRIOR`, "uniform" is the space drawn
            uniformly): `random_local` and `regularized_evolution` draw their
            random samples and mutations by it; Vizier models the parameters
            of its form (`param_space`), as the engine suggests them for TPE
            and NSGA-II; `one_shot` ignores it.
        ranking: `one_shot` only: the cells a supernet ranked, best first
            (`one_shot.load_or_build_ranking`).
        worker: int >= 0, this worker's index in the study
            (`engine.worker_index`). The Optuna and Vizier samplers draw
            from one random stream per sampler, so each worker's is seeded
            with `seed + worker`. The cell samplers (`random_local`,
            `regularized_evolution`) draw trial n's proposal from
            (`seed`, n) alone and take `seed` as it is: with any number of
            workers, a trial proposes the cell the same study would propose
            with one worker from the same history (for random samples:
            whatever the history).
        feasible: callable `CellSpec -> bool` or None: the user's hard
            constraints (`constraints.HeadBudget`). The cell samplers draw
            until their proposal meets them, and so do the Vizier designers
            (each suggestion that breaks them handed back as infeasible); the
            Optuna samplers' proposals are checked by the engine, which fails
            an infeasible one without training it (they do not learn from it).

    Returns:
        An `optuna.samplers.BaseSampler`.

    Raises:
        ValueError: for an unknown strategy or a bad setting (named).
        ImportError: for `vizier:` when Open Source Vizier is not installed.
    """
    optuna_space._check_num_branches(num_branches)
    optuna_space.directions(objectives)
    if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0:
        raise ValueError(f"worker is {worker!r}; it must be an int >= 0")
    stream_seed = None if seed is None else seed + worker
    if strategy in _SINGLE_OBJECTIVE and len(objectives) != 1:
        raise ValueError(
            f"strategy {strategy} optimises one objective; objectives is "
            f"{tuple(objectives)!r} (use nsga2, tpe or vizier:<ALGORITHM>)"
        )
    if strategy == "random_local":
        return RandomLocalSampler(
            num_branches,
            explore_prob=explore_prob,
            local_top_k=local_top_k,
            seed=seed,
            feasible=feasible,
            op_prior=op_prior,
        )
    if strategy == "regularized_evolution":
        return RegularizedEvolutionSampler(
            num_branches,
            population_size=population_size,
            tournament_size=tournament_size,
            seed=seed,
            feasible=feasible,
            op_prior=op_prior,
        )
    if strategy == "one_shot":
        if ranking is None:
            raise ValueError(
                "strategy one_shot needs the supernet's ranking of cells "
                "(one_shot.load_or_build_ranking)"
            )
        return OneShotSampler(num_branches, ranking, seed=seed, feasible=feasible)
    if strategy == "tpe":
        # Constant liar: running trials count as bad, so parallel workers
        # spread out instead of proposing the same cell.
        return optuna.samplers.TPESampler(
            multivariate=True, constant_liar=True, seed=stream_seed
        )
    if strategy == "nsga2":
        if population_size < 2:
            raise ValueError(
                f"population_size is {population_size}; nsga2 needs at least 2"
            )
        return optuna.samplers.NSGAIISampler(
            population_size=population_size, seed=stream_seed
        )
    if strategy.startswith(VIZIER_PREFIX):
        # pylint: disable-next=import-outside-toplevel
        from deeplab_dpc.search import vizier_sampler

        return vizier_sampler.VizierSampler(
            strategy[len(VIZIER_PREFIX) :],
            num_branches=num_branches,
            objectives=objectives,
            seed=stream_seed,
            feasible=feasible,
            op_prior=op_prior,
        )
    raise ValueError(
        f"strategy {strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}"
    )
