r"""What the feature cache saves: proxy step vs end-to-end steps, same cell and crop.

  .venv/bin/python bench/proxy_saving.py [--quick] [--output_json=PATH]

One run measures the training step of the published DPC (plus DeepLab's
logits) at one crop and batch, four ways, each in its own process (so each
has its own peak memory), alternating one step per process in turn:
  proxy         the proxy task: the head trained on cached MobileNet-v2
                features read from a real feature cache (`search/cache.py`,
                float16 shards), no backbone in the graph;
  mnv2_frozen   end to end with the MobileNet-v2 backbone frozen (its
                layers not trainable: batch norms in inference mode, no
                backbone gradients; the head trained);
  mnv2_full     MobileNet-v2 + DPC, everything trained (the re-ranking task);
  xception_full Xception + DPC, everything trained (the full task).
The end-to-end steps are the training program's own step
(`trainer.build_train_step`) on fixed in-memory batches (the input
pipeline is
measured by bench/input_pipeline.py); the proxy reads its cache as trials do.
It prints the median step times, the ratios to the proxy step, and the cost
of a whole proxy trial vs a whole full-task run derived from them with the
paper's schedules (30k proxy steps at batch 8, 90k full steps at batch 16,
the batch-16 step taken as twice the measured batch-8 step).
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_BENCH, os.path.dirname(_BENCH)]

import benchlib  # pylint: disable=wrong-import-position

CONFIGS = ("proxy", "mnv2_frozen", "mnv2_full", "xception_full")
_IGNORE_LABEL = 255
_PAPER_PROXY_STEPS, _PAPER_FULL_STEPS, _PAPER_FULL_BATCH = 30000, 90000, 16


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=513, help="Square crop size.")
    parser.add_argument("--batch", type=int, default=8, help="Batch size.")
    parser.add_argument("--rounds", type=int, default=5, help="Timed steps each.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps each.")
    parser.add_argument("--num_images", type=int, default=16, help="Images cached.")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="Comma-separated subset."
    )
    parser.add_argument("--quick", action="store_true", help="Tiny smoke run.")
    parser.add_argument("--output_json", default=None, help="Result file.")
    args = parser.parse_args(argv)
    if args.quick:
        args.crop, args.batch, args.rounds, args.warmup = 129, 2, 2, 1
        args.num_images = 4
    args.configs = [name.strip() for name in args.configs.split(",") if name]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown or "proxy" not in args.configs:
        parser.error(f"--configs must include proxy and name only {CONFIGS}")
    return args


def _model_options(variant, args):
    from deeplab_dpc.cells import cell_spec  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.data import synthetic  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.models import deeplab  # pylint: disable=import-outside-toplevel

    return deeplab.ModelOptions(
        model_variant=variant,
        num_classes=synthetic.NUM_CLASSES,
        crop_size=(args.crop, args.crop),
        output_stride=16,
        dense_prediction_cell=cell_spec.published_cell(),
        backbone_weights=None,
    )


def build_cache(work_dir, args):
    """A real feature cache of MobileNet-v2 on synthetic images; its build time."""
    from deeplab_dpc.data import synthetic  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import cache  # pylint: disable=import-outside-toplevel
    from tests.search import cache_testing  # pylint: disable=import-outside-toplevel

    data_dir = os.path.join(work_dir, "data")
    synthetic.build(
        data_dir,
        num_train=args.num_images,
        num_val=1,
        height=args.crop,
        width=args.crop,
        num_shards=1,
    )
    # A random MobileNet-v2 gives all-zero float16 features, which the cache
    # refuses: He-initialised kernels keep the activations near 1.
    options = _model_options("mobilenet_v2", args)
    _, checkpoint = cache_testing.write_pretrained(
        options, os.path.join(work_dir, "backbone")
    )
    start = time.perf_counter()
    info = cache.build_cache(
        work_dir,
        dataset_dir=data_dir,
        train_split="train",
        val_split="val",
        model_options=options,
        checkpoint=checkpoint,
        cache_copies=1,
        ignore_label=_IGNORE_LABEL,
        seed=0,
        progress=False,
    )
    seconds = time.perf_counter() - start
    return info.cache_dir, seconds / (info.count("train") + info.count("val"))


def _proxy_step(cache_dir, args):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from deeplab_dpc.cells import cell_spec  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import cache  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import proxy  # pylint: disable=import-outside-toplevel

    info = cache.load_info(cache_dir)
    options = proxy.model_options(info, cell_spec.published_cell())
    model = proxy.build_proxy_model(options, info.feature_shape)
    optimizer = tf.keras.optimizers.SGD(0.01, momentum=0.9)
    step = proxy.make_train_step(model, optimizer, info.ignore_label)
    batches = cache.load_split(
        info, "train", batch_size=args.batch, shuffle=True, seed=0, repeat=True
    )
    iterator = iter(batches)
    return lambda: float(step(iterator))


def _end_to_end_step(config, args):
    """The training program's step (`trainer.build_train_step`) on one batch."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from deeplab_dpc.data import pipeline  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.models import deeplab  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import cache  # pylint: disable=import-outside-toplevel
    from deeplab_dpc.training import trainer  # pylint: disable=import-outside-toplevel

    variant = "xception" if config == "xception_full" else "mobilenet_v2"
    options = _model_options(variant, args)
    model = deeplab.build_deeplab(options)
    if config == "mnv2_frozen":
        # Keras runs frozen batch norms in inference mode, and the step
        # computes no gradient for frozen weights.
        for layer in cache.feature_extractor(model).layers:
            layer.trainable = False
    train_options = trainer.TrainOptions(
        train_batch_size=args.batch, ignore_label=_IGNORE_LABEL
    )
    optimizer = trainer.build_optimizer(train_options, model)
    step = trainer.build_train_step(
        model, optimizer, tf.distribute.get_strategy(), train_options
    )
    shape = (args.batch, args.crop, args.crop)
    batch = {
        pipeline.IMAGE: tf.random.uniform(shape + (3,), 0, 255, seed=0),
        pipeline.LABEL: tf.random.uniform(
            shape + (1,), 0, options.num_classes, tf.int32, seed=1
        ),
    }
    fraction = tf.constant(1.0)
    return lambda: float(step(batch, fraction))


def _serve(config, cache_dir, args, conn):
    """Worker process: builds one step, then times steps on request."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if config == "proxy":
        step = _proxy_step(cache_dir, args)
    else:
        step = _end_to_end_step(config, args)
    for _ in range(args.warmup):
        step()
    conn.send("ready")
    while True:
        count = conn.recv()
        if count is None:
            break
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        conn.send(seconds)
    conn.send(benchlib.peak_rss_mb())


def measure(cache_dir, args):
    """Median step seconds and peak RSS (MB) per config, alternating configs."""
    context = multiprocessing.get_context("spawn")
    workers = {}
    for config in args.configs:
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(config, cache_dir, args, child))
        process.start()
        child.close()  # So that a dead worker ends `recv` with EOFError.
        # One at a time: building and warming up in parallel would contend.
        try:
            parent.recv()
        except EOFError:
            process.join()
            raise RuntimeError(
                f"the {config} worker died (exit code {process.exitcode}); its "
                "traceback is above"
            ) from None
        workers[config] = (process, parent)
        print(f"{config}: built and warmed up", flush=True)
    seconds = {config: [] for config in workers}
    for round_index in range(args.rounds):
        for config, (_, conn) in workers.items():
            conn.send(1)
            seconds[config] += conn.recv()
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    rss = {}
    for config, (process, conn) in workers.items():
        conn.send(None)
        rss[config] = conn.recv()
        process.join()
    return {c: benchlib.median(s) for c, s in seconds.items()}, rss


def figures(step, rss, cache_seconds, args):
    """The result records."""
    detail = (
        f"published DPC, {args.crop}x{args.crop}, batch {args.batch}, median of "
        f"{args.rounds} steps alternating the configs, {args.warmup} warm-up"
    )
    out = []
    for config, seconds in step.items():
        out.append(benchlib.figure(f"{config} step", seconds * 1000, "ms", detail))
        out.append(
            benchlib.figure(
                f"{config} peak memory", rss[config], "MB", "peak RSS of its process"
            )
        )
    for config, seconds in step.items():
        if config != "proxy":
            out.append(
                benchlib.figure(
                    f"{config} step / proxy step",
                    seconds / step["proxy"],
                    "x",
                    "same run",
                )
            )
    if "xception_full" in step:
        batch_factor = _PAPER_FULL_BATCH / args.batch
        full_run = _PAPER_FULL_STEPS * step["xception_full"] * batch_factor
        out.append(
            benchlib.figure(
                "full-task run / proxy trial",
                full_run / (_PAPER_PROXY_STEPS * step["proxy"]),
                "x",
                f"derived: {_PAPER_FULL_STEPS} Xception steps at batch "
                f"{_PAPER_FULL_BATCH} (= {batch_factor:g}x the measured batch-"
                f"{args.batch} step) vs {_PAPER_PROXY_STEPS} proxy steps; "
                "evaluation excluded",
            )
        )
    out.append(
        benchlib.figure(
            "cache build per crop",
            cache_seconds * 1000,
            "ms",
            "MobileNet-v2 forward, float16 shard write and tracing; once per search",
        )
    )
    return out


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as work_dir:
        cache_dir, cache_seconds = build_cache(work_dir, args)
        step, rss = measure(cache_dir, args)
    results = figures(step, rss, cache_seconds, args)
    benchlib.report("proxy_saving", results, args.output_json, sys.argv)


if __name__ == "__main__":
    main()
