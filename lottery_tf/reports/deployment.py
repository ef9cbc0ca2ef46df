"""The deployment table: what each exported ticket of an experiment weighs, scores and costs to run.

Reads every ``<experiment>/exports/*/export.json`` (written by
``python -m lottery_tf.export``) and writes ``deployment_table.md`` and
``deployment_table.csv``: per export, its structure, level and density, the
run's test accuracy beside the accuracy each artifact measured by running it,
the ``.tflite`` size raw and gzip-compressed (and as a fraction of the dense
export's, when the experiment exports level 0 too), bytes per kept weight, the
batch-1 latency against the dense export's, and which kernel ran. The careful
latency comparison (alternating runs, several configurations) is
``tools/benchmark_export.py``.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import defaultdict

import numpy as np

from lottery_tf.reports import plotting, tables
from lottery_tf.store import atomic, output_folders


def exports(experiment_folders) -> list[dict]:
    """Every export record of the experiments, sorted by experiment, branch, level."""
    found = []
    for experiment in experiment_folders:
        for path in sorted(glob.glob(os.path.join(experiment, output_folders.EXPORTS, "*", "export.json"))):
            try:
                with open(path) as handle:
                    record = json.load(handle)
            except (OSError, ValueError) as error:
                raise tables.ReportError(f"cannot read {path}: {error}") from None
            record["experiment_name"] = os.path.basename(os.path.normpath(experiment))
            found.append(record)
    return sorted(found, key=lambda r: (r["experiment_name"], r["branch"], r["weights"], r["level"], r["replicate"]))


def _structure(record) -> str:
    s = record.get("structure", {})
    unmet = [name for name, ok in s.get("satisfied", {}).items() if not ok]
    label = tables.structure_label(s)
    return f"{label} (not yet in {', '.join(unmet)})" if unmet and label != "unstructured" else label


def _litert(record, name="ticket.tflite"):
    """The LiteRT file's entry, or None where the export has none (e.g. ``--formats=keras``) or did not write it."""
    entry = record["artifacts"].get(name)
    return entry if entry is not None and "bytes" in entry else None


def _accuracy(entry, label="without_default_delegates"):
    if entry is None:
        return None
    return (entry.get(label) or {}).get("accuracy")


def _checks(record) -> str:
    """What the export's checks found, per LiteRT file: weights stored as the ticket, wrong configurations."""
    notes = []
    for name, entry in record["artifacts"].items():
        if not name.endswith(".tflite"):
            continue
        short = name[len("ticket") : -len(".tflite")].lstrip("_") or "float"
        stored = entry.get("stored_weights")
        if "error" in entry:
            notes.append(f"{short}: not written")
            continue
        if stored is not None and not stored.get("equal_to_ticket", True):
            notes.append(f"{short}: {stored.get('lost', 0)} weights differ")
        if str(entry.get("storage", "")).startswith("dense"):
            notes.append(f"{short}: stored dense (sparse lost {entry['storage'].split('lost ', 1)[-1]})")
        wrong = [
            c
            for c in ("default_delegates", "without_default_delegates")
            if not entry.get(c, {}).get("agrees_with_keras", True)
        ]
        if wrong:
            notes.append(f"{short}: wrong under {' and '.join(w.replace('_', ' ') for w in wrong)}")
    if not notes and any("stored_weights" in e for e in record["artifacts"].values()):
        return "all stored = ticket, all configurations agree"
    return "; ".join(notes)


def rows(records) -> list[dict]:
    dense = {}
    for r in records:
        if r["level"] == 0 and _litert(r):
            dense[(r["experiment_name"], r["replicate"])] = r
    out = []
    for r in records:
        tflite = _litert(r)
        base = dense.get((r["experiment_name"], r["replicate"]))
        row = {
            "experiment": r["experiment_name"],
            "model": r.get("model", ""),
            "structure": _structure(r),
            "branch": r["branch"],
            "level": r["level"],
            "replicate": r["replicate"],
            "weights": r["weights"],
            "density": r["density"],
            "run_accuracy": r["run_test_accuracy"],
            "keras_accuracy": r["artifacts"]["keras"]["accuracy"],
            "tflite_accuracy": _accuracy(tflite),
            "tflite_accuracy_default_delegates": _accuracy(tflite, "default_delegates"),
            "int8_accuracy": _accuracy(_litert(r, "ticket_int8.tflite")),
            "tflite_bytes": tflite["bytes"] if tflite else None,
            "tflite_gzip_bytes": tflite["gzip_bytes"] if tflite else None,
            "int8_bytes": (_litert(r, "ticket_int8.tflite") or {}).get("bytes"),
            "bytes_per_kept_weight": tflite.get("bytes_per_kept_weight") if tflite else None,
            "size_vs_dense": None,
            "latency_vs_dense": None,
            "kernel": "",
            "checks": _checks(r),
        }
        if tflite:
            kernels = {w["kernel"] for w in tflite.get("weights", {}).values()}
            row["kernel"] = "; ".join(sorted(kernels))
        if tflite and base and base is not r:
            dense_file = _litert(base)
            row["size_vs_dense"] = tflite["bytes"] / dense_file["bytes"]
            mine = (tflite.get("without_default_delegates") or {}).get("latency", {}).get("median_ms")
            theirs = (dense_file.get("without_default_delegates") or {}).get("latency", {}).get("median_ms")
            if mine and theirs:
                row["latency_vs_dense"] = mine / theirs
        out.append(row)
    return out


def _pct(value):
    return "" if value is None else f"{100 * value:.2f}"


def _count(value):
    return "" if value is None else f"{value:,}"


def _ratio(value):
    return "" if value is None else f"{value:.2f}"


def format_markdown(table) -> str:
    lines = [
        "| experiment | structure | branch | level | replicate | weights % | run test acc % | Keras acc % | .tflite acc % "
        "| int8 acc % | .tflite bytes | gzip bytes | size / dense | bytes per kept weight | latency / dense (batch 1) "
        "| kernel | checks |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['experiment']} | {r['structure']} | {r['branch']} | {r['level']} | {r['replicate']} | "
            f"{_pct(r['density'])} | {_pct(r['run_accuracy'])} | {_pct(r['keras_accuracy'])} | {_pct(r['tflite_accuracy'])} | "
            f"{_pct(r['int8_accuracy'])} | {_count(r['tflite_bytes'])} | "
            f"{_count(r['tflite_gzip_bytes'])} | {_ratio(r['size_vs_dense'])} | "
            f"{_ratio(r['bytes_per_kept_weight'])} | {_ratio(r['latency_vs_dense'])} | {r['kernel']} | {r['checks']} |"
        )
    lines.append("")
    lines.append(
        ".tflite acc: the float file run by the LiteRT interpreter without its default delegates on the "
        "whole test set; latency: batch 1, one thread, from export.json (tools/benchmark_export.py measures "
        "it carefully); checks: each LiteRT file's stored weights decoded against the ticket (a file whose sparse "
        "encoding would lose weights is stored dense) and each file run under the default delegates and the builtin "
        "kernels against Keras (export.json: stored_weights, agrees_with_keras, run_with)."
    )
    return "\n".join(lines) + "\n"


def by_structure(table) -> dict:
    """(model label, structure) -> rows of mean and std over replicates per level, densest first."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in table:
        if r["branch"] == "main" and r["weights"] == "final" and r["tflite_bytes"]:
            groups[(r["model"], r["structure"].split(" (")[0])][r["level"]].append(r)
    out = {}
    for key, levels in groups.items():
        points = []
        for level, rs in sorted(levels.items()):
            point = {"level": level, "replicates": len(rs)}
            for field in (
                "density",
                "run_accuracy",
                "tflite_accuracy",
                "tflite_bytes",
                "tflite_gzip_bytes",
                "bytes_per_kept_weight",
                "int8_bytes",
                "int8_accuracy",
            ):
                values = np.array([r[field] for r in rs if r[field] is not None], dtype=np.float64)
                point[f"{field}_mean"] = float(values.mean()) if len(values) else None
                point[f"{field}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
            points.append(point)
        out[key] = sorted(points, key=lambda p: -p["density_mean"])
    return out


# Said where an experiment's exports hold nothing the summary and the figure draw.
NOTHING_TO_DRAW = (
    "no export of the main line's final weights holds a LiteRT file (ticket.tflite; python -m lottery_tf.export "
    "writes one with --formats=litert, its default)"
)


def format_summary(series) -> str:
    """Per model, structure and level: the mean (± std) over replicates, sizes against the dense export."""
    if not series:
        return f"Nothing to summarize: {NOTHING_TO_DRAW}. deployment_table.md lists every export.\n"
    lines = [
        "| model | structure | level | weights % | run test acc % | .tflite acc % | int8 acc % | .tflite bytes "
        "| gzip bytes | size / dense | bytes per kept weight | int8 bytes | int8 size / dense int8 | replicates |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def acc(p, field):
        if p[f"{field}_mean"] is None:
            return ""
        std = p[f"{field}_std"]
        return f"{100 * p[f'{field}_mean']:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")

    for (model, structure), points in sorted(series.items()):
        dense = next((p for p in points if p["level"] == 0), None)
        for p in sorted(points, key=lambda p: p["level"]):
            size = "" if dense is None else _ratio(p["tflite_bytes_mean"] / dense["tflite_bytes_mean"])
            int8 = (
                ""
                if dense is None or not p["int8_bytes_mean"] or not dense["int8_bytes_mean"]
                else _ratio(p["int8_bytes_mean"] / dense["int8_bytes_mean"])
            )
            lines.append(
                f"| {model} | {structure} | {p['level']} | {_pct(p['density_mean'])} | {acc(p, 'run_accuracy')} | "
                f"{acc(p, 'tflite_accuracy')} | {acc(p, 'int8_accuracy')} | {_count(round(p['tflite_bytes_mean']))} | "
                f"{_count(round(p['tflite_gzip_bytes_mean']))} | {size} | {_ratio(p['bytes_per_kept_weight_mean'])} | "
                f"{_count(None if p['int8_bytes_mean'] is None else round(p['int8_bytes_mean']))} | {int8} | "
                f"{p['replicates']} |"
            )
    lines.append("")
    lines.append("Means over replicates of deployment_table.md's rows (main line, final weights).")
    return "\n".join(lines) + "\n"


@plotting.styled
def plot_deployment(series, path) -> None:
    """Two panels per model: the LiteRT file's test accuracy, and its size (float and int8), against the
    percent of weights remaining, one line per structure (mean ± std over replicates), each structure in
    :func:`~lottery_tf.reports.plotting.structure_style`'s colour."""
    models = sorted({model for model, _ in series})
    plt, fig, axes = plotting.subplots(len(models), 2, 4.0)
    for row, model in enumerate(models):
        mine = {structure: points for (m, structure), points in series.items() if m == model}
        accuracy, size = axes[row]
        for structure, points in sorted(mine.items()):
            x = [100 * p["density_mean"] for p in points]
            # A file the interpreter could not run has no accuracy: its size is drawn, its accuracy is not.
            scored = [p for p in points if p["tflite_accuracy_mean"] is not None]
            spread = [100 * (p["tflite_accuracy_std"] or 0.0) for p in scored]
            if scored:
                accuracy.errorbar(
                    [100 * p["density_mean"] for p in scored],
                    [100 * p["tflite_accuracy_mean"] for p in scored],
                    yerr=spread if any(spread) else None,
                    markersize=4,
                    capsize=3,
                    label=structure,
                    **plotting.structure_style(structure),
                )
            style = plotting.structure_style(structure)
            style.pop("linestyle")
            line = size.plot(
                x,
                [p["tflite_bytes_mean"] / 1e3 for p in points],
                markersize=4,
                label=f"{structure}, float32",
                **style,
            )[0]
            if all(p["int8_bytes_mean"] for p in points):
                size.plot(
                    x,
                    [p["int8_bytes_mean"] / 1e3 for p in points],
                    marker=style["marker"],
                    markerfacecolor="white",
                    markersize=4,
                    linestyle="--",
                    color=line.get_color(),
                    label=f"{structure}, int8",
                )
        axis_series = {s: [{"density_mean": p["density_mean"]} for p in ps] for s, ps in mine.items()}
        for ax in (accuracy, size):
            plotting.weights_axis(ax, axis_series)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        replicates = max(p["replicates"] for ps in mine.values() for p in ps)
        spread_words = "one replicate" if replicates == 1 else f"mean ± std over {replicates} replicates"
        accuracy.set_ylabel(".tflite test accuracy (%)")
        accuracy.set_title(f"{model}: the LiteRT file's test accuracy,\n{spread_words}")
        size.set_yscale("log")
        size.set_ylabel(".tflite file size (kB, log scale)")
        size.set_title(f"{model}: file size with sparse storage\n(dashed, open markers: int8 weights)")
    plotting.save(fig, path)


def write_report(experiment_folders, out: str, plots: bool = True) -> list[str]:
    """Writes the deployment table (and its figure) if any experiment has exports. Returns the files written.

    The figure draws the LiteRT files of the main line's final weights; where no export has one (only
    ``--formats=keras``, say), it is not drawn, and a ``note:`` line on stderr says why.
    """
    records = exports(experiment_folders)
    if not records:
        return []
    table = rows(records)
    atomic.write_text(os.path.join(out, "deployment_table.csv"), plotting.csv_text(table))
    atomic.write_text(os.path.join(out, "deployment_table.md"), format_markdown(table))
    series = by_structure(table)  # the summary and the figure draw the same means
    atomic.write_text(os.path.join(out, "deployment_summary.md"), format_summary(series))
    written = ["deployment_table.md", "deployment_table.csv", "deployment_summary.md"]
    if plots and series:
        plot_deployment(series, os.path.join(out, "deployment_vs_weights.png"))
        written.append("deployment_vs_weights.png")
    elif plots:
        print(f"note: deployment_vs_weights.png not drawn: {NOTHING_TO_DRAW}", file=sys.stderr)
    return written
