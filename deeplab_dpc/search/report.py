"""The search report: tables, plots and a JSON export of every trial.

`write_report` turns the trials of a study (plain dicts, see `TRIAL_FIELDS`),
the baselines trained on the same proxy budget and the re-rank summary into
`<search_dir>/report.md` with PNG plots (matplotlib, Agg backend) in
`<search_dir>/plots/`, and `<search_dir>/trials.json` for other tools:

* best-so-far proxy mIOU against the trial number;
* proxy mIOU against head MAdds, with the Pareto front (max mIOU, min MAdds);
* how often each operation, atrous rate and pooling grid appears among the
  top trials;
* a drawing of the best cell's graph (backbone feature F, branches, concat).

Every file is written under a temporary name and renamed.
"""

import collections
import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from deeplab_dpc import file_io  # pylint: disable=wrong-import-position
from deeplab_dpc.cells import cell_spec  # pylint: disable=wrong-import-position
from deeplab_dpc.search import rank_correlation  # pylint: disable=wrong-import-position

REPORT_FILE = "report.md"
TRIALS_FILE = "trials.json"
PLOTS_DIR = "plots"
ASPP_BASELINE = "ASPP 6/12/18 + image pooling"
TRIAL_FIELDS = (
    "number",  # int, the study's trial number
    "state",  # "COMPLETE", "PRUNED", "FAIL", "RUNNING", ...
    "miou",  # float or None, the proxy mIOU
    "madds",  # int or None, head MAdds at the target crop
    "params",  # int or None, head params
    "seconds",  # float or None, wall time of the trial
    "cell",  # DeepLab JSON list of the cell
    "duplicate_of",  # int or None: an identical earlier cell's trial
)


def completed(records):
    """The trials with a proxy mIOU, best first."""
    done = [r for r in records if r["state"] == "COMPLETE" and r["miou"] is not None]
    return sorted(done, key=lambda r: (-r["miou"], r["madds"] or 0, r["number"]))


def pareto_front(records, baselines=()):
    """Completed trials (and baselines) no other beats on both mIOU (max)
    and MAdds (min).

    Args:
      records: trial records.
      baselines: dicts with "miou" and "madds" (e.g. ASPP's), which join
        the front, and may dominate trials, as any other point.

    Returns:
      list of records (and baselines) sorted by MAdds.
    """
    done = [r for r in completed(records) if r["madds"] is not None]
    done += [b for b in baselines if b.get("madds") is not None]
    front = []
    for r in done:
        dominated = any(
            o["miou"] >= r["miou"]
            and o["madds"] <= r["madds"]
            and (o["miou"] > r["miou"] or o["madds"] < r["madds"])
            for o in done
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r["madds"], -r["miou"]))


def _save(fig, path):
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    file_io.write_bytes(path, png.getvalue())


def plot_best_so_far(records, path):
    done = sorted(
        (r for r in records if r["state"] == "COMPLETE" and r["miou"] is not None),
        key=lambda r: r["number"],
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    best, xs, ys = -1.0, [], []
    for r in done:
        best = max(best, r["miou"])
        xs.append(r["number"])
        ys.append(best)
    ax.scatter(
        [r["number"] for r in done],
        [r["miou"] for r in done],
        s=10,
        alpha=0.5,
        label="trial",
    )
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_title("Search progress: proxy mIOU per trial")
    ax.set_xlabel("trial number")
    ax.set_ylabel("proxy mIOU")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend()
    _save(fig, path)


def plot_miou_vs_madds(records, path, baselines=()):
    done = [r for r in completed(records) if r["madds"] is not None]
    front = pareto_front(records, baselines)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(
        [r["madds"] / 1e9 for r in done],
        [r["miou"] for r in done],
        s=10,
        alpha=0.5,
        label="trial",
    )
    ax.plot(
        [r["madds"] / 1e9 for r in front],
        [r["miou"] for r in front],
        "o-",
        color="C3",
        label="Pareto front (trials and baselines)",
    )
    for b in baselines:
        ax.scatter([b["madds"] / 1e9], [b["miou"]], marker="*", s=120, label=b["name"])
    ax.set_title("Proxy mIOU vs head cost")
    ax.set_xlabel("head MAdds at the target crop (GMAdds)")
    ax.set_ylabel("proxy mIOU")
    ax.legend()
    _save(fig, path)


def op_counts(records, top):
    """Counters of ops, atrous rates and pooling grids among the top trials."""
    ops, rates, grids = (
        collections.Counter(),
        collections.Counter(),
        collections.Counter(),
    )
    for r in completed(records)[:top]:
        for branch in cell_spec.cell_from_json(r["cell"]):
            ops[branch.op] += 1
            if branch.op == cell_spec.OP_SEP3X3:
                rates[f"{branch.rate[0]}x{branch.rate[1]}"] += 1
            elif branch.op == cell_spec.OP_POOL:
                grids[f"{branch.grid[0]}x{branch.grid[1]}"] += 1
    return ops, rates, grids


def plot_op_frequencies(records, path, top):
    counters = op_counts(records, top)
    shown = min(top, len(completed(records)))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, counter, title in zip(axes, counters, ("operation", "atrous rate", "grid")):
        items = counter.most_common(12)
        ax.bar([k for k, _ in items], [v for _, v in items])
        ax.set_title(f"{title} among the top {shown} completed trials")
        ax.set_ylabel("branches (count)")
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle("What the best cells are made of")
    _save(fig, path)


def plot_cell(cell, path, title=""):
    """Draws a cell: F on the left, branches by depth, the concat on the right."""
    cell = (
        cell_spec.cell_from_json(cell)
        if not isinstance(cell, cell_spec.CellSpec)
        else cell
    )
    depth = []
    for branch in cell:
        depth.append(1 if branch.input < 0 else depth[branch.input] + 1)
    # A column per depth and a row per branch, so that no two boxes meet.
    position = {"F": (0.0, 0.0)}
    for i, d in enumerate(depth):
        position[i] = (float(d), (len(cell) - 1) / 2.0 - i)
    concat = (float(max(depth) + 1), 0.0)
    fig, ax = plt.subplots(figsize=(2.6 * (max(depth) + 2), 1.2 * (len(cell) + 1)))
    arrow = dict(arrowstyle="->", color="0.4", shrinkA=18, shrinkB=18)
    for i, branch in enumerate(cell):
        source = position["F" if branch.input < 0 else branch.input]
        ax.annotate("", xy=position[i], xytext=source, arrowprops=arrow)
        ax.annotate("", xy=concat, xytext=position[i], arrowprops=arrow)
    boxes = [("F", position["F"], "F (backbone)"), ("concat", concat, "concat + 1x1")]
    lines = cell_spec.describe(cell).splitlines()
    boxes += [(i, position[i], lines[i]) for i in range(len(cell))]
    for _, (x, y), text in boxes:
        ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=9,
            bbox=dict(boxstyle="round", facecolor="#e8f0fe", edgecolor="0.5"),
        )
    ax.set_xlim(-0.7, concat[0] + 0.7)
    ax.set_ylim(-len(cell) / 2.0 - 0.5, len(cell) / 2.0 + 0.5)
    ax.axis("off")
    if title:
        ax.set_title(title)
    _save(fig, path)


def _fmt(value, digits=4):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}"


def _cell_text(cell_json):
    if cell_json is None:
        return "ASPP"
    return "; ".join(
        cell_spec.describe(cell_spec.cell_from_json(cell_json)).splitlines()
    )


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_plots(search_dir, records, best, baselines, rerank, top_k):
    plots = os.path.join(search_dir, PLOTS_DIR)
    os.makedirs(plots, exist_ok=True)
    plot_best_so_far(records, os.path.join(plots, "best_so_far.png"))
    plot_miou_vs_madds(records, os.path.join(plots, "miou_vs_madds.png"), baselines)
    plot_op_frequencies(records, os.path.join(plots, "op_frequencies.png"), top_k)
    best_cell = best[0]["cell"]
    if rerank:
        best_cell = rerank["candidates"][0]["cell"]
    plot_cell(best_cell, os.path.join(plots, "best_cell.png"), "best cell")


def _summary_section(records, settings):
    states = collections.Counter(r["state"] for r in records)
    duplicates = sum(1 for r in records if r.get("duplicate_of") is not None)
    seconds = sum(r["seconds"] or 0.0 for r in records)
    parts = ["# Architecture search report", ""]
    if settings:
        parts += [_table(["setting", "value"], sorted(settings.items())), ""]
    return parts + [
        f"{len(records)} trials: "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        + f"; {duplicates} repeated cells answered from earlier trials; "
        f"{seconds / 3600:.2f} trial-hours.",
        "",
    ]


def _top_trials_section(best, top_k):
    header = ["rank", "trial", "proxy mIOU", "head MAdds", "head params"]
    rows = [
        [
            i + 1,
            r["number"],
            _fmt(r["miou"]),
            _fmt(r["madds"]),
            _fmt(r["params"]),
            _fmt(r["seconds"], 1),
            _cell_text(r["cell"]),
        ]
        for i, r in enumerate(best[:top_k])
    ]
    return [
        f"## Top {min(top_k, len(best))} trials by proxy mIOU",
        "",
        _table(header + ["seconds", "cell"], rows),
        "",
    ]


def _pareto_section(records):
    rows = [
        [r["number"], _fmt(r["miou"]), _fmt(r["madds"]), _cell_text(r["cell"])]
        for r in pareto_front(records)
    ]
    return [
        "## Pareto front (max mIOU, min MAdds)",
        "",
        _table(["trial", "proxy mIOU", "head MAdds", "cell"], rows),
        "",
    ]


def _searched_cell(best, rerank):
    """The search's product: the re-rank's winner, else the best proxy trial."""
    if rerank:
        winner = rerank["candidates"][0]
        for record in best:
            if record["cell"] == winner["cell"]:
                return {**record, "full_miou": winner["full_miou"]}
        return {
            "miou": winner["proxy_miou"],
            "full_miou": winner["full_miou"],
            "madds": None,
            "params": None,
            "cell": winner["cell"],
        }
    return best[0]


def conclusion(searched, baselines, rho_interval):
    """One sentence drawn from the numbers, whatever they say."""
    aspp = next((b for b in baselines if b["name"] == ASPP_BASELINE), None)
    parts = []
    if aspp is not None and searched.get("full_miou") is not None:
        won = searched["full_miou"] > aspp["full_miou"]
        ratio = (
            f" at {searched['madds'] / aspp['madds']:.2f}x its head MAdds"
            if searched.get("madds") and aspp.get("madds")
            else ""
        )
        parts.append(
            f"End to end the searched cell scores {searched['full_miou']:.4f} "
            f"mIOU against {aspp['full_miou']:.4f} for {ASPP_BASELINE}{ratio}: "
            + (
                "on this budget the search found a cell that beats DeepLab's ASPP"
                if won
                else "on this budget the search did not beat DeepLab's ASPP"
            )
        )
    elif aspp is not None:
        won = searched["miou"] > aspp["miou"]
        parts.append(
            f"On the proxy the searched cell scores {searched['miou']:.4f} against "
            f"{aspp['miou']:.4f} for {ASPP_BASELINE} (no end-to-end runs yet): "
            + ("it wins on the proxy" if won else "it loses on the proxy")
        )
    rho, low, high, n = rho_interval
    if rho is not None:
        parts.append(
            f"the proxy's rank correlation with end-to-end training is {rho:.2f} "
            f"over {n} heads, 90% interval [{low:.2f}, {high:.2f}]"
            + (", which so few heads cannot pin down" if high - low > 0.5 else "")
        )
    return ("Conclusion: " + "; ".join(parts) + ".") if parts else ""


def _rho_over_heads(searched_rows):
    """Spearman's rho and its interval over heads with both scores."""
    pairs = [
        (r["miou"], r["full_miou"])
        for r in searched_rows
        if r.get("full_miou") is not None and r.get("miou") is not None
    ]
    if len(pairs) < 3:
        return None, None, None, len(pairs)
    rho, low, high = rank_correlation.spearman_interval(*zip(*pairs))
    return rho, low, high, len(pairs)


def _baselines_section(baselines, best, rerank):
    if not baselines:
        return []
    searched = _searched_cell(best, rerank)
    heads = [(b["name"], b) for b in baselines] + [("searched cell", searched)]
    rows = [
        [
            name,
            _fmt(h["miou"]),
            _fmt(h.get("full_miou")),
            _fmt(h["madds"]),
            _fmt(h["params"]),
            _cell_text(h["cell"]),
        ]
        for name, h in heads
    ]
    reranked = [
        {"miou": c["proxy_miou"], "full_miou": c["full_miou"]}
        for c in (rerank or {}).get("candidates", [])
    ]
    interval = _rho_over_heads(list(baselines) + reranked)
    text = conclusion(searched, baselines, interval)
    return [
        "## Against the baselines (same proxy and end-to-end budgets)",
        "",
        _table(
            [
                "head",
                "proxy mIOU",
                "end-to-end mIOU",
                "head MAdds",
                "head params",
                "cell",
            ],
            rows,
        ),
        "",
    ] + ([text, ""] if text else [])


def _rerank_section(rerank):
    if not rerank:
        return []
    rho = rerank.get("spearman")
    rows = [
        [
            c["full_rank"],
            c["proxy_rank"],
            c["trial"],
            _fmt(c["proxy_miou"]),
            _fmt(c["full_miou"]),
            _cell_text(c["cell"]),
        ]
        for c in rerank["candidates"]
    ]
    return [
        f"## Re-rank by end-to-end training ({rerank['rerank_steps']} steps)",
        "",
        f"Spearman rank correlation of proxy and full mIOU: "
        f"{'n/a' if rho is None else f'{rho:.3f}'} (the paper: 0.47 for "
        "cached features vs end-to-end training). The winner is in "
        "`best_cell.json`.",
        "",
        _table(
            ["full rank", "proxy rank", "trial", "proxy mIOU", "full mIOU", "cell"],
            rows,
        ),
        "",
    ]


_PLOTS_SECTION = [
    "## Plots",
    "",
    "![best so far](plots/best_so_far.png)",
    "![mIOU vs MAdds](plots/miou_vs_madds.png)",
    "![op frequencies](plots/op_frequencies.png)",
    "![best cell](plots/best_cell.png)",
    "",
]


def write_report(
    search_dir, records, *, baselines=(), rerank=None, top_k=10, settings=None
):
    """Writes report.md, its plots and trials.json into `search_dir`.

    Args:
      search_dir: str.
      records: trial dicts with `TRIAL_FIELDS`.
      baselines: dicts with "name", "miou", "madds", "params", "cell" (None
        for ASPP): heads trained on the same proxy budget.
      rerank: the `rerank.rerank` summary, or None.
      top_k: rows of the top-trials table and trials counted in the op plot.
      settings: optional dict of the search's settings, listed at the top.

    Returns:
      str, the path of report.md.

    Raises:
      ValueError: when no trial completed (nothing to report).
    """
    best = completed(records)
    if not best:
        raise ValueError(
            f"{search_dir}: no completed trial to report yet "
            f"({len(records)} trials in the study)"
        )
    _write_plots(search_dir, records, best, baselines, rerank, top_k)
    parts = (
        _summary_section(records, settings)
        + _top_trials_section(best, top_k)
        + _pareto_section(records)
        + _baselines_section(baselines, best, rerank)
        + _rerank_section(rerank)
        + _PLOTS_SECTION
    )
    file_io.write_json(os.path.join(search_dir, TRIALS_FILE), list(records), indent=1)
    path = os.path.join(search_dir, REPORT_FILE)
    file_io.write_text(path, "\n".join(parts))
    return path
