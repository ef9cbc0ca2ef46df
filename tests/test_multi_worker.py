"""End-to-end: ``--strategy=multi_worker_mirrored`` with two worker processes on loopback.

Both workers run the real CLI with a ``TF_CONFIG`` naming two free local ports.
A Python audit hook (installed through ``sitecustomize``) records every file
each process creates, opens for writing, renames or removes under the output
folder, so the test can tell who wrote what.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import launcher
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO

from lottery_tf.core.pruning import fingerprint

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

AUDIT_HOOK = textwrap.dedent(
    """
    import os, sys
    _root = os.path.realpath(os.environ["AUDIT_ROOT"])
    _log = open(os.environ["AUDIT_LOG"], "a", buffering=1)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _inside(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(_root)
        except (TypeError, ValueError):
            return False

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE)
            if writing and _inside(path):
                _log.write(f"open {path}\\n")
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"):
            paths = args[:2] if event == "os.rename" else args[:1]
            if any(_inside(p) for p in paths):
                _log.write(f"{event} {' '.join(map(str, paths))}\\n")

    sys.addaudithook(_hook)
    """
)


# The smoke run at 100 steps a level (checkpoints and evaluations at 50): collectives over loopback gRPC run
# about 40 steps/s here, a tenth of one process's speed.
SMOKE = ("--flagfile=flags/smoke.flags", "--iterations=100")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path, out, name, *extra, crash_worker=None, timeout=240, flags=SMOKE, held=None):
    """Runs the smoke experiment (or ``flags``) on two workers; ``crash_worker`` is killed after its first checkpoint.

    With ``held`` (a list), the chief is held once it is past its last collective, and ``held`` gets
    whether worker 1 was still running 3 seconds later (it must wait for the chief: see
    :func:`lottery_tf.engine.distribute.leave_together`).

    Returns:
        ``[(returncode, output, audited writes, pid)]`` for worker 0 (the chief), then worker 1.
    """
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    processes, logs = [], []
    release = tmp_path / f"{name}_release"  # with ``held``: the chief waits until it exists
    for index in (1, 0):  # the chief last, so it never waits for a worker still importing
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": os.pathsep.join([str(hook_dir), REPO]),
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            "AUDIT_ROOT": str(out),
            "AUDIT_LOG": str(tmp_path / f"{name}_audit_{index}.log"),
        }
        if crash_worker == index:
            env["LOTTERY_TF_CRASH_AT"] = "after_checkpoint:1"
        if held is not None and index == 0:
            env["LOTTERY_TF_CRASH_AT"] = f"before_leave:1:wait={release}"
        log = open(tmp_path / f"{name}_worker_{index}.log", "w")
        logs.append(log)
        processes.append(
            launcher.popen(
                [
                    sys.executable,
                    "-m",
                    "lottery_tf.main",
                    *flags,
                    f"--output_dir={out}",
                    "--strategy=multi_worker_mirrored",
                    *extra,
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    pids = {1: processes[0].pid, 0: processes[1].pid}
    try:
        if held is not None:
            waiting, deadline = tmp_path / f"{release.name}.waiting", time.monotonic() + timeout
            while not waiting.exists() and processes[1].poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                processes[0].wait(3)
                held.append(False)
            except subprocess.TimeoutExpired:
                held.append(True)
            release.touch()
        codes = {1: processes[0].wait(timeout), 0: processes[1].wait(timeout)}
    finally:
        for p in processes:
            p.kill()
        for log in logs:
            log.close()
    results = []
    for index in (0, 1):
        audit = tmp_path / f"{name}_audit_{index}.log"
        lines = audit.read_text().splitlines() if audit.exists() else []
        results.append((codes[index], (tmp_path / f"{name}_worker_{index}.log").read_text(), lines, pids[index]))
    return results


def printed_masks(output):
    """``{(level, branch): fingerprint}`` from the "done" lines of one worker."""
    found = {}
    for line in output.splitlines():
        if " done: " in line and " masks " in line:
            level, branch = line.split(" level ")[1].split("]")[0].split(" [")
            found[(int(level), branch)] = line.rsplit(" masks ", 1)[1].strip()
    return found


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multi_worker")
    out = tmp_path / "runs"
    held = []
    results = run_workers(tmp_path, out, "clean", held=held)
    return tmp_path, out, results, held


def test_two_workers_finish_with_identical_masks(two_workers):
    _, out, results, _ = two_workers
    (chief_code, chief_log, _, _), (worker_code, worker_log, _, _) = results
    assert chief_code == 0, chief_log[-3000:]
    assert worker_code == 0, worker_log[-3000:]
    assert "worker 0 of 2 workers: the chief" in chief_log
    assert "worker 1 of 2 workers: not the chief" in worker_log
    chief_masks, worker_masks = printed_masks(chief_log), printed_masks(worker_log)
    assert set(chief_masks) == {(0, "main"), (1, "main"), (2, "main"), (2, "reinit")}
    assert chief_masks == worker_masks
    assert len(set(chief_masks.values())) == 3  # levels 0, 1, 2 differ; reinit uses level 2's mask
    # The files hold the masks both workers trained with.
    (rep,) = glob.glob(str(out / "lottery_*" / "replicate_0"))
    for (level, branch), printed in chief_masks.items():
        with np.load(os.path.join(rep, f"level_{level:02d}", branch, "masks.npz")) as masks:
            assert fingerprint(dict(masks)) == printed
        assert (
            json.load(open(os.path.join(rep, f"level_{level:02d}", branch, "metrics.json")))["masks_sha256"] == printed
        )
    assert "| lottery_" in chief_log and "| lottery_" not in worker_log


def test_no_worker_exits_while_the_chief_may_still_read_from_it(two_workers):
    """A worker that leaves once its own side of the last collective is done can fail the chief's side
    ("a worker stopped" after a run that went well): every worker waits until all are past it."""
    _, _, results, held = two_workers
    assert held == [True]  # worker 1 was still running with the chief held past its last collective
    assert [code for code, _, _, _ in results] == [0, 0]


def test_only_the_chief_writes(two_workers):
    _, out, results, _ = two_workers
    (_, _, chief_writes, chief_pid), (_, _, worker_writes, _) = results
    assert any("metrics.json" in line for line in chief_writes)  # the hook sees the chief's writes
    assert any("ckpt-" in line for line in chief_writes)
    assert worker_writes == []
    # TensorBoard writes from C++ (invisible to the hook): event file names carry the writer's pid.
    events = glob.glob(str(out / "**" / "events.out.tfevents.*"), recursive=True)
    assert events
    pids = {os.path.basename(e).split(".")[-3] for e in events}  # ...<host>.<pid>.<n>.v2
    assert pids == {str(chief_pid)}
    (level1,) = [e for e in events if f"{os.sep}L01-main{os.sep}" in e]
    tags = {value.tag for event in tf.compat.v1.train.summary_iterator(level1) for value in event.summary.value}
    assert {
        "sparsity/overall",
        "sparsity/fc1/kernel",
        "train/examples_per_second",
        "train/learning_rate",
        "val/accuracy",
        "test/loss",
    } <= tags


def test_a_lost_worker_stops_the_chief_and_a_restart_resumes(two_workers, tmp_path):
    _, _, clean, _ = two_workers
    out = tmp_path / "runs"
    shorter = (*SMOKE, "--levels=1", "--branch=", "--branch_levels=")  # levels 0 and 1 of the clean run
    first = run_workers(tmp_path, out, "preempted", crash_worker=1, flags=shorter)
    (chief_code, chief_log, _, _), (worker_code, _, _, _) = first
    assert worker_code == -9  # killed after its first checkpoint (step 50 of level 0)
    assert chief_code == 2, chief_log[-3000:]
    errors = [line for line in chief_log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a worker stopped" in errors[0] and "restart every worker" in errors[0]

    second = run_workers(tmp_path, out, "restarted", flags=shorter)
    for code, log, _, _ in second:
        assert code == 0, log[-3000:]
        assert "level  0 [main] density 100.00%: resuming from" in log and "ckpt-" in log
    # The resumed run ends exactly where the uninterrupted one did.
    expected = {key: value for key, value in printed_masks(clean[0][1]).items() if key in ((0, "main"), (1, "main"))}
    assert len(expected) == 2
    assert printed_masks(second[0][1]) == printed_masks(second[1][1]) == expected
    assert second[1][2] == []  # the restarted non-chief wrote nothing either


def test_two_workers_give_the_masks_of_one_process(two_workers, tmp_path):
    # The same computation without XLA on one device (XLA's numerics differ slightly: near-tie
    # weights can then be pruned differently after a few levels).
    _, _, results, _ = two_workers
    single = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            *SMOKE,
            f"--output_dir={tmp_path}",
            "--jit_compile=false",
            "--steps_per_execution=1",
        ],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert printed_masks(single.stdout) == printed_masks(results[0][1])


BROADCAST = textwrap.dedent(
    """
    import json, os, numpy as np
    from lottery_tf.engine.distribute import broadcast_from_chief, make_strategy
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = make_strategy("multi_worker_mirrored")
    mine = {"a/kernel": np.full((2, 3), 10.0 + index, np.float32), "b/kernel": np.arange(4, dtype=np.float32) * (index + 1)}
    agreed = broadcast_from_chief(strategy, mine)
    print(json.dumps({k: v.tolist() for k, v in agreed.items()}))
    """
)


def test_broadcast_from_chief_gives_every_worker_the_chiefs_values():
    """Each worker passes different masks; every worker must end with worker 0's values."""
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    processes = []
    for index in (1, 0):
        env = {
            **os.environ,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": REPO,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
        }
        processes.append(
            launcher.popen(
                [sys.executable, "-c", BROADCAST],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=180) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-1500:]
    chief = {"a/kernel": [[10.0] * 3] * 2, "b/kernel": [0.0, 1.0, 2.0, 3.0]}
    for out, _ in outputs:
        assert json.loads(out.strip().splitlines()[-1]) == chief
