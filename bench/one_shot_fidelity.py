r"""One-shot scoring on the tests' tiny cache: its speed and its ranking vs stand-alone trials.

  .venv/bin/python bench/one_shot_fidelity.py [--cells=16] [--ops=default|all|T1,T2,...]
      [--num_branches=3] [--supernet_steps=1000] [--proxy_steps=100]
      [--score_cells=200] [--output_json=PATH]

Builds the feature cache `tests/search/cache_testing.py` builds (synthetic
data, a He-initialised MobileNet-v2 0.35 backbone, 65x65 crops: 5x5x112
features), trains a supernet (`search.one_shot.train_supernet`) over `--ops`
with `--num_branches` branches, then:

* scores `--score_cells` distinct uniform cells with it (recalibration on
  `--calibration_batches` train batches + val mIOU, `one_shot.Scorer`) and
  reports cells per CPU-hour (process CPU time, all threads) and per
  wall-clock hour, plus the one-time trace and training costs;
* trains `--cells` of those cells stand-alone (`proxy.run_trial`, the same
  batch and learning rate, `--proxy_steps` steps each) and reports
  Spearman's rho between supernet score and stand-alone mIOU, with a 90%
  bootstrap interval over the cells (2000 resamples).

The numbers are what this tiny cache gives: 5x5 feature maps make most
atrous rates and pooling grids degenerate, so they say more about the
machinery than about the paper's 49x49 proxy.
"""

import argparse
import os
import random
import sys
import tempfile
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_BENCH, os.path.dirname(_BENCH)]

import benchlib  # pylint: disable=wrong-import-position

DEFAULT_OPS = (
    "conv1x1",
    "sep3x3@1x1",
    "sep3x3@3x3",
    "sep3x3@1x3",
    "sep3x3@3x1",
    "sep3x3@6x6",
    "pool@1x1",
    "pool@2x2",
    "pool@4x4",
)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=16, help="Cells trained stand-alone.")
    parser.add_argument(
        "--ops", default="default", help="default, all, or comma-separated op tokens."
    )
    parser.add_argument("--num_branches", type=int, default=3)
    parser.add_argument("--supernet_steps", type=int, default=1000)
    parser.add_argument("--proxy_steps", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=0.05)
    parser.add_argument("--calibration_batches", type=int, default=4)
    parser.add_argument("--score_cells", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", default=None, help="Result file.")
    args = parser.parse_args(argv)
    if args.ops == "default":
        args.ops = DEFAULT_OPS
    elif args.ops == "all":
        args.ops = None
    else:
        args.ops = tuple(t.strip() for t in args.ops.split(",") if t.strip())
    return args


def build_cache(work_dir):
    """The cache of tests/search/cache_testing.py under `work_dir`."""
    from deeplab_dpc.data import synthetic  # pylint: disable=import-outside-toplevel
    from tests.search import cache_testing  # pylint: disable=import-outside-toplevel

    data, pretrained = os.path.join(work_dir, "data"), os.path.join(work_dir, "pre")
    synthetic.build(
        data,
        num_train=cache_testing.NUM_TRAIN,
        num_val=cache_testing.NUM_VAL,
        height=cache_testing.CROP[0],
        width=cache_testing.CROP[1],
        num_workers=1,
        num_shards=2,
    )
    cache_testing.write_pretrained(cache_testing.OPTIONS, pretrained)
    return cache_testing.build(os.path.join(work_dir, "search"), data, pretrained)


def main(argv=None):
    args = _parse(argv)
    import numpy as np  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import one_shot  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import proxy  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import rank_correlation  # pylint: disable=import-outside-toplevel

    figures = []
    with tempfile.TemporaryDirectory() as work_dir:
        info = build_cache(work_dir)
        settings = one_shot.OneShotSettings(
            num_branches=args.num_branches,
            ops=args.ops,
            steps=args.supernet_steps,
            batch_size=args.batch_size,
            base_learning_rate=args.learning_rate,
            seed=args.seed,
            calibration_batches=args.calibration_batches,
        )
        start = time.perf_counter()
        net = one_shot.build_supernet(info, settings)
        build_seconds = time.perf_counter() - start
        num_ops = len(net.ops)
        print(f"supernet: {num_ops} ops x {args.num_branches} branches, "
              f"{sum(len(l) for l in net.op_layers)} op layers, "
              f"{sum(int(np.prod(v.shape)) for v in net.variables)} weights",
              flush=True)

        # The first step traces; time it apart from the rest.
        short = one_shot.OneShotSettings(**{**settings.to_dict(), "steps": 1})
        start = time.perf_counter()
        one_shot.train_supernet(net, info, short)
        trace_seconds = time.perf_counter() - start
        net = one_shot.build_supernet(info, settings)
        start, cpu = time.perf_counter(), time.process_time()
        one_shot.train_supernet(net, info, settings, log=print)
        train_seconds = time.perf_counter() - start
        train_cpu = time.process_time() - cpu

        scorer = one_shot.Scorer(
            net,
            info,
            calibration_batches=args.calibration_batches,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        cells = one_shot.sample_cells(
            max(args.score_cells, args.cells),
            random.Random(f"{args.seed}:cells"),
            net.ops,
            net.num_branches,
        )
        start = time.perf_counter()
        scorer.score(cells[0])  # Traces the recalibration and scoring graphs.
        score_trace_seconds = time.perf_counter() - start
        start, cpu = time.perf_counter(), time.process_time()
        scores = [scorer.score(cell) for cell in cells]
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        figures += [
            benchlib.figure("supernet_build", build_seconds, "s"),
            benchlib.figure("supernet_train_trace", trace_seconds, "s", "first step"),
            benchlib.figure(
                "supernet_train", train_seconds, "s",
                f"{args.supernet_steps} steps, {train_cpu:.0f} CPU-s",
            ),
            benchlib.figure("score_trace", score_trace_seconds, "s", "first cell"),
            benchlib.figure(
                "cells_per_cpu_hour", len(cells) / cpu * 3600, "cells/CPU-h",
                f"{len(cells)} cells, {args.calibration_batches} calibration batches",
            ),
            benchlib.figure(
                "cells_per_wall_hour", len(cells) / wall * 3600, "cells/h",
                f"{os.cpu_count()} cores",
            ),
        ]

        chosen = list(range(args.cells))  # The first cells drawn: uniform.
        standalone = []
        for n, index in enumerate(chosen, 1):
            result = proxy.run_trial(
                cells[index],
                info,
                proxy_steps=args.proxy_steps,
                proxy_batch_size=args.batch_size,
                base_learning_rate=args.learning_rate,
                seed=args.seed,
                target_crop_size=(129, 129),
            )
            standalone.append(result.miou)
            print(
                f"cell {n}/{len(chosen)}: supernet {scores[index]:.4f}, "
                f"stand-alone {result.miou:.4f} ({result.wall_seconds:.1f} s)",
                flush=True,
            )
        rho, low, high = rank_correlation.spearman_interval(
            [scores[i] for i in chosen], standalone, seed=args.seed
        )
        if rho is None:
            raise SystemExit(
                "error: the stand-alone or supernet scores are all equal; "
                "Spearman's rho is undefined (train longer)"
            )
        figures.append(
            benchlib.figure(
                "spearman_rho", rho, "",
                f"{len(chosen)} cells; 90% bootstrap interval [{low:.2f}, {high:.2f}]; "
                f"stand-alone {args.proxy_steps} proxy steps",
            )
        )
    benchlib.report("one_shot_fidelity", figures, args.output_json)


if __name__ == "__main__":
    main()
