"""Writes a split as DeepLab TFRecord shards: parallel, atomic, deterministic.

Example i of n goes to shard `i // ceil(n / num_shards)` (DeepLab's contiguous
sharding), in order, whatever the number of worker processes. Shards are
written under hidden temporary names and renamed only when every shard of the
split is complete, so a killed or failed run never leaves a shard that looks
whole; existing shards of the split are only replaced with `overwrite=True`.
"""

import concurrent.futures
import contextlib
import dataclasses
import glob
import math
import multiprocessing
import os

import tqdm

from deeplab_dpc import processes
from deeplab_dpc.data import tfexample


class BadExampleError(ValueError):
    """An input example that cannot be converted; the message names its file."""


@dataclasses.dataclass(frozen=True)
class WriteResult:
    """What `write_split` wrote: shard paths, examples written and skipped."""

    shards: tuple
    num_written: int
    skipped: tuple  # error messages of the examples skipped


def check_no_shards(output_dir, splits):
    """Raises unless `output_dir` holds no shard of any of `splits`.

    Conversions call it for all their splits before writing any, so that a
    refused run writes nothing.

    Raises:
      FileExistsError: naming the directory, the split and `--overwrite`.
    """
    for split in splits:
        existing = _existing_shards(output_dir, split)
        if existing:
            raise FileExistsError(
                f"{output_dir} already holds {len(existing)} shard(s) of split "
                f"{split!r} (e.g. {os.path.basename(existing[0])}); pass "
                f"--overwrite to replace them"
            )


def _existing_shards(output_dir, split):
    try:
        return tfexample.split_files(output_dir, split)
    except FileNotFoundError:
        return []


def _temporary(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")


def _write_shard(make_example, indices, path, skip_bad_examples, parent_pid=None):
    """Writes one shard's temporary file from `make_example(i)` records.

    A worker whose parent has died (a killed conversion) stops at the next
    example instead of finishing an orphaned shard.
    """
    # Imported here so that worker processes stay light until they write.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    written, skipped = 0, []
    with tf.io.TFRecordWriter(_temporary(path)) as writer:
        for i in indices:
            if parent_pid is not None and os.getppid() != parent_pid:
                raise RuntimeError(f"parent process gone; abandoning {path}")
            try:
                record = make_example(i)
            except BadExampleError as e:
                if not skip_bad_examples:
                    raise
                skipped.append(str(e))
                continue
            writer.write(record)
            written += 1
    return written, skipped


def write_split(
    make_example,
    num_examples,
    output_dir,
    split,
    num_shards=4,
    overwrite=False,
    num_workers=2,
    skip_bad_examples=False,
    description=None,
    pool=None,
):
    """Writes `num_examples` records as `<split>-%05d-of-%05d.tfrecord` shards.

    Args:
      make_example: picklable callable, `i -> bytes` (a serialized
        `tf.train.Example`); raises `BadExampleError` for a bad input. For
        byte-identical shards across runs and worker counts, serialize with
        `SerializeToString(deterministic=True)` (features are a map).
      num_examples: int, > 0.
      output_dir: str, created if missing.
      split: str, the split name.
      num_shards: int, number of shards (fewer when there are fewer examples).
      overwrite: bool, replace existing shards of the split.
      num_workers: int, processes; 1 writes in this process.
      skip_bad_examples: bool, count bad examples instead of failing.
      description: str, progress bar label.
      pool: an executor from `worker_pool`, shared by the splits of one
        conversion so that its workers start (and import TensorFlow) once;
        None starts `num_workers` processes for this split.

    Returns:
      A `WriteResult`.

    Raises:
      FileExistsError: shards of the split exist and `overwrite` is False.
      BadExampleError: a bad example, unless `skip_bad_examples`; with it,
        when every example is bad (nothing is written then).
      ValueError: no examples, or bad counts.
    """
    if num_examples < 1:
        raise ValueError(f"split {split!r}: no examples to write")
    if num_shards < 1 or num_workers < 1:
        raise ValueError("num_shards and num_workers must be >= 1")
    os.makedirs(output_dir, exist_ok=True)
    existing = _existing_shards(output_dir, split)
    for stale in glob.glob(os.path.join(glob.escape(output_dir), f".{split}-*.tmp")):
        os.remove(stale)  # Left by a killed run.
    if not overwrite:
        check_no_shards(output_dir, [split])
    per_shard = math.ceil(num_examples / num_shards)
    num_shards = math.ceil(num_examples / per_shard)
    jobs = [
        (
            range(k * per_shard, min((k + 1) * per_shard, num_examples)),
            os.path.join(output_dir, tfexample.shard_name(split, k, num_shards)),
        )
        for k in range(num_shards)
    ]
    results = [None] * num_shards
    progress = tqdm.tqdm(
        total=num_shards, desc=description or split, unit="shard", leave=False
    )
    try:
        owned = (
            worker_pool(num_workers) if pool is None else contextlib.nullcontext(pool)
        )
        with progress, owned as active:
            _run_jobs(active, make_example, jobs, results, skip_bad_examples, progress)
        if not any(written for written, _ in results):
            reasons = [reason for _, skipped in results for reason in skipped]
            raise BadExampleError(
                f"split {split!r}: all {num_examples} examples are bad, nothing "
                f"written; first: {reasons[0]}"
            )
        for _, path in jobs:
            os.replace(_temporary(path), path)
    finally:
        for _, path in jobs:
            if os.path.exists(_temporary(path)):
                os.remove(_temporary(path))
    paths = tuple(path for _, path in jobs)
    for stale in set(existing) - set(paths):
        os.remove(stale)
    return WriteResult(
        shards=paths,
        num_written=sum(r[0] for r in results),
        skipped=tuple(s for r in results for s in r[1]),
    )


@contextlib.contextmanager
def worker_pool(num_workers):
    """Spawned writer processes for `write_split(pool=...)`; None for 1 worker.

    Yields:
      A `concurrent.futures.ProcessPoolExecutor`, or None (write in-process).
    """
    if num_workers < 1:
        raise ValueError("num_workers must be >= 1")
    if num_workers == 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    # The workers die with this process, even when it is SIGKILLed, and
    # import TensorFlow as quietly as it does.
    with concurrent.futures.ProcessPoolExecutor(
        num_workers,
        mp_context=context,
        initializer=processes.start_worker,
        initargs=(os.getpid(), processes.wants_quiet_native_logs()),
    ) as pool:
        yield pool


def _run_jobs(pool, make_example, jobs, results, skip_bad_examples, progress):
    """Writes every shard's temporary file, in this process or in `pool`.

    On a failure the shards not yet started are cancelled.
    """
    if pool is None:
        for k, (indices, path) in enumerate(jobs):
            results[k] = _write_shard(make_example, indices, path, skip_bad_examples)
            progress.update()
        return
    futures = {
        pool.submit(
            _write_shard, make_example, indices, path, skip_bad_examples, os.getpid()
        ): k
        for k, (indices, path) in enumerate(jobs)
    }
    try:
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            progress.update()
    except BaseException:
        for future in futures:
            future.cancel()
        concurrent.futures.wait(futures)
        raise
