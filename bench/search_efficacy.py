r"""Does the search find cells that win? Proxy fidelity and search efficacy.

  .venv/bin/python bench/search_efficacy.py [--quick] [--output_json=PATH]
      [--work_dir=DIR] [--strategies=random,random_local,...] [--seeds=3]

Everything runs on the built-in data set (`deeplab_dpc.data.synthetic`) at a
geometry where the op space means something: `--crop` 513 at output stride 16
gives 33x33 backbone features (the paper's proxy: 49x49 at 769). What
matters is the reach in image pixels: a rate r reaches 16 r pixels at either
output stride (DeepLab doubles the rates at output stride 8), so rates up to
21 (336 pixels) need images of about 513 pixels or more; at 129 (the old
demo) every rate of 9 or more read only padding.

1. **Preparation** (the search program itself): the data set, a MobileNet-v2
   backbone pretrained end to end with an ASPP head (`--mode=pretrain`), and
   its feature cache (`--mode=cache`).
2. **Proxy fidelity**: >= 12 diverse heads (the published DPC, DeepLab's ASPP
   with rates 6/12/18 + image pooling, ASPP without rates, a 1x1-only cell,
   and random cells spanning the range of head MAdds) are each trained on the
   proxy (`proxy.run_trial`: cached features, `--proxy_steps`) and end to end
   (`rerank.train_and_evaluate`: the training program's library from the
   same backbone checkpoint, `--e2e_steps`, the same budget for every head).
   Spearman's rho between proxy and end-to-end val mIOU, with a 90%
   bootstrap interval (`rerank.spearman_interval`). The paper measured 0.47.
3. **Search efficacy**: each strategy (`random` is uniform sampling: the
   paper's random phase alone) runs `--trials` proxy trials for each of
   `--seeds` seeds under the hard budget `--max_head_madds` (default 1.1x the
   ASPP head), the anytime curve (best proxy mIOU so far against trials) is
   kept, and the best proxy cell of each run is trained end to end like the
   baselines. The table compares each found cell with ASPP end to end; the
   plot shows the curves' mean and spread over seeds.

Heads trained end to end are reused by canonical key within a run (a cell
found twice is trained once). The budget (trials, steps, CPU-hours) is in
the output. This is a benchmark, not a test: it reports what the numbers
say, also when the search loses.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _BENCH)

import benchlib  # pylint: disable=wrong-import-position

RANDOM = "random"  # Uniform sampling: random_local with explore_prob=1.
DEFAULT_STRATEGIES = (
    RANDOM,
    "random_local",
    "regularized_evolution",
    "tpe",
    "nsga2",
    "vizier:GAUSSIAN_PROCESS_BANDIT",
)
ASPP = "ASPP 6/12/18 + image pooling"


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--crop", type=int, default=513, help="Train/cache crop (OS*k+1).")
    add("--output_stride", type=int, default=16, help="Backbone output stride.")
    add("--num_train", type=int, default=200, help="Training images.")
    add("--num_val", type=int, default=50, help="Validation images.")
    add("--pretrain_steps", type=int, default=600, help="Backbone pretraining.")
    add("--proxy_steps", type=int, default=150, help="Steps of a proxy trial.")
    add("--e2e_steps", type=int, default=150, help="Steps of an end-to-end run.")
    add("--batch_size", type=int, default=8, help="Proxy and end-to-end batch.")
    add("--random_cells", type=int, default=8, help="Random cells in part 2.")
    add("--strategies", default=",".join(DEFAULT_STRATEGIES), help="Part 3.")
    add("--seeds", type=int, default=3, help="Search seeds per strategy.")
    add("--trials", type=int, default=16, help="Proxy trials per search.")
    add("--max_head_madds", default="1.1xaspp", help="The searches' budget.")
    add("--target_crop", type=int, default=513, help="Crop MAdds are counted at.")
    add("--work_dir", default=None, help="Keep the work here (default: temp).")
    add("--quick", action="store_true", help="Tiny smoke run.")
    add("--output_json", default=None, help="Result file.")
    args = parser.parse_args(argv)
    if args.quick:
        args.crop, args.num_train, args.num_val = 65, 8, 4
        args.pretrain_steps, args.proxy_steps, args.e2e_steps = 2, 3, 2
        args.batch_size, args.random_cells, args.seeds, args.trials = 2, 8, 1, 3
        args.target_crop = 129
        args.strategies = f"{RANDOM},random_local"
    args.strategies = [s for s in args.strategies.split(",") if s]
    return args


def _program(search_dir, data_dir, args, *flags):
    """Runs the search program at the benchmark's geometry."""
    benchlib.search_program(
        search_dir,
        data_dir,
        [
            f"--train_crop_size={args.crop},{args.crop}",
            f"--output_stride={args.output_stride}",
            f"--train_batch_size={args.batch_size}",
            "--base_learning_rate=0.02",
            "--cache_copies=2",
            "--seed=1",
            *flags,
        ],
    )


def prepare(work_dir, args):
    """The data set, the pretrained backbone and its feature cache."""
    from deeplab_dpc.data import synthetic  # pylint: disable=import-outside-toplevel

    data_dir = os.path.join(work_dir, "data")
    search_dir = os.path.join(work_dir, "search")
    os.makedirs(search_dir, exist_ok=True)
    if not os.path.isdir(data_dir):
        synthetic.build(
            data_dir,
            num_train=args.num_train,
            num_val=args.num_val,
            height=args.crop,
            width=args.crop,
            seed=0,
        )
    _program(
        search_dir,
        data_dir,
        args,
        "--mode=pretrain",
        f"--pretrain_steps={args.pretrain_steps}",
    )
    _program(search_dir, data_dir, args, "--mode=cache")
    return data_dir, search_dir


class Heads:
    """Trains heads on the proxy and end to end; one end-to-end run per cell."""

    def __init__(self, work_dir, data_dir, cache, args):
        # pylint: disable=import-outside-toplevel
        from deeplab_dpc.search import proxy
        from deeplab_dpc.search import rerank

        self._proxy, self._rerank = proxy, rerank
        self.work_dir, self.data_dir, self.cache, self.args = (
            work_dir,
            data_dir,
            cache,
            args,
        )
        self._e2e = {}
        self.seconds = {"proxy": 0.0, "e2e": 0.0}

    def proxy_trial(self, cell, atrous_rates=(), seed=1, report=None):
        start = time.time()
        result = self._proxy.run_trial(
            cell,
            self.cache,
            proxy_steps=self.args.proxy_steps,
            proxy_batch_size=self.args.batch_size,
            base_learning_rate=0.05,
            atrous_rates=atrous_rates,
            target_crop_size=(self.args.target_crop,) * 2,
            seed=seed,
            eval_every=max(1, self.args.proxy_steps // 3),
            report=report,
        )
        self.seconds["proxy"] += time.time() - start
        return result

    def end_to_end(self, key, cell, atrous_rates=()):
        """Val mIOU after `--e2e_steps` of the training program's library."""
        if key in self._e2e:
            return self._e2e[key]
        start = time.time()
        workdir = os.path.join(self.work_dir, "e2e", str(len(self._e2e)))
        result = self._rerank.train_and_evaluate(
            self._rerank.Candidate(cell, 0.0, atrous_rates=atrous_rates),
            self.cache,
            dataset_dir=self.data_dir,
            train_split="train",
            val_split="val",
            options=self._rerank.RerankOptions(
                rerank_steps=self.args.e2e_steps,
                train_batch_size=self.args.batch_size,
                base_learning_rate=0.02,
                seed=1,
            ),
            workdir=workdir,
        )
        self.seconds["e2e"] += time.time() - start
        self._e2e[key] = float(result["miou"])
        return self._e2e[key]


def fidelity_cells(args, cost):
    """(name, cell, atrous_rates) of the >= 12 heads of part 2.

    Random cells are drawn (seeded) and picked at evenly spaced quantiles of
    their head MAdds, so they span the range.
    """
    # pylint: disable=import-outside-toplevel
    from deeplab_dpc.cells import cell_spec
    from deeplab_dpc.search import space

    rates = tuple(r * 16 // args.output_stride for r in (6, 12, 18))
    one_by_one = cell_spec.CellSpec([cell_spec.BranchSpec(input=-1, op="conv1x1")])
    heads = [
        ("published DPC", cell_spec.published_cell(), ()),
        (ASPP, None, rates),
        ("ASPP (no atrous rates)", None, ()),
        ("1x1 only", one_by_one, ()),
    ]
    rng = random.Random(0)
    pool = sorted(
        (space.sample_cell(rng, 5) for _ in range(40 * args.random_cells)),
        key=cost,
    )
    for i in range(args.random_cells):
        cell = pool[round(i * (len(pool) - 1) / max(1, args.random_cells - 1))]
        heads.append((f"random {i + 1}", cell, ()))
    return heads


def _key(cell, rates):
    from deeplab_dpc.search import space  # pylint: disable=import-outside-toplevel

    return "ASPP" + repr(tuple(rates)) if cell is None else space.canonical_key(cell)


def part_fidelity(heads, args, cost):
    # pylint: disable=import-outside-toplevel
    from deeplab_dpc.cells import cell_spec
    from deeplab_dpc.search import rank_correlation

    rows = []
    for name, cell, rates in fidelity_cells(args, cost):
        print(f"fidelity: {name}", flush=True)
        result = heads.proxy_trial(cell, rates)
        rows.append(
            {
                "name": name,
                "cell": None if cell is None else cell_spec.cell_to_json(cell),
                "atrous_rates": list(rates),
                "head_madds": result.head_madds,
                "proxy_miou": result.miou,
                "e2e_miou": heads.end_to_end(_key(cell, rates), cell, rates),
            }
        )
    rho, low, high = rank_correlation.spearman_interval(
        [r["proxy_miou"] for r in rows], [r["e2e_miou"] for r in rows]
    )
    return {"heads": rows, "rho": rho, "rho_low": low, "rho_high": high}


def _objective(heads, seed):
    def objective(cell, report):
        result = heads.proxy_trial(cell, seed=seed, report=report)
        return {
            "miou": result.miou,
            "madds": result.head_madds,
            "params": result.head_params,
        }

    return objective


def part_efficacy(heads, args, budget, work_dir):
    # pylint: disable=import-outside-toplevel
    import optuna

    from deeplab_dpc.cells import cell_spec
    from deeplab_dpc.search import engine

    runs = []
    for strategy in args.strategies:
        for seed in range(args.seeds):
            print(f"efficacy: {strategy} seed {seed}", flush=True)
            objectives = ("miou", "madds") if strategy == "nsga2" else ("miou",)
            options = {"explore_prob": 1.0} if strategy == RANDOM else {}
            name = f"{strategy.replace(':', '_')}-{seed}"
            study = engine.create_or_load_study(
                f"sqlite:///{os.path.join(work_dir, name + '.db')}",
                name,
                "random_local" if strategy == RANDOM else strategy,
                objectives,
                num_branches=5,
                seed=seed,
                pruner=optuna.pruners.NopPruner(),
                feasible=budget,
                population_size=max(2, args.trials // 4),
                tournament_size=2,
                **options,
            )
            engine.run_worker(
                study,
                _objective(heads, seed),
                num_trials_total=args.trials,
                feasible=budget,
            )
            done = sorted(
                (t for t in study.trials if t.state.name == "COMPLETE"),
                key=lambda t: t.number,
            )
            curve, best = [], None
            for t in done:
                best = (
                    t.user_attrs["miou"]
                    if best is None
                    else max(best, t.user_attrs["miou"])
                )
                curve.append(best)
            top = max(done, key=lambda t: t.user_attrs["miou"])
            cell = cell_spec.cell_from_json(top.user_attrs[engine.ATTR_CELL])
            runs.append(
                {
                    "strategy": strategy,
                    "seed": seed,
                    "curve": curve,
                    "best_proxy_miou": top.user_attrs["miou"],
                    "head_madds": top.user_attrs["madds"],
                    "cell": cell_spec.cell_to_json(cell),
                    "e2e_miou": heads.end_to_end(_key(cell, ()), cell),
                    "infeasible": sum(t.state.name == "FAIL" for t in study.trials),
                }
            )
    return runs


def summarize(runs, aspp):
    """Per-strategy means, and whether the goals are met."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    by_strategy = {}
    for run in runs:
        by_strategy.setdefault(run["strategy"], []).append(run)
    table = {}
    for strategy, group in by_strategy.items():
        e2e = [r["e2e_miou"] for r in group]
        table[strategy] = {
            "e2e_mean": float(np.mean(e2e)),
            "e2e_min": float(np.min(e2e)),
            "e2e_max": float(np.max(e2e)),
            "best_proxy_mean": float(np.mean([r["best_proxy_miou"] for r in group])),
            "beats_aspp_mean": float(np.mean(e2e)) > aspp["e2e_miou"],
        }
    return table


def plot_curves(runs, path):
    # pylint: disable=import-outside-toplevel
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        curves = [r["curve"] for r in runs if r["strategy"] == strategy]
        n = min(len(c) for c in curves)
        values = np.array([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        mean = values.mean(axis=0)
        ax.plot(x, mean, label=f"{strategy} ({len(curves)} seeds)")
        ax.fill_between(x, values.min(axis=0), values.max(axis=0), alpha=0.15)
    ax.set_xlabel("completed proxy trials")
    ax.set_ylabel("best proxy val mIOU so far")
    ax.set_title("Search efficacy: mean (line) and range (band) over seeds")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(fidelity, runs, table, aspp, args, seconds):
    lines = [
        "## Search efficacy (bench/search_efficacy.py)",
        "",
        f"Geometry: crop {args.crop}, output stride {args.output_stride} "
        f"({(args.crop - 1) // args.output_stride + 1}x"
        f"{(args.crop - 1) // args.output_stride + 1} features); proxy "
        f"{args.proxy_steps} steps, end to end {args.e2e_steps} steps, batch "
        f"{args.batch_size}; MAdds at {args.target_crop}x{args.target_crop}. "
        f"CPU time: proxy {seconds['proxy'] / 3600:.2f} h, end to end "
        f"{seconds['e2e'] / 3600:.2f} h.",
        "",
        f"Proxy fidelity over {len(fidelity['heads'])} heads: Spearman's rho "
        + (
            "undefined"
            if fidelity["rho"] is None
            else f"{fidelity['rho']:.3f}, 90% bootstrap interval "
            f"[{fidelity['rho_low']:.3f}, {fidelity['rho_high']:.3f}]"
        )
        + " (goal >= 0.6; the paper: 0.47).",
        "",
        "| head | head MAdds | proxy mIOU | end-to-end mIOU |",
        "|---|---:|---:|---:|",
    ]
    for h in fidelity["heads"]:
        lines.append(
            f"| {h['name']} | {h['head_madds'] / 1e6:.0f} M | {h['proxy_miou']:.4f} "
            f"| {h['e2e_miou']:.4f} |"
        )
    lines += [
        "",
        f"Searches: {args.trials} trials each, budget --max_head_madds="
        f"{args.max_head_madds}; the found cell (best proxy mIOU) trained end to "
        f"end against {ASPP} (end-to-end {aspp['e2e_miou']:.4f}, "
        f"{aspp['head_madds'] / 1e6:.0f} M MAdds).",
        "",
        "| strategy | seed | best proxy mIOU | found cell MAdds | end-to-end mIOU | vs ASPP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['strategy']} | {r['seed']} | {r['best_proxy_miou']:.4f} | "
            f"{r['head_madds'] / 1e6:.0f} M | {r['e2e_miou']:.4f} | "
            f"{r['e2e_miou'] - aspp['e2e_miou']:+.4f} |"
        )
    lines += [
        "",
        "| strategy | end-to-end mean [min, max] | beats ASPP (mean) |",
        "|---|---|---|",
    ]
    for strategy, s in table.items():
        lines.append(
            f"| {strategy} | {s['e2e_mean']:.4f} [{s['e2e_min']:.4f}, "
            f"{s['e2e_max']:.4f}] | {'yes' if s['beats_aspp_mean'] else 'no'} |"
        )
    lines += ["", "![anytime curves](search_efficacy.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    args = _parse(argv)
    started = time.time()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="search_efficacy-")
    os.makedirs(work_dir, exist_ok=True)
    data_dir, search_dir = prepare(work_dir, args)
    # pylint: disable=import-outside-toplevel
    from deeplab_dpc.search import cache as cache_lib
    from deeplab_dpc.search import constraints
    from deeplab_dpc.search import proxy

    cache = cache_lib.load_info(search_dir)
    channels = cache.feature_shape[-1]
    target = (args.target_crop, args.target_crop)

    def cost(cell, rates=()):
        options = proxy.model_options(cache, cell, atrous_rates=rates)
        return proxy.head_cost(options, channels, target)[1]

    heads = Heads(work_dir, data_dir, cache, args)
    fidelity = part_fidelity(heads, args, cost)
    aspp = next(h for h in fidelity["heads"] if h["name"] == ASPP)
    budget = constraints.HeadBudget(
        constraints.parse_max_head_madds(
            args.max_head_madds, aspp_madds=aspp["head_madds"]
        ),
        cost,
    )
    runs = part_efficacy(heads, args, budget, os.path.join(work_dir, "studies"))
    table = summarize(runs, aspp)
    plot_path = os.path.join(
        os.path.dirname(args.output_json or work_dir), "search_efficacy.png"
    )
    plot_curves(runs, plot_path)
    text = markdown(fidelity, runs, table, aspp, args, heads.seconds)
    benchlib.write_text(os.path.join(work_dir, "search_efficacy.md"), text)
    print(text, flush=True)

    def value(v):
        return float("nan") if v is None else v

    default = table.get("random_local", {})
    uniform = table.get(RANDOM, {})
    figures = [
        benchlib.figure(
            "proxy_rho", value(fidelity["rho"]), "", "Spearman, proxy vs end to end"
        ),
        benchlib.figure(
            "proxy_rho_low", value(fidelity["rho_low"]), "", "90% bootstrap"
        ),
        benchlib.figure(
            "proxy_rho_high", value(fidelity["rho_high"]), "", "90% bootstrap"
        ),
        benchlib.figure("aspp_e2e_miou", aspp["e2e_miou"], "mIOU", ASPP),
        benchlib.figure(
            "default_e2e_miou",
            value(default.get("e2e_mean")),
            "mIOU",
            "random_local, seed mean",
        ),
        benchlib.figure(
            "random_e2e_miou",
            value(uniform.get("e2e_mean")),
            "mIOU",
            "uniform, seed mean",
        ),
        benchlib.figure(
            "hours", (time.time() - started) / 3600, "h", "wall, whole benchmark"
        ),
    ]
    benchlib.report("search_efficacy", figures, args.output_json)
    if args.output_json:
        benchlib.write_text(
            os.path.splitext(args.output_json)[0] + "_details.json",
            json.dumps({"fidelity": fidelity, "runs": runs, "table": table}, indent=1),
        )
    if fidelity["rho"] is None and not args.quick:
        # Every head scored alike: the budgets were too small to rank anything.
        print("error: proxy and end-to-end scores do not rank the heads", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
