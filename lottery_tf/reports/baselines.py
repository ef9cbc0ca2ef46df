"""The baselines comparison: IMP beside pruning at initialization, GMP and dynamic sparse training.

Called by :mod:`lottery_tf.report` for every experiment whose folders hold
``pai_*``, ``gmp``, ``set_*`` or ``rigl_*`` branches. Writes to the report folder:

* ``baselines_table.md`` / ``baselines_table.csv``: one row per method (IMP,
  its controls, each pruning-at-initialization method and ablation, GMP, SET
  and RigL with each distribution), one
  column per main-line level it was run at; final test accuracy and test
  accuracy at early stopping, mean ± std over replicates. A method whose
  density differs from the main line's at that level by more than 0.05
  points says at which density it ended (GMP rounds per layer).
* ``baselines_layer_densities.md``: the percent of each layer's weights every
  method keeps at each baseline level (mean over replicates, from the
  ``masks.npz`` it trained with). The ICLR 2021 paper's point is that PaI
  methods mostly choose per-layer densities; this shows which, and where a
  method cuts a layer away entirely (0%: no path from input to output).
* ``baselines_connections_moved.md``: with ``set``/``rigl`` branches, the
  connections each moved per layer over its training (mean over
  replicates), as a percent of the layer's kept weights too.
* ``baselines_time_per_step.md``: with ``set``/``rigl`` branches, each
  method's training time per step (``wall_seconds / steps`` of its
  ``metrics.json``, evaluation and tracing included, as every method pays
  them alike) at the baseline levels, mean ± std over levels and replicates,
  and its ratio to IMP's main line at the same levels in the same study.
* ``baselines_vs_weights.png``: final test accuracy vs percent of weights
  remaining (mean ± std over replicates). The first panel has one line per
  method; then one panel per pruning-at-initialization method with its
  ablations (layer masks shuffled, reinitialized, scores inverted) beside IMP
  and random pruning, as the ICLR 2021 paper ("Pruning Neural Networks at
  Initialization: Why are We Missing the Mark?") draws them.

Final test accuracy is the paper's measure (it trains every method for the
same number of iterations and reports the end of training).
"""

from __future__ import annotations

import glob
import os
import textwrap
from collections import defaultdict

import numpy as np

from lottery_tf.engine import run_dir
from lottery_tf.reports import plotting
from lottery_tf.reports.tables import ReportError
from lottery_tf.store import atomic
from lottery_tf.store import reader as store

PAI_METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
ABLATIONS = ("", "shuffled", "reinit", "inverted")  # "" = the method as published
_ABLATION_WORDS = {
    "": "as published",
    "shuffled": "layer masks shuffled",
    "reinit": "reinitialized",
    "inverted": "scores inverted",
}
_DENSITY_SLACK = 0.0005  # 0.05 points of density


def is_baseline(branch: str) -> bool:
    """Whether a branch folder holds a pruning-at-initialization, GMP or dynamic sparse training run."""
    return branch == "gmp" or branch.startswith("pai_") or plotting.dst_parts(branch) is not None


def pai_parts(branch: str) -> tuple[str, str] | None:
    """``("snip", "shuffled")`` for ``pai_snip_shuffled``, ``("snip", "")`` for ``pai_snip``; None otherwise."""
    if not branch.startswith("pai_"):
        return None
    method, _, ablation = branch[len("pai_") :].partition("_")
    return method, ablation


def method_order(branch: str) -> tuple:
    """Sort key: IMP, its controls, each PaI method followed by its ablations, GMP, anything else."""
    if branch == "main":
        return (0,)
    if branch == "reinit":
        return (1,)
    if branch.startswith("random_prune"):
        return (2, branch)
    parts = pai_parts(branch)
    if parts:
        method, ablation = parts
        rank = PAI_METHODS.index(method) if method in PAI_METHODS else len(PAI_METHODS)
        return (3, rank, method, ABLATIONS.index(ablation) if ablation in ABLATIONS else len(ABLATIONS), ablation)
    if branch == "gmp":
        return (4,)
    dst = plotting.dst_parts(branch)
    if dst:
        method, distribution, suffix = dst
        return (5, list(plotting.DST_NAMES).index(method), list(plotting.DST_LINES).index(distribution), suffix)
    return (6, branch)


def baseline_experiments(entries: list[dict]) -> list[str]:
    """Experiments (folder names) that hold at least one baseline branch."""
    return sorted({e["experiment"] for e in entries if is_baseline(e["branch"])})


def comparison(entries: list[dict], experiment: str) -> tuple[list[int], dict]:
    """Levels the baselines ran at, and ``{branch: {level: entry}}`` restricted to them.

    The levels are those with at least one baseline branch; the main line's
    other levels are left out so that every column compares like with like.
    """
    rows = [e for e in entries if e["experiment"] == experiment]
    levels = sorted({e["level"] for e in rows if is_baseline(e["branch"])})
    table = defaultdict(dict)
    for e in rows:
        if e["level"] in levels or (e["branch"] == "main" and e["level"] == 0):
            table[e["branch"]][e["level"]] = e
    return levels, dict(sorted(table.items(), key=lambda kv: method_order(kv[0])))


def _cell(entry: dict | None, key: str, reference_density: float | None) -> str:
    if entry is None:
        return ""
    text = f"{100 * entry[f'{key}_mean']:.2f}"
    if entry["replicates"] > 1:
        text += f" ± {100 * entry[f'{key}_std']:.2f}"
    if reference_density is not None and abs(entry["density_mean"] - reference_density) > _DENSITY_SLACK:
        text += f" (at {100 * entry['density_mean']:.2f}%)"
    return text


def format_markdown(entries: list[dict], experiment: str) -> str:
    """Two tables (final test accuracy; test accuracy at early stopping), methods × levels."""
    levels, table = comparison(entries, experiment)
    main = table.get("main", {})
    density = {level: main[level]["density_mean"] if level in main else None for level in levels}
    header = " | ".join(
        f"level {level}: {100 * density[level]:.1f}%" if density[level] is not None else f"level {level}"
        for level in levels
    )
    replicates = max(e["replicates"] for by_level in table.values() for e in by_level.values())
    dense = main.get(0)
    out = [f"## {experiment}", ""]
    for key, words in (
        ("final_test_accuracy", "Final test accuracy (%)"),
        ("early_stop_test_accuracy", "Test accuracy at early stopping (minimum validation loss) (%)"),
    ):
        out.append(
            f"{words}, mean ± std over {replicates} replicate(s); columns: weights remaining."
            + (f" Dense network: {_cell(dense, key, None)}." if dense else "")
        )
        out.append("")
        out.append(f"| method | branch folder | {header} |")
        out.append("|---|---|" + "---:|" * len(levels))
        for branch, by_level in table.items():
            if not any(level in by_level for level in levels):
                continue
            cells = " | ".join(_cell(by_level.get(level), key, density[level]) for level in levels)
            out.append(f"| {plotting.branch_label(branch)} | {branch} | {cells} |")
        out.append("")
    return "\n".join(out)


def _csv_rows(entries: list[dict], experiment: str) -> list[dict]:
    levels, table = comparison(entries, experiment)
    rows = []
    for branch, by_level in table.items():
        parts = pai_parts(branch)
        for level in levels:
            e = by_level.get(level)
            if e is None:
                continue
            rows.append(
                {
                    "experiment": experiment,
                    "branch": branch,
                    "method": plotting.branch_label(branch),
                    "pai_method": parts[0] if parts else "",
                    "ablation": parts[1] if parts else "",
                    "level": level,
                    "density": e["density_mean"],
                    "replicates": e["replicates"],
                    "final_test_accuracy_mean": e["final_test_accuracy_mean"],
                    "final_test_accuracy_std": e["final_test_accuracy_std"],
                    "early_stop_test_accuracy_mean": e["early_stop_test_accuracy_mean"],
                    "early_stop_test_accuracy_std": e["early_stop_test_accuracy_std"],
                }
            )
    return rows


def layer_densities(experiment_folder: str, levels: list[int]) -> dict:
    """``{branch: {level: {layer: mean density}}}`` from every replicate's ``masks.npz`` at ``levels``."""
    found = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for replicate in run_dir.replicates_of(experiment_folder):
        for level in levels:
            pattern = os.path.join(run_dir.level_dir(replicate, level, "*"), "masks.npz")
            for path in sorted(glob.glob(pattern)):
                branch = os.path.basename(os.path.dirname(path))
                if not os.path.exists(os.path.join(os.path.dirname(path), "metrics.json")):
                    continue  # not trained yet: its mask is not a result
                problem = store.npz_problem(path)
                if problem:  # the store's verdict: swapped, edited or damaged masks are no result
                    raise ReportError(f"{path} {problem}; check the run with python -m lottery_tf.runs")
                for name, mask in atomic.read_npz(path).items():
                    found[branch][level][name].append(float(np.mean(mask)))
    return {
        b: {level: {name: float(np.mean(v)) for name, v in layers.items()} for level, layers in by_level.items()}
        for b, by_level in found.items()
    }


def connections_moved(experiment_folder: str) -> dict:
    """``{branch: {level: {layer: [moved, kept]}}}``, means over replicates, from every DST ``metrics.json``."""
    found = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for replicate in run_dir.replicates_of(experiment_folder):
        for path in sorted(glob.glob(os.path.join(replicate, "level_*", "*", "metrics.json"))):
            branch = os.path.basename(os.path.dirname(path))
            if not plotting.dst_parts(branch):
                continue
            metrics = store.read_json(path)
            masks = os.path.join(os.path.dirname(path), "masks.npz")
            kept = (
                {n: int(np.count_nonzero(m)) for n, m in atomic.read_npz(masks).items()}
                if os.path.exists(masks)
                else {}
            )
            for name, moved in (metrics.get("connections_moved") or {}).items():
                found[branch][int(metrics["level"])][name].append((moved, kept.get(name, 0)))
    return {
        b: {
            level: {
                name: [float(np.mean([m for m, _ in v])), float(np.mean([k for _, k in v]))]
                for name, v in layers.items()
            }
            for level, layers in by_level.items()
        }
        for b, by_level in found.items()
    }


def format_connections_moved(experiment_folder: str) -> str:
    """Markdown: per DST branch and level, the connections moved per layer (and as % of the layer's kept weights)."""
    moved = connections_moved(experiment_folder)
    if not moved:
        return ""
    experiment = os.path.basename(experiment_folder)
    layers = sorted({name for by_level in moved.values() for layer in by_level.values() for name in layer})
    out = [
        f"## {experiment}: connections moved while training (mean over replicates; % of the layer's kept weights)",
        "",
        "| method | level | " + " | ".join(layers) + " |",
        "|---|---:|" + "---:|" * len(layers),
    ]
    for branch in sorted(moved, key=method_order):
        for level in sorted(moved[branch]):
            row = moved[branch][level]
            cells = " | ".join(
                f"{row[n][0]:.0f} ({100 * row[n][0] / row[n][1]:.0f}%)" if n in row and row[n][1] else ""
                for n in layers
            )
            out.append(f"| {plotting.branch_label(branch)} | {level} | {cells} |")
    return "\n".join(out) + "\n"


def time_per_step(experiment_folder: str) -> dict:
    """``{branch: [milliseconds per step, ...]}`` at the levels that have baseline branches, from ``metrics.json``.

    The main line counts only at those levels (IMP's training at the same density). A training resumed after a
    kill counts its time before the kill too (``wall_seconds`` is carried in its checkpoints).
    """
    found = defaultdict(lambda: defaultdict(list))
    for replicate in run_dir.replicates_of(experiment_folder):
        for path in sorted(glob.glob(os.path.join(replicate, "level_*", "*", "metrics.json"))):
            metrics = store.read_json(path)
            steps, seconds = metrics.get("steps"), metrics.get("wall_seconds")
            if steps and seconds is not None:
                found[os.path.basename(os.path.dirname(path))][int(metrics["level"])].append(1000.0 * seconds / steps)
    levels = {level for branch, by_level in found.items() if branch != "main" for level in by_level}
    return {
        branch: [t for level, times in sorted(by_level.items()) if level in levels for t in times]
        for branch, by_level in found.items()
        if any(level in levels for level in by_level)
    }


def format_time_per_step(experiment_folder: str) -> str:
    """Markdown: each method's milliseconds per training step beside IMP's, measured in the same study."""
    times = time_per_step(experiment_folder)
    if not any(plotting.dst_parts(b) for b in times) or "main" not in times:
        return ""
    experiment = os.path.basename(experiment_folder)
    imp = float(np.mean(times["main"]))
    out = [
        f"## {experiment}: training time per step (wall seconds / steps of each training, evaluation included)",
        "",
        "| method | trainings | ms per step (mean ± std) | × IMP |",
        "|---|---:|---:|---:|",
    ]
    for branch in sorted(times, key=method_order):
        values = np.asarray(times[branch])
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out.append(
            f"| {plotting.branch_label(branch)} | {len(values)} | {values.mean():.3f} ± {std:.3f} | "
            f"{values.mean() / imp:.2f} |"
        )
    return "\n".join(out) + "\n"


def format_layer_densities(entries: list[dict], experiment_folder: str) -> str:
    """Markdown: per baseline level, one row per method, one column per masked layer (percent kept)."""
    experiment = os.path.basename(experiment_folder)
    levels, table = comparison(entries, experiment)
    densities = layer_densities(experiment_folder, levels)
    out = [f"## {experiment}: percent of each layer's weights kept (mean over replicates)", ""]
    for level in levels:
        layers = sorted({name for b in densities.values() for name in b.get(level, {})})
        if not layers:
            continue
        overall = table.get("main", {}).get(level)
        out.append(f"Level {level}" + (f" ({100 * overall['density_mean']:.1f}% of weights)" if overall else "") + ":")
        out.append("")
        out.append("| method | branch folder | " + " | ".join(layers) + " |")
        out.append("|---|---|" + "---:|" * len(layers))
        for branch in sorted(densities, key=method_order):
            if level in densities[branch]:
                cells = " | ".join(
                    f"{100 * densities[branch][level][name]:.1f}" if name in densities[branch][level] else ""
                    for name in layers
                )
                out.append(f"| {plotting.branch_label(branch)} | {branch} | {cells} |")
        out.append("")
    return "\n".join(out)


def _line(ax, by_level, levels, label, key="final_test_accuracy", **style):
    points = [by_level[level] for level in levels if level in by_level]
    if not points:
        return
    ax.errorbar(
        [100 * e["density_mean"] for e in points],
        [100 * e[f"{key}_mean"] for e in points],
        yerr=plotting.spread(points, key, 100),
        capsize=3,
        markersize=4,
        label=label,
        **style,
    )


def _focus(ax, gap: float = 10.0) -> None:
    """Keeps the y axis on the lines within ``gap`` points of the best one and names the points left below.

    A collapsed network (an inverted score cutting a layer away ends at 10%) would
    otherwise flatten every other line of its panel into one.
    """
    drawn = [
        (c.get_label(), np.asarray(c.lines[0].get_xdata(), float), np.asarray(c.lines[0].get_ydata(), float))
        for c in ax.containers
    ]
    if not drawn:
        return
    top = max(float(y.max()) for _, _, y in drawn)
    bottom = min(float(v) for _, _, y in drawn for v in y if v >= top - gap) - 0.5
    below = []
    for label, x, y in drawn:
        points = [(a, b) for a, b in zip(x, y) if b < bottom]
        if points:
            accuracies = ", ".join(f"{b:.1f}" for _, b in points)
            weights = ", ".join(f"{a:.1f}" for a, _ in points)
            below.append(f"{label.split(', ')[-1]}: {accuracies}% at {weights}% of weights")
    for line in ax.get_lines():  # reference lines across the panel (the dense network's accuracy)
        y = np.asarray(line.get_ydata(), float)
        if not line.get_label().startswith("_") and len(y) == 2 and y[0] == y[1] and y[0] < bottom:
            below.append(line.get_label())
    if below:
        ax.set_ylim(bottom=bottom)
        note = textwrap.fill("below the axis: " + "; ".join(below), 60)  # within the panel's width
        ax.set_title(ax.get_title() + "\n" + note, fontsize=9)


def _reference_lines(ax, table, levels):
    _line(ax, table.get("main", {}), levels, plotting.branch_label("main"), **plotting.branch_style("main"))
    for branch in table:
        if branch.startswith("random_prune"):
            _line(ax, table[branch], levels, plotting.branch_label(branch), **plotting.branch_style(branch))
    dense = table.get("main", {}).get(0)
    if dense:
        style = plotting.branch_style("dense")
        ax.axhline(
            100 * dense["final_test_accuracy_mean"],
            color=style["color"],
            linestyle=style["linestyle"],
            linewidth=1.2,
            label=f"dense network ({100 * dense['final_test_accuracy_mean']:.2f}%)",
        )


def _ablation_key() -> list:
    """Legend entries for the ablations' line styles (the colour is each panel's method)."""
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color="dimgray", label=f"PaI method, {words}", **plotting.ABLATION_STYLES[ablation])
        for ablation, words in _ABLATION_WORDS.items()
    ]


@plotting.styled
def plot(entries: list[dict], experiment: str, path: str, title: str) -> None:
    """``baselines_vs_weights.png`` for one experiment (see the module docstring).

    Two panels per row, so that each is about half the site's width; one legend below the panels for all
    of them: every method's colour (the first panel's lines), then the ablations' line styles.
    """
    levels, table = comparison(entries, experiment)
    run = {pai_parts(b)[0] for b in table if pai_parts(b)}
    methods = [m for m in PAI_METHODS if m in run]
    panels = 1 + len(methods)
    columns = min(2, panels)
    rows = -(-panels // columns)
    plt, fig, axes = plotting.subplots(rows, columns, 3.6)
    flat = [ax for row in axes for ax in row]
    series = {b: [e for level, e in by_level.items() if level in levels] for b, by_level in table.items()}

    ax = flat[0]
    _reference_lines(ax, table, levels)
    if "reinit" in table:
        _line(ax, table["reinit"], levels, plotting.branch_label("reinit"), **plotting.branch_style("reinit"))
    for method in methods:
        if f"pai_{method}" in table:
            _line(
                ax,
                table[f"pai_{method}"],
                levels,
                plotting.branch_label(f"pai_{method}"),
                **plotting.branch_style(f"pai_{method}"),
            )
    if "gmp" in table:
        _line(ax, table["gmp"], levels, plotting.branch_label("gmp"), **plotting.branch_style("gmp"))
    for branch in table:
        if plotting.dst_parts(branch):
            _line(ax, table[branch], levels, plotting.branch_label(branch), **plotting.branch_style(branch))
    ax.set_title("every method")

    for ax, method in zip(flat[1:], methods):
        _reference_lines(ax, table, levels)
        for ablation in ABLATIONS:
            branch = f"pai_{method}" + (f"_{ablation}" if ablation else "")
            if branch in table:
                _line(ax, table[branch], levels, plotting.branch_label(branch), **plotting.branch_style(branch))
        ax.set_title(f"{plotting.branch_label(f'pai_{method}')}: ablations")
    for ax in flat[:panels]:
        plotting.weights_axis(ax, {b: s for b, s in series.items() if s})
        ax.set_ylabel("final test accuracy (%)")
        _focus(ax)
    for ax in flat[panels:]:
        ax.set_visible(False)
    handles, labels = flat[0].get_legend_handles_labels()
    if len(methods) > 0:
        key = _ablation_key()
        handles, labels = handles + key, labels + [k.get_label() for k in key]
    plotting.legend_below(fig, handles, labels, columns=2)
    replicates = max(e["replicates"] for s in series.values() for e in s)
    plotting.suptitle(fig, f"{title}\nfinal test accuracy, mean ± std over {replicates} replicate(s)")
    plotting.save(fig, path)
    plt.close(fig)


def write_report(entries: list[dict], out: str, plots: bool, experiment_folders: list[str] = ()) -> list[str]:
    """Writes the baselines tables (and figure) when any experiment holds baselines; returns the file names.

    Args:
        entries: :func:`lottery_tf.reports.tables.aggregate`'s output.
        out: the report folder.
        plots: whether to draw the figure.
        experiment_folders: the experiments' folders, for the per-layer densities (left out when empty).
    """
    experiments = baseline_experiments(entries)
    if not experiments:
        return []
    titles = {e["experiment"]: e.get("title", e["experiment"]) for e in entries}
    markdown = "\n".join(format_markdown(entries, experiment) for experiment in experiments)
    rows = [row for experiment in experiments for row in _csv_rows(entries, experiment)]
    atomic.write_text(os.path.join(out, "baselines_table.md"), markdown)
    atomic.write_text(os.path.join(out, "baselines_table.csv"), plotting.csv_text(rows))
    written = ["baselines_table.md", "baselines_table.csv"]
    folders = [f for f in experiment_folders if os.path.basename(f) in experiments]
    if folders:
        atomic.write_text(
            os.path.join(out, "baselines_layer_densities.md"),
            "\n".join(format_layer_densities(entries, folder) for folder in folders),
        )
        written.append("baselines_layer_densities.md")
        moved = "\n".join(text for text in (format_connections_moved(folder) for folder in folders) if text)
        if moved:
            atomic.write_text(os.path.join(out, "baselines_connections_moved.md"), moved)
            written.append("baselines_connections_moved.md")
        timing = "\n".join(text for text in (format_time_per_step(folder) for folder in folders) if text)
        if timing:
            atomic.write_text(os.path.join(out, "baselines_time_per_step.md"), timing)
            written.append("baselines_time_per_step.md")
    if plots:
        for experiment in experiments:
            name = "baselines_vs_weights.png" if len(experiments) == 1 else f"baselines_vs_weights_{experiment}.png"
            plot(entries, experiment, os.path.join(out, name), titles.get(experiment, experiment))
            written.append(name)
    return written
