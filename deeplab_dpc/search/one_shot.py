"""One-shot scoring: one weight-sharing supernet ranks many cells cheaply.

The `one_shot` strategy (`strategies.OneShotSampler`) works in two stages:

1. `load_or_build_ranking` trains a `supernet.Supernet` over the cell space
   on the cached features once (`train_supernet`: a path sampled per step,
   uniformly or "fair", DeepLab's SGD with momentum and poly learning rate
   as `proxy.run_trial`), then scores `num_cells` distinct cells drawn
   uniformly from the space (`Scorer`: each cell's batch-norm statistics
   recalibrated on the same few train batches, then its val mIOU with the
   inherited weights, all inside the supernet's graph), and writes the
   ranking to `<search_dir>/one_shot/ranking.json` (the supernet's weights go
   next to it as `supernet.npz`). A later call with the same settings and
   cache reads them back instead; other scoring settings reuse the
   supernet.
2. The study's trials are stand-alone proxy trials of the ranked cells,
   best first: the supernet only decides which cells get a real trial.

The supernet's score is only a ranking signal: an op seen in 1/81 of the
steps is less trained than a stand-alone cell (bench/one_shot_fidelity.py
measures the rank correlation with stand-alone proxy trials).
"""

import dataclasses
import json
import os
import random
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from deeplab_dpc import file_io
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.evaluation import metrics
from deeplab_dpc.search import cache as cache_lib
from deeplab_dpc.search import proxy
from deeplab_dpc.search import space
from deeplab_dpc.search import supernet as supernet_lib
from deeplab_dpc.training import trainer

ONE_SHOT_DIR = "one_shot"
WEIGHTS_FILE = "supernet.npz"
RANKING_FILE = "ranking.json"
SAMPLING = ("uniform", "fair")
# Fields of `OneShotSettings` that decide the supernet's weights.
_TRAINING_FIELDS = (
    "num_branches",
    "ops",
    "steps",
    "batch_size",
    "base_learning_rate",
    "learning_power",
    "momentum",
    "weight_decay",
    "sampling",
    "seed",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneShotSettings:
    """How the supernet is trained and how it scores cells.

    Attributes:
      num_branches: int, B.
      ops: tuple of op tokens, or None for all 81 ops.
      steps, batch_size: supernet training steps and batch.
      base_learning_rate, learning_power, momentum, weight_decay: DeepLab's
        SGD and poly schedule, as `proxy.run_trial`.
      sampling: "uniform" (each branch's op and input drawn uniformly every
        step) or "fair" (each branch goes through all ops in a random order
        before any repeats, as FairNAS; inputs uniform).
      seed: int, seeds the initialisation, paths, batches and cells.
      num_cells: int, distinct cells scored.
      calibration_batches: int, train batches each cell's batch-norm
        statistics are recomputed on.
      eval_batch_size: int, val crops per scoring batch.
    """

    num_branches: int = 5
    ops: Optional[tuple] = None
    steps: int = 2000
    batch_size: int = 8
    base_learning_rate: float = 0.01
    learning_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 4e-5
    sampling: str = "uniform"
    seed: int = 0
    num_cells: int = 1000
    calibration_batches: int = 4
    eval_batch_size: int = 8

    def __post_init__(self):
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling is {self.sampling!r}; choose one of {SAMPLING}")
        for name in ("num_branches", "steps", "batch_size", "num_cells"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} is {value!r}; it must be an int >= 1")
        if self.ops is not None:
            object.__setattr__(
                self,
                "ops",
                tuple(cell_spec.op_token(op) for op in supernet_lib.normalize_ops(self.ops)),
            )

    def to_dict(self):
        return json.loads(json.dumps(dataclasses.asdict(self)))


def build_supernet(cache, settings: OneShotSettings):
    """A freshly initialised supernet on a cache's features.

    Batch norm uses `proxy.proxy_norm_momentum(settings.steps)`.
    """
    info = cache_lib.load_info(cache)
    options = proxy.model_options(
        info,
        None,
        weight_decay=settings.weight_decay,
        norm_momentum=proxy.proxy_norm_momentum(settings.steps),
    )
    return supernet_lib.Supernet(
        options,
        info.feature_shape[-1],
        num_branches=settings.num_branches,
        ops=settings.ops,
        ignore_label=info.ignore_label,
        seed=settings.seed,
    )


class PathSampler:
    """Draws the cell trained at each supernet step.

    Args:
      ops: the supernet's ops (`BranchSpec`s with input -1).
      num_branches: int.
      mode: "uniform" or "fair" (see `OneShotSettings.sampling`).
      rng: `random.Random`.
    """

    def __init__(self, ops, num_branches, mode, rng):
        if mode not in SAMPLING:
            raise ValueError(f"sampling is {mode!r}; choose one of {SAMPLING}")
        self.ops, self.num_branches, self.mode, self.rng = ops, num_branches, mode, rng
        self._queues = [[] for _ in range(num_branches)]

    def _op(self, i):
        if self.mode == "uniform":
            return self.rng.choice(self.ops)
        if not self._queues[i]:
            self._queues[i] = list(self.ops)
            self.rng.shuffle(self._queues[i])
        return self._queues[i].pop()

    def __call__(self):
        return cell_spec.CellSpec(
            tuple(
                dataclasses.replace(self._op(i), input=self.rng.randrange(i + 1) - 1)
                for i in range(self.num_branches)
            )
        )


def train_supernet(
    net,
    cache,
    settings: OneShotSettings,
    log: Optional[Callable[[str], None]] = None,
):
    """Trains `net` for `settings.steps` steps, one sampled path a step.

    Returns:
      list of (step, mean loss over the last window of steps).

    Raises:
      FloatingPointError: on a non-finite loss, naming the step.
    """
    info = cache_lib.load_info(cache)
    schedule = trainer.DeepLabLearningRate(
        trainer.TrainOptions(
            train_batch_size=settings.batch_size,
            training_number_of_steps=settings.steps,
            base_learning_rate=settings.base_learning_rate,
            learning_power=settings.learning_power,
            momentum=settings.momentum,
            ignore_label=info.ignore_label,
        )
    )
    step_fn = net.make_train_step(schedule, settings.momentum)
    sample = PathSampler(
        net.ops, net.num_branches, settings.sampling, random.Random(settings.seed)
    )
    data = cache_lib.load_split(
        info,
        "train",
        batch_size=settings.batch_size,
        shuffle=True,
        seed=settings.seed,
        repeat=True,
    )
    window = max(1, settings.steps // 20)
    history, recent, start = [], [], time.time()
    for step, (features, labels) in zip(range(1, settings.steps + 1), data):
        loss = float(step_fn(features, labels, net.encode(sample())))
        if not np.isfinite(loss):
            raise FloatingPointError(f"supernet loss is {loss} at step {step}")
        recent.append(loss)
        if step % window == 0 or step == settings.steps:
            history.append((step, float(np.mean(recent))))
            recent = []
            if log:
                log(
                    f"supernet step {step}/{settings.steps}: loss "
                    f"{history[-1][1]:.4f} ({time.time() - start:.0f} s)"
                )
    return history


class Scorer:
    """Scores cells with a supernet's weights on a cache's val crops.

    The calibration batches (the first `calibration_batches` of the
    shuffled train split, seeded) and the val crops are read once and kept
    in memory; every cell is recalibrated on the same batches.

    Args:
      net: a trained `supernet.Supernet`.
      cache: a `cache.CacheInfo`, search dir or cache dir.
      calibration_batches, batch_size: ints >= 1 (train batches of
        `batch_size` crops; val batches of `batch_size` crops).
      seed: int or None, picks the calibration batches.
    """

    def __init__(self, net, cache, *, calibration_batches=4, batch_size=8, seed=0):
        info = cache_lib.load_info(cache)
        self.net = net
        self.info = info
        train = cache_lib.load_split(
            info, "train", batch_size=batch_size, shuffle=True, seed=seed, repeat=True
        )
        self.calibration = tf.stack(
            [f for f, _ in train.take(int(calibration_batches))]
        )
        self.val = list(cache_lib.load_split(info, "val", batch_size=batch_size))

    def score(self, cell) -> float:
        """The cell's val mIOU with inherited, recalibrated weights."""
        path = tf.constant(self.net.encode(cell))
        self.net.recalibrate(path, self.calibration)
        matrix = np.zeros([self.info.num_classes] * 2, np.int64)
        for features, labels in self.val:
            matrix += self.net.confusion(path, features, labels).numpy()
        return metrics.mean_iou(matrix)


def sample_cells(num_cells, rng, ops, num_branches):
    """Up to `num_cells` cells of distinct `space.canonical_key`, drawn uniformly.

    Stops early when 20 draws in a row repeat a cell (a small space).
    """
    sample = PathSampler(ops, num_branches, "uniform", rng)
    cells, keys, misses = [], set(), 0
    while len(cells) < num_cells and misses < 20 * max(1, num_cells):
        cell = sample()
        key = space.canonical_key(cell)
        if key in keys:
            misses += 1
            continue
        keys.add(key)
        cells.append(cell)
    return cells


def rank_cells(scorer, cells, log=None):
    """Scores `cells`; returns (ranking, seconds).

    Returns:
      (list of {"cell_json": str, "score": float}, best first (stable for
      ties), wall seconds of the scoring).
    """
    start = time.time()
    scored = []
    for n, cell in enumerate(cells, 1):
        scored.append(
            {"cell_json": cell_spec.cell_to_json_string(cell), "score": scorer.score(cell)}
        )
        if log and (n % 100 == 0 or n == len(cells)):
            log(f"one-shot scored {n}/{len(cells)} cells ({time.time() - start:.0f} s)")
    seconds = time.time() - start
    return sorted(scored, key=lambda item: -item["score"]), seconds


def _cache_identity(info):
    return {"settings": info.settings, "splits": info.manifest["splits"]}


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_or_build_ranking(
    search_dir, cache, settings: OneShotSettings, log=None
) -> list:
    """The cells ranked by the supernet, best first (module docstring).

    Args:
      search_dir: str, `<search_dir>/one_shot/` holds the supernet and ranking.
      cache: a `cache.CacheInfo`, search dir or cache dir.
      settings: `OneShotSettings`.
      log: callable(str) or None, progress lines.

    Returns:
      list of `CellSpec`, best first.
    """
    info = cache_lib.load_info(cache)
    folder = os.path.join(search_dir, ONE_SHOT_DIR)
    ranking_path = os.path.join(folder, RANKING_FILE)
    identity = {"cache": _cache_identity(info), "settings": settings.to_dict()}
    stored = _read_json(ranking_path)
    if stored is not None and stored.get("identity") == identity:
        return [cell_spec.cell_from_json(json.loads(r["cell_json"])) for r in stored["ranking"]]
    os.makedirs(folder, exist_ok=True)
    training = {
        "cache": identity["cache"],
        "settings": {k: identity["settings"][k] for k in _TRAINING_FIELDS},
    }
    weights_path = os.path.join(folder, WEIGHTS_FILE)
    with trainer.released_custom_gradients():
        net = build_supernet(info, settings)
        start = time.time()
        if stored is not None and stored.get("training") == training and os.path.exists(
            weights_path
        ):
            net.load(weights_path)
            losses, train_seconds = stored.get("losses", []), stored.get("train_seconds")
        else:
            losses = train_supernet(net, info, settings, log)
            train_seconds = time.time() - start
            partial = weights_path + f".partial-{os.getpid()}.npz"
            net.save(partial)
            os.replace(partial, weights_path)
        scorer = Scorer(
            net,
            info,
            calibration_batches=settings.calibration_batches,
            batch_size=settings.eval_batch_size,
            seed=settings.seed,
        )
        cells = sample_cells(
            settings.num_cells,
            random.Random(f"{settings.seed}:cells"),
            net.ops,
            net.num_branches,
        )
        ranking, seconds = rank_cells(scorer, cells, log)
    record = {
        "identity": identity,
        "training": training,
        "losses": losses,
        "train_seconds": train_seconds,
        "score_seconds": seconds,
        "cells_per_hour": len(cells) / max(seconds, 1e-9) * 3600.0,
        "ranking": ranking,
    }
    file_io.write_text(ranking_path, json.dumps(record, indent=1) + "\n", overwrite=True)
    return [cell_spec.cell_from_json(json.loads(r["cell_json"])) for r in ranking]
