"""Lock leases across hosts (issue 29, item 1): real processes under another host name (``unshare -u``).

A holder on "another host" renews its lock and is never taken over while it lives; killed (SIGKILL, as a lost
machine or a force-cancelled Ray task leaves it), its lock is taken over by a process of this host once the
lease and its grace have run out, and a run resumes from the dead holder's checkpoint with the files of an
uninterrupted run. Leases are a couple of seconds here (``$LOTTERY_TF_LOCK_LEASE_SECONDS``,
``$LOTTERY_TF_LOCK_GRACE_SECONDS``). No assertion depends on how fast anything runs.
"""

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import launcher
import numpy as np
import pytest
from conftest import REPO, results

from lottery_tf.store import locks
from lottery_tf.store import reader as store

LEASE, GRACE = "2", "1"
SHORT = {locks.LEASE_ENV: LEASE, store.GRACE_ENV: GRACE}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, **SHORT}
ENV.pop("TF_NUM_INTRAOP_THREADS", None)  # TensorFlow's default pool, as tests/test_resume.py's bit-identical runs
OTHER = "otherhost"

# Holds the main lock of the folder argv[1] until killed; exits 3 with one line if another process takes it over.
# With argv[2] == "own_handler", the user's own SIGINT handler (one that does not raise) is in place meanwhile.
HOLDER = """
import signal, sys, time
from lottery_tf.store import locks
if sys.argv[2:] == ["own_handler"]:
    signal.signal(signal.SIGINT, lambda signum, frame: print("own handler", flush=True))
try:
    with locks.hold(sys.argv[1], "main"):
        print("held", flush=True)
        while True:
            time.sleep(0.05)
except locks.LockedError as error:
    print(f"LOST: {error}", flush=True)
    sys.exit(3)
"""

# Waits for the main lock of argv[1], then says it has it.
WAITER = """
import sys
from lottery_tf.store import locks
with locks.hold(sys.argv[1], "main", wait=True, poll_seconds=0.2, report_seconds=1):
    print("acquired", flush=True)
"""


def _can_unshare() -> bool:
    try:
        result = subprocess.run(["unshare", "-u", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="unshare -u needs root (CAP_SYS_ADMIN)")


def on_other_host(args, env=ENV, **kwargs):
    """``args`` started in a UTS namespace of its own whose host name is ``otherhost`` (same pid: exec all the way)."""
    command = ["unshare", "-u", "sh", "-c", f'hostname {OTHER} && exec "$@"', "sh", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, **kwargs)


def wait_for(condition, limit=120.0, what="condition"):
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {limit:.0f} s"
        time.sleep(0.05)


def _holder(path):
    with open(path) as handle:
        return json.load(handle)


def _kill(process):
    if process.poll() is None:
        process.kill()
    process.wait(60)


@pytest.fixture
def short_leases(monkeypatch):
    for name, value in SHORT.items():
        monkeypatch.setenv(name, value)


@needs_unshare
def test_a_live_holder_on_another_host_is_respected_and_a_killed_one_taken_over(tmp_path, short_leases):
    folder, log = str(tmp_path), tmp_path / "holder.log"
    path = locks.lock_path(folder, "main")
    with open(log, "w") as out:
        holder = on_other_host([sys.executable, "-c", HOLDER, folder], stdout=out, stderr=subprocess.STDOUT)
    waiter = None
    try:
        wait_for(lambda: "held" in log.read_text(), what="lock taken by the holder")
        first = _holder(path)
        assert first["host"] == OTHER and first["pid"] == holder.pid
        assert first["expires"] - first["renewed"] == pytest.approx(float(LEASE))

        # Live: refused from this host, with the lease in the line, and renewed past several leases.
        with pytest.raises(locks.LockedError, match=f"held by pid {holder.pid} on {OTHER} .*lease renewed"):
            with locks.hold(folder, "main"):
                pass
        outlived = first["renewed"] + 3 * (float(LEASE) + float(GRACE))

        def renewed_past_several_leases():
            state = store.lock_state(path)
            assert state.state == "live", state.line()  # never stale while the holder lives
            return state.holder["renewed"] > outlived

        wait_for(renewed_past_several_leases, what="renewal past three leases")
        assert _holder(path)["token"] == first["token"]

        # A process of this host waits for it...
        waiter_log = tmp_path / "waiter.log"
        with open(waiter_log, "w") as out:
            waiter = launcher.popen(
                [sys.executable, "-c", WAITER, folder], cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT
            )
        wait_for(lambda: "waiting for " in waiter_log.read_text(), what="waiting line")
        line = waiter_log.read_text().splitlines()[0]
        assert f"held by pid {holder.pid} on {OTHER}" in line and "lease renewed" in line, line
        assert f"if host {OTHER} is lost, the lock is taken over when its lease runs out" in line, line

        # ... and takes the lock over once the holder is gone (SIGKILL: nothing released it).
        holder.kill()
        holder.wait(60)
        assert os.path.exists(path)
        assert waiter.wait(120) == 0, waiter_log.read_text()
        out = waiter_log.read_text()
        taken = re.search(
            f"taking over {re.escape(path)}: stale \\(its lease expired ([0-9]+) s ago: "
            f"the holder on host {OTHER} is gone\\)",
            out,
        )
        assert taken and "acquired" in out.split(taken.group(0))[1], out
        assert not os.path.exists(path)  # released by the waiter
    finally:
        _kill(holder)
        if waiter is not None:
            _kill(waiter)


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@needs_unshare
@pytest.mark.parametrize("sigint", ["default", "ignored", "own_handler"])
def test_a_holder_whose_lock_was_taken_over_stops_and_leaves_the_new_lock(tmp_path, short_leases, sigint):
    """A holder stopped (SIGSTOP) past its lease is taken over; resumed, it notices, stops, and leaves our lock.

    Also where the holder ignores SIGINT, as a study started by a script in the background (``nohup``, ``&``)
    does: the stop once relied on ``_thread.interrupt_main``, which does nothing then, so the old holder went on
    training beside the new one. And where the user's own SIGINT handler does not raise.
    """
    folder, log = str(tmp_path), tmp_path / "holder.log"
    path = locks.lock_path(folder, "main")
    inherit = _ignore_sigint if sigint == "ignored" else None
    with open(log, "w") as out:
        holder = on_other_host(
            [sys.executable, "-c", HOLDER, folder, sigint], stdout=out, stderr=subprocess.STDOUT, preexec_fn=inherit
        )
    try:
        wait_for(lambda: "held" in log.read_text(), what="lock taken by the holder")
        if sigint != "default":  # a real Ctrl-C while it holds the lock does what it did before: nothing here
            os.kill(holder.pid, signal.SIGINT)
            if sigint == "own_handler":
                wait_for(lambda: "own handler" in log.read_text(), what="the user's handler")
            time.sleep(0.5)
            assert holder.poll() is None and "LOST" not in log.read_text(), log.read_text()
        os.kill(holder.pid, signal.SIGSTOP)
        wait_for(lambda: store.lock_state(path).state == "stale", what="stale lease")
        with locks.hold(folder, "main"):
            ours = _holder(path)
            assert ours["pid"] == os.getpid()
            os.kill(holder.pid, signal.SIGCONT)
            try:
                assert holder.wait(120) == 3, log.read_text()
            except subprocess.TimeoutExpired:
                pytest.fail(f"the old holder did not stop: {log.read_text()}")
            assert _holder(path)["token"] == ours["token"]  # the old holder left our lock alone
        out = log.read_text()
        assert f"error: lost the lock {path}: pid {os.getpid()} on " in out, out
        assert "LOST: lost the lock" in out and "stopping, so that two processes do not train the same levels" in out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder.pid, signal.SIGCONT)
        _kill(holder)


# -- end to end ------------------------------------------------------------------------------------------------

ARGS = ["--flagfile=flags/smoke.flags", "--deterministic"]


def cli(out, *extra):
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={out}", *extra],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@needs_unshare
def test_a_run_killed_on_another_host_is_taken_over_and_resumed_here(tmp_path):
    reference, out = str(tmp_path / "reference"), str(tmp_path / "run")
    # The run on "another host" dies at its first checkpoint (SIGKILL: its lock stays, as a lost node leaves it).
    crashed = on_other_host(
        [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={out}"],
        env={**ENV, "LOTTERY_TF_CRASH_AT": "after_checkpoint:1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = crashed.communicate(timeout=600)
    assert crashed.returncode == -signal.SIGKILL, stdout[-2000:] + stderr[-2000:]
    finished = cli(reference)
    assert finished.returncode == 0, finished.stderr[-2000:]

    (path,) = glob.glob(os.path.join(out, "lottery_*", "replicate_0", ".locks", "main.lock"))
    assert _holder(path)["host"] == OTHER
    checkpoints = glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_00", "main", "checkpoints", "*"))
    assert checkpoints

    # The health check calls it stale once its lease is over, and says the next run takes it over.
    wait_for(lambda: store.lock_state(path).state == "stale", what="stale lease")
    health = launcher.run(
        [sys.executable, "-m", "lottery_tf.runs", out], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    line = (
        f"    note: {re.escape(path)}: stale \\(its lease expired [0-9]+ s ago: the holder on host {OTHER} is gone\\); "
        "the next run takes it over"
    )
    assert re.search(line, health.stdout), health.stdout + health.stderr

    resumed = cli(out)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"taking over {path}: stale (its lease expired" in resumed.stdout
    assert "resuming from" in resumed.stdout
    assert not os.path.exists(path)
    a, b = results(out), results(reference)
    assert sorted(a) == sorted(b) and any(key.endswith("final_weights.npz") for key in a)
    for key in a:
        if isinstance(a[key], dict):
            assert sorted(a[key]) == sorted(b[key]), key
            for name in a[key]:
                np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key}:{name}")
        else:
            assert a[key] == b[key], key


@pytest.mark.slow
def test_a_ray_driver_waits_for_a_live_holder_instead_of_refusing(tmp_path):
    """A Ray study meets a live process's main-line lock: its task waits (its log says so) and the study ends."""
    out = tmp_path / "run"
    first = cli(out, "--levels=0", "--branch=", "--branch_levels=")
    assert first.returncode == 0, first.stderr[-2000:]
    (folder,) = glob.glob(str(out / "lottery_*" / "replicate_0"))
    held = tmp_path / "holder.log"
    with open(held, "w") as handle:
        holder = launcher.popen([sys.executable, "-c", HOLDER, folder], cwd=REPO, env=ENV, stdout=handle)
    try:
        wait_for(lambda: "held" in held.read_text(), what="lock taken by the holder")
        driver = launcher.popen(
            [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={out}", "--levels=1", "--branch=",
             "--branch_levels=", "--executor=ray"],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        log = out / os.path.relpath(folder, out) / "logs" / "main" / "level_01.log"
        wait_for(lambda: log.exists() and "waiting for " in log.read_text(), limit=300, what="the task waiting")
        assert driver.poll() is None  # not refused: waiting
    finally:
        _kill(holder)
    stdout, stderr = driver.communicate(timeout=600)
    assert driver.returncode == 0, stderr[-2000:]
    assert "error:" not in stderr
    assert glob.glob(str(out / "lottery_*" / "replicate_0" / "level_01" / "main" / "metrics.json"))
