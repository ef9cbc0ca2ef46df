"""Health check of every run under a root folder.

Usage::

    python -m lottery_tf.runs ROOT

For each experiment (``lottery_<hash>``) and replicate: the settings that differ
from the defaults, the main-line levels done, the branches done (per level),
what is incomplete (a level with checkpoints or inputs but no ``metrics.json``:
a run that was interrupted and will resume), and what is corrupted (a file that
cannot be read, or a checkpoint whose checksum fails). Exit status 0 if nothing
is corrupted, 1 if something is, 2 if ROOT holds no runs.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from collections import defaultdict

from lottery_tf import atomic, checkpoint, run_dir
from lottery_tf.config import ExperimentConfig
from lottery_tf.pruning import fingerprint


def _ranges(levels) -> str:
    levels = sorted(levels)
    if not levels:
        return "-"
    parts, start, prev = [], levels[0], levels[0]
    for level in levels[1:] + [None]:
        if level is not None and level == prev + 1:
            prev = level
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if level is not None:
            start = prev = level
    return ",".join(parts)


def _non_finite_curves(record) -> list[str]:
    """Names of the curves in a metrics record that hold NaN or infinity."""
    bad = []
    curves = record.get("curves", {}) if isinstance(record, dict) else {}
    for split, metrics in curves.items() if isinstance(curves, dict) else ():
        for metric, values in metrics.items() if isinstance(metrics, dict) else ():
            if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values or ()):
                bad.append(f"{split} {metric}")
    return bad


ANALYSES = ("instability", "stability")


def _check_analysis(level: int, folder: str, done, incomplete: list, corrupted: list) -> None:
    """An analysis folder: its result files (done), copies still training (incomplete), unreadable files."""
    branch = os.path.basename(folder)
    results = sorted(glob.glob(os.path.join(folder, "**", f"{branch}.json"), recursive=True))
    for path in results:
        try:
            with open(path) as handle:
                json.load(handle)
        except (OSError, ValueError) as error:
            corrupted.append(f"{path} is unreadable ({error}); delete it to compute it again")
    if results:
        done[branch].append(level)
    for info in sorted(glob.glob(os.path.join(folder, "**", "branch.json"), recursive=True)):
        copy = os.path.dirname(info)
        corrupted.extend(checkpoint.verify_all(os.path.join(copy, "checkpoints")))
        for npz in glob.glob(os.path.join(copy, "*.npz")):
            try:
                atomic.read_npz(npz)
            except atomic.CorruptFileError as error:
                corrupted.append(str(error))
        if not run_dir.is_done(os.path.dirname(os.path.dirname(folder)), level, os.path.relpath(copy, os.path.dirname(folder))):
            incomplete.append(f"level {level} {os.path.relpath(copy, os.path.dirname(folder))}")


def check_replicate(folder: str) -> dict:
    """Done, incomplete and corrupted items of one replicate folder."""
    done, incomplete, corrupted = defaultdict(list), [], []
    for level_folder in sorted(glob.glob(os.path.join(folder, "level_*"))):
        level = int(os.path.basename(level_folder).split("_")[1])
        for branch_folder in sorted(glob.glob(os.path.join(level_folder, "*"))):
            branch = os.path.basename(branch_folder)
            if branch in ANALYSES:
                _check_analysis(level, branch_folder, done, incomplete, corrupted)
                continue
            metrics = os.path.join(branch_folder, "metrics.json")
            checkpoints = os.path.join(branch_folder, "checkpoints")
            for npz in glob.glob(os.path.join(branch_folder, "*.npz")):
                try:
                    atomic.read_npz(npz)
                except atomic.CorruptFileError as error:
                    corrupted.append(str(error))
            corrupted.extend(checkpoint.verify_all(checkpoints))
            if os.path.exists(metrics):
                problem = run_dir.metrics_problem(metrics)
                if problem:
                    corrupted.append(problem)
                    continue
                with open(metrics) as handle:
                    record = json.load(handle)
                done[branch].append(level)
                masks_path = os.path.join(branch_folder, "masks.npz")
                if os.path.exists(masks_path) and record.get("masks_sha256"):
                    try:
                        found = fingerprint(atomic.read_npz(masks_path))
                    except atomic.CorruptFileError:
                        found = None  # reported below as unreadable
                    if found is not None and found != record["masks_sha256"]:
                        corrupted.append(f"{masks_path} has mask fingerprint {found}, but {metrics} says its level "
                                         f"trained with {record['masks_sha256']}: the masks were changed")
                bad = _non_finite_curves(record)
                if bad:
                    corrupted.append(f"{metrics}: {', '.join(bad)} contain NaN or infinity: the level diverged and "
                                     "is not a result; delete this metrics.json to train the level again")
            elif os.path.isdir(checkpoints) or os.path.exists(os.path.join(branch_folder, "branch.json")):
                incomplete.append(f"level {level} {branch}")
            elif branch == run_dir.MAIN and os.path.exists(os.path.join(branch_folder, "masks.npz")):
                # Masks of the next level, written when the previous level ended.
                if os.path.exists(os.path.join(level_folder, "..", f"level_{level - 1:02d}", "main", "metrics.json")):
                    continue
                incomplete.append(f"level {level} {branch}")
    for npz in glob.glob(os.path.join(folder, "*.npz")) + glob.glob(os.path.join(folder, "rewind_points", "*.npz")):
        try:
            atomic.read_npz(npz)
        except atomic.CorruptFileError as error:
            corrupted.append(str(error))
    main_done = sorted(done.get(run_dir.MAIN, []))
    if main_done:
        gaps = sorted(set(range(main_done[-1] + 1)) - set(main_done))
        for level in gaps:
            corrupted.append(f"{run_dir.level_dir(folder, level, run_dir.MAIN)}/metrics.json is missing, but later "
                             f"levels are done (the next run trains level {level} again)")
        if not os.path.exists(os.path.join(folder, "rewind_point.npz")):
            corrupted.append(f"{os.path.join(folder, 'rewind_point.npz')} is missing: levels after 0 cannot be "
                             "trained or extended")
    locked = os.path.isdir(os.path.join(folder, ".locks")) and os.listdir(os.path.join(folder, ".locks"))
    for leftover in glob.glob(os.path.join(folder, "**", ".tmp-*"), recursive=True):
        if not locked:  # a running process may be writing it
            corrupted.append(f"{leftover} is a leftover temporary file (an interrupted write); delete it")
    return {"done": dict(done), "incomplete": incomplete, "corrupted": corrupted}


def check(root: str) -> list[dict]:
    """A health record per experiment under ``root``."""
    records = []
    for experiment in run_dir.find_experiments(root):
        record = {"experiment": os.path.basename(experiment), "path": experiment, "settings": None,
                  "replicates": {}, "corrupted": []}
        try:
            with open(os.path.join(experiment, "identity.json")) as handle:
                record["settings"] = json.load(handle)
        except (OSError, ValueError) as error:
            record["corrupted"].append(f"{os.path.join(experiment, 'identity.json')} is unreadable ({error})")
        settings_path = os.path.join(experiment, "settings.json")
        if os.path.exists(settings_path):
            try:
                with open(settings_path) as handle:
                    ExperimentConfig.from_dict(json.load(handle))
            except (OSError, ValueError) as error:
                record["corrupted"].append(f"{settings_path} is not a lottery_tf settings file ({error})")
        for replicate in run_dir.replicates_of(experiment):
            record["replicates"][os.path.basename(replicate)] = check_replicate(replicate)
        records.append(record)
    return records


def format_records(records: list[dict]) -> str:
    lines = []
    for record in records:
        settings = record["settings"]
        shown = ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) if settings else "(defaults)"
        lines.append(f"{record['experiment']}  {shown if settings is not None else '(settings unreadable)'}")
        lines.append(f"  path: {record['path']}")
        for problem in record["corrupted"]:
            lines.append(f"  CORRUPTED: {problem}")
        for name, health in record["replicates"].items():
            main = _ranges(health["done"].get(run_dir.MAIN, []))
            branches = "; ".join(f"{b} {_ranges(v)}" for b, v in sorted(health["done"].items()) if b != run_dir.MAIN)
            state = "CORRUPTED" if health["corrupted"] else ("incomplete" if health["incomplete"] else "ok")
            lines.append(f"  {name}: {state}; main levels {main}; branches {branches or '-'}")
            for item in health["incomplete"]:
                lines.append(f"    incomplete (will resume): {item}")
            for problem in health["corrupted"]:
                lines.append(f"    CORRUPTED: {problem}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lottery_tf.runs", description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder holding lottery_<hash> run folders")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    records = check(args.root)
    if not records:
        print(f"error: {args.root} holds no lottery_tf runs (no lottery_*/identity.json)", file=sys.stderr)
        return 2
    print(format_records(records))
    bad = any(r["corrupted"] or any(h["corrupted"] for h in r["replicates"].values()) for r in records)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
