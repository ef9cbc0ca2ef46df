"""Tables from run folders: one run's summary, and mean/spread over replicates.

Usage::

    python -m lottery_tf.report RUN_DIR [RUN_DIR ...] --out=FOLDER

reads every ``level_LL/<branch>/metrics.json`` under each run folder (one run
folder per seed) and writes ``FOLDER/table.csv`` and ``FOLDER/table.md`` with
mean and standard deviation over the runs for each (level, branch).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
from collections import defaultdict

import numpy as np

from lottery_tf import atomic

COLUMNS = (
    "level", "branch", "density", "final_test_accuracy", "early_stop_iteration",
    "early_stop_test_accuracy", "final_val_accuracy", "wall_seconds",
)


class ReportError(ValueError):
    """A folder holds no runs, or a metrics file cannot be read."""


def collect_rows(run_dir: str) -> list[dict]:
    """Summary rows (no curves) of every finished level/branch in ``run_dir``."""
    rows = []
    for path in sorted(glob.glob(os.path.join(run_dir, "level_*", "*", "metrics.json"))):
        try:
            with open(path) as handle:
                metrics = json.load(handle)
        except (OSError, ValueError) as error:
            raise ReportError(f"cannot read {path}: {error}") from None
        rows.append({k: v for k, v in metrics.items() if k not in ("curves", "iterations")})
    rows.sort(key=lambda r: (r["branch"] != "main", r["branch"], r["level"]))
    return rows


def _csv(rows, columns) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of one run's rows."""
    header = f"{'level':>5} {'branch':>7} {'weights %':>9} {'final test':>10} {'early-stop it':>13} {'es test':>8} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['level']:>5} {r['branch']:>7} {100 * r['density']:>9.2f} "
            f"{r['final_test_accuracy']:>10.4f} {r['early_stop_iteration']:>13} "
            f"{r['early_stop_test_accuracy']:>8.4f} {r['wall_seconds']:>8.0f}"
        )
    return "\n".join(lines)


def write_summary(run_dir: str, rows: list[dict]) -> None:
    """Writes ``summary.csv``, ``summary.json`` and ``summary.md`` of one run."""
    atomic.write_text(os.path.join(run_dir, "summary.csv"), _csv(rows, COLUMNS))
    atomic.write_json(os.path.join(run_dir, "summary.json"), rows)
    atomic.write_text(os.path.join(run_dir, "summary.md"), "```\n" + format_table(rows) + "\n```\n")


def aggregate(run_dirs: list[str]) -> list[dict]:
    """Mean and standard deviation over runs, per (branch, level).

    Raises:
        ReportError: If a folder holds no finished levels.
    """
    groups = defaultdict(list)
    for run_dir in run_dirs:
        rows = collect_rows(run_dir)
        if not rows:
            raise ReportError(f"{run_dir} holds no finished levels (no level_*/*/metrics.json)")
        for row in rows:
            groups[(row["branch"], row["level"])].append(row)
    out = []
    for (branch, level), rows in sorted(groups.items(), key=lambda kv: (kv[0][0] != "main", kv[0])):
        entry = {"branch": branch, "level": level, "runs": len(rows)}
        for key in ("density", "final_test_accuracy", "early_stop_iteration", "early_stop_test_accuracy", "final_val_accuracy"):
            values = np.array([r[key] for r in rows], dtype=np.float64)
            entry[f"{key}_mean"] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def format_markdown(entries: list[dict]) -> str:
    """Markdown table, mean ± standard deviation over runs."""
    lines = [
        "| branch | level | weights remaining % | final test acc | early-stop iteration | test acc at early stop | runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        lines.append(
            f"| {e['branch']} | {e['level']} | {100 * e['density_mean']:.2f} | "
            f"{100 * e['final_test_accuracy_mean']:.2f} ± {100 * e['final_test_accuracy_std']:.2f} | "
            f"{e['early_stop_iteration_mean']:.0f} ± {e['early_stop_iteration_std']:.0f} | "
            f"{100 * e['early_stop_test_accuracy_mean']:.2f} ± {100 * e['early_stop_test_accuracy_std']:.2f} | "
            f"{e['runs']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lottery_tf.report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run folders (one per seed)")
    parser.add_argument("--out", required=True, help="folder for table.csv and table.md")
    args = parser.parse_args(argv)
    try:
        entries = aggregate(args.run_dirs)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    columns = list(entries[0])
    atomic.write_text(os.path.join(args.out, "table.csv"), _csv(entries, columns))
    atomic.write_text(os.path.join(args.out, "table.md"), format_markdown(entries))
    print(format_markdown(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
