"""A Ray cluster loses a node mid-training: the study hangs before leases, and finishes bit-identical after.

A two-node cluster on this machine: the head (``ray start --head``) and a second node started in a UTS
namespace of its own (``unshare -u``), so its host name differs, as a second machine's would. The study
runs on the cluster; once a training on the second node is past a checkpoint, every process of that node
(its ``ray start``, raylet, workers, object store) is SIGKILLed, as when a machine loses power. Ray then
retries the task on the head node, which finds the lock the dead worker left.

Run with the real leases (120 s, 60 s grace): once with this checkout, once with the commit before locks
had leases (``--before``, in a temporary git worktree), where a lock of another host never became stale.
Needs root (``unshare -u``) and Ray.

    python tools/lost_node_trial.py [--out=results/ray/lost_node_trial.md] [--before=70ec0ba^]

About 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOST_HOST = "lost-node"
STUDY = [
    "--flagfile=flags/smoke.flags",
    "--levels=1",
    "--branch=",
    "--branch_levels=",
    "--replicates=2",
    "--iterations=1000",
    "--eval_every=100",
    "--checkpoint_every=100",
    "--deterministic",
]


def uts(pid) -> str | None:
    """The UTS namespace of process ``pid`` (its host name's namespace), or None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/uts")
    except OSError:
        return None


def kill_namespace(namespace: str) -> int:
    """SIGKILLs every process in the UTS namespace ``namespace``: a whole node. Returns how many."""
    killed = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and uts(entry) == namespace:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> bool:
    """Waits until something listens on 127.0.0.1:``port`` (a ``ray start --head``); whether it did in time."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.5)
    return False


def start_cluster(env: dict, cwd: str = REPO, deadline_seconds: float = 120):
    """Starts a one-CPU head and a one-CPU second node named :data:`LOST_HOST`; returns (address, head, node).

    The second node's processes share a UTS namespace that no other process has (see :func:`kill_namespace`).
    """
    port = free_port()
    common = dict(env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    head = subprocess.Popen(
        ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--block"], **common
    )
    deadline = time.time() + deadline_seconds
    wait_for_port(port, deadline_seconds)
    # `ray start --head` turns token authentication on: a node or driver joining it must say it uses it.
    token = os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(
        os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    )
    joining = {**env, "RAY_AUTH_MODE": "token"} if token and "RAY_AUTH_MODE" not in env else env
    script = f"hostname {LOST_HOST} && exec ray start --address=127.0.0.1:{port} --num-cpus=1 --block"
    node = subprocess.Popen(["unshare", "-u", "sh", "-c", script], **{**common, "env": joining})
    count = f"import ray; ray.init(address='127.0.0.1:{port}'); print(len([n for n in ray.nodes() if n['Alive']]))"
    while time.time() < deadline:
        counted = subprocess.run([sys.executable, "-c", count], env=joining, cwd=cwd, capture_output=True, text=True)
        if counted.stdout.strip().endswith("2") and uts(node.pid) not in (None, uts("self")):
            return f"127.0.0.1:{port}", head, node
        time.sleep(1)
    stop_cluster(head, node)
    raise RuntimeError("the two-node cluster did not come up")


def stop_cluster(head, node) -> None:
    namespace = uts(node.pid)
    if namespace and namespace != uts("self"):
        kill_namespace(namespace)
    for process in (node, head):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def training_on(out: str, host: str) -> str | None:
    """The level folder of a training whose main-line lock ``host`` holds and that has written a checkpoint."""
    for path in glob.glob(os.path.join(out, "lottery_*", "replicate_*", ".locks", "main.lock")):
        try:
            with open(path) as handle:
                holder = json.load(handle)
        except (OSError, ValueError):
            continue
        if holder.get("host") != host:
            continue
        replicate = os.path.dirname(os.path.dirname(path))
        found = glob.glob(os.path.join(replicate, "level_*", "main", "checkpoints", "*"))
        if found:
            return os.path.dirname(os.path.dirname(found[0]))
    return None


def lose_a_node(address: str, node, out: str, env: dict, cwd: str, timeout: float, extra=()) -> dict:
    """Runs the study (:data:`STUDY` and ``extra`` flags) on the cluster, kills the second node mid-training.

    Returns what happened: the training killed, whether and how the driver ended, its output.
    """
    started = time.time()
    driver = subprocess.Popen(
        [sys.executable, "-m", "lottery_tf.main", *STUDY, *extra, f"--output_dir={out}", "--executor=ray",
         f"--ray_address={address}"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    victim = None
    while victim is None and driver.poll() is None and time.time() - started < 300:
        victim = training_on(out, LOST_HOST)
        time.sleep(0.1)
    killed_at = time.time()
    killed = kill_namespace(uts(node.pid)) if victim else 0
    try:
        output, _ = driver.communicate(timeout=timeout)
        finished = True
    except subprocess.TimeoutExpired:
        driver.kill()
        output, _ = driver.communicate()
        finished = False
    return {
        "victim": os.path.relpath(victim, out) if victim else None,
        "killed_processes": killed,
        "finished": finished,
        "returncode": driver.returncode,
        "seconds_after_kill": time.time() - killed_at,
        "output": output,
    }


def rerun(out: str, env: dict, cwd: str, timeout: float, extra=()) -> dict:
    """The same study again, on this machine's local executor (as a user would after a hang)."""
    started = time.time()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "lottery_tf.main", *STUDY, *extra, f"--output_dir={out}"],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return {"finished": True, "returncode": result.returncode, "seconds": time.time() - started,
                "output": result.stdout + result.stderr}  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        text = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return {"finished": False, "returncode": None, "seconds": time.time() - started, "output": text}


def compare(a: str, b: str) -> tuple[int, list]:
    """Files compared and those that differ (metrics.json timing aside, masks, weights, analysis results)."""
    sys.path.insert(0, REPO)
    from tools.benchmark_ray import results_of

    left, right = results_of(a), results_of(b)
    different = sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k))
    return len(left), different


def _lines(text: str, *starts) -> list:
    return [line for line in text.splitlines() if line.startswith(starts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/ray/lost_node_trial.md")
    parser.add_argument("--before", default="70ec0ba^", help="a commit from before locks had leases ('' skips)")
    parser.add_argument("--before_timeout", type=float, default=420.0, help="seconds the 'before' study may take")
    options = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("LOTTERY_TF_LOCK_LEASE_SECONDS", None)
    env.pop("LOTTERY_TF_LOCK_GRACE_SECONDS", None)
    root = tempfile.mkdtemp(prefix="lost_node_trial_")
    report = [
        "# A node lost mid-training (issue 29, item 1)",
        "",
        f"Command: `python tools/lost_node_trial.py --before={options.before}`; {os.cpu_count()} CPU cores "
        f"({platform.machine()}), no GPU; {time.strftime('%Y-%m-%d')}. A two-node Ray cluster on this machine: "
        f"the head and a second node named `{LOST_HOST}` (`unshare -u`), one CPU each; the study "
        f"`python -m lottery_tf.main {' '.join(STUDY)} --executor=ray --ray_address=<head>` (two replicates "
        "train at once, one per node); once a main-line training on the second node has written a checkpoint, "
        "every process of that node is SIGKILLed. Real leases (120 s, 60 s grace).",
        "",
    ]
    # Before leases a Ray task did not wait for a lock: it stopped the study with a line asking the user to
    # delete the dead node's lock. The user ran with --wait_for_lock, which waited forever: that is
    # the run shown. After, a Ray task always waits (for the lease to run out).
    runs = [("after", REPO, 900.0, ())]
    if options.before:
        tree = os.path.join(root, "before_tree")
        subprocess.run(["git", "worktree", "add", "--detach", tree, options.before], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        commit = subprocess.run(["git", "rev-parse", "--short", options.before], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
        runs.insert(
            0, (f"before ({commit}: locks without leases), with --wait_for_lock", tree, options.before_timeout,
                ("--wait_for_lock",))
        )  # fmt: skip
    try:
        reference = os.path.join(root, "local")
        local = rerun(reference, env, REPO, 900)
        assert local["returncode"] == 0, local["output"][-2000:]
        for label, cwd, timeout, extra in runs:
            run_env = {**env, "PYTHONPATH": cwd}
            out = os.path.join(root, label.split()[0])
            address, head, node = start_cluster(run_env, cwd)
            try:
                lost = lose_a_node(address, node, out, run_env, cwd, timeout, extra)
            finally:
                stop_cluster(head, node)
            report += [f"## {label}", ""]
            report.append(
                f"- the second node was killed while it trained `{lost['victim']}` ({lost['killed_processes']} "
                "processes)"
            )
            if lost["finished"]:
                report.append(f"- the study ended {lost['seconds_after_kill']:.0f} s later, exit {lost['returncode']}")
            else:
                quiet = lost["output"].splitlines()[-1] if lost["output"].strip() else ""
                report.append(
                    f"- the study had not ended {lost['seconds_after_kill']:.0f} s after the kill: stopped there "
                    f"(its last line: `{quiet[:160]}`)"
                )
            shown = _lines(lost["output"], "[retry]", "[failed]", "error:", "ray: ")
            report += ["", "Driver lines (retries, failures, Ray):", "", "```text", *shown[-12:], "```", ""]
            logs = glob.glob(os.path.join(out, "lottery_*", "replicate_*", "logs", "main", "*.log"))
            taken = [line for path in logs for line in open(path).read().splitlines() if "taking over" in line]
            if taken:
                report += ["The retried training's log:", "", "```text", *taken, "```", ""]
            if not lost["finished"] or lost["returncode"] != 0:
                again = rerun(out, run_env, cwd, 120.0, extra)
                tail = again["output"].strip().splitlines()[-1:] if again["output"].strip() else []
                report.append(
                    f"- the same command run again (local executor{', ' + ' '.join(extra) if extra else ''}): "
                    + (f"exit {again['returncode']} after {again['seconds']:.0f} s" if again["finished"] else
                       f"still running after {again['seconds']:.0f} s, stopped")
                    + (f"; last line: `{tail[0][:200]}`" if tail else "")
                )  # fmt: skip
            else:
                count, different = compare(out, reference)
                report.append(
                    f"- against the same study on the local executor: {count} files compared, "
                    f"{len(different)} different" + (f" ({', '.join(different[:5])})" if different else "")
                )
            report.append("")
            print("\n".join(report), flush=True)
    finally:
        if options.before:
            subprocess.run(["git", "worktree", "remove", "--force", os.path.join(root, "before_tree")], cwd=REPO,
                           capture_output=True)  # fmt: skip
        subprocess.run(["rm", "-rf", root], check=False)
    os.makedirs(os.path.dirname(options.out) or ".", exist_ok=True)
    tmp = f"{options.out}.tmp"
    with open(tmp, "w") as handle:
        handle.write("\n".join(report))
    os.replace(tmp, options.out)
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
