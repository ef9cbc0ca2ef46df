"""Compares two run roots file by file: every array of every .npz bit for bit, every .json equal but timings.

Usage: python tools/compare_runs.py BEFORE_ROOT AFTER_ROOT [--out=FILE]

Used to show that a change to the library leaves the command line's results
bit-identical: run the same flagfiles with the old and the new code into two
roots, then compare (the roots differ, so `output_dir` is left out too). Checkpoints (``checkpoints/``), locks, logs and
TensorBoard files are left out (they record times and hosts); in
``metrics.json`` the wall-clock fields (and the seal, which covers them) are left out. Exit status 1 if any
compared file differs or exists on one side only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

SKIPPED_DIRS = {"checkpoints", "tensorboard", "exports"}
TIMING_KEYS = {
    "wall_seconds",
    "record_sha256",
    "seconds",
    "started",
    "finished",
    "host",
    "pid",
    "time",
    "timestamp",
    "output_dir",
}


def _files(root: str) -> set[str]:
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith((".npz", ".json")) and not name.startswith((".", "lock")):
                found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS and "wall" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def same(a: str, b: str) -> bool:
    if a.endswith(".npz"):
        with np.load(a) as x, np.load(b) as y:
            return sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)
    return _without_timings(json.load(open(a))) == _without_timings(json.load(open(b)))


def compare(before: str, after: str) -> tuple[list[str], list[str], int]:
    """(differing files, files on one side only, files compared)."""
    left, right = _files(before), _files(after)
    differ = [p for p in sorted(left & right) if not same(os.path.join(before, p), os.path.join(after, p))]
    return differ, sorted(left ^ right), len(left & right)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    for root in (args.before, args.after):
        if not os.path.isdir(root):
            print(f"error: {root}: not a folder", file=sys.stderr)
            return 2
    differ, alone, count = compare(args.before, args.after)
    lines = [f"compared {count} files (.npz arrays bit for bit, .json without timings)"]
    lines += [f"differs: {p}" for p in differ] + [f"on one side only: {p}" for p in alone]
    lines.append("identical" if not differ and not alone else f"{len(differ) + len(alone)} problem(s)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    return 0 if not differ and not alone else 1


if __name__ == "__main__":
    sys.exit(main())
