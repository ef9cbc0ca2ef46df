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

from lottery_tf.reports import plotting, tables
from lottery_tf.store import atomic


def exports(experiment_folders) -> list[dict]:
    """Every export record of the experiments, sorted by experiment, branch, level."""
    found = []
    for experiment in experiment_folders:
        for path in sorted(glob.glob(os.path.join(experiment, "exports", "*", "export.json"))):
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
    note = f" (not yet in {', '.join(unmet)})" if unmet else ""
    if s.get("block"):
        return f"{s['block'][0]}x{s['block'][1]} blocks{note}"
    if s.get("n_m"):
        return f"{s['n_m'][0]}:{s['n_m'][1]}{note}"
    return "unstructured"


def _litert(record, name="ticket.tflite"):
    return record["artifacts"].get(name)


def _accuracy(entry, label="without_default_delegates"):
    if entry is None:
        return None
    return (entry.get(label) or {}).get("accuracy")


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
        "| kernel |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['experiment']} | {r['structure']} | {r['branch']} | {r['level']} | {r['replicate']} | "
            f"{_pct(r['density'])} | {_pct(r['run_accuracy'])} | {_pct(r['keras_accuracy'])} | {_pct(r['tflite_accuracy'])} | "
            f"{_pct(r['int8_accuracy'])} | {_count(r['tflite_bytes'])} | "
            f"{_count(r['tflite_gzip_bytes'])} | {_ratio(r['size_vs_dense'])} | "
            f"{_ratio(r['bytes_per_kept_weight'])} | {_ratio(r['latency_vs_dense'])} | {r['kernel']} |"
        )
    lines.append("")
    lines.append(
        ".tflite acc: the float file run by the LiteRT interpreter without its default delegates on the "
        "whole test set; latency: batch 1, one thread, from export.json (tools/benchmark_export.py measures "
        "it carefully)."
    )
    return "\n".join(lines) + "\n"


def write_report(experiment_folders, out: str) -> list[str]:
    """Writes the deployment table if any experiment has exports. Returns the files written."""
    records = exports(experiment_folders)
    if not records:
        return []
    table = rows(records)
    atomic.write_text(os.path.join(out, "deployment_table.csv"), plotting.csv_text(table))
    atomic.write_text(os.path.join(out, "deployment_table.md"), format_markdown(table))
    return ["deployment_table.md", "deployment_table.csv"]
