"""The search engine: one Optuna study shared by any number of workers.

Storage: a `study_storage.StudyStorage` (by default the SQLite file
`search_dir/study.db`; a PostgreSQL or MySQL URL for many machines). A
running trial whose worker died (no heartbeat for `grace_period` seconds, or
none at all) is marked FAIL by the next worker that starts a trial or waits,
and its cell is queued again for the next free worker (see `study_storage`).

Total: `num_trials_total` counts the study's COMPLETE and PRUNED trials (a
pruned cell was judged and spent budget); FAIL trials do not count. A worker
starts a trial only while finished + running trials fall short of the total,
and otherwise waits (failing dead trials) until the total is reached or a
running trial fails. If two workers start at the same instant, the trial with
the higher number waits and, when the total is reached meanwhile, ends FAIL
unrun ("surplus"), so the total is exact. A retry still WAITING when the
total is reached stays queued for a later run. Re-running resumes.

Duplicates: a trial stores its cell (`cell_json`) and canonical key
(`cell_key`) as user attributes before training. If a finished trial has the
same key, the trial is not trained: it gets that result (values,
intermediate values, attributes) and a `duplicate_of` attribute (the
original's number) and counts toward the total. Trials of the
same cell running at once are ordered by number: a trial waits while a
lower-numbered RUNNING trial has the same key or has not chosen its cell yet,
so only the lowest trains and the others reuse its result (or train if it
fails).

Workers: every trial records the process that ran it (`worker`,
"host:pid"), so a study shared by many machines says which ran what, and
each worker's own pace can be read back from the study (bench/
search_throughput.py does).
"""

import collections
import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Mapping, Optional, Sequence
import warnings

from absl import logging
import optuna
from optuna.trial import TrialState

from deeplab_dpc import processes
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.search import constraints
from deeplab_dpc.search import optuna_space
from deeplab_dpc.search import space
from deeplab_dpc.search import strategies
from deeplab_dpc.search import study_storage

DEFAULT_STUDY_NAME = "dpc_search"
WORKER_INDEX_ENV = "DEEPLAB_DPC_WORKER_INDEX"
ATTR_KEY = "cell_key"
ATTR_CELL = "cell_json"
ATTR_DUPLICATE = "duplicate_of"
ATTR_WORKER = "worker"
ATTR_INFEASIBLE = constraints.ATTR_INFEASIBLE
# The attributes the engine itself sets on every trial.
_ENGINE_ATTRS = frozenset(
    (ATTR_CELL, ATTR_KEY, ATTR_DUPLICATE, ATTR_WORKER, ATTR_INFEASIBLE)
)
# Infeasible proposals in a row after which a worker gives up.
MAX_INFEASIBLE_IN_A_ROW = 200
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# The storage API lives in `study_storage`; callers of the engine find it here too.
STORAGE_FILE = study_storage.STORAGE_FILE
default_storage = study_storage.default_storage
open_storage = study_storage.open_storage
_SETTINGS = ("strategy", "objectives", "num_branches")
# The study attribute naming the form of its trials' parameters
# (`optuna_space.distributions`; `strategies.param_space`). A study stored
# before it was kept holds the "uniform" form.
ATTR_PARAM_SPACE = "param_space"
# The study attribute of what else a trial's result depends on (the proxy
# budget, the crop, ...): `create_or_load_study(trial_settings=)`.
ATTR_TRIAL_SETTINGS = "trial_settings"


def worker_name() -> str:
    """This process as trials record it (`ATTR_WORKER`): "host:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_index() -> int:
    """This process's worker index (set by `launch_workers`; 0 otherwise)."""
    return int(os.environ.get(WORKER_INDEX_ENV, "0"))


def create_or_load_study(
    storage=None,
    study_name: str = DEFAULT_STUDY_NAME,
    strategy: str = "random_local",
    objectives: Sequence[str] = ("miou",),
    *,
    search_dir=None,
    num_branches: int = 5,
    seed: Optional[int] = None,
    pruner: Optional[optuna.pruners.BasePruner] = None,
    heartbeat_interval: int = 60,
    grace_period: Optional[int] = None,
    max_retry: int = 3,
    trial_settings: Optional[dict] = None,
    trial_setting_defaults: Optional[dict] = None,
    **sampler_options,
) -> optuna.Study:
    """Creates a study, or joins it with the sampler of its strategy.

    Args:
        storage: URL, an `RDBStorage`, or None for the default storage in
            `search_dir` (see `open_storage`).
        study_name: str, shared by all workers of the study.
        strategy, objectives, num_branches: see `strategies.make_sampler`;
            stored in the study, which refuses other values later.
        search_dir: directory of the default storage.
        seed: int or None, the study's seed (`strategies.make_sampler`
            gives each worker its own random stream from it).
        pruner: an Optuna pruner; None for Optuna's default (median).
        heartbeat_interval, grace_period, max_retry: see `open_storage`
            (unused when `storage` is an `RDBStorage`).
        trial_settings: dict of JSON values or None: what else the trials'
            results depend on (e.g. the proxy's steps, the crop); stored in
            the study, which refuses other values later, naming each one.
        trial_setting_defaults: dict or None: for settings added after
            studies were stored, the value those studies ran with; a stored
            study without such a key is read as holding it.
        **sampler_options: explore_prob, local_top_k, op_prior,
            population_size, tournament_size and feasible for
            `strategies.make_sampler`.

    Returns:
        The `optuna.Study`; its user attributes hold the settings above and
        the form of its parameters (`ATTR_PARAM_SPACE`).

    Raises:
        ValueError: for bad settings, or if the stored study was created with
            another strategy, objectives, number of branches or
            `trial_settings`.
    """
    sampler = strategies.make_sampler(
        strategy,
        num_branches=num_branches,
        seed=seed,
        objectives=objectives,
        worker=worker_index(),
        **sampler_options,
    )
    if not isinstance(storage, optuna.storages.RDBStorage):
        storage = open_storage(
            storage,
            search_dir=search_dir,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retry=max_retry,
        )
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=optuna_space.directions(objectives),
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    settings = (strategy, list(objectives), num_branches)
    for name, value in zip(_SETTINGS, settings):
        stored = study.user_attrs.get(name)
        if stored is None:
            study.set_user_attr(name, value)
        elif stored != value:
            raise ValueError(
                f"study {study_name!r} in {study_storage.redact(storage.url)} was "
                f"created with {name}={stored!r}, not {value!r}; use another "
                "study name (--study_name) to start a new study"
            )
    form = strategies.param_space(
        strategy, sampler_options.get("op_prior", space.DEFAULT_OP_PRIOR)
    )
    stored = study.user_attrs.get(ATTR_PARAM_SPACE)
    if stored is None:
        stored = "uniform" if study.get_trials(deepcopy=False) else form
        study.set_user_attr(ATTR_PARAM_SPACE, stored)
    if stored != form:
        raise ValueError(
            f"study {study_name!r} in {study_storage.redact(storage.url)} holds "
            f"{strategy} parameters of op prior {stored!r}, not {form!r}; pass "
            f"--op_prior={stored} to go on with it, or use another study name "
            "(--study_name) to start a new study"
        )
    if trial_settings is not None:
        _check_trial_settings(study, storage, trial_settings, trial_setting_defaults)
    return study


def _check_trial_settings(study, storage, trial_settings, defaults=None):
    """Stores `trial_settings` in a new study; refuses a study's other ones.

    A stored study without a key of `defaults` holds its default (it was
    stored before the setting existed); it is recorded once it matches.
    """
    settings = json.loads(json.dumps(trial_settings))
    stored = study.user_attrs.get(ATTR_TRIAL_SETTINGS)
    if stored is None:
        study.set_user_attr(ATTR_TRIAL_SETTINGS, settings)
        return
    missing = json.loads(json.dumps(defaults or {}))
    stored = {**{k: v for k, v in missing.items() if k not in stored}, **stored}
    differences = [
        f"{key}={stored.get(key)!r}, not {settings.get(key)!r}"
        for key in sorted(set(stored) | set(settings))
        if stored.get(key) != settings.get(key)
    ]
    if differences:
        raise ValueError(
            f"study {study.study_name!r} in {study_storage.redact(storage.url)} "
            f"was run with {'; '.join(differences)}: its trials would not "
            "compare with new ones; use those settings, or another study name "
            "(--study_name) to start a new study"
        )
    if stored != study.user_attrs.get(ATTR_TRIAL_SETTINGS):
        study.set_user_attr(ATTR_TRIAL_SETTINGS, stored)


@dataclasses.dataclass
class WorkerStats:
    """What one `run_worker` call did.

    Attributes:
        trials: trials this worker finished, in any state.
        trained: cells it trained (called the objective for).
        duplicates: trials answered with an earlier trial's result.
        pruned: trials that ended PRUNED.
        surplus: trials ended unrun because the total was reached meanwhile.
        infeasible: proposals failed unrun for breaking the constraints.
    """

    trials: int = 0
    trained: int = 0
    duplicates: int = 0
    pruned: int = 0
    surplus: int = 0
    infeasible: int = 0


class InfeasibleTrial(Exception):
    """A proposal that breaks the user's constraints: failed, not trained."""


class SurplusTrial(Exception):
    """Ends a trial that the study no longer needs (it is recorded as FAIL)."""


def _array_to_list(value):
    if hasattr(value, "numpy"):  # A TensorFlow tensor.
        value = value.numpy()
    if hasattr(value, "tolist"):  # A NumPy array or scalar.
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _Worker:
    """The objective and callback that `run_worker` gives `study.optimize`."""

    def __init__(self, study, objective, total, poll_seconds, feasible=None):
        self.study = study
        self.objective = objective
        self.feasible = feasible
        self.infeasible_in_a_row = 0
        self.total = total
        self.poll_seconds = poll_seconds
        self.objectives = tuple(study.user_attrs["objectives"])
        self.num_branches = int(study.user_attrs["num_branches"])
        self.space = optuna_space.distributions(
            self.num_branches, study.user_attrs.get(ATTR_PARAM_SPACE, "uniform")
        )
        self.stats = WorkerStats()
        self.started = time.monotonic()

    def _wait(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # Dead workers' trials.
        time.sleep(self.poll_seconds)

    def needed(self, below: Optional[int] = None) -> bool:
        """Waits until the study needs another trial (True) or has its total.

        Running trials count as on their way: all of them between trials; in
        trial `below`, only those numbered below it.
        """
        while True:
            trials = self.study.get_trials(deepcopy=False)
            finished = sum(t.state in COUNTED_STATES for t in trials)
            if finished >= self.total:
                return False
            running = sum(
                t.state == TrialState.RUNNING and (below is None or t.number < below)
                for t in trials
            )
            if finished + running < self.total:
                return True
            self._wait()

    def _earlier(self, number: int, key: str):
        """Waits for lower-numbered trials that may hold the cell; returns a result."""
        while True:
            trials = self.study.get_trials(deepcopy=False)
            same = [t for t in trials if t.user_attrs.get(ATTR_KEY) == key]
            for state in COUNTED_STATES:
                done = [t for t in same if t.state == state and t.number != number]
                if done:
                    return done[0]
            if not any(
                t.state == TrialState.RUNNING
                and t.number < number
                and t.user_attrs.get(ATTR_KEY, key) == key  # Same or unchosen.
                for t in trials
            ):
                return None
            self._wait()

    def _report(self, trial, step, value) -> None:
        if len(self.objectives) > 1:
            return  # Optuna prunes single-objective studies only.
        trial.report(float(value), int(step))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4f})")

    def _reuse(self, trial, earlier):
        self.stats.duplicates += 1
        for name, value in earlier.user_attrs.items():
            if name not in _ENGINE_ATTRS:
                trial.set_user_attr(name, value)
        origin = earlier.user_attrs.get(ATTR_DUPLICATE, earlier.number)
        trial.set_user_attr(ATTR_DUPLICATE, origin)
        if len(self.objectives) == 1:  # Samplers judge pruned trials by these.
            for step, value in sorted(earlier.intermediate_values.items()):
                trial.report(value, step)
        if earlier.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"repeats pruned trial {origin}")
        return earlier.values if len(self.objectives) > 1 else earlier.value

    def _check_feasible(self, trial, cell) -> None:
        """Fails a proposal that breaks the constraints, before any training."""
        if self.feasible is None or self.feasible(cell):
            self.infeasible_in_a_row = 0
            return
        self.stats.infeasible += 1
        self.infeasible_in_a_row += 1
        reason = getattr(self.feasible, "reason", lambda c: "")(cell)
        trial.set_user_attr(ATTR_INFEASIBLE, reason or "breaks the constraints")
        if self.infeasible_in_a_row >= MAX_INFEASIBLE_IN_A_ROW:
            raise constraints.InfeasibleConstraints(
                f"{self.infeasible_in_a_row} proposals in a row broke the "
                f"constraints ({self.feasible!r}), the last: {reason}; relax them"
            )
        raise InfeasibleTrial(reason)

    def __call__(self, trial: optuna.Trial):
        if not self.needed(below=trial.number):
            self.stats.surplus += 1
            raise SurplusTrial(f"not run: the study reached {self.total} trials")
        params = {
            name: trial.suggest_categorical(name, dist.choices)
            for name, dist in self.space.items()
        }
        cell = optuna_space.params_to_cell(params, self.num_branches)
        key = space.canonical_key(cell)
        trial.set_user_attr(ATTR_WORKER, worker_name())
        trial.set_user_attr(ATTR_CELL, cell_spec.cell_to_json(cell))
        trial.set_user_attr(ATTR_KEY, key)
        self._check_feasible(trial, cell)
        earlier = self._earlier(trial.number, key)
        if earlier is not None:
            return self._reuse(trial, earlier)
        self.stats.trained += 1
        result = self.objective(cell, functools.partial(self._report, trial))
        missing = [name for name in self.objectives if name not in result]
        if missing:
            raise ValueError(
                f"the objective returned keys {sorted(result)}; it must also "
                f"return {missing} (objectives of this study)"
            )
        reserved = sorted(set(result) & _ENGINE_ATTRS)
        if reserved:
            raise ValueError(
                f"the objective returned {reserved}; the engine sets these "
                "trial attributes itself"
            )
        for name, value in result.items():
            try:
                value = json.loads(json.dumps(value, default=_array_to_list))
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"the objective returned {name!r}: {value!r}, which cannot "
                    f"be stored as a trial attribute ({err})"
                ) from err
            trial.set_user_attr(name, value)
        values = [float(result[name]) for name in self.objectives]
        return values if len(values) > 1 else values[0]

    def progress_line(self, trial) -> str:
        """"trial 7/12 (complete, miou 0.5800), best miou 0.6100 so far, ETA 4 min"."""
        trials = self.study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in COUNTED_STATES]
        values = [
            t.values[0] for t in finished if t.state == TrialState.COMPLETE and t.values
        ]
        state = trial.state.name.lower()
        if trial.state == TrialState.COMPLETE and trial.values:
            state += f", {self.objectives[0]} {trial.values[0]:.4f}"
        line = f"trial {len(finished)}/{self.total} ({state})"
        if values:
            line += f", best {self.objectives[0]} {max(values):.4f} so far"
        if self.stats.trials and len(finished) < self.total:
            # This worker's pace over the trials still missing (other
            # workers shorten it).
            each = (time.monotonic() - self.started) / self.stats.trials
            line += f", ETA {each * (self.total - len(finished)) / 60:.0f} min"
        return line

    def after_trial(self, study, trial) -> None:
        """`study.optimize` callback: counts, logs progress, stops at the total."""
        self.stats.trials += 1
        self.stats.pruned += trial.state == TrialState.PRUNED
        if trial.state in COUNTED_STATES:
            logging.info("%s", self.progress_line(trial))
        if not self.needed():
            study.stop()


def run_worker(
    study: optuna.Study,
    objective: Callable[..., Mapping],
    *,
    num_trials_total: int,
    catch: Sequence[type] = (),
    poll_seconds: float = 1.0,
    feasible: Optional[Callable] = None,
) -> WorkerStats:
    """Runs trials of a study until it holds `num_trials_total` finished trials.

    Args:
        study: from `create_or_load_study`.
        objective: `objective(cell, report)` trains a `CellSpec` and returns a
            dict with a number for each objective of the study plus anything
            JSON-able to keep (e.g. "seconds"; NumPy values and tensors are
            converted); every entry becomes a trial user attribute. It may
            call `report(step, value)`, which records an intermediate value
            and raises `optuna.TrialPruned` when the study's pruner says so.
        num_trials_total: int >= 1, the study's total of COMPLETE and PRUNED
            trials (not this worker's share).
        catch: exception types that fail a trial without stopping the worker.
        poll_seconds: float, how often a waiting worker reads the storage.
        feasible: callable `CellSpec -> bool` or None: the user's hard
            constraints (`constraints.HeadBudget`). A proposal that breaks
            them fails (state FAIL, attribute "infeasible" with the reason)
            without training and does not count toward the total.

    Returns:
        `WorkerStats` of this call.

    Raises:
        ValueError: for a bad total, a study without the settings that
            `create_or_load_study` stores, or a bad objective result.
        Exception: what the objective raised, unless listed in `catch`.
    """
    if type(num_trials_total) is not int or num_trials_total < 1:
        raise ValueError(
            f"num_trials_total is {num_trials_total!r}; it must be an int >= 1"
        )
    missing = [name for name in _SETTINGS if name not in study.user_attrs]
    if missing:
        raise ValueError(
            f"study {study.study_name!r} lacks the search settings {missing}; "
            "open it with create_or_load_study"
        )
    worker = _Worker(study, objective, num_trials_total, poll_seconds, feasible)
    if worker.needed():
        study.optimize(
            worker,
            callbacks=[worker.after_trial],
            catch=tuple(catch) + (SurplusTrial, InfeasibleTrial),
        )
    return worker.stats


def thread_env(num_workers: int, cores: Optional[int] = None) -> dict:
    """TensorFlow and OpenMP thread counts for one of `num_workers` local workers.

    Args:
        num_workers: int >= 1.
        cores: int, the cores to share; None for those this process may use.

    Returns:
        Environment variables TF_NUM_INTRAOP_THREADS and OMP_NUM_THREADS
        (max(1, cores // num_workers)) and TF_NUM_INTEROP_THREADS (1).
        TensorFlow reads them when it first runs an op.
    """
    if cores is None:
        cores = len(_usable_cpus()) or os.cpu_count() or 1
    threads = str(max(1, cores // num_workers))
    return {
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": threads,
    }


def _usable_cpus() -> list:
    """The CPU ids this process may run on; [] where the OS cannot say."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return []


def worker_cpus(
    num_workers: int,
    cores: Optional[int] = None,
    available: Optional[Sequence[int]] = None,
) -> Optional[list]:
    """The CPUs each of `num_workers` local workers is pinned to, or None.

    Worker i gets the i-th run of `max(1, cores // num_workers)` CPUs (the
    threads `thread_env` gives it) out of the first `cores` CPUs this process
    may use. Pinned, a worker's TensorFlow, oneDNN and tf.data threads stay
    on its own cores instead of wandering onto its neighbour's.

    Args:
        num_workers: int >= 1.
        cores: int, the cores to share; None for all of `available`.
        available: CPU ids; None for this process's (`os.sched_getaffinity`).

    Returns:
        A list of `num_workers` sets of CPU ids, or None when pinning cannot
        apply: no `os.sched_getaffinity` (not Linux), more workers than
        cores, or `cores` more than the CPUs available.
    """
    available = sorted(_usable_cpus() if available is None else available)
    if not available:
        return None
    cores = len(available) if cores is None else cores
    if num_workers > cores or cores > len(available):
        return None
    size = cores // num_workers
    return [set(available[i * size : (i + 1) * size]) for i in range(num_workers)]


class WorkerError(RuntimeError):
    """Raised by `launch_workers` when a worker process fails."""


def _pump(index, stream, tail, log_path, echo) -> None:
    """Copies a worker's output lines to its log file, stderr and `tail`."""
    with contextlib.ExitStack() as stack:
        log = None
        if log_path:
            log = stack.enter_context(open(log_path, "a", encoding="utf-8"))
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            tail.append(line)
            if log:
                log.write(line + "\n")
                log.flush()
            if echo:
                sys.stderr.write(f"[worker {index}] {line}\n")


def launch_workers(
    num_workers: int,
    argv: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd=None,
    log_dir=None,
    cores: Optional[int] = None,
    echo: bool = True,
    pin: bool = True,
) -> None:
    """Runs `num_workers` local worker processes of one study and waits for them.

    Worker i runs `argv` (such as `[sys.executable, "-m", "deeplab_dpc.search",
    "--mode=search", ...]`) with `thread_env(num_workers, cores)`, then `env`,
    and DEEPLAB_DPC_WORKER_INDEX=i in its environment, pinned (with `pin`) to
    `worker_cpus(num_workers, cores)[i]` where that applies. Create the study
    first.
    A failed worker does not stop the others. Workers on other machines join
    by running the same command with the same storage URL and study name.

    Args:
        num_workers: int >= 1.
        argv: the worker command.
        env: extra environment variables.
        cwd: working directory of the workers.
        log_dir: if set, worker i's output is appended to `worker-<i>.log` there.
        cores: the cores to share; None for this process's.
        echo: copy worker output to stderr, each line prefixed `[worker i]`.
        pin: bool, pin each worker to its own CPUs (`worker_cpus`). On this
            2-core machine the trials/hour of 2 pinned workers were within
            the noise of unpinned ones (bench/search_throughput.py); pinning
            keeps each worker's threads off its neighbour's core whatever
            the scheduler does.

    Raises:
        ValueError: if `num_workers` is not an int >= 1.
        WorkerError: once all workers ended, naming each failed one with its
            exit status and last output lines.
    """
    if type(num_workers) is not int or num_workers < 1:
        raise ValueError(f"num_workers is {num_workers!r}; it must be an int >= 1")
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    cpus = worker_cpus(num_workers, cores) if pin else None
    workers = []
    try:
        for index in range(num_workers):
            worker_env = {**os.environ, **thread_env(num_workers, cores), **(env or {})}
            worker_env[WORKER_INDEX_ENV] = str(index)
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                list(argv),
                cwd=cwd,
                # A killed launcher leaves no worker behind.
                **processes.child_kwargs(worker_env),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            if cpus:
                # Popen returns once the worker's program runs, long before
                # it starts its thread pools, which then keep to these CPUs.
                try:
                    os.sched_setaffinity(proc.pid, cpus[index])
                except ProcessLookupError:
                    pass  # It ended already; its status tells why below.
            tail = collections.deque(maxlen=20)
            log_path = os.path.join(log_dir, f"worker-{index}.log") if log_dir else None
            pump = threading.Thread(
                target=_pump, args=(index, proc.stdout, tail, log_path, echo)
            )
            pump.start()
            workers.append((proc, pump, tail))
        for proc, _, _ in workers:
            proc.wait()
    finally:
        for proc, _, _ in workers:
            if proc.poll() is None:  # Interrupted: stop the workers we started.
                proc.terminate()
                proc.wait()
        for proc, pump, _ in workers:
            pump.join()
            proc.stdout.close()
    failures = []
    for index, (proc, _, tail) in enumerate(workers):
        if proc.returncode:
            status = (
                f"was killed by {signal.Signals(-proc.returncode).name}"
                if proc.returncode < 0
                else f"exited with status {proc.returncode}"
            )
            lines = "".join(f"\n    {line}" for line in tail)
            failures.append(
                f"  worker {index} (pid {proc.pid}) {status}; last output:{lines}"
            )
    if failures:
        raise WorkerError(
            f"{len(failures)} of {num_workers} search workers failed:\n"
            + "\n".join(failures)
        )
