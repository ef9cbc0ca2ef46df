"""The drawing helpers every report shares: matplotlib set up headless, figures saved atomically and closed,
the density axis of the papers, error bars, legends' words for branches, one style per branch, CSV text.

Every figure is drawn for the documentation site's content width (:data:`SITE_WIDTH_PX`): its fonts
(:data:`RC`, applied by :func:`styled`) and panel sizes are chosen so that a figure scaled down to that
width still reads, and every branch has the same colour, marker and line style in every figure
(:func:`branch_style`).
"""

from __future__ import annotations

import csv
import functools
import io
import zlib

from lottery_tf.store import atomic


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


SITE_WIDTH_PX = 750  # the width the documentation site shows a figure at (mkdocs-material's content column)
DPI = 120  # the PNG's resolution
WIDTH_IN = 10.0  # a figure's width in inches: DPI * WIDTH_IN pixels, shown at SITE_WIDTH_PX
# Fonts that stay at least 8 px high when the figure is shown SITE_WIDTH_PX wide (9 pt at 120 dpi is 15 px,
# times 750 / 1200).
RC = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
}


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styled(draw):
    """Draws under :data:`RC` (matplotlib reads fonts when it draws, so the saving is inside too).

    The caller's own matplotlib settings are left as they were.
    """

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        figure()
        import matplotlib

        with matplotlib.rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper


def subplots(rows: int, columns: int, height: float, width: float = WIDTH_IN):
    """A figure of ``rows`` x ``columns`` panels, ``height`` inches per row, laid out by matplotlib's
    constrained layout (titles, a suptitle and a legend below never overlap the panels)."""
    plt = figure()
    fig, axes = plt.subplots(rows, columns, figsize=(width, height * rows), squeeze=False, layout="constrained")
    return plt, fig, axes


def _grow(fig, inches: float) -> None:
    """Makes the figure taller by ``inches``: what is added below or above the panels keeps their height."""
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + inches)


def legend_below(fig, handles, labels, columns: int | None = None) -> None:
    """One legend under the panels (the figure grows to hold it); two columns where the labels are short."""
    if not handles:
        return
    if columns is None:
        columns = 1 if max(len(label) for label in labels) > 48 else 2
    columns = min(columns, len(labels))
    _grow(fig, 0.2 + 0.21 * -(-len(labels) // columns))
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, frameon=False)


def shared_legend(fig, axes, columns: int | None = None) -> None:
    """One legend below the panels with every labelled line of ``axes`` once (in the order first drawn).

    Panels keep their lines' labels (a panel's legend would cover its lines at the site's width).
    """
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label.startswith(DENSE_LABEL + " ("):  # each panel's dense accuracy is written on its line
                label = f"{DENSE_LABEL} (its accuracy written on the line)"
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    legend_below(fig, handles, labels, columns)


DENSE_LABEL = "dense network"


def dense_line(ax, percent: float) -> None:
    """The dense network's accuracy across the panel, in the dense network's colour, its value written on it."""
    style = branch_style("dense")
    ax.axhline(
        percent,
        color=style["color"],
        linestyle=style["linestyle"],
        linewidth=1.2,
        label=f"{DENSE_LABEL} ({percent:.2f}%)",
    )
    ax.annotate(
        f"dense {percent:.2f}%",
        xy=(0.99, percent),
        xycoords=("axes fraction", "data"),
        xytext=(0, 2),
        textcoords="offset points",
        ha="right",
        va="bottom",
        color=style["color"],
        fontsize=9,
    )


def suptitle(fig, text: str, **kwargs) -> None:
    """The figure's title over the panels' titles (constrained layout places it; the figure grows to hold it)."""
    _grow(fig, 0.22 * (text.count("\n") + 1))
    fig.suptitle(text, **kwargs)


def save(fig, path):
    """Writes the figure as a PNG atomically, and closes it (also when writing fails)."""
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
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
    parts = dst_parts(branch)
    if parts:
        method, distribution, suffix = parts
        return f"{DST_NAMES[method]} ({'ERK' if distribution == 'erk' else distribution})" + (
            f" [{suffix}]" if suffix else ""
        )
    if branch.startswith("pai_"):
        method, _, ablation = branch[len("pai_") :].partition("_")
        names = {"snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow", "magnitude": "magnitude", "random": "random"}
        words = {"shuffled": ", layer masks shuffled", "reinit": ", reinitialized", "inverted": ", scores inverted"}
        return f"{names.get(method, method)} at initialization{words.get(ablation, '')}"
    return branch


# One style per branch in every figure. IMP's main line is black; its controls gray and brown; each
# pruning-at-initialization method one colour, its ablations that colour with their own line and marker;
# GMP purple; the dense network cyan. Branches not in the table (the rewinding and retraining branches,
# anything added later) get a colour and marker from FALLBACK chosen by a hash of their name: the same in
# every figure and every run.
DENSE = {"color": "tab:cyan", "marker": "o", "linestyle": "--"}
_FIXED = {
    "main": {"color": "black", "marker": "o", "linestyle": "-", "linewidth": 2},
    "reinit": {"color": "tab:brown", "marker": "v", "linestyle": "-"},
    "random_prune": {"color": "tab:gray", "marker": "s", "linestyle": "-"},
    "gmp": {"color": "tab:purple", "marker": "D", "linestyle": "-", "linewidth": 2},
}
# Dynamic sparse training (``set_<distribution>``, ``rigl_<distribution>``, maybe ``_<settings hash>``): one
# colour and marker per method; ERK dashed beside uniform's solid line.
DST_NAMES = {"set": "SET", "rigl": "RigL"}
DST_STYLES = {
    "set": {"color": "navy", "marker": "^"},
    "rigl": {"color": "tab:pink", "marker": "*"},
}
DST_LINES = {"uniform": "-", "erk": "--"}


def dst_parts(branch: str) -> tuple[str, str, str] | None:
    """``("rigl", "erk", "")`` for ``rigl_erk``, ``("set", "uniform", "1a2b3c4d")`` for ``set_uniform_1a2b3c4d``."""
    method, _, rest = branch.partition("_")
    distribution, _, suffix = rest.partition("_")
    if method in DST_NAMES and distribution in DST_LINES:
        return method, distribution, suffix
    return None


PAI_COLORS = {
    "magnitude": "tab:blue",
    "random": "tab:olive",
    "snip": "tab:orange",
    "grasp": "tab:green",
    "synflow": "tab:red",
}
ABLATION_STYLES = {  # "" = the method as published
    "": {"linestyle": "-", "marker": "o"},
    "shuffled": {"linestyle": "--", "marker": "s"},
    "reinit": {"linestyle": ":", "marker": "v"},
    "inverted": {"linestyle": "-.", "marker": "x"},
}
# The deployment figure's structures (IMP tickets each): unstructured is IMP's main line.
STRUCTURES = {
    "unstructured": _FIXED["main"],
    "1x4 blocks": {"color": "#008080", "marker": "s", "linestyle": "-"},
    "2:4": {"color": "#b8860b", "marker": "D", "linestyle": "-"},
}
FALLBACK_COLORS = ("tab:pink", "#4b0082", "#000080", "#9acd32", "#ff4500", "#2f4f4f", "#c71585")
FALLBACK_MARKERS = ("^", "<", ">", "P", "*", "h")
_FAMILY_LINES = {"lr_rewind_": "--", "rewind_": "-", "retrain_": "-."}


def _fallback(name: str) -> dict:
    digest = zlib.crc32(name.encode("utf-8"))
    return {
        "color": FALLBACK_COLORS[digest % len(FALLBACK_COLORS)],
        "marker": FALLBACK_MARKERS[(digest // len(FALLBACK_COLORS)) % len(FALLBACK_MARKERS)],
        "linestyle": next((line for prefix, line in _FAMILY_LINES.items() if name.startswith(prefix)), "-"),
    }


def branch_style(branch: str) -> dict:
    """The colour, marker and line style (matplotlib keywords) a branch is drawn with, in every figure.

    Args:
        branch: A branch folder name (``main``, ``reinit``, ``random_prune_layerwise``, ``pai_snip_shuffled``,
            ``gmp``, ``lr_rewind_1000``, ...), or ``dense`` for the dense network.

    Returns:
        A new dict of ``color``, ``marker``, ``linestyle`` (and ``linewidth`` for IMP and GMP).
    """
    if branch == "dense":
        return dict(DENSE)
    if branch in _FIXED:
        return dict(_FIXED[branch])
    if branch.startswith("random_prune"):
        style = dict(_FIXED["random_prune"])
        if branch != "random_prune_layerwise" and branch != "random_prune":
            style.update(marker="P", linestyle="--")  # the global scope beside the layerwise one
        return style
    parts = dst_parts(branch)
    if parts:
        return {**DST_STYLES[parts[0]], "linestyle": DST_LINES[parts[1]]}
    if branch.startswith("pai_"):
        method, _, ablation = branch[len("pai_") :].partition("_")
        if method in PAI_COLORS and ablation in ABLATION_STYLES:
            return {"color": PAI_COLORS[method], **ABLATION_STYLES[ablation]}
        if method in PAI_COLORS:
            return {**_fallback(branch), "color": PAI_COLORS[method]}
    return _fallback(branch)


def structure_style(structure: str) -> dict:
    """The colour, marker and line style of a deployment structure (``unstructured``, ``1x4 blocks``, ``2:4``)."""
    return dict(STRUCTURES[structure]) if structure in STRUCTURES else _fallback("structure " + structure)


# The analyses' networks (instability, stability) are drawn as the branches they are.
NETWORK_BRANCHES = {"dense": "dense", "ticket": "main", "random_prune": "random_prune", "reinit": "reinit"}


def network_style(network: str) -> dict:
    """The style of an analysis network: the ticket as IMP's main line, a control as that control's branch."""
    return branch_style(NETWORK_BRANCHES.get(network, network))


# Where one figure draws one branch at several levels (the analyses' tickets at 21% and 3.6%): one marker and
# line style per level, densest first, the colour the branch's.
LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P")
LEVEL_LINES = ("-", "--", ":", "-.")


# Where one figure draws one network at several rewind steps k (the error along the path): k is ordered, so a
# sequential colormap, light for small k to dark for large; cividis shares no colour with the branches above.
STEP_COLORMAP = "cividis"


def step_colors(steps) -> dict:
    """Rewind step k -> the colour its line is drawn with: cividis from yellow (smallest k) to dark blue (largest).

    Args:
        steps: The rewind steps of one figure (repeats allowed).

    Returns:
        A dict k -> an RGBA tuple; one k gets the colormap's middle.
    """
    import matplotlib

    colormap = matplotlib.colormaps[STEP_COLORMAP]
    ordered = sorted(set(steps))
    if len(ordered) == 1:
        return {ordered[0]: colormap(0.5)}
    return {k: colormap(0.9 - 0.9 * i / (len(ordered) - 1)) for i, k in enumerate(ordered)}


def pairs_text(count: int) -> str:
    """``1 pair`` or ``N pairs`` (of copies trained from one rewind point), for a figure's title."""
    return f"{count} pair" if count == 1 else f"{count} pairs"


def weights_axis(ax, series):
    ax.set_xscale("log")
    ax.invert_xaxis()  # dense on the left, sparser to the right, as in the papers
    # Every density a level was measured at gets its label; many labels stand upright to stay readable.
    ticks = sorted({round(100 * e["density_mean"], 1) for rows in series.values() for e in rows}, reverse=True)
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], rotation=0 if len(ticks) <= 6 else 90)
    ax.minorticks_off()
    ax.set_xlabel("percent of weights remaining (log scale)")
    ax.grid(True, alpha=0.3)


def grid(entries, columns: int, height: float, width: float = WIDTH_IN):
    """A figure with one row of ``columns`` panels per experiment (constrained layout, as :func:`subplots`)."""
    experiments = sorted({e["experiment"] for e in entries})
    titles = {e["experiment"]: e.get("title", e["experiment"]) for e in entries}
    plt, fig, axes = subplots(len(experiments), columns, height, width)
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
