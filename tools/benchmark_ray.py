"""Local executor vs --executor=ray on this machine: wall time of each, side by side, and the files compared.

Runs each study twice in one sitting, first with the local executor (one process, TensorFlow's default
threads), then on a local Ray instance (``--cpus_per_training`` CPUs per training, so on 2 cores with the
default 1: two trainings at once, each worker with one TensorFlow thread), in fresh folders, with
``--deterministic``; checks that every metrics.json (timing aside), masks.npz and analysis result is
bit-identical, and writes the table with the graph's critical-path bound beside it.

    python tools/benchmark_ray.py [--out=results/ray/local_vs_ray.txt] [--studies=smoke,quickstart]

About 12 minutes on 2 cores.
"""

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = {
    "smoke": [
        "--flagfile=flags/smoke.flags",
        "--branch=reinit,random_prune,instability,stability,pai_snip,gmp,lr_rewind",
        "--branch_levels=1,2",
        "--instability_pairs=1",
        "--deterministic",
    ],
    "quickstart": [
        "--flagfile=flags/quickstart.flags",
        "--replicates=2",
        "--branch=reinit,random_prune",
        "--branch_levels=5,10",
        "--deterministic",
    ],
}
TIMING = ("wall_seconds", "record_sha256")  # the seal covers the wall time, so it differs with it


def results_of(folder: str) -> dict:
    """Every metrics.json (timing aside), masks.npz, final_weights.npz and analysis result, by relative path."""
    out = {}
    for path in glob.glob(os.path.join(folder, "lottery_*", "replicate_*", "**", "*"), recursive=True):
        name = os.path.basename(path)
        relative = os.path.relpath(path, folder)
        if name in ("metrics.json", "instability.json", "stability.json"):
            with open(path) as f:
                record = json.load(f)
            for key in TIMING:
                record.pop(key, None)
            out[relative] = record
        elif name in ("masks.npz", "final_weights.npz"):
            with np.load(path) as arrays:
                out[relative] = {key: arrays[key].tobytes() for key in arrays.files}
    return out


def _cli(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "lottery_tf.main", *args], cwd=REPO, capture_output=True, text=True, timeout=3600
    )
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return time.time() - started, result


def _bound(args: list[str], slots: int) -> str:
    _, result = _cli([*args, "--dry_run"])
    graph = next(line for line in result.stdout.splitlines() if line.startswith("study graph:"))
    speedups = next(line for line in result.stdout.splitlines() if line.startswith("ideal speed-up"))
    ideal = re.search(rf"\b{slots}: ([0-9.]+)x", speedups).group(1)
    return graph, ideal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/ray/local_vs_ray.txt")
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--cpus_per_training", type=float, default=1.0)
    options = parser.parse_args()
    cores = os.cpu_count() or 1
    slots = max(1, int(cores // options.cpus_per_training))
    lines = [
        f"# command: python tools/benchmark_ray.py --studies={options.studies} "
        f"--cpus_per_training={options.cpus_per_training:g}",
        f"# machine: {cores} CPU cores, {platform.machine()}, no GPU; {time.strftime('%Y-%m-%d')}; one sitting, "
        "local first, then Ray, each in a fresh folder",
        "# local: one process, TensorFlow's default threads (intra-op = cores); one training at a time",
        f"# ray: a local Ray instance started by the command (included in its wall time); {slots} trainings at once "
        f"(--cpus_per_training={options.cpus_per_training:g}), each worker with "
        f"{max(1, int(options.cpus_per_training))} TensorFlow thread(s)",
        "# bound: the ideal speed-up of the graph with that many trainings at once (steps only; tools/study_graphs.sh)",
        "",
    ]
    for name in options.studies.split(","):
        args = STUDIES[name]
        graph, ideal = _bound(args, slots)
        root = tempfile.mkdtemp(prefix=f"benchmark_ray_{name}_")
        try:
            local_s, _ = _cli([*args, f"--output_dir={root}/local"])
            ray_s, ray_run = _cli(
                [
                    *args,
                    f"--output_dir={root}/ray",
                    "--executor=ray",
                    f"--cpus_per_training={options.cpus_per_training:g}",
                ]
            )
            local_files, ray_files = results_of(f"{root}/local"), results_of(f"{root}/ray")
            different = sorted(k for k in local_files if local_files[k] != ray_files.get(k))
            missing = sorted(set(local_files) ^ set(ray_files))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        tasks = "; ".join(line for line in ray_run.stdout.splitlines() if line.startswith("ray: "))
        lines += [
            f"## {name}: python -m lottery_tf.main {' '.join(args)} [--executor=ray]",
            f"  {graph}",
            f"  local {local_s:.1f} s   ray {ray_s:.1f} s   local/ray {local_s / ray_s:.2f}x   "
            f"(bound with {slots} at once: {ideal}x)",
            f"  {tasks}",
            f"  files compared: {len(local_files)}; different: {len(different)}; in one only: {len(missing)}"
            + (f" ({', '.join((different + missing)[:5])})" if different or missing else ""),
            "",
        ]
        print("\n".join(lines[-6:]), flush=True)
    os.makedirs(os.path.dirname(options.out) or ".", exist_ok=True)
    tmp = f"{options.out}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, options.out)
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
