"""``python -m lottery_tf.report PATH [PATH ...] --out=FOLDER``: every table and figure over run folders.

Writes :mod:`~lottery_tf.reports.tables`' tables and figures, then, where
the runs hold them, the analyses' (:mod:`~lottery_tf.reports.analysis`), the
baselines' (:mod:`~lottery_tf.reports.baselines`) and the deployment table
(:mod:`~lottery_tf.reports.deployment`).
"""

from __future__ import annotations

import math
import os
import sys

from lottery_tf.engine.config import parse_levels
from lottery_tf.engine.errors import ArgumentParser
from lottery_tf.reports import analysis as report_analysis
from lottery_tf.reports import baselines as report_baselines
from lottery_tf.reports import deployment as report_deployment
from lottery_tf.reports.tables import (
    ReportError,
    aggregate,
    check_store,
    experiments,
    format_markdown,
    plot_accuracy_vs_weights,
    plot_curves,
    plot_early_stop_vs_weights,
    write_tables,
)
from lottery_tf.store import output_folders
from lottery_tf.store.reader import format_levels

MAX_MATCHING_TOLERANCE = 100.0  # percentage points: above it every network is "matching"


def main(argv=None) -> int:
    # One line and exit status 2, as every lottery_tf command; an unknown flag is named first.
    parser = ArgumentParser(prog="python -m lottery_tf.report", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="root, experiment (lottery_<hash>) or replicate folders")
    parser.add_argument("--out", required=True, help="folder for the tables and plots")
    parser.add_argument(
        "--curve_levels", default="", help="main-line levels in the curves plot, e.g. 0,3,7,11 (default: all)"
    )
    parser.add_argument("--no_plots", action="store_true", help="write only the tables")
    parser.add_argument(
        "--matching_tolerance",
        type=float,
        default=None,
        help="instability table: a network is matching when its test accuracy is at least the dense "
        "network's minus this many percentage points (default: the dense accuracy's std over "
        "replicates, at least 0.2); a number in [0, 100]",
    )
    args = parser.parse_args(argv)
    args.out = os.path.expanduser(args.out)  # "--out=~/x" reaches us unexpanded: never a folder named "~"
    args.paths = [os.path.expanduser(p) for p in args.paths]
    try:
        levels = parse_levels(args.curve_levels) if args.curve_levels else ()
        if levels and levels[0] < 0:
            raise ValueError(f"level {levels[0]} is below 0")
    except ValueError as error:
        if "invalid literal" in str(error):
            error = "not integers"
        print(
            f"error: --curve_levels: expected levels >= 0 like 0,3,7 or 0-3,7 ({error}), got {args.curve_levels!r}",
            file=sys.stderr,
        )
        return 2
    tolerance = args.matching_tolerance
    if tolerance is not None and not (math.isfinite(tolerance) and 0 <= tolerance <= MAX_MATCHING_TOLERANCE):
        # NaN would make no network matching (every comparison false), a negative one demands more than the
        # dense accuracy, and above 100 points every network matches.
        print(
            f"error: --matching_tolerance: expected percentage points in [0, {MAX_MATCHING_TOLERANCE:g}], "
            f"got {tolerance:g}",
            file=sys.stderr,
        )
        return 2
    problem = output_folders.creatable_problem(args.out) or output_folders.output_problem(args.out, reads=args.paths)
    if problem is not None:  # a report never goes into the run store it reads, nor into any other
        print(f"error: --out: {problem}", file=sys.stderr)
        return 2
    try:
        check_store(experiments(args.paths))  # no number from a damaged, edited or foreign record
        entries = aggregate(args.paths)
        _check_curve_levels(levels, entries)
        write_tables(args.out, entries)
        if not args.no_plots:
            # With the baselines' 20-odd folders one panel would be unreadable: they get their own figure.
            core = [e for e in entries if not report_baselines.is_baseline(e["branch"])]
            plot_accuracy_vs_weights(core, os.path.join(args.out, "accuracy_vs_weights.png"))
            plot_early_stop_vs_weights(core, os.path.join(args.out, "early_stop_vs_weights.png"))
            for experiment in experiments(args.paths):
                plot_curves(experiment, levels, os.path.join(args.out, f"curves_{os.path.basename(experiment)}.png"))
        tolerance = None if args.matching_tolerance is None else args.matching_tolerance / 100
        analysis_files = report_analysis.write_analysis_report(
            experiments(args.paths), args.out, entries, plots=not args.no_plots, tolerance=tolerance
        )
        analysis_files += report_baselines.write_report(
            entries, args.out, plots=not args.no_plots, experiment_folders=experiments(args.paths)
        )
        analysis_files += report_deployment.write_report(experiments(args.paths), args.out, plots=not args.no_plots)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write to {args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")  # nothing drawn stays open in the caller's process
    print(format_markdown(entries))
    if analysis_files:
        print(f"analyses: {', '.join(analysis_files)}")
    print(f"wrote tables{'' if args.no_plots else ' and plots'} to {args.out}")
    return 0


def _check_curve_levels(levels, entries) -> None:
    """Levels no experiment read has main-line results for cannot be drawn (one an experiment lacks is warned of).

    Raises:
        ReportError: Naming ``--curve_levels``, the levels no run has and the levels the runs have.
    """
    have = {e["level"] for e in entries if e["branch"] == "main"}
    missing = sorted(set(levels) - have)
    if missing:
        raise ReportError(
            f"--curve_levels: no run read here has main level(s) {', '.join(map(str, missing))}; the runs have "
            f"main levels {format_levels(have) if have else 'none'}"
        )


if __name__ == "__main__":
    sys.exit(main())
