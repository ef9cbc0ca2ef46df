"""``python -m lottery_tf.reports.redraw FOLDER [FOLDER ...]``: a report's figures again, from its own tables.

A report folder (what ``python -m lottery_tf.report ... --out=FOLDER`` wrote) keeps its tables after the
run folders it was made from are gone. This draws again, in place and with the current drawing code, the
figures whose every point is in those tables:

* ``accuracy_vs_weights.png`` and ``early_stop_vs_weights.png`` from ``table.csv`` (a table written before
  the ``early_stop_at_last_iteration`` column existed draws no rings: which levels stopped at their last
  evaluation is not in it);
* ``baselines_vs_weights.png`` from ``table.csv``, where it holds baseline branches;
* ``instability_vs_step.png`` from ``instability_table.csv`` and ``stability_vs_step.png`` from
  ``stability_table.csv`` (their titles from ``table.csv``);
* ``deployment_vs_weights.png`` from ``deployment_table.csv``.

The training curves (``curves_*.png``), the error along the interpolation path (``error_along_path.png``)
and the rewinding sweep (``rewind_sweep.png``) are drawn from what only the run folders hold (per-evaluation
curves, per-point path errors, each experiment's rewind step): they are left as they are, and the command
says so.
"""

from __future__ import annotations

import csv
import os
import sys

from lottery_tf.engine.errors import ArgumentParser
from lottery_tf.reports import analysis, baselines, deployment, tables

NOT_REDRAWN = {
    "curves_": "the per-evaluation test accuracy is in the run folders' metrics.json only",
    "error_along_path.png": "the test error at each point of the path is in the run folders' instability.json only",
    "rewind_sweep.png": "each experiment's rewind step is in the run folders' settings.json only",
}


def _value(text: str):
    """A CSV cell as the report wrote it: empty = None, then int, float, bool, or the text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def read_csv(path: str) -> list[dict]:
    """The rows of a table the report wrote, with its numbers as numbers.

    Raises:
        tables.ReportError: If the file cannot be read or holds no rows.
    """
    try:
        with open(path, newline="") as handle:
            rows = [{key: _value(value) for key, value in row.items()} for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise tables.ReportError(f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    if not rows:
        raise tables.ReportError(f"{path}: holds no rows")
    return rows


def redraw(folder: str) -> tuple[list[str], list[str]]:
    """Draws ``folder``'s figures from its tables (see the module docstring).

    Args:
        folder: A report folder holding ``table.csv``.

    Returns:
        (the figures drawn, ``"<file>: <why>"`` for each figure there that cannot be drawn from the tables).

    Raises:
        tables.ReportError: If ``folder`` has no readable ``table.csv``.
    """
    entries = read_csv(os.path.join(folder, "table.csv"))
    drawn = []
    core = [e for e in entries if not baselines.is_baseline(e["branch"])]
    if core:
        tables.plot_accuracy_vs_weights(core, os.path.join(folder, "accuracy_vs_weights.png"))
        tables.plot_early_stop_vs_weights(core, os.path.join(folder, "early_stop_vs_weights.png"))
        drawn += ["accuracy_vs_weights.png", "early_stop_vs_weights.png"]
    experiments = baselines.baseline_experiments(entries)
    titles = {e["experiment"]: e.get("title") or e["experiment"] for e in entries}
    for experiment in experiments:
        name = "baselines_vs_weights.png" if len(experiments) == 1 else f"baselines_vs_weights_{experiment}.png"
        baselines.plot(entries, experiment, os.path.join(folder, name), titles[experiment])
        drawn.append(name)
    for table, plot, name in (
        ("instability_table.csv", analysis.plot_instability_vs_step, "instability_vs_step.png"),
        ("stability_table.csv", analysis.plot_stability_vs_step, "stability_vs_step.png"),
    ):
        if os.path.exists(os.path.join(folder, table)):
            rows = read_csv(os.path.join(folder, table))
            for row in rows:
                row["title"] = titles.get(row["experiment"], row["experiment"])
            plot(rows, os.path.join(folder, name))
            drawn.append(name)
    if os.path.exists(os.path.join(folder, "deployment_table.csv")):
        series = deployment.by_structure(read_csv(os.path.join(folder, "deployment_table.csv")))
        if series:
            deployment.plot_deployment(series, os.path.join(folder, "deployment_vs_weights.png"))
            drawn.append("deployment_vs_weights.png")
    left = [
        f"{name}: {why}"
        for name in sorted(os.listdir(folder))
        for prefix, why in NOT_REDRAWN.items()
        if name.endswith(".png") and name.startswith(prefix)
    ]
    return drawn, left


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m lottery_tf.reports.redraw", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", help="report folders (each holding the report's table.csv)")
    args = parser.parse_args(argv)
    try:
        for folder in args.folders:  # every folder's table first: a bad folder is named before anything is drawn
            read_csv(os.path.join(os.path.expanduser(folder), "table.csv"))
        for folder in args.folders:
            drawn, left = redraw(os.path.expanduser(folder))
            print(f"{folder}: drew {', '.join(drawn)}")
            for line in left:
                print(f"{folder}: not redrawn: {line}")
    except tables.ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write: {error.strerror or error}", file=sys.stderr)
        return 2
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
