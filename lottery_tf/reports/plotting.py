"""The drawing helpers every report shares: matplotlib set up headless, figures saved atomically and closed,
the density axis of the papers, error bars, legends' words for branches, CSV text.
"""

from __future__ import annotations

import csv
import io

from lottery_tf.store import atomic


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path):
    """Writes the figure as a PNG atomically, and closes it (also when writing fails)."""
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        atomic.write_bytes(path, buffer.getvalue())
    finally:
        figure().close(fig)


def branch_label(branch: str) -> str:
    """Words for a branch folder name, for plot legends."""
    if branch == "main":
        return "lottery ticket (IMP main line)"
    if branch == "reinit":
        return "random reinitialization (same mask)"
    if branch.startswith("random_prune_"):
        return f"random pruning ({branch[len('random_prune_') :]} density kept)"
    if branch.startswith("lr_rewind_"):
        return f"learning-rate rewinding to iteration {branch[len('lr_rewind_') :]}"
    if branch.startswith("rewind_"):
        return f"rewound to iteration {branch[len('rewind_') :]}"
    if branch.startswith("retrain_"):
        return f"ticket retrained with other settings ({branch})"
    if branch == "gmp":
        return "gradual magnitude pruning (TFMOT's schedule)"
    if branch.startswith("pai_"):
        method, _, ablation = branch[len("pai_") :].partition("_")
        names = {"snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow", "magnitude": "magnitude", "random": "random"}
        words = {"shuffled": ", layer masks shuffled", "reinit": ", reinitialized", "inverted": ", scores inverted"}
        return f"{names.get(method, method)} at initialization{words.get(ablation, '')}"
    return branch


def weights_axis(ax, series):
    ax.set_xscale("log")
    ax.invert_xaxis()  # dense on the left, sparser to the right, as in the papers
    # Every density a level was measured at gets its label; many labels stand upright to stay readable.
    ticks = sorted({round(100 * e["density_mean"], 1) for rows in series.values() for e in rows}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels(
        [f"{t:g}" for t in ticks], rotation=0 if len(ticks) <= 8 else 90, fontsize=8 if len(ticks) <= 8 else 7
    )
    ax.minorticks_off()
    ax.set_xlabel("percent of weights remaining (log scale)")
    ax.grid(True, alpha=0.3)


def grid(entries, columns: int, width: float, height: float):
    """A figure with one row of ``columns`` panels per experiment."""
    plt = figure()
    experiments = sorted({e["experiment"] for e in entries})
    titles = {e["experiment"]: e.get("title", e["experiment"]) for e in entries}
    fig, axes = plt.subplots(len(experiments), columns, figsize=(width, height * len(experiments)), squeeze=False)
    return plt, fig, axes, experiments, titles


def spread(rows, key, scale=1.0):
    """Error bars: the std over replicates, or none where a point has one replicate."""
    if all(e["replicates"] < 2 for e in rows):
        return None
    return [scale * e[f"{key}_std"] if e["replicates"] > 1 else 0.0 for e in rows]


def line_style(rows) -> tuple[str, str]:
    """A line through a branch's points only where it was measured at consecutive levels.

    A control measured at levels 5 and 10 only is drawn as markers: a line
    between them would suggest values at the levels in between.

    Returns:
        (matplotlib linestyle, a note for the legend).
    """
    levels = sorted(e["level"] for e in rows)
    if len(levels) < 2 or levels == list(range(levels[0], levels[-1] + 1)):
        return "-", ""
    return "none", f" (levels {', '.join(map(str, levels))} only)"


def over_replicates(series) -> str:
    count = replicates_of(series)
    return "one replicate (no spread)" if count == 1 else f"mean ± std over {count} replicates"


def replicates_of(series) -> int:
    return max(e["replicates"] for rows in series.values() for e in rows)
