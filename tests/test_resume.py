"""Crash survival through the real CLI: SIGKILL at several points, corrupted
checkpoints, a full disk. The resumed run must end with the same masks, weights
and metrics as an uninterrupted one (--deterministic)."""

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import launcher
import numpy as np
import pytest
from conftest import REPO, results

from lottery_tf.store import checkpoint

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
ENV.pop("TF_NUM_INTRAOP_THREADS", None)  # TensorFlow's default pool: bit-identical resumes with several threads
# Every crash point of the first cases is in the main line (branches run after it); the branches at level 2
# check that a resumed main line hands them the same files. Crashes inside branches: ARGS_K's cases.
ARGS = ["--flagfile=flags/smoke.flags", "--deterministic", "--branch=reinit,random_prune", "--branch_levels=2"]


# Checkpoints every 30 steps, evaluations every 50, rewinding to step 20, every branch type
# that resumes from its own files (the learning-rate-rewinding lineage included).
ARGS_K = [
    "--flagfile=flags/smoke.flags",
    "--deterministic",
    "--rewind_step=20",
    "--checkpoint_every=30",
    "--branch=reinit,random_prune,lr_rewind",
    "--branch_levels=1,2",
]


def run(out, crash=None, timeout=300, args=ARGS):
    env = dict(ENV)
    if crash:
        env["LOTTERY_TF_CRASH_AT"] = crash
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *args, f"--output_dir={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], dict):
            for name in a[key]:
                np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key}:{name}")
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference"))
    result = run(out)
    assert result.returncode == 0, result.stderr[-2000:]
    return results(out)


def new_temporary_files(out, seen):
    """``.tmp-*`` files a SIGKILL left (relative, without the experiment folder), not in ``seen``; adds them to it."""
    found = set(glob.glob(os.path.join(out, "lottery_*", "replicate_0", "**", ".tmp-*"), recursive=True)) - seen
    seen |= found
    return sorted(os.path.dirname(os.path.relpath(p, out)).split(os.sep, 2)[2] for p in found)


def kill_resume_chain(out, kills, args, resumes):
    """Runs the CLI killed at each of ``kills`` in turn, each run going on from what the last one left.

    ``kills`` holds ``(crash point, check)``: ``check(temporary files the kill left)`` says whether the kill
    landed where it should (a crash point counts passes from the start of its own process). With
    ``resumes``, every run after the first must say it resumed from a checkpoint. The last run is not killed.
    """
    seen = set()
    for number, (crash, where) in enumerate(kills):
        killed = run(out, crash=crash, args=args)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert number == 0 or not resumes or "resuming from" in killed.stdout, (crash, killed.stdout[-2000:])
        left = new_temporary_files(out, seen)
        assert where(left), (crash, left)
    resumed = run(out, args=args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not resumes or "resuming from" in resumed.stdout


def checkpoint_without_json(out, folder):
    """Whether ``folder``'s checkpoints hold an .npz whose .json was never written."""
    pattern = os.path.join(out, "lottery_*", "replicate_0", folder, "checkpoints", "ckpt-*.npz")
    return any(not os.path.exists(p[: -len(".npz")] + ".json") for p in glob.glob(pattern))


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, reference):
    """Three kills in the main line, each in the run that resumed from the one before; then the same files."""
    out = str(tmp_path / "run")
    kill_resume_chain(
        out,
        [
            # Level 0, while the second checkpoint's .npz is being written.
            ("checkpoint_write:2", lambda left: left == ["level_00/main/checkpoints"]),
            # Level 1 (the resumed run writes level 0's checkpoints at 100 and 150 first): .npz renamed, no .json.
            ("checkpoint_between_files:3", lambda left: left == [] and checkpoint_without_json(out, "level_01/main")),
            # At a level boundary: level 1's own files once it has trained.
            ("atomic_write:6", lambda left: left == ["level_01/main"]),
        ],
        ARGS,
        resumes=False,  # the second kill leaves no whole checkpoint of level 1: it trains again from its start
    )
    assert_same(results(out), reference)


def test_external_sigkill_mid_level(tmp_path, reference):
    out = str(tmp_path / "run")
    process = launcher.popen(
        [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={out}"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    pattern = os.path.join(out, "lottery_*", "replicate_0", "level_01", "main", "checkpoints", "ckpt-*.json")
    while not glob.glob(pattern) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed = run(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(results(out), reference)


def test_corrupted_checkpoint_is_reported_and_skipped(tmp_path, reference):
    out = str(tmp_path / "run")
    assert run(out, crash="checkpoint_write:3").returncode == -signal.SIGKILL  # ckpts at 50, 100 survive
    folder = glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_00", "main", "checkpoints"))[0]
    newest = os.path.join(folder, "ckpt-000000100.npz")
    with open(newest, "r+b") as handle:
        handle.truncate(100)
    resumed = run(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    warnings = [l for l in resumed.stderr.splitlines() if l.startswith("warning: checkpoint")]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: checkpoint {newest}: checksum mismatch (100 bytes, expected ")
    assert warnings[0].endswith("; falling back to the previous one")
    assert "resuming from" in resumed.stdout and "ckpt-000000050.json" in resumed.stdout
    assert_same(results(out), reference)


def test_a_checkpoint_of_the_recorded_size_whose_content_differs_says_so(tmp_path):
    """Issue 30, item 6: "checksum mismatch (4270234 bytes, expected 4270234)" blamed the size."""
    payload = b"0123456789" * 10
    (tmp_path / "ckpt-000000050.npz").write_bytes(payload[:-1] + b"x")  # one byte changed, the size as recorded
    record = {"step": 50, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    (tmp_path / "ckpt-000000050.json").write_text(json.dumps(record))
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.read(str(tmp_path / "ckpt-000000050.json"))
    assert str(info.value) == (
        f"{tmp_path / 'ckpt-000000050.npz'}: checksum mismatch: the content differs (100 bytes, the size recorded)"
    )
    (tmp_path / "ckpt-000000050.npz").write_bytes(payload[:60])
    with pytest.raises(checkpoint.CheckpointError, match=r"checksum mismatch \(60 bytes, expected 100\)$"):
        checkpoint.read(str(tmp_path / "ckpt-000000050.json"))


def test_full_disk_during_checkpoint(tmp_path, reference):
    out = str(tmp_path / "run")
    failed = run(out, crash="checkpoint_write:5:enospc")  # level 1, second checkpoint
    assert failed.returncode == 2
    lines = [l for l in failed.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and lines[0].endswith("ckpt-000000100.npz: No space left on device")
    folder = glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_01", "main", "checkpoints"))[0]
    assert sorted(os.listdir(folder)) == ["ckpt-000000050.json", "ckpt-000000050.npz"]  # no partial file
    assert checkpoint.read(os.path.join(folder, "ckpt-000000050.json")).step == 50
    level0 = glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_00", "main", "metrics.json"))[0]
    assert json.load(open(level0))["level"] == 0
    resumed = run(out)
    assert resumed.returncode == 0
    assert_same(results(out), reference)


@pytest.fixture(scope="module")
def reference_k(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference_k"))
    result = run(out, args=ARGS_K)
    assert result.returncode == 0, result.stderr[-2000:]
    return results(out)


def test_uninterrupted_run_evaluates_at_the_same_steps_from_k(reference_k):
    curves = {k: v for k, v in reference_k.items() if k.endswith("metrics.json")}
    level1 = [v for k, v in curves.items() if "level_01/main/" in k][0]
    assert level1[0] == [20, 70, 120, 170, 200]  # origin k = 20, every 50 steps, and the end
    level0 = [v for k, v in curves.items() if "level_00/main/" in k][0]
    assert level0[0] == [0, 50, 100, 150, 200]
    assert any("lr_rewind_20" in k for k in curves) and any("level_02/reinit" in k for k in curves)


def test_resume_with_checkpoints_between_evaluations_and_rewind_step(tmp_path, reference_k):
    """Kills in main level 1 (from k = 20) at a step that is no evaluation step, then in a branch, then in the
    learning-rate-rewinding lineage, each in the run that resumed from the one before; then the same files."""
    out = str(tmp_path / "run")
    kill_resume_chain(
        out,
        [
            ("checkpoint_write:8", lambda left: left == ["level_01/main/checkpoints"]),  # its checkpoint at step 80
            ("checkpoint_write:13", lambda left: left == ["level_01/reinit/checkpoints"]),
            ("checkpoint_write:20", lambda left: left == ["level_01/lr_rewind_20/checkpoints"]),
        ],
        ARGS_K,
        resumes=True,
    )
    assert_same(results(out), reference_k)
