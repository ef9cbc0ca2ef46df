"""Tables and figures over run folders, as the papers show them.

Each path is a root folder, an experiment folder (``lottery_<hash>``) or a
replicate folder. :func:`aggregate` gives, per experiment, branch and level,
the mean and standard deviation over replicates of the density, final test
accuracy, early-stopping iteration (minimum validation loss) and test
accuracy at early stopping; :func:`write_tables` writes them as ``table.csv``
and ``table.md``. The figures: ``accuracy_vs_weights.png`` (test accuracy at
early stopping and final test accuracy vs percent of weights remaining, log x
axis, error bars over replicates, one line per branch, the dense network as a
reference line), ``early_stop_vs_weights.png`` and ``curves_<experiment>.png``
(test accuracy over training for selected main-line levels). The command that
writes them all is :mod:`lottery_tf.reports.cli` (``python -m lottery_tf.report``).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import defaultdict

import numpy as np

from lottery_tf.engine import run_dir
from lottery_tf.reports import plotting
from lottery_tf.store import atomic
from lottery_tf.store import reader as store

STATS = ("density", "final_test_accuracy", "early_stop_iteration", "early_stop_test_accuracy", "final_val_accuracy")


class ReportError(ValueError):
    """A folder holds no runs, or a metrics file cannot be read."""


def read_metrics(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None


def collect_rows(replicate_folder: str, with_curves: bool = False) -> list[dict]:
    """Every finished level/branch of one replicate (curves only if asked)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(replicate_folder, "level_*", "*", "metrics.json"))):
        metrics = read_metrics(path)
        # The store's verdict: a record edited, or copied from another experiment, replicate or level, is not shown.
        problem = store.metrics_problem(path)
        if problem:
            raise ReportError(f"{path} {problem}; check the run with python -m lottery_tf.runs")
        if not isinstance(metrics, dict) or any(k not in metrics for k in ("branch", "level", *STATS)):
            raise ReportError(f"{path} is not a complete metrics record; check the run with python -m lottery_tf.runs")
        iterations = metrics.get("iterations") or [None]
        metrics["last_iteration"] = iterations[-1]
        if not with_curves:
            metrics = {k: v for k, v in metrics.items() if k not in ("curves", "iterations")}
        rows.append(metrics)
    return rows


def check_store(experiment_folders: list[str]) -> None:
    """The store's verdict on what a report reads, with the health check's line, word for word.

    A report reads the levels' ``metrics.json`` and the analysis results: a damaged or edited one, a record
    of another experiment, replicate or level, or a replicate folder it cannot read is refused. Damage to
    files it does not read (trained weights, masks) cannot change a number it shows; the health check
    (``python -m lottery_tf.runs``) names it, and the export refuses it.

    Raises:
        ReportError: With the health check's line.
    """
    for folder in experiment_folders:
        report = store.inspect_experiment(folder)
        for problem in [p for r in report.replicates.values() for p in r.problems]:
            reads = problem.kind in ("metrics", "result") and os.path.exists(
                problem.path
            )  # a level not run is no number
            if problem.action != store.NOTE and (reads or problem.kind in ("foreign", "unreadable")):
                raise ReportError(problem.line())


def experiments(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        experiments = run_dir.find_experiments(path)
        if not experiments:
            raise ReportError(f"{path} holds no lottery_tf runs (no lottery_*/identity.json)")
        found.extend(e for e in experiments if e not in found)
    return found


def aggregate(paths: list[str]) -> list[dict]:
    """Mean and sample standard deviation over replicates, per experiment, branch, level.

    Raises:
        ReportError: If a path holds no runs or no finished level.
    """
    out = []
    for experiment in experiments(paths):
        groups = defaultdict(list)
        for replicate in run_dir.replicates_of(experiment):
            for row in collect_rows(replicate):
                groups[(row["branch"], row["level"])].append(row)
        name = os.path.basename(experiment)
        settings = _settings(experiment)  # read once for both names
        title = experiment_title(experiment, settings)
        label = experiment_label(experiment, settings)
        for (branch, level), rows in sorted(groups.items(), key=lambda kv: (kv[0][0] != "main", kv[0])):
            entry = {"experiment": name, "branch": branch, "level": level, "replicates": len(rows)}
            for key in STATS:
                values = np.array([r[key] for r in rows], dtype=np.float64)
                entry[f"{key}_mean"] = float(values.mean())
                # One replicate has no spread: None (an empty CSV cell), not 0.0.
                entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
            # An "early stop" at the last evaluation is no early stop: the validation loss was still falling.
            entry["early_stop_at_last_iteration"] = sum(r["early_stop_iteration"] == r["last_iteration"] for r in rows)
            entry["title"] = title
            entry["label"] = label
            out.append(entry)
    if not out:
        raise ReportError(f"{', '.join(paths)}: no finished levels (no level_*/*/metrics.json)")
    return out


def format_markdown(entries: list[dict]) -> str:
    """Markdown table, mean ± standard deviation over replicates."""
    lines = [
        "| experiment | branch | level | weights remaining % | final test acc % | early-stop iteration | test acc at early stop % | replicates |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    at_last = False

    def cell(e, key, scale, digits):
        mean = f"{scale * e[f'{key}_mean']:.{digits}f}"
        # One replicate has no spread: print the value alone, not "± 0".
        return mean if e["replicates"] < 2 else f"{mean} ± {scale * e[f'{key}_std']:.{digits}f}"

    for e in entries:
        stop = cell(e, "early_stop_iteration", 1, 0)
        if e.get("early_stop_at_last_iteration"):
            at_last = True
            count = e["early_stop_at_last_iteration"]
            stop += " (last)" if count == e["replicates"] else f" ({count} of {e['replicates']} at last)"
        lines.append(
            f"| {e['experiment']} | {e['branch']} | {e['level']} | {100 * e['density_mean']:.2f} | "
            f"{cell(e, 'final_test_accuracy', 100, 2)} | {stop} | "
            f"{cell(e, 'early_stop_test_accuracy', 100, 2)} | {e['replicates']} |"
        )
    if at_last:
        lines.append("")
        lines.append(
            "(last): the minimum validation loss was at the last evaluation, so the level did not stop "
            "early: its validation loss was still falling."
        )
    return "\n".join(lines) + "\n"


def write_tables(folder: str, entries: list[dict], prefix: str = "table") -> None:
    """Writes ``<prefix>.csv`` and ``<prefix>.md`` atomically."""
    atomic.write_text(os.path.join(folder, f"{prefix}.csv"), plotting.csv_text(entries))
    atomic.write_text(os.path.join(folder, f"{prefix}.md"), format_markdown(entries))


def structure_label(pruning: dict) -> str:
    """``"1x4 blocks"``, ``"2:4"`` or ``"unstructured"``, from a run's (or an export's) pruning structure."""
    if pruning.get("block"):
        return f"{pruning['block'][0]}x{pruning['block'][1]} blocks"
    if pruning.get("n_m"):
        return f"{pruning['n_m'][0]}:{pruning['n_m'][1]}"
    return "unstructured"


def _settings(experiment_folder: str) -> dict | None:
    try:
        with open(os.path.join(experiment_folder, "settings.json")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def experiment_label(experiment_folder: str, settings: dict | None = None) -> str:
    """``"lottery_<hash> (lenet_300_100, 1x4 blocks)"``: what tells experiments apart in a figure's panels."""
    name = os.path.basename(experiment_folder)
    settings = _settings(experiment_folder) if settings is None else settings
    try:
        return f"{name} ({settings['model']['name']}, {structure_label(settings['pruning'])})"
    except (KeyError, IndexError, TypeError):
        return name


def experiment_title(experiment_folder: str, settings: dict | None = None) -> str:
    """``"lenet_300_100 on fashion_mnist (lottery_<hash>)"`` from the run's settings."""
    name = os.path.basename(experiment_folder)
    settings = _settings(experiment_folder) if settings is None else settings
    try:
        p = settings["pruning"]
        rule = f"{p['method']} {100 * p['fraction']:g}% per level, rewind to iteration {p['rewind_step']}"
        if structure_label(p) != "unstructured":
            rule += f", {structure_label(p)}"
        return f"{settings['model']['name']} on {settings['data']['name']} ({rule}; {name})"
    except (KeyError, TypeError):
        return name


def _series(entries, experiment):
    by_branch = defaultdict(list)
    for e in entries:
        if e["experiment"] == experiment:
            by_branch[e["branch"]].append(e)
    return {b: sorted(rows, key=lambda e: -e["density_mean"]) for b, rows in by_branch.items()}


@plotting.styled
def plot_accuracy_vs_weights(entries, path):
    plt, fig, axes, experiments, titles = plotting.grid(entries, 2, 4.2)
    labels = {e["experiment"]: e.get("label", e["experiment"]) for e in entries}
    for row, experiment in enumerate(experiments):
        series = _series(entries, experiment)
        for col, (key, title) in enumerate(
            (
                ("early_stop_test_accuracy", "test accuracy at early stopping"),
                ("final_test_accuracy", "final test accuracy"),
            )
        ):
            ax = axes[row][col]
            dense = [e for e in series.get("main", []) if e["level"] == 0]
            if dense:
                plotting.dense_line(ax, 100 * dense[0][f"{key}_mean"])
            for branch, rows in series.items():
                x = [100 * e["density_mean"] for e in rows]
                y = [100 * e[f"{key}_mean"] for e in rows]
                style, note = plotting.line_style(rows)
                ax.errorbar(
                    x,
                    y,
                    yerr=plotting.spread(rows, key, 100),
                    markersize=6 if style == "none" else 4,  # markers alone must be seen
                    capsize=3,
                    label=plotting.branch_label(branch) + note,
                    **{**plotting.branch_style(branch), **({"linestyle": style} if style == "none" else {})},
                )
            plotting.weights_axis(ax, series)
            ax.set_ylabel(f"{title} (%)")
            heading = f"{title},\n{plotting.over_replicates(series)}"
            ax.set_title(heading if len(experiments) == 1 else f"{labels[experiment]}:\n{heading}")
        # Both panels on one y range, so they can be compared by eye.
        low = min(axes[row][c].get_ylim()[0] for c in range(2))
        high = max(axes[row][c].get_ylim()[1] for c in range(2))
        for c in range(2):
            axes[row][c].set_ylim(low, high)
    plotting.shared_legend(fig, fig.axes)
    if len(experiments) == 1:
        plotting.suptitle(fig, titles[experiments[0]])
    plotting.save(fig, path)
    plt.close(fig)


@plotting.styled
def plot_early_stop_vs_weights(entries, path):
    plt, fig, axes, experiments, titles = plotting.grid(entries, 1, 4.4, width=7.5)
    for row, experiment in enumerate(experiments):
        ax = axes[row][0]
        series = _series(entries, experiment)
        at_last = []
        for branch, rows in series.items():
            style, note = plotting.line_style(rows)
            line = ax.errorbar(
                [100 * e["density_mean"] for e in rows],
                [e["early_stop_iteration_mean"] for e in rows],
                yerr=plotting.spread(rows, "early_stop_iteration"),
                markersize=6 if style == "none" else 4,
                capsize=3,
                label=plotting.branch_label(branch) + note,
                **{**plotting.branch_style(branch), **({"linestyle": style} if style == "none" else {})},
            )
            last = [e for e in rows if e.get("early_stop_at_last_iteration") == e["replicates"]]
            if last:
                at_last.append(
                    ax.plot(
                        [100 * e["density_mean"] for e in last],
                        [e["early_stop_iteration_mean"] for e in last],
                        linestyle="none",
                        marker="o",
                        markersize=9,
                        markerfacecolor="none",
                        markeredgecolor=line[0].get_color(),
                    )[0]
                )
        if at_last:
            at_last[0].set_label("ringed: stopped at the last evaluation (not an early stop)")
        plotting.weights_axis(ax, series)
        ax.set_ylabel("early-stopping iteration\n(minimum validation loss;\nlower = learns faster)")
        ax.set_title(
            f"Iteration of minimum validation loss, {plotting.over_replicates(series)}\n{titles[experiment]}",
            fontsize=9,
        )
    plotting.shared_legend(fig, fig.axes)
    plotting.save(fig, path)
    plt.close(fig)


@plotting.styled
def plot_curves(experiment_folder, levels, path):
    """Test accuracy over iterations for selected main-line levels (mean over replicates)."""
    plt = plotting.figure()
    curves = defaultdict(list)
    densities = {}
    available = set()
    for replicate in run_dir.replicates_of(experiment_folder):
        for row in collect_rows(replicate, with_curves=True):
            if row["branch"] != "main":
                continue
            available.add(row["level"])
            if not levels or row["level"] in levels:
                curves[row["level"]].append((row["iterations"], row["curves"]["test"]["accuracy"]))
                densities[row["level"]] = row["density"]
    missing = sorted(set(levels) - set(curves))
    if missing:
        print(
            f"warning: --curve_levels: level(s) {', '.join(map(str, missing))} not found in {experiment_folder} "
            f"(it has main levels {store.format_levels(available) if available else 'none'}); left out of the plot",
            file=sys.stderr,
        )
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    for level in sorted(curves):
        runs = curves[level]
        length = min(len(acc) for _, acc in runs)
        iterations = runs[0][0][:length]
        mean = np.mean([acc[:length] for _, acc in runs], axis=0)
        ax.plot(iterations, 100 * mean, linewidth=1, label=f"level {level}: {100 * densities[level]:.1f}% of weights")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("test accuracy (%)")
    # The y range starts just below the lowest point after the first evaluation (the
    # first is near chance and would flatten the rest); clipped starts are said in the label.
    low = min(
        100 * np.min(np.mean([a[: min(len(x) for _, x in r)] for _, a in r], axis=0)[1:]) for r in curves.values()
    )
    bottom = max(0, low - 1)
    ax.set_ylim(bottom, None)
    clipped = any(100 * np.mean([acc[0] for _, acc in runs]) < bottom for runs in curves.values())
    if clipped:
        ax.set_ylabel(f"test accuracy (%)\n(first evaluation, below {bottom:.0f}%, off the axis)")
    ax.grid(True, alpha=0.3)
    count = max(len(runs) for runs in curves.values())
    over = "one replicate" if count == 1 else f"mean over {count} replicates"
    ax.set_title(
        f"Lottery tickets: test accuracy during training at selected levels ({over})\n"
        f"{experiment_title(experiment_folder)}",
        fontsize=9,
    )
    ax.legend()
    plotting.save(fig, path)
    plt.close(fig)
    return True
