"""Paths beside the default: divergence, data identity, locks, file safety, the CLI's first lines."""

import glob
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import launcher
import numpy as np
import pytest
from conftest import REPO, wait_until_printed
from test_data import write_idx_folder

from lottery_tf.engine.monitor import summarize_curves
from lottery_tf.store import atomic, locks

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
ENV.pop("TF_CPP_MIN_LOG_LEVEL")  # the CLI's own default must keep TensorFlow quiet


def cli(*args, timeout=300):
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_diverged_level_stops_with_one_line_and_is_not_done(tmp_path):
    out = str(tmp_path / "run")
    result = cli(
        "--flagfile=flags/smoke.flags",
        "--optimizer=sgd",
        "--momentum=0.99",
        "--learning_rate=50",
        "--branch=",
        "--branch_levels=",
        f"--output_dir={out}",
    )
    assert result.returncode == 2, result.stderr[-1500:]
    errors = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: replicate 0 level  0 [main]"), errors
    assert "diverged at step" in errors[0] and "likely cause" in errors[0] and "learning rate (50)" in errors[0]
    assert not glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_*", "*", "metrics.json"))


def test_early_stopping_never_picks_a_nan():
    curves = {
        "val": {"loss": [float("nan"), 0.5, 0.4, float("nan")], "accuracy": [0.1, 0.5, 0.6, 0.1]},
        "test": {"loss": [1.0, 0.5, 0.4, 9.0], "accuracy": [0.1, 0.5, 0.7, 0.1]},
    }
    summary = summarize_curves([0, 10, 20, 30], curves)
    assert summary["early_stop_iteration"] == 20 and summary["early_stop_test_accuracy"] == 0.7
    with pytest.raises(ValueError, match="every val loss is non-finite"):
        summarize_curves([0], {"val": {"loss": [float("nan")], "accuracy": [0.1]}})


def test_health_check_flags_a_finished_level_with_nan_curves(tmp_path):
    out = str(tmp_path / "run")
    assert (
        cli(
            "--flagfile=flags/smoke.flags", "--levels=1", "--branch=", "--branch_levels=", f"--output_dir={out}"
        ).returncode
        == 0
    )
    (path,) = glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_01", "main", "metrics.json"))
    record = json.load(open(path))
    record["curves"]["val"]["loss"][2] = float("nan")
    with open(path, "w") as handle:
        json.dump(record, handle)
    health = launcher.run(
        [sys.executable, "-m", "lottery_tf.runs", out], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert health.returncode == 1
    assert (
        f"DAMAGED: {path}: holds NaN or infinity in its val loss curves (a diverged or damaged result); the next "
        "run that includes level 1 [main] trains it again"
    ) in health.stdout


def _idx_run(folder, out, *extra):
    return cli(
        "--dataset=mnist",
        f"--data_dir={folder}",
        "--validation_examples=20",
        "--batch_size=20",
        "--iterations=20",
        "--eval_every=10",
        "--levels=1",
        "--checkpoint_every=0",
        f"--output_dir={out}",
        *extra,
    )


def test_a_run_refuses_to_continue_on_other_data(tmp_path):
    data = str(tmp_path / "idx")
    os.makedirs(data)
    write_idx_folder(data, n_train=120, n_test=40)
    out = str(tmp_path / "run")
    first = _idx_run(data, out)
    assert first.returncode == 0, first.stderr[-1500:]
    (record_path,) = glob.glob(os.path.join(out, "lottery_*", "data.json"))
    record = json.load(open(record_path))
    assert record["source"] == f"idx:{data}" and len(record["fingerprint"]) == 16
    moved = str(tmp_path / "moved")
    shutil.copytree(data, moved)  # the same files elsewhere: the same data, the run continues
    again = _idx_run(moved, out, "--levels=2")
    assert again.returncode == 0, again.stderr[-1500:]
    other = str(tmp_path / "other")
    os.makedirs(other)
    write_idx_folder(other, n_train=120, n_test=40, seed=1)
    snapshot = {
        p: open(p, "rb").read() for p in glob.glob(os.path.join(out, "**", "*"), recursive=True) if os.path.isfile(p)
    }
    refused = _idx_run(other, out, "--levels=3")
    assert refused.returncode == 2
    errors = [l for l in refused.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: --data_dir: this run was trained on idx:")
    assert f"the data found now is idx:{other}" in errors[0]
    after = {
        p: open(p, "rb").read() for p in glob.glob(os.path.join(out, "**", "*"), recursive=True) if os.path.isfile(p)
    }
    assert after == snapshot  # nothing written, settings.json included


def test_help_exits_zero_and_names_flagfiles():
    result = cli("--help", timeout=120)
    assert result.returncode == 0
    assert result.stdout.startswith("lottery_tf: find and study lottery tickets")
    assert "--flagfile=flags/<experiment>.flags" in result.stdout and "--rewind_optimizer" in result.stdout
    assert (
        ":func:" not in result.stdout and ":class:" not in result.stdout and REPO not in result.stdout.splitlines()[0]
    )


def test_first_lines_are_ours(tmp_path):
    # A fresh interpreter (not tests/launcher.py's fork): TensorFlow's import-time lines are what is checked.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            "--flagfile=flags/smoke.flags",
            "--levels=0",
            "--branch=",
            "--branch_levels=",
            f"--output_dir={tmp_path}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    assert "cuInit" not in result.stderr and "dataset_info.json" not in result.stderr
    assert "oneDNN" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lottery_tf: lenet_300_100 on synthetic")
    assert lines[1].startswith("device: CPU only (")
    assert lines[-1].startswith("total wall time: 0m ")


# -- locks ---------------------------------------------------------------------------


def test_second_process_is_told_who_holds_the_lock(tmp_path):
    with locks.hold(str(tmp_path), "main"):
        with open(tmp_path / ".locks" / "main.lock") as handle:
            holder = json.load(handle)
        assert holder["pid"] == os.getpid()
        code = f"from lottery_tf.store import locks\nwith locks.hold({str(tmp_path)!r}, 'main'): pass"
        other = launcher.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True)
        assert other.returncode == 1 and f"is held by pid {os.getpid()} on " in other.stderr
        with locks.hold(str(tmp_path), "reinit_level_02"):  # another lineage: no conflict
            pass
    assert not os.path.exists(tmp_path / ".locks" / "main.lock")


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = launcher.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    os.makedirs(tmp_path / ".locks")
    import socket

    with open(tmp_path / ".locks" / "main.lock", "w") as handle:
        json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "since": "earlier"}, handle)
    with locks.hold(str(tmp_path), "main"):
        assert json.load(open(tmp_path / ".locks" / "main.lock"))["pid"] == os.getpid()


def test_wait_for_lock_waits_for_the_holder(tmp_path):
    released = []

    def holder():
        with locks.hold(str(tmp_path), "main"):
            time.sleep(0.5)
            released.append(time.time())

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(0.1)
    with pytest.raises(locks.LockedError):
        with locks.hold(str(tmp_path), "main"):
            pass
    # A second process is what waits in practice; in one process the holder's pid is alive, so it waits too.
    with locks.hold(str(tmp_path), "main", wait=True, poll_seconds=0.05):
        assert released and time.time() >= released[0]
    thread.join()


def test_two_cli_processes_on_one_replicate(tmp_path):
    out = str(tmp_path / "run")
    args = [
        sys.executable,
        "-m",
        "lottery_tf.main",
        "--flagfile=flags/smoke.flags",
        "--branch=",
        "--branch_levels=",
        f"--output_dir={out}",
    ]
    # The first process waits at its first checkpoint, holding the lock, until this test releases it: the
    # second process meets the lock however loaded the machine is, and the third waits for it.
    release = tmp_path / "release"
    held = {**ENV, "LOTTERY_TF_CRASH_AT": f"checkpoint_write:1:wait={release}"}
    first = launcher.popen(args, cwd=REPO, env=held, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while (
        not glob.glob(os.path.join(out, "lottery_*", "replicate_0", ".locks", "main.lock")) and time.time() < deadline
    ):
        time.sleep(0.05)
    second = launcher.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    with open(tmp_path / "waited.out", "w") as log:
        waited = launcher.popen(args + ["--wait_for_lock"], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.DEVNULL)
        wait_until_printed(waited, tmp_path / "waited.out", "waiting for ")
        release.touch()
        assert waited.wait(300) == 0
    first.communicate(timeout=300)
    assert first.returncode == 0
    errors = [l for l in second.stderr.splitlines() if l.strip()]
    assert second.returncode == 2 and len(errors) == 1 and "main.lock is held by pid " in errors[0], second.stderr[
        -800:
    ]
    waited_output = (tmp_path / "waited.out").read_text()
    assert "main.lock (the main lineage), " in waited_output and " s so far: held by pid" in waited_output
    assert "nothing to do" in waited_output


# -- atomic writes -----------------------------------------------------------------------


def test_results_get_ordinary_permissions_and_the_folder_is_synced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    old = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "metrics.json").st_mode) == 0o644
    assert synced == [False, True]  # the file, then its folder after the rename
    np.testing.assert_array_equal(json.load(open(tmp_path / "metrics.json"))["a"], 1)
