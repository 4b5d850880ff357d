"""The architecture search program (`python -m deeplab_dpc.search`).

  python -m deeplab_dpc.search --mode=all --search_dir=DIR \
      --dataset=synthetic --dataset_dir=DATA --train_crop_size=129,129 \
      [--strategy=random_local] [--num_trials=50] [--num_workers=2]

Modes (`--mode`):

* `pretrain`: trains the proxy backbone end to end with an ASPP head for
  `--pretrain_steps` into `search_dir/pretrain` (what `all` does first when
  no weights are given); `cache` then uses it.
* `cache`: runs the proxy backbone (`--model_variant`, weights from
  `--tf_initial_checkpoint` or `--backbone_weights`) over the train and val
  splits at `--train_crop_size` and caches its features (`search.cache`).
* `search`: trials of one Optuna study (`search.engine`) in `--storage`
  (default: `search_dir/study.db`; a `postgresql://` URL for many machines)
  until it holds `--num_trials` finished trials; each trial trains a cell on
  the cached features (`search.proxy`). `--num_workers=N` starts N local
  worker processes; a worker on another machine joins by running
  `--mode=search` with the same `--storage` and `--study_name`.
* `rerank`: trains the `--top_k` proxy cells end to end (`search.rerank`)
  and writes `search_dir/best_cell.json`.
* `report`: trains the baselines (ASPP and a 1x1-only cell) on the same
  proxy budget once, then writes `search_dir/report.md`, its plots and
  `trials.json` (`search.report`).
* `all`: cache, search, rerank and report. Without `--tf_initial_checkpoint`
  or real `--backbone_weights` it first trains the proxy backbone end to end
  with an ASPP head for `--pretrain_steps` (a randomly initialised backbone
  would make the search meaningless, and no ImageNet weights can be fetched
  offline).

Model and data set flags come from `deeplab_dpc.flags.common_flags`; the training
flags (`--train_crop_size`, `--train_split`, `--train_batch_size`,
`--base_learning_rate`, `--tf_initial_checkpoint`, `--seed`) are the
training program's, which pretraining and the re-rank use. Of its speed
flags (`deeplab_dpc.flags.speed_flags`), `--float32_math` and the thread flags
apply to every mode (local workers inherit them; without thread flags each
of `--num_workers` local workers takes its share of the cores, and with
`--pin_workers`, the default, keeps to it).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from deeplab_dpc import file_io
from deeplab_dpc import progress
from deeplab_dpc.cells import cell_spec

# The training program's flags (--train_crop_size, --train_split, ...) are
# this program's too.
from deeplab_dpc.flags import cli
from deeplab_dpc.flags import common_flags
from deeplab_dpc.flags import speed_flags
from deeplab_dpc.flags import train_flags  # pylint: disable=unused-import  # noqa: F401
from deeplab_dpc.search import constraints
from deeplab_dpc.search import space

# The search's library (TensorFlow, Optuna, Matplotlib) is imported inside
# the functions that use it, after the flags are parsed: `--help` is quick.
# pylint: disable=import-outside-toplevel

MODES = ("pretrain", "cache", "search", "rerank", "report", "all")
PRETRAIN_DIR = "pretrain"
BASELINES_FILE = "baselines.json"
FLAGS_FILE = "search.flags"
FLAGS = flags.FLAGS
# `engine.DEFAULT_STUDY_NAME`, spelled here (tests/flags/test_cli.py
# checks it): the engine imports Optuna.
DEFAULT_STUDY_NAME = "dpc_search"

_MODE = flags.DEFINE_enum("mode", "all", MODES, "What to run.")
_SEARCH_DIR = flags.DEFINE_string("search_dir", None, "The search's folder.")
_STORAGE = flags.DEFINE_string(
    "storage",
    None,
    "Optuna storage URL (default: sqlite file in --search_dir). Leave the "
    "password out of a postgresql:// URL: libpq reads PGPASSWORD or ~/.pgpass.",
)
_STUDY_NAME = flags.DEFINE_string(
    "study_name", DEFAULT_STUDY_NAME, "Study shared by the workers."
)
_STRATEGY = flags.DEFINE_string(
    "strategy",
    "random_local",
    "random_local | regularized_evolution | tpe | nsga2 | one_shot | "
    "vizier:<ALGORITHM>.",
)
_NUM_BRANCHES = flags.DEFINE_integer(
    "num_branches",
    5,
    "Branches per cell (B).",
    lower_bound=1,
    upper_bound=cell_spec.MAX_BRANCHES,
)
_NUM_TRIALS = flags.DEFINE_integer(
    "num_trials", 50, "The study's total trials.", lower_bound=1
)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 1, "Local worker processes.", lower_bound=1
)
_PIN_WORKERS = flags.DEFINE_boolean(
    "pin_workers",
    True,
    "Pin each of --num_workers > 1 local workers to its own share of the "
    "cores (Linux CPU affinity); off for machines shared with other jobs.",
)
_EXPLORE_PROB = flags.DEFINE_float(
    "explore_prob",
    0.5,
    "random_local: chance of a random sample (ops drawn by --op_prior).",
    lower_bound=0.0,
    upper_bound=1.0,
)
_OP_PRIOR = flags.DEFINE_enum(
    "op_prior",
    space.DEFAULT_OP_PRIOR,
    space.OP_PRIORS,
    "How a proposal draws a branch's op (every strategy but one_shot). "
    "uniform: each of the 81 ops alike (64 of 81 draws are atrous separable "
    "convs, 1 in 81 the 1x1 conv, 1 in 81 global image pooling); kind: the "
    "op's kind first (1x1 conv, atrous separable conv, pyramid pooling; 1/3 "
    "each), then its rates or grid. random_local and regularized_evolution "
    "draw random samples and mutations so; tpe, nsga2 and vizier model the "
    "parameters of that form (one op parameter, or a kind and its settings), "
    "which a study keeps.",
)
_LOCAL_TOP_K = flags.DEFINE_integer(
    "local_top_k",
    5,
    "random_local: neighbours of one of the best k cells.",
    lower_bound=1,
)
_POPULATION_SIZE = flags.DEFINE_integer(
    "population_size", 20, "regularized_evolution: population.", lower_bound=1
)
_TOURNAMENT_SIZE = flags.DEFINE_integer(
    "tournament_size", 5, "regularized_evolution: tournament.", lower_bound=1
)
_OBJECTIVES = flags.DEFINE_list(
    "objectives", ["miou"], "miou, or miou,madds for a Pareto front (nsga2)."
)
_PRUNER = flags.DEFINE_enum(
    "pruner", "median", ["median", "none"], "Stops weak trials early."
)
_PROXY_STEPS = flags.DEFINE_integer(
    "proxy_steps", 1000, "Proxy training steps.", lower_bound=1
)
_PROXY_BATCH_SIZE = flags.DEFINE_integer(
    "proxy_batch_size", 8, "Proxy batch.", lower_bound=1
)
_PROXY_LEARNING_RATE = flags.DEFINE_float(
    "proxy_learning_rate",
    0.01,
    "Proxy poly schedule start (the paper: 0.01).",
    lower_bound=0.0,
)
_PROXY_EVAL_EVERY = flags.DEFINE_integer(
    "proxy_eval_every",
    None,
    "Steps between intermediate mIOUs (pruning).",
    lower_bound=1,
)
_PROXY_UPSAMPLE_LOGITS = flags.DEFINE_boolean(
    "proxy_upsample_logits",
    True,
    "DeepLab's upsample_logits for the proxy's training loss: True, on the "
    "logits upsampled to the crop (DeepLab's default); False, on the logits "
    "at the features' size against labels scaled down by nearest neighbour "
    "(a 5-branch cell's proxy step at 33x33 features about 18% faster; "
    "evaluation always upsamples).",
)
_CACHE_COPIES = flags.DEFINE_integer(
    "cache_copies",
    2,
    "Augmented copies cached per training image.",
    lower_bound=1,
)
_VAL_SPLIT = flags.DEFINE_string("val_split", "val", "Split the proxy evaluates on.")
_TARGET_CROP_SIZE = flags.DEFINE_string(
    "target_crop_size", "769,769", "Crop at which head MAdds and params are counted."
)
_MAX_HEAD_MADDS = flags.DEFINE_string(
    "max_head_madds",
    None,
    "Hard budget of every strategy: no trial trains a cell whose head MAdds "
    "at --target_crop_size exceed it. A number (8e8) or a multiple of "
    "DeepLab's ASPP head, rates 6/12/18 + image pooling (1.1xaspp).",
)
_TOP_K = flags.DEFINE_integer(
    "top_k", 5, "Proxy cells re-ranked end to end.", lower_bound=1
)
_RERANK_STEPS = flags.DEFINE_integer(
    "rerank_steps", 500, "Re-rank training steps.", lower_bound=1
)
_PRETRAIN_STEPS = flags.DEFINE_integer(
    "pretrain_steps",
    1000,
    "Backbone pretraining steps of --mode=all.",
    lower_bound=1,
)
_ONE_SHOT_CELLS = flags.DEFINE_integer(
    "one_shot_cells",
    2000,
    "one_shot: cells the supernet scores; the best get the --num_trials trials.",
    lower_bound=1,
)
_ONE_SHOT_STEPS = flags.DEFINE_integer(
    "one_shot_steps",
    5000,
    "one_shot: supernet training steps (once per study).",
    lower_bound=1,
)
_HEARTBEAT_INTERVAL = flags.DEFINE_integer(
    "heartbeat_interval",
    30,
    "Seconds between a worker's heartbeats.",
    lower_bound=1,
)


def _search_dir():
    path = _SEARCH_DIR.value
    if not path:
        raise flags.ValidationError("--search_dir is required")
    os.makedirs(path, exist_ok=True)
    return path


def _train_crop():
    return common_flags.parse_size(FLAGS.train_crop_size, "train_crop_size")


def _dataset():
    info = common_flags.dataset_info_from_flags()
    if not common_flags.DATASET_DIR.value:
        raise flags.ValidationError("--dataset_dir is required")
    return info


def batch_norm_decay(steps):
    """The batch-norm decay of one of the search's short runs of `steps`.

    `--batch_norm_decay` when given on the command line. Otherwise not its
    default: DeepLab's 0.9997 suits tens of thousands of steps, and over the
    search's few hundred the moving statistics (which the cached features
    and the evaluations use) would barely leave their initial values; the
    run keeps DeepLab's averaging horizon instead
    (`proxy.proxy_norm_momentum`).
    """
    flag = FLAGS["batch_norm_decay"]
    if flag.present or not flag.using_default_value:  # Parsed, or set in code.
        return common_flags.BATCH_NORM_DECAY.value
    from deeplab_dpc.search import proxy

    return proxy.proxy_norm_momentum(steps)


def pretrain():
    """Trains the proxy backbone with an ASPP head; returns its checkpoint."""
    from deeplab_dpc.training import trainer

    logdir = os.path.join(_search_dir(), PRETRAIN_DIR)
    info = _dataset()
    options = common_flags.model_options_from_flags(
        _train_crop(),
        dense_prediction_cell=None,
        norm_momentum=batch_norm_decay(_PRETRAIN_STEPS.value),
    )
    logging.info("Pretraining the proxy backbone for %d steps.", _PRETRAIN_STEPS.value)
    results = trainer.run(
        options,
        trainer.TrainOptions(
            train_batch_size=FLAGS.train_batch_size,
            training_number_of_steps=_PRETRAIN_STEPS.value,
            base_learning_rate=FLAGS.base_learning_rate,
            dataset_dir=common_flags.DATASET_DIR.value,
            train_split=FLAGS.train_split,
            ignore_label=info.ignore_label,
            log_steps=max(1, _PRETRAIN_STEPS.value // 10),
            seed=FLAGS.seed,
        ),
        logdir,
    )
    trainer.stop_if_terminated(results)  # Saved; not a backbone to cache.
    return logdir


def backbone_checkpoint(allow_pretrain):
    """The checkpoint the cached features come from (None: backbone weights)."""
    if FLAGS.tf_initial_checkpoint:
        return FLAGS.tf_initial_checkpoint
    if common_flags.BACKBONE_WEIGHTS.value not in ("", "none"):
        return None
    pretrained = os.path.join(_search_dir(), PRETRAIN_DIR)
    if allow_pretrain:
        return pretrain()
    if os.path.isdir(pretrained):
        return pretrained
    raise flags.ValidationError(
        "the features of a randomly initialised backbone make the search "
        "meaningless: pass --tf_initial_checkpoint (a training checkpoint) or "
        "--backbone_weights, or run --mode=all, which pretrains the backbone"
    )


def build_cache(allow_pretrain=False):
    from deeplab_dpc.search import cache as cache_lib

    info = _dataset()
    checkpoint = backbone_checkpoint(allow_pretrain)
    options = common_flags.model_options_from_flags(
        _train_crop(), dense_prediction_cell=None
    )
    cache = cache_lib.build_cache(
        _search_dir(),
        dataset_dir=common_flags.DATASET_DIR.value,
        train_split=FLAGS.train_split,
        val_split=_VAL_SPLIT.value,
        model_options=options,
        checkpoint=checkpoint,
        cache_copies=_CACHE_COPIES.value,
        ignore_label=info.ignore_label,
        seed=FLAGS.seed or 0,
    )
    logging.info(
        "Feature cache %s: %d train and %d val crops, %.1f MB%s.",
        cache.cache_dir,
        cache.count("train"),
        cache.count("val"),
        cache.size_bytes / 1e6,
        " (reused)" if cache.reused else "",
    )
    return cache


def _load_cache():
    from deeplab_dpc.search import cache as cache_lib

    try:
        cache = cache_lib.load_info(_search_dir())
    except (FileNotFoundError, ValueError) as e:
        raise flags.ValidationError(
            f"--search_dir={_SEARCH_DIR.value!r} has no usable feature cache "
            f"({e}); run --mode=cache first"
        ) from e
    if tuple(cache.crop_size) != tuple(_train_crop()):
        raise flags.ValidationError(
            f"--train_crop_size={FLAGS.train_crop_size!r}, but the feature cache "
            f"in --search_dir={_SEARCH_DIR.value!r} was made at "
            f"{','.join(map(str, cache.crop_size))}: use that crop, or "
            "another --search_dir (a feature cache holds one crop)"
        )
    return cache


def _trial_settings():
    """What a trial's result depends on besides its cell: a study keeps one."""
    budget = {
        key: value
        for key, value in _proxy_kwargs().items()
        if key not in ("seed", "upsample_logits")
    }
    return {
        **budget,
        "train_crop_size": list(_train_crop()),
        "model_variant": common_flags.MODEL_VARIANT.value,
        "depth_multiplier": common_flags.DEPTH_MULTIPLIER.value,
        "output_stride": common_flags.OUTPUT_STRIDE.value,
        "proxy_eval_every": _PROXY_EVAL_EVERY.value,
        "val_split": _VAL_SPLIT.value,
        "proxy_upsample_logits": _PROXY_UPSAMPLE_LOGITS.value,
    }


# Trial settings added after studies were stored, with the value those
# studies ran with (`engine.create_or_load_study(trial_setting_defaults=)`).
TRIAL_SETTING_DEFAULTS = {"proxy_upsample_logits": True}


def _proxy_kwargs():
    return dict(
        proxy_steps=_PROXY_STEPS.value,
        proxy_batch_size=_PROXY_BATCH_SIZE.value,
        base_learning_rate=_PROXY_LEARNING_RATE.value,
        weight_decay=common_flags.WEIGHT_DECAY.value,
        norm_momentum=batch_norm_decay(_PROXY_STEPS.value),
        target_crop_size=common_flags.parse_size(
            _TARGET_CROP_SIZE.value, "target_crop_size"
        ),
        seed=FLAGS.seed,
        upsample_logits=_PROXY_UPSAMPLE_LOGITS.value,
    )


def head_budget(cache):
    """The `constraints.HeadBudget` of --max_head_madds, or None."""
    from deeplab_dpc.search import cache as cache_lib
    from deeplab_dpc.search import proxy

    if not _MAX_HEAD_MADDS.value:
        return None
    info = cache_lib.load_info(cache)
    target = common_flags.parse_size(_TARGET_CROP_SIZE.value, "target_crop_size")
    channels = info.feature_shape[-1]

    def cost(cell, rates=()):
        options = proxy.model_options(info, cell, atrous_rates=rates)
        return proxy.head_cost(options, channels, target)[1]

    aspp_rates = tuple(r * 16 // info.output_stride for r in (6, 12, 18))
    try:
        budget = constraints.parse_max_head_madds(
            _MAX_HEAD_MADDS.value, aspp_madds=cost(None, aspp_rates)
        )
    except ValueError as e:
        raise flags.ValidationError(str(e)) from e
    logging.info(
        "Head budget: %.3f GMAdds at %s (--max_head_madds=%s).",
        budget / 1e9,
        _TARGET_CROP_SIZE.value,
        _MAX_HEAD_MADDS.value,
    )
    return constraints.HeadBudget(budget, cost)


def make_objective(cache):
    """`objective(cell, report)` for the engine: one proxy trial."""
    from deeplab_dpc.search import proxy

    kwargs = _proxy_kwargs()
    eval_every = _PROXY_EVAL_EVERY.value or max(1, _PROXY_STEPS.value // 4)

    def objective(cell, report):
        result = proxy.run_trial(
            cell, cache, eval_every=eval_every, report=report, **kwargs
        )
        logging.info(
            "proxy mIOU %.4f, head %.3f GMAdds, %d params, %.1f s: %s",
            result.miou,
            result.head_madds / 1e9,
            result.head_params,
            result.wall_seconds,
            space.canonical_key(cell),
        )
        return {
            "miou": result.miou,
            "madds": result.head_madds,
            "params": result.head_params,
            "seconds": result.wall_seconds,
        }

    return objective


def _one_shot_options():
    """The `one_shot` strategy's ranking (trained or read in search_dir/one_shot)."""
    from deeplab_dpc.search import one_shot

    if _STRATEGY.value != "one_shot":
        return {}
    settings = one_shot.OneShotSettings(
        num_branches=_NUM_BRANCHES.value,
        steps=_ONE_SHOT_STEPS.value,
        batch_size=_PROXY_BATCH_SIZE.value,
        base_learning_rate=_PROXY_LEARNING_RATE.value,
        weight_decay=common_flags.WEIGHT_DECAY.value,
        seed=FLAGS.seed or 0,
        num_cells=_ONE_SHOT_CELLS.value,
    )
    ranking = one_shot.load_or_build_ranking(
        _search_dir(), _load_cache(), settings, log=logging.info
    )
    return {"ranking": ranking}


def open_study(feasible=None):
    import optuna

    from deeplab_dpc.search import engine
    from deeplab_dpc.search import optuna_space

    objectives = tuple(_OBJECTIVES.value)
    unknown = sorted(set(objectives) - set(optuna_space.OBJECTIVES))
    if unknown:
        raise flags.ValidationError(
            f"--objectives: unknown {unknown}; choose from "
            f"{sorted(optuna_space.OBJECTIVES)}"
        )
    pruner = (
        optuna.pruners.NopPruner()
        if _PRUNER.value == "none" or len(objectives) > 1
        else optuna.pruners.MedianPruner(n_startup_trials=5)
    )
    try:
        return engine.create_or_load_study(
            _STORAGE.value,
            _STUDY_NAME.value,
            _STRATEGY.value,
            objectives,
            search_dir=_search_dir(),
            num_branches=_NUM_BRANCHES.value,
            seed=FLAGS.seed,
            pruner=pruner,
            heartbeat_interval=_HEARTBEAT_INTERVAL.value,
            explore_prob=_EXPLORE_PROB.value,
            local_top_k=_LOCAL_TOP_K.value,
            op_prior=_OP_PRIOR.value,
            population_size=_POPULATION_SIZE.value,
            tournament_size=_TOURNAMENT_SIZE.value,
            feasible=feasible,
            trial_settings=_trial_settings(),
            trial_setting_defaults=TRIAL_SETTING_DEFAULTS,
            **_one_shot_options(),
        )
    except ValueError as e:
        raise flags.ValidationError(str(e)) from e


def _given_flags():
    """The flags given (not at their defaults), as flagfile lines.

    What local workers read: a flag written at its default would count as
    given there (`batch_norm_decay`'s absence changes the proxy's momentum).
    """
    seen, lines = set(), []
    for module_flags in FLAGS.flags_by_module_dict().values():
        for flag in module_flags:
            if id(flag) in seen or flag.name == "flagfile":
                continue
            seen.add(id(flag))
            if flag.present or not flag.using_default_value:
                lines.append(flag.serialize())
    return "".join(f"{line}\n" for line in sorted(lines))


def search():
    """Runs this process's worker, or `--num_workers` local worker processes."""
    from deeplab_dpc.search import engine
    from deeplab_dpc.search import study_storage

    cache = _load_cache()
    budget = head_budget(cache)
    study = open_study(budget)
    if _NUM_WORKERS.value > 1:
        flagfile = os.path.join(_search_dir(), FLAGS_FILE)
        text, env = study_storage.without_password(_given_flags(), _STORAGE.value)
        file_io.write_text(flagfile, text, private=bool(_STORAGE.value))
        engine.launch_workers(
            _NUM_WORKERS.value,
            [
                sys.executable,
                "-m",
                "deeplab_dpc.search",
                f"--flagfile={flagfile}",
                "--mode=search",
                "--num_workers=1",
            ],
            log_dir=os.path.join(_search_dir(), "logs"),
            pin=_PIN_WORKERS.value,
            env=env,
        )
    else:
        stats = engine.run_worker(
            study,
            make_objective(cache),
            num_trials_total=_NUM_TRIALS.value,
            feasible=budget,
        )
        logging.info("This worker: %s.", stats)
    return study


def trial_records(study):
    """The study's trials as `report.TRIAL_FIELDS` dicts."""
    from deeplab_dpc.search import engine

    records = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        records.append(
            {
                "number": t.number,
                "state": t.state.name,
                "miou": attrs.get("miou"),
                "madds": attrs.get("madds"),
                "params": attrs.get("params"),
                "seconds": attrs.get("seconds"),
                "cell": attrs.get(engine.ATTR_CELL),
                "duplicate_of": attrs.get(engine.ATTR_DUPLICATE),
            }
        )
    return records


def top_candidates(records, k):
    """The best `k` distinct cells by proxy mIOU."""
    from deeplab_dpc.search import report as report_lib
    from deeplab_dpc.search import rerank as rerank_lib

    seen, candidates = set(), []
    for record in report_lib.completed(records):
        cell = cell_spec.cell_from_json(record["cell"])
        key = space.canonical_key(cell)
        if key not in seen:
            seen.add(key)
            candidates.append(
                rerank_lib.Candidate(cell, record["miou"], trial=record["number"])
            )
        if len(candidates) == k:
            break
    return candidates


def _rerank_options():
    from deeplab_dpc.search import rerank as rerank_lib

    return rerank_lib.RerankOptions(
        rerank_steps=_RERANK_STEPS.value,
        train_batch_size=FLAGS.train_batch_size,
        base_learning_rate=FLAGS.base_learning_rate,
        weight_decay=common_flags.WEIGHT_DECAY.value,
        batch_norm_decay=batch_norm_decay(_RERANK_STEPS.value),
        seed=FLAGS.seed,
    )


def run_rerank(study):
    from deeplab_dpc.search import rerank as rerank_lib

    cache = _load_cache()
    return rerank_lib.rerank(
        top_candidates(trial_records(study), _TOP_K.value),
        cache,
        _search_dir(),
        dataset_dir=common_flags.DATASET_DIR.value,
        train_split=FLAGS.train_split,
        val_split=_VAL_SPLIT.value,
        options=_rerank_options(),
    )


def baseline_heads(output_stride):
    """(name, cell, atrous_rates) of the heads a search is measured against."""
    from deeplab_dpc.search import report as report_lib

    conv1x1 = cell_spec.cell_from_json(
        [{"op": "conv", "kernel": 1, "rate": [1, 1], "input": -1}]
    )
    rates = tuple(r * 16 // output_stride for r in (6, 12, 18))
    return (
        ("published DPC", cell_spec.published_cell(), ()),
        (report_lib.ASPP_BASELINE, None, rates),
        ("ASPP (no atrous rates)", None, ()),
        ("1x1 only", conv1x1, ()),
    )


def baselines(cache):
    """The baseline heads, each on the proxy budget and end to end (cached).

    End to end is the re-rank's budget (`--rerank_steps`), so the baselines
    and the re-ranked cells compare alike.
    """
    from deeplab_dpc.search import cache as cache_lib
    from deeplab_dpc.search import proxy
    from deeplab_dpc.search import rerank as rerank_lib

    kwargs = _proxy_kwargs()
    options = _rerank_options()
    path = os.path.join(_search_dir(), BASELINES_FILE)
    budget = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    budget["rerank_steps"] = options.rerank_steps
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get("budget") == budget:
            return stored["baselines"]
    info = cache_lib.load_info(cache)
    rows = []
    heads = baseline_heads(info.output_stride)
    heads_done = progress.Progress("baseline", len(heads), log=logging.info)
    for name, cell, rates in heads:
        logging.info("Baseline %s on the proxy budget and end to end.", name)
        result = proxy.run_trial(cell, cache, atrous_rates=rates, **kwargs)
        full = rerank_lib.train_and_evaluate(
            rerank_lib.Candidate(cell, result.miou, atrous_rates=rates),
            cache,
            dataset_dir=common_flags.DATASET_DIR.value,
            train_split=FLAGS.train_split,
            val_split=_VAL_SPLIT.value,
            options=options,
            workdir=os.path.join(
                _search_dir(),
                rerank_lib.RERANK_DIR,
                "baseline-" + name.split()[0] + ("-rates" if rates else ""),
            ),
        )
        rows.append(
            {
                "name": name,
                "miou": result.miou,
                "full_miou": float(full["miou"]),
                "madds": result.head_madds,
                "params": result.head_params,
                "cell": None if cell is None else cell_spec.cell_to_json(cell),
                "atrous_rates": list(rates),
            }
        )
        heads_done.advance(
            name, f"proxy mIOU {result.miou:.4f}, full mIOU {float(full['miou']):.4f}"
        )
    file_io.write_json(path, {"budget": budget, "baselines": rows}, indent=1)
    return rows


def write_report(study):
    from deeplab_dpc.search import report as report_lib
    from deeplab_dpc.search import rerank as rerank_lib
    from deeplab_dpc.search import strategies

    cache = _load_cache()
    rerank_path = os.path.join(_search_dir(), rerank_lib.RESULTS_FILE)
    rerank_summary = None
    if os.path.exists(rerank_path):
        with open(rerank_path) as f:
            rerank_summary = json.load(f)
    path = report_lib.write_report(
        _search_dir(),
        trial_records(study),
        baselines=baselines(cache),
        rerank=rerank_summary,
        top_k=max(_TOP_K.value, 10),
        settings={
            "strategy": _STRATEGY.value,
            **(
                {"op_prior": _OP_PRIOR.value}
                if strategies.takes_op_prior(_STRATEGY.value)
                else {}
            ),
            "num_branches": _NUM_BRANCHES.value,
            "num_trials": _NUM_TRIALS.value,
            "proxy_steps": _PROXY_STEPS.value,
            "proxy_batch_size": _PROXY_BATCH_SIZE.value,
            "model_variant": common_flags.MODEL_VARIANT.value,
            "train_crop_size": FLAGS.train_crop_size,
            "target_crop_size": _TARGET_CROP_SIZE.value,
            "max_head_madds": _MAX_HEAD_MADDS.value or "none",
        },
    )
    logging.info("Wrote %s.", path)
    return path


def main(argv):
    from deeplab_dpc.search import cache as cache_lib

    if len(argv) > 1:
        raise app.UsageError(f"Too many arguments: {argv[1:]}")
    mode = _MODE.value
    try:
        speed_flags.apply_threads()
        speed_flags.apply_float32_math()
        if mode == "pretrain":
            pretrain()
            return
        if mode in ("cache", "all"):
            build_cache(allow_pretrain=mode == "all")
        if mode in ("search", "all"):
            study = search()
        else:
            study = open_study()
        if mode in ("rerank", "all"):
            run_rerank(study)
        if mode in ("report", "all"):
            write_report(study)
    except (flags.ValidationError, cache_lib.CacheSettingsError) as e:
        raise app.UsageError(str(e)) from e


def run():
    cli.run(main, __name__, required=["search_dir"])
