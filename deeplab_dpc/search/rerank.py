"""Re-ranking of the best proxy cells by full end-to-end training.

The paper re-ranked its top 50 proxy cells by fine-tuning each with the
MobileNet-v2 backbone end to end, and its winner was 12th by proxy score.
`rerank` does the same with the training program's library: every candidate
cell is trained (`trainer.run`) from the cache's backbone checkpoint (the
weights the proxy features came from; the head and logits start fresh, as
`initialize_last_layer=False` does) for `rerank_steps` at the cache's crop,
then evaluated on the val split with the eval program's library
(`evaluator.evaluate_checkpoint`). Candidates are ranked by that full mIOU;
the Spearman rank correlation between proxy and full mIOU says how
predictive the proxy was (the paper measured rho = 0.47 for cached features
vs end-to-end training). The winner is written in DeepLab's JSON format to
`<search_dir>/best_cell.json`, which the training program takes with
`--dense_prediction_cell_json`.

Each candidate trains in `<search_dir>/rerank/<canonical key hash>/`, so an
interrupted re-rank resumes: a finished candidate's checkpoint and
`eval_results.json` are reused.
"""

import dataclasses
import hashlib
import json
import os
from typing import Optional

from absl import logging

from deeplab_dpc import file_io
from deeplab_dpc.cells import cell_spec
from deeplab_dpc.evaluation import evaluator
from deeplab_dpc.search import cache as cache_lib
from deeplab_dpc.search import proxy
from deeplab_dpc.search import rank_correlation
from deeplab_dpc.search import space
from deeplab_dpc.training import trainer

BEST_CELL_FILE = "best_cell.json"
RERANK_DIR = "rerank"
RESULTS_FILE = "rerank.json"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A cell to re-rank, with its proxy score and trial number.

    `cell` None is DeepLab's ASPP head with `atrous_rates` (a baseline).
    """

    cell: Optional[cell_spec.CellSpec]
    proxy_miou: float
    trial: Optional[int] = None
    atrous_rates: tuple = ()


@dataclasses.dataclass(frozen=True)
class RerankOptions:
    """End-to-end training settings of the re-rank (train.py's flags).

    Attributes:
      rerank_steps: int, training steps per candidate.
      train_batch_size: int, the batch.
      base_learning_rate: float, the poly schedule's start.
      weight_decay: float, DeepLab's L2 weight decay.
      fine_tune_batch_norm: bool, train batch norm (DeepLab: only with large
        batches).
      batch_norm_decay: float, or None for DeepLab's averaging horizon over
        `rerank_steps` (`proxy.proxy_norm_momentum`).
      seed: int or None.
    """

    rerank_steps: int = 200
    train_batch_size: int = 8
    base_learning_rate: float = 0.01
    weight_decay: float = 4e-5
    fine_tune_batch_norm: bool = True
    batch_norm_decay: Optional[float] = None
    seed: Optional[int] = None


def candidate_dir(search_dir, cell):
    """The folder a candidate trains in, named by its canonical key."""
    key = space.canonical_key(cell)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return os.path.join(search_dir, RERANK_DIR, digest)


@trainer.released_custom_gradients()
def train_and_evaluate(
    candidate, cache, *, dataset_dir, train_split, val_split, options, workdir
):
    """Trains one candidate end to end and evaluates it; resumes if started.

    Returns:
      dict: "miou", "per_class_iou", "checkpoint", "step".
    """
    info = cache_lib.load_info(cache)
    # A short run keeps DeepLab's batch-norm averaging horizon (see proxy).
    norm_momentum = options.batch_norm_decay
    if norm_momentum is None:
        norm_momentum = proxy.proxy_norm_momentum(options.rerank_steps)
    model_options = proxy.model_options(
        info,
        candidate.cell,
        atrous_rates=candidate.atrous_rates,
        weight_decay=options.weight_decay,
        norm_momentum=norm_momentum,
    )
    results_path = os.path.join(workdir, evaluator.RESULTS_FILE)
    if os.path.exists(results_path):
        with open(results_path) as f:
            result = json.load(f)
        if result.get("step") == options.rerank_steps:
            logging.info("Re-rank: reusing %s.", results_path)
            return result
    os.makedirs(workdir, exist_ok=True)
    if candidate.cell is not None:
        file_io.write_text(
            os.path.join(workdir, proxy.CELL_JSON),
            cell_spec.cell_to_json_string(candidate.cell),
        )
    train_options = trainer.TrainOptions(
        train_batch_size=options.train_batch_size,
        training_number_of_steps=options.rerank_steps,
        base_learning_rate=options.base_learning_rate,
        dataset_dir=dataset_dir,
        train_split=train_split,
        ignore_label=info.ignore_label,
        fine_tune_batch_norm=options.fine_tune_batch_norm,
        tf_initial_checkpoint=info.backbone_checkpoint,
        initialize_last_layer=False,
        log_steps=max(1, options.rerank_steps // 5),
        save_interval_secs=600.0,
        seed=options.seed,
    )
    # SIGTERM: the run saved its checkpoint; evaluate nothing more.
    trainer.stop_if_terminated(trainer.run(model_options, train_options, workdir))
    result = evaluator.evaluate_checkpoint(
        model_options,
        workdir,
        dataset_dir=dataset_dir,
        split=val_split,
        batch_size=options.train_batch_size,
        ignore_label=info.ignore_label,
    )
    evaluator.write_results(workdir, result)
    return result


def rerank(
    candidates,
    cache,
    search_dir,
    *,
    dataset_dir,
    train_split,
    val_split,
    options=RerankOptions(),
):
    """Re-ranks candidates by full training; writes `best_cell.json`.

    Args:
      candidates: `Candidate`s (e.g. the top-K trials by proxy mIOU).
      cache: the search's `cache.CacheInfo` (or its folder).
      search_dir: str, where `rerank/`, `rerank.json` and `best_cell.json` go.
      dataset_dir, train_split, val_split: the data set's TFRecords.
      options: `RerankOptions`.

    Returns:
      dict: "candidates" (list of dicts with cell JSON, trial, proxy_miou,
      full_miou, proxy_rank, full_rank, checkpoint; best first), "spearman"
      (rho or None), "best_cell_path".

    Raises:
      ValueError: when there is no candidate.
    """
    if not candidates:
        raise ValueError("no candidate to re-rank (the study has no completed trial)")
    rows = []
    for i, candidate in enumerate(candidates):
        logging.info(
            "Re-rank %d/%d: trial %s, proxy mIOU %.4f.",
            i + 1,
            len(candidates),
            candidate.trial,
            candidate.proxy_miou,
        )
        result = train_and_evaluate(
            candidate,
            cache,
            dataset_dir=dataset_dir,
            train_split=train_split,
            val_split=val_split,
            options=options,
            workdir=candidate_dir(search_dir, candidate.cell),
        )
        rows.append(
            {
                "trial": candidate.trial,
                "cell": cell_spec.cell_to_json(candidate.cell),
                "proxy_miou": float(candidate.proxy_miou),
                "full_miou": float(result["miou"]),
                "checkpoint": result["checkpoint"],
            }
        )
    for key, rank_key in (("proxy_miou", "proxy_rank"), ("full_miou", "full_rank")):
        order = sorted(range(len(rows)), key=lambda j: -rows[j][key])
        for rank, j in enumerate(order, start=1):
            rows[j][rank_key] = rank
    rows.sort(key=lambda row: row["full_rank"])
    rho = rank_correlation.spearman(
        [r["proxy_miou"] for r in rows], [r["full_miou"] for r in rows]
    )
    best_path = os.path.join(search_dir, BEST_CELL_FILE)
    # The search's own product: a new re-rank replaces the previous winner.
    cell_spec.dump_cell(
        cell_spec.cell_from_json(rows[0]["cell"]), best_path, overwrite=True
    )
    summary = {
        "candidates": rows,
        "spearman": rho,
        "best_cell_path": best_path,
        "rerank_steps": options.rerank_steps,
    }
    file_io.write_json(os.path.join(search_dir, RESULTS_FILE), summary, indent=1)
    logging.info(
        "Re-rank done: best is trial %s (full mIOU %.4f, proxy rank %d); "
        "Spearman rho %s.",
        rows[0]["trial"],
        rows[0]["full_miou"],
        rows[0]["proxy_rank"],
        "n/a" if rho is None else f"{rho:.3f}",
    )
    return summary
