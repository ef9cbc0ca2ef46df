"""Health check of every run under a root folder.

Usage::

    python -m lottery_tf.runs ROOT

For each experiment (``lottery_<hash>``) and replicate: the settings that differ
from the defaults, the main-line levels done and the level trained next, the
branches done (per level), what is in progress (a run continues it), every
lock (held, stale or unreadable), and every problem with what a run does about
it: train again, rebuild (and check against the fingerprint the run recorded),
or refuse, naming what to delete or restore. The store is read by
:mod:`lottery_tf.store.reader`, the code the runner itself uses, so the two agree.
Exit status 0 if there is no problem, 1 if there is one, 2 if ROOT holds no runs.
"""

from __future__ import annotations

import os
import sys

from lottery_tf.engine import run_dir
from lottery_tf.engine.config import experiment_hash_of
from lottery_tf.engine.errors import ArgumentParser
from lottery_tf.store import reader as store


def check(root: str) -> list[store.ExperimentReport]:
    """A report per experiment under ``root``."""
    return [
        store.inspect_experiment(folder, folder_hash=experiment_hash_of) for folder in run_dir.find_experiments(root)
    ]


_LABEL = {
    store.RETRAIN: "DAMAGED",
    store.REBUILD: "DAMAGED",
    store.REBUILD_WHEN_NEEDED: "DAMAGED",
    store.REFUSE: "DAMAGED",
    store.NOTE: "note",
}


def _problem_line(problem: store.Problem) -> str:
    """``DAMAGED: <file>: <what>; <what a run does>``: the line a run that refuses prints, after ``error:``."""
    return f"{_LABEL[problem.action]}: {problem.line()}"


def format_records(reports: list[store.ExperimentReport]) -> str:
    lines = []
    for report in reports:
        settings = report.identity
        shown = ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) if settings else "(defaults)"
        lines.append(f"{os.path.basename(report.folder)}  {shown if settings is not None else '(settings unreadable)'}")
        lines.append(f"  path: {report.folder}")
        for problem in report.problems:
            lines.append(f"  {_problem_line(problem)}")
        for name, health in report.replicates.items():
            main = store.format_levels(health.done.get(store.MAIN, []))
            branches = "; ".join(
                f"{b} {store.format_levels(v)}" for b, v in sorted(health.done.items()) if b != store.MAIN
            )
            serious = [p for p in health.problems if p.action != store.NOTE]
            state = "DAMAGED" if serious else ("incomplete" if health.incomplete else "ok")
            lines.append(
                f"  {name}: {state}; main levels {main} (next: level {health.next_main_level()}); "
                f"branches {branches or '-'}"
            )
            for item in health.incomplete:
                lines.append(f"    in progress (a run continues it): {item}")
            for lock in health.locks:
                if lock.state == "live":
                    lines.append(f"    lock: {lock.line()}")
            for problem in health.problems:
                lines.append(f"    {_problem_line(problem)}")
    return "\n".join(lines)


def has_problems(reports: list[store.ExperimentReport]) -> bool:
    """Whether anything is damaged (notes, such as a stale lock, are not damage)."""
    serious = lambda problems: any(p.action != store.NOTE for p in problems)  # noqa: E731
    return any(serious(r.problems) or any(serious(h.problems) for h in r.replicates.values()) for r in reports)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m lottery_tf.runs", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder holding lottery_<hash> run folders")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    reports = check(args.root)
    if not reports:
        print(f"error: {args.root} holds no lottery_tf runs (no lottery_*/identity.json)", file=sys.stderr)
        return 2
    print(format_records(reports))
    return 1 if has_problems(reports) else 0


if __name__ == "__main__":
    sys.exit(main())
