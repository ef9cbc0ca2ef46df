"""Local executor vs --executor=ray on this machine: where Ray's fixed cost goes, wall times, files compared.

First the fixed cost, measured apart: starting a local Ray instance, a worker's first task, TensorFlow's
import in a worker. Then, per study, in one sitting and fresh folders:

- speed: the local executor (one process, TensorFlow's default threads, XLA as configured) against a local
  Ray instance (``--cpus_per_training`` CPUs per training: on 2 cores with the default 1, two trainings at
  once, one TensorFlow thread each), both without ``--deterministic``, with the graph's bound beside it;
- identity (``smoke``): both again with ``--deterministic`` (one TensorFlow thread in every process), and
  every metrics.json (timing aside), masks.npz and analysis result compared bit for bit.

    python tools/benchmark_ray.py [--out=results/ray/local_vs_ray.txt] [--studies=smoke,quickstart|none]
        [--before=<commit>] [--rounds=3]

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
    ],
    "quickstart": [
        "--flagfile=flags/quickstart.flags",
        "--replicates=2",
        "--branch=reinit,random_prune",
        "--branch_levels=5,10",
    ],
}
IDENTITY = ("smoke",)  # studies also run with --deterministic on both executors and compared file by file

# Run in a fresh process: Ray's start, a worker's first (empty) task, TensorFlow's import in a worker.
_PHASES = """
import json, logging, os, time
import ray
started = time.time()
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # as lottery_tf starts it: the workers inherit it (no runtime_env)
ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
init = time.time() - started

@ray.remote(num_cpus=1)
def empty():
    return os.getpid()

@ray.remote(num_cpus=1)
def imports():
    started = time.time()
    import tensorflow  # noqa: F401
    tf_seconds = time.time() - started
    from lottery_tf.engine import experiment  # noqa: F401
    return time.time() - started - tf_seconds, tf_seconds

started = time.time()
ray.get(empty.remote())
worker = time.time() - started
engine, tf_seconds = ray.get(imports.remote())
started = time.time()
ray.shutdown()
shutdown = time.time() - started
started = time.time()
import tensorflow  # noqa: F401
local_tf = time.time() - started
print(json.dumps({"init": init, "worker": worker, "tf": tf_seconds, "engine": engine, "shutdown": shutdown,
                  "local_tf": local_tf}))
"""
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


FIXED = ["--flagfile=flags/smoke.flags", "--levels=0", "--branch=", "--branch_levels=", "--iterations=50"]


def fixed_cost(codes: list, rounds: int) -> dict:
    """Median wall times of a 50-step, one-training study on the local executor and on Ray, per checkout.

    ``codes`` are (label, checkout) pairs whose lottery_tf runs (another commit's worktree measures "before");
    the runs alternate, checkout by checkout and executor by executor, round after round, so a change in the
    machine's load falls on all of them alike. Ray's time minus the local time is Ray's fixed cost: its
    start, the workers' start and imports, what the driver waits for.
    """
    times: dict = {(label, executor): [] for label, _ in codes for executor in ("local", "ray")}
    for _ in range(rounds):
        for label, code in codes:
            env = {**os.environ, "PYTHONPATH": code}
            for executor in ("local", "ray"):
                out = tempfile.mkdtemp(prefix="benchmark_ray_fixed_")
                started = time.time()
                result = subprocess.run(
                    [sys.executable, "-m", "lottery_tf.main", *FIXED, f"--output_dir={out}", f"--executor={executor}"],
                    cwd=code, env=env, capture_output=True, text=True, timeout=600,
                )  # fmt: skip
                if result.returncode != 0:
                    sys.exit(f"error: {label}, {executor}: exit {result.returncode}:\n{result.stderr[-3000:]}")
                times[(label, executor)].append(time.time() - started)
                shutil.rmtree(out, ignore_errors=True)
    return {key: sorted(values)[len(values) // 2] for key, values in times.items()}


def _phases() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PHASES], cwd=REPO, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/ray/local_vs_ray.txt")
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--cpus_per_training", type=float, default=1.0)
    parser.add_argument("--before", default="", help="a commit whose fixed cost is measured beside this checkout's")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each executor for the fixed cost")
    options = parser.parse_args()
    cores = os.cpu_count() or 1
    slots = max(1, int(cores // options.cpus_per_training))
    ray_flags = ["--executor=ray", f"--cpus_per_training={options.cpus_per_training:g}"]
    phases = _phases()
    lines = [
        f"# command: python tools/benchmark_ray.py --studies={options.studies} "
        f"--cpus_per_training={options.cpus_per_training:g}"
        + (f" --before={options.before} --rounds={options.rounds}" if options.before else ""),
        f"# machine: {cores} CPU cores ({platform.processor() or platform.machine()}), no GPU; "
        f"{time.strftime('%Y-%m-%d')}; one sitting, each run in a fresh folder; load average at the start "
        f"{os.getloadavg()[0]:.1f} (other work on the machine slows both executors)",
        "# speed: local = one process, TensorFlow's default threads, one training at a time; ray = a local Ray "
        f"instance started by the command (in its wall time), {slots} trainings at once, "
        f"{max(1, int(options.cpus_per_training))} TensorFlow thread(s) each; neither --deterministic",
        "# identity: both again with --deterministic (one TensorFlow thread in every process), files compared",
        "# bound: the ideal speed-up of the graph with that many trainings at once (steps only; tools/study_graphs.sh)",
        "",
        "## Ray's fixed cost on this machine, measured apart (one fresh process)",
        f"  ray.init (a local instance): {phases['init']:.1f} s; a worker's first task: {phases['worker']:.1f} s; "
        f"in a worker, import tensorflow: {phases['tf']:.1f} s, then lottery_tf's engine: {phases['engine']:.1f} s; "
        f"ray.shutdown: {phases['shutdown']:.1f} s (import tensorflow in a process alone, as the local executor "
        f"does: {phases['local_tf']:.1f} s; the Ray driver imports none)",
        "",
    ]
    codes = [("this checkout", REPO)]
    tree = None
    if options.before:
        tree = tempfile.mkdtemp(prefix="benchmark_ray_before_")
        subprocess.run(["git", "worktree", "add", "--detach", tree, options.before], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        codes.insert(0, (f"before ({options.before})", tree))
    try:
        medians = fixed_cost(codes, options.rounds)
        for label, _ in codes:
            local_s, ray_s = medians[(label, "local")], medians[(label, "ray")]
            lines.append(
                f"  a one-training, 50-step study, {label}: local {local_s:.1f} s, ray {ray_s:.1f} s: Ray's fixed "
                f"cost {ray_s - local_s:.1f} s (median of {options.rounds}, runs alternating)"
            )
    finally:
        if tree:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO, capture_output=True)
    lines.append("")
    print("\n".join(lines), flush=True)
    if options.studies == "none":
        options.studies = ""
    for name in filter(None, options.studies.split(",")):
        args = STUDIES[name]
        graph, ideal = _bound(args, slots)
        root = tempfile.mkdtemp(prefix=f"benchmark_ray_{name}_")
        try:
            local_s, _ = _cli([*args, f"--output_dir={root}/local"])
            ray_s, ray_run = _cli([*args, f"--output_dir={root}/ray", *ray_flags])
            compared = ""
            if name in IDENTITY:
                det = [*args, "--deterministic"]
                det_local_s, _ = _cli([*det, f"--output_dir={root}/local_det"])
                det_ray_s, _ = _cli([*det, f"--output_dir={root}/ray_det", *ray_flags])
                local_files, ray_files = results_of(f"{root}/local_det"), results_of(f"{root}/ray_det")
                different = sorted(k for k in local_files if local_files[k] != ray_files.get(k))
                missing = sorted(set(local_files) ^ set(ray_files))
                compared = (
                    f"  --deterministic: local {det_local_s:.1f} s   ray {det_ray_s:.1f} s; files compared: "
                    f"{len(local_files)}; different: {len(different)}; in one only: {len(missing)}"
                    + (f" ({', '.join((different + missing)[:5])})" if different or missing else "")
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        tasks = "\n  ".join(line for line in ray_run.stdout.splitlines() if line.startswith("ray: "))
        lines += [
            f"## {name}: python -m lottery_tf.main {' '.join(args)} [--executor=ray] [--deterministic]",
            f"  {graph}",
            f"  local {local_s:.1f} s   ray {ray_s:.1f} s   local/ray {local_s / ray_s:.2f}x   "
            f"(bound with {slots} at once: {ideal}x)",
            f"  {tasks}",
            *([compared] if compared else []),
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
