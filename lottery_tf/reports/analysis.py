"""Tables and figures of the instability and stability analyses, as the LMC and "Stabilizing" papers show them.

:func:`write_analysis_report` (called by ``python -m lottery_tf.report``)
writes, when the runs hold ``instability.json`` / ``stability.json`` files:

* ``instability_table.{csv,md}``: per experiment, level, network and step k:
  percent of weights, instability on test and train (mean ± std over pairs
  and replicates), the trained copies' test accuracy, the dense network's,
  and whether the network is *matching* (accuracy within the tolerance of the
  dense network's) and *stable* (test instability < 2 percentage points);
* ``error_along_path.png``: test error along the linear path, one panel per
  level and network, one line per k (mean over pairs and replicates);
* ``instability_vs_step.png``: instability vs k (symmetric-log x so that k = 0
  shows), one line per level and network, error bars = std over pairs and
  replicates, the 2% line;
* ``stability_table.{csv,md}`` and ``stability_vs_step.png``: L2 distance,
  normalized distance and angle vs k, to pruning and to data order;
* ``rewind_sweep.png``: with several experiments that differ in their rewind
  step (``--sweep_rewind_steps``): ticket accuracy vs weights per k beside the
  tickets' instability vs k, the LMC paper's central figure.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

import numpy as np

from lottery_tf.engine import run_dir
from lottery_tf.reports import plotting, tables
from lottery_tf.store import atomic
from lottery_tf.store import reader as store

STABLE = 0.02  # the LMC paper's threshold: instability below 2 percentage points
MIN_MATCHING_TOLERANCE = 0.002  # 0.2 percentage points, when the dense accuracy has no spread to go by


def _read(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise tables.ReportError(f"cannot read {path}: {error}") from None


def records(experiment_folder: str, analysis: str) -> list[dict]:
    """Every ``instability.json`` or ``stability.json`` of an experiment."""
    name = f"{analysis}.json"
    found = []
    for replicate in run_dir.replicates_of(experiment_folder):
        for path in sorted(glob.glob(os.path.join(replicate, "level_*", analysis, "**", name), recursive=True)):
            problem = store.result_problem(path)
            if problem:
                raise tables.ReportError(
                    f"{path} {problem}; the next run that includes the analysis recomputes it "
                    "(python -m lottery_tf.runs shows what else is damaged)"
                )
            found.append(_read(path))
    return found


def _dense_accuracy(experiment_folder: str):
    """Mean and std over replicates of the main line's level-0 final test accuracy (None if absent)."""
    values = []
    for replicate in run_dir.replicates_of(experiment_folder):
        path = os.path.join(run_dir.level_dir(replicate, 0, run_dir.MAIN), "metrics.json")
        if os.path.exists(path):
            problem = store.metrics_problem(path)
            if problem:
                raise tables.ReportError(f"{path} {problem}; check the run with python -m lottery_tf.runs")
            values.append(_read(path)["final_test_accuracy"])
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _stats(values):
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def aggregate_instability(experiments: list[str], tolerance: float | None = None) -> list[dict]:
    """Instability per experiment, level, network and step k (mean and std over pairs and replicates).

    Args:
        experiments: Experiment folders.
        tolerance: Matching = accuracy >= dense accuracy − tolerance (fraction);
            None = the dense accuracy's std over replicates, at least 0.2 points.
    """
    out = []
    for experiment in experiments:
        groups = defaultdict(list)
        for record in records(experiment, "instability"):
            groups[(record["level"], record["network"], record["rewind_step"])].append(record)
        dense_mean, dense_std = _dense_accuracy(experiment)
        margin = tolerance if tolerance is not None else max(dense_std or 0.0, MIN_MATCHING_TOLERANCE)
        for (level, network, k), rows in sorted(groups.items()):
            accuracies = [1 - e for r in rows for e in r["test"]["endpoint_errors"]]
            entry = {
                "experiment": os.path.basename(experiment),
                "title": tables.experiment_title(experiment),
                "level": level,
                "network": network,
                "rewind_step": k,
                "density": rows[0]["density"],
                "samples": len(rows),
                "replicates": len({r["replicate"] for r in rows}),
            }
            for split in ("test", "train"):
                entry[f"instability_{split}_mean"], entry[f"instability_{split}_std"] = _stats(
                    [r[split]["instability"] for r in rows]
                )
                entry[f"barrier_{split}_mean"], _ = _stats([r[split]["barrier"] for r in rows])
            entry["accuracy_mean"], entry["accuracy_std"] = _stats(accuracies)
            entry["dense_accuracy"] = dense_mean
            entry["matching"] = None if dense_mean is None else bool(entry["accuracy_mean"] >= dense_mean - margin)
            entry["matching_tolerance"] = margin
            entry["stable"] = bool(entry["instability_test_mean"] < STABLE)
            entry["batchnorm_statistics"] = rows[0].get("batchnorm_statistics", "")
            entry["alphas"] = rows[0]["alphas"]
            entry["test_error_path"] = [float(v) for v in np.mean([r["test"]["error"] for r in rows], axis=0)]
            out.append(entry)
    return out


def aggregate_stability(experiments: list[str]) -> list[dict]:
    """Distances per experiment, level, network and step k (mean and std over replicates)."""
    out = []
    for experiment in experiments:
        groups = defaultdict(list)
        for record in records(experiment, "stability"):
            groups[(record["level"], record["network"], record["rewind_step"])].append(record)
        for (level, network, k), rows in sorted(groups.items()):
            entry = {
                "experiment": os.path.basename(experiment),
                "title": tables.experiment_title(experiment),
                "level": level,
                "network": network,
                "rewind_step": k,
                "density": rows[0]["density"],
                "replicates": len(rows),
            }
            for kind in ("to_pruning", "to_data_order"):
                for key in ("l2_distance", "normalized_l2_distance", "angle_degrees"):
                    values = [r[kind][key] for r in rows if r[kind][key] is not None]
                    entry[f"{kind}_{key}_mean"], entry[f"{kind}_{key}_std"] = _stats(values) if values else (None, None)
            out.append(entry)
    return out


def _cell(mean, std, scale, digits, n):
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text if n < 2 else f"{text} ± {scale * std:.{digits}f}"


def _yes_no(value):
    return "-" if value is None else ("yes" if value else "no")


def instability_markdown(entries: list[dict]) -> str:
    lines = [
        "| experiment | level | network | weights % | k | test instability % | train instability % | "
        "copies' test acc % | dense test acc % | matching | stable (< 2%) | samples |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for e in entries:
        dense = "-" if e["dense_accuracy"] is None else f"{100 * e['dense_accuracy']:.2f}"
        lines.append(
            f"| {e['experiment']} | {e['level']} | {e['network']} | {100 * e['density']:.2f} | {e['rewind_step']} | "
            f"{_cell(e['instability_test_mean'], e['instability_test_std'], 100, 2, e['samples'])} | "
            f"{_cell(e['instability_train_mean'], e['instability_train_std'], 100, 2, e['samples'])} | "
            f"{_cell(e['accuracy_mean'], e['accuracy_std'], 100, 2, 2 * e['samples'])} | {dense} | "
            f"{_yes_no(e['matching'])} | {_yes_no(e['stable'])} | {e['samples']} |"
        )
    return "\n".join(lines) + "\n"


def stability_markdown(entries: list[dict]) -> str:
    lines = [
        "| experiment | level | network | weights % | k | to pruning: L2 | normalized | angle (deg) | "
        "to data order: L2 | normalized | angle (deg) | replicates |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        n = e["replicates"]
        cells = []
        for kind in ("to_pruning", "to_data_order"):
            cells += [
                _cell(e[f"{kind}_l2_distance_mean"], e[f"{kind}_l2_distance_std"], 1, 3, n),
                _cell(e[f"{kind}_normalized_l2_distance_mean"], e[f"{kind}_normalized_l2_distance_std"], 1, 3, n),
                _cell(e[f"{kind}_angle_degrees_mean"], e[f"{kind}_angle_degrees_std"], 1, 1, n),
            ]
        lines.append(
            f"| {e['experiment']} | {e['level']} | {e['network']} | {100 * e['density']:.2f} | {e['rewind_step']} | "
            + " | ".join(cells)
            + f" | {n} |"
        )
    return "\n".join(lines) + "\n"


def _csv_rows(entries, drop=("alphas", "test_error_path", "title")):
    return [{k: v for k, v in e.items() if k not in drop} for e in entries]


NETWORK_LABELS = {
    "dense": "dense network",
    "ticket": "IMP ticket",
    "random_prune": "random pruning (same layer densities)",
    "reinit": "random reinitialization (same mask)",
}


def _label(entry) -> str:
    return f"{NETWORK_LABELS.get(entry['network'], entry['network'])}, {100 * entry['density']:.1f}% of weights (level {entry['level']})"


def _step_axis(ax, steps):
    positive = [k for k in steps if k > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.set_xticks(sorted(set(steps)))
    ax.set_xticklabels([str(k) for k in sorted(set(steps))])
    ax.minorticks_off()
    # Only k >= 0 is drawn: start just left of 0 (no empty negative half) and end past the largest k, whose
    # tick label then stays inside the panel.
    threshold = min(positive) if positive else 1.0
    ax.set_xlim(-0.3 * threshold, 1.6 * max(steps) if positive else threshold)
    ax.set_xlabel("rewind step k (symmetric log scale;\n0 = initialization)")
    ax.grid(True, alpha=0.3)


def _level_styles(entries: list[dict]) -> dict:
    """Level -> (marker, line style): one per level of the sparse networks, densest first (level 0 is dense)."""
    levels = sorted({e["level"] for e in entries if e["level"] > 0})
    return {
        level: (
            plotting.LEVEL_MARKERS[i % len(plotting.LEVEL_MARKERS)],
            plotting.LEVEL_LINES[i % len(plotting.LEVEL_LINES)],
        )
        for i, level in enumerate(levels)
    }


def _network_style(entry, levels: dict) -> dict:
    """The network's branch colour; a sparse network's level its marker and line style; the dense network solid."""
    style = plotting.network_style(entry["network"])
    style.pop("linewidth", None)
    if entry["level"] in levels:
        style["marker"], style["linestyle"] = levels[entry["level"]]
    else:
        style["linestyle"] = "-"
    return style


@plotting.styled
def plot_error_along_path(entries: list[dict], path: str) -> None:
    """Test error along the path: a panel per (experiment, level, network), a line per k."""
    panels = sorted({(e["experiment"], e["level"], e["network"]) for e in entries})
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    plt, fig, axes = plotting.subplots(rows, columns, 3.2)
    for index, (experiment, level, network) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        mine = sorted(
            (e for e in entries if (e["experiment"], e["level"], e["network"]) == (experiment, level, network)),
            key=lambda e: e["rewind_step"],
        )
        colors = plotting.step_colors(e["rewind_step"] for e in entries)
        for e in mine:
            ax.plot(
                e["alphas"],
                [100 * v for v in e["test_error_path"]],
                marker=".",
                color=colors[e["rewind_step"]],
                label=f"k = {e['rewind_step']}",
            )
        ax.set_xlabel("interpolation α (0 = copy A, 1 = copy B)")
        ax.set_ylabel("test error (%)")
        title = _label(mine[0])
        ax.set_title(title if len({p[0] for p in panels}) == 1 else f"{experiment}: {title}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend()
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    plotting.suptitle(
        fig,
        f"Test error along the linear path between two copies trained from step k\nwith different data orders "
        f"(mean over {plotting.pairs_text(max(e['samples'] for e in entries))} of copies, all replicates)"
        f"\n{entries[0]['title']}",
        fontsize=10,
    )
    plotting.save(fig, path)
    plt.close(fig)


def _by_network(mine: list[dict]):
    """(level, network, entries sorted by k) for every network of one experiment."""
    for level, network in sorted({(e["level"], e["network"]) for e in mine}):
        yield (
            level,
            network,
            sorted((e for e in mine if (e["level"], e["network"]) == (level, network)), key=lambda e: e["rewind_step"]),
        )


def _close(plt, fig, path, experiments, entries, note=""):
    plotting.shared_legend(fig, fig.axes)
    if len(experiments) == 1:
        plotting.suptitle(fig, entries[0]["title"] + note, fontsize=10)
    plotting.save(fig, path)
    plt.close(fig)


@plotting.styled
def plot_instability_vs_step(entries: list[dict], path: str) -> None:
    """Instability vs k: test and train panels per experiment, a line per (level, network), the 2% line.

    Each network in its branch's colour (the ticket as IMP's main line), each level its own marker and
    line style; one legend below the panels.
    """
    plt, fig, axes, experiments, _ = plotting.grid(entries, 2, 4.0)
    for row, experiment in enumerate(experiments):
        mine = [e for e in entries if e["experiment"] == experiment]
        levels = _level_styles(mine)
        for col, split in enumerate(("test", "train")):
            ax = axes[row][col]
            for _level, _network, series in _by_network(mine):
                spread = (
                    [100 * e[f"instability_{split}_std"] for e in series]
                    if any(e["samples"] > 1 for e in series)
                    else None
                )
                ax.errorbar(
                    [e["rewind_step"] for e in series],
                    [100 * e[f"instability_{split}_mean"] for e in series],
                    yerr=spread,
                    markersize=4,
                    capsize=3,
                    label=_label(series[0]),
                    **_network_style(series[0], levels),
                )
            ax.axhline(100 * STABLE, color="gray", linestyle=":", linewidth=1, label="2%: stable below")
            _step_axis(ax, [e["rewind_step"] for e in mine])
            ax.set_ylabel(f"{split} instability (%)\nmax error on the path\n− mean endpoint error")
            samples = max(e["samples"] for e in mine)
            heading = f"{split} instability,\nmean ± std over {plotting.pairs_text(samples)} of copies"
            ax.set_title(heading if len(experiments) == 1 else f"{experiment}: {heading}")
    _close(plt, fig, path, experiments, entries)


@plotting.styled
def plot_stability_vs_step(entries: list[dict], path: str) -> None:
    """Normalized L2 distance and angle vs k, to pruning (solid, filled markers) and to data order (dashed,
    open markers).

    Each network in its branch's colour, each level its own marker; one legend below.
    """
    plt, fig, axes, experiments, _ = plotting.grid(entries, 2, 4.0)
    for row, experiment in enumerate(experiments):
        mine = [e for e in entries if e["experiment"] == experiment]
        levels = _level_styles(mine)
        for col, (key, words) in enumerate(
            (
                ("normalized_l2_distance", "normalized L2 distance\n‖m⊙a − m⊙b‖ / ‖m⊙a‖"),
                ("angle_degrees", "angle between m⊙a and m⊙b\n(degrees)"),
            )
        ):
            ax = axes[row][col]
            for level, _network, series in _by_network(mine):
                for kind, what in (("to_pruning", "to pruning"), ("to_data_order", "to data order")):
                    points = [
                        (e["rewind_step"], e[f"{kind}_{key}_mean"], e[f"{kind}_{key}_std"])
                        for e in series
                        if e[f"{kind}_{key}_mean"] is not None
                    ]
                    if not points or (level == 0 and kind == "to_pruning"):
                        continue  # the dense network is not pruned
                    spread = [p[2] for p in points] if any(e["replicates"] > 1 for e in series) else None
                    style = _network_style(series[0], levels)
                    style["linestyle"] = "-" if kind == "to_pruning" else "--"
                    if kind == "to_data_order":
                        style["markerfacecolor"] = "white"
                    ax.errorbar(
                        [p[0] for p in points],
                        [p[1] for p in points],
                        yerr=spread,
                        markersize=5,
                        capsize=3,
                        label=f"{_label(series[0])}: {what}",
                        **style,
                    )
            _step_axis(ax, [e["rewind_step"] for e in mine])
            ax.set_ylabel(words)
            heading = f"stability: {key.replace('_', ' ')} vs rewind step"
            ax.set_title(heading if len(experiments) == 1 else f"{experiment}: {heading}")
    _close(
        plt,
        fig,
        path,
        experiments,
        entries,
        "\nto pruning (solid, filled markers): dense network vs subnetwork trained from m⊙W_k\n(same data order); "
        "to data order (dashed, open markers): the subnetwork under two data orders",
    )


def _rewind_step(experiment_folder: str):
    try:
        return _read(os.path.join(experiment_folder, "settings.json"))["pruning"]["rewind_step"]
    except (tables.ReportError, KeyError):
        return None


@plotting.styled
def plot_rewind_sweep(
    experiments: list[str], table_entries: list[dict], instability_entries: list[dict], path: str
) -> bool:
    """Ticket accuracy vs weights per rewind step beside the tickets' instability vs k (experiments of a sweep)."""
    steps = {os.path.basename(e): _rewind_step(e) for e in experiments}
    if len({k for k in steps.values() if k is not None}) < 2:
        return False
    plt, fig, axes = plotting.subplots(1, 2, 4.4)
    left, right = axes[0]
    for name, k in sorted(steps.items(), key=lambda item: item[1]):
        rows = sorted(
            (e for e in table_entries if e["experiment"] == name and e["branch"] == "main"),
            key=lambda e: -e["density_mean"],
        )
        if rows:
            spread = (
                [100 * (e["final_test_accuracy_std"] or 0.0) for e in rows]
                if any(e["replicates"] > 1 for e in rows)
                else None
            )
            left.errorbar(
                [100 * e["density_mean"] for e in rows],
                [100 * e["final_test_accuracy_mean"] for e in rows],
                yerr=spread,
                marker="o",
                markersize=4,
                capsize=3,
                label=f"IMP, rewind to k = {k}",
            )
    plotting.weights_axis(left, {"all": [e for e in table_entries if e["branch"] == "main"]})
    left.set_ylabel("final test accuracy (%)")
    left.set_title("IMP tickets per rewind step k")
    left.legend()
    ticket = [
        e
        for e in instability_entries
        if e["network"] in ("ticket", "dense") and steps.get(e["experiment"]) == e["rewind_step"]
    ]
    for level in sorted({e["level"] for e in ticket}):
        series = sorted((e for e in ticket if e["level"] == level), key=lambda e: e["rewind_step"])
        right.errorbar(
            [e["rewind_step"] for e in series],
            [100 * e["instability_test_mean"] for e in series],
            yerr=[100 * e["instability_test_std"] for e in series],
            marker="o",
            markersize=4,
            capsize=3,
            label=f"level {level} ({100 * series[0]['density']:.1f}% of weights)",
        )
    right.axhline(100 * STABLE, color="gray", linestyle=":", linewidth=1, label="2%: stable below")
    _step_axis(right, [k for k in steps.values() if k is not None])
    right.set_ylabel("test instability of the ticket (%)")
    right.set_title("instability of each sweep's ticket\nat its own rewind step")
    if ticket:
        right.legend()
    plotting.suptitle(fig, "Rewinding sweep: tickets become matching once they become stable (Frankle et al. 2020)")
    plotting.save(fig, path)
    plt.close(fig)
    return True


def write_analysis_report(
    experiments: list[str], out: str, table_entries: list[dict], plots: bool = True, tolerance: float | None = None
) -> list[str]:
    """Writes the analysis tables and figures that the runs have results for. Returns the file names written."""
    written = []
    instability = aggregate_instability(experiments, tolerance)
    stability = aggregate_stability(experiments)
    if instability:
        atomic.write_text(os.path.join(out, "instability_table.csv"), plotting.csv_text(_csv_rows(instability)))
        atomic.write_text(os.path.join(out, "instability_table.md"), instability_markdown(instability))
        written += ["instability_table.csv", "instability_table.md"]
        if plots:
            plot_error_along_path(instability, os.path.join(out, "error_along_path.png"))
            plot_instability_vs_step(instability, os.path.join(out, "instability_vs_step.png"))
            written += ["error_along_path.png", "instability_vs_step.png"]
    if stability:
        atomic.write_text(os.path.join(out, "stability_table.csv"), plotting.csv_text(_csv_rows(stability)))
        atomic.write_text(os.path.join(out, "stability_table.md"), stability_markdown(stability))
        written += ["stability_table.csv", "stability_table.md"]
        if plots:
            plot_stability_vs_step(stability, os.path.join(out, "stability_vs_step.png"))
            written.append("stability_vs_step.png")
    if plots and plot_rewind_sweep(experiments, table_entries, instability, os.path.join(out, "rewind_sweep.png")):
        written.append("rewind_sweep.png")
    return written
