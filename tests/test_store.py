"""The run store, damaged file by file: the health check says what a run does, and the run does exactly that.

Every case copies one finished run (main line, a reinit branch and an
instability analysis), damages one thing, reads the health check's verdict
(lottery_tf.runs, in-process), runs the same command again (lottery_tf.main,
in-process) and checks that it rebuilt, retrained or refused as the health
check said, and that every other file is unchanged.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import launcher
import numpy as np
import pytest
from absl import flags
from conftest import REPO, wait_until_printed

from lottery_tf import main as cli_main
from lottery_tf.reports import health as runs

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
ARGS = [
    "--flagfile=flags/smoke.flags",
    "--iterations=100",
    "--eval_every=50",
    "--checkpoint_every=50",
    "--levels=2",
    "--branch=reinit,instability",
    "--branch_levels=2",
    "--interpolation_points=3",
    "--instability_pairs=1",
    "--analysis_controls=",
    "--deterministic",
]


@pytest.fixture(scope="module", autouse=True)
def _op_determinism_off_afterwards():
    """The in-process runs below pass --deterministic (the command's own flag); later test modules run without it."""
    yield
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("store") / "runs")
    result = launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={out}"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _copy(finished, tmp_path):
    root = str(tmp_path / "runs")
    shutil.copytree(finished, root)
    (experiment,) = glob.glob(os.path.join(root, "lottery_*"))
    return root, experiment, os.path.join(experiment, "replicate_0")


def _content(path):
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: data[k].tobytes() for k in data.files}
    if path.endswith("settings.json"):  # every invocation records its settings: the copy is in another folder
        settings = json.load(open(path))
        settings["run"].pop("output_dir")
        return settings
    with open(path, "rb") as handle:
        return handle.read()


def snapshot(root):
    return {
        p: _content(p)
        for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
        if os.path.isfile(p) and "/.locks/" not in p
    }


def health(root, capsys):
    code = runs.main([root])
    return code, capsys.readouterr().out


def cli(root, capsys, *extra):
    flags.FLAGS.unparse_flags()
    try:
        cli_main.run(["lottery_tf.main", *ARGS, f"--output_dir={root}", *extra])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(30)


def _garble(path):
    with open(path, "w") as handle:
        handle.write('{"garbled')


def _flip_one_mask(path):
    masks = dict(np.load(path))
    name = sorted(masks)[0]
    masks[name] = masks[name].copy()
    masks[name].flat[7] = 1 - masks[name].flat[7]
    np.savez(path, **masks)


def _nan_curve(path):
    record = json.load(open(path))
    record["curves"]["test"]["accuracy"][1] = float("nan")
    with open(path, "w") as handle:
        json.dump(record, handle)  # json writes NaN


PAIR = os.path.join("level_02", "instability", "ticket_k0", "pair_0")
# (case, file under replicate_0, damage, the health check's words, what the run prints, files the run may rewrite)
REBUILDS = [
    (
        "truncated main masks",
        "level_01/main/masks.npz",
        _truncate,
        "the next run rebuilds it from pruning level 0's trained weights and checks it against metrics.json's fingerprint",
        "rebuilt {path}",
        (),
    ),
    ("bit-flipped main masks", "level_02/main/masks.npz", _flip_one_mask, "has mask fingerprint", "rebuilt {path}", ()),
    (
        "level 0 masks missing",
        "level_00/main/masks.npz",
        os.remove,
        "the next run rebuilds it from the dense masks",
        "rebuilt {path}",
        (),
    ),
    (
        "truncated rewind point",
        "rewind_point.npz",
        _truncate,
        "the next run replays it (the initialization, or the dense run's first k steps) and checks it against "
        "rewind_point.json",
        "rebuilt {path}",
        (),
    ),
    (
        "garbled branch masks",
        "level_02/reinit/masks.npz",
        _garble,
        "the next run that includes this branch rebuilds it from the branch's start",
        "rebuilt {path}",
        (),
    ),
    (
        "garbled branch.json",
        "level_02/reinit/branch.json",
        _garble,
        "the next run that includes this branch writes it again from the branch's settings",
        "rebuilt {path}",
        (),
    ),
    (
        "garbled copy masks",
        os.path.join(PAIR, "copy_b", "masks.npz"),
        _garble,
        "the next run that includes the analysis rebuilds it from the copy's start",
        "rebuilt {path}",
        (),
    ),
    (
        "truncated instability.json",
        os.path.join(PAIR, "instability.json"),
        _truncate,
        "the next run that includes the analysis recomputes it from its copies",
        "[instability ticket k=0 pair 0] instability",
        ("instability.json", "tensorboard"),
    ),
]


@pytest.mark.parametrize("case, relative, damage, says, does, rewritten", REBUILDS, ids=[c[0] for c in REBUILDS])
def test_health_check_says_rebuild_and_the_run_rebuilds_exactly_that(
    finished, tmp_path, capsys, case, relative, damage, says, does, rewritten
):
    root, experiment, rep = _copy(finished, tmp_path)
    before = snapshot(root)
    path = os.path.join(rep, relative)
    damage(path)
    code, out = health(root, capsys)
    assert code == 1
    line = next(l for l in out.splitlines() if path in l)
    assert line.strip().startswith(f"DAMAGED: {path}: ") and says in line, out
    code, out, err = cli(root, capsys)
    assert code == 0, err
    assert does.format(path=path) in out, out
    assert " done: density" not in out  # rebuilt, not trained
    after = snapshot(root)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert all(any(word in p for word in rewritten) for p in changed), changed
    code, out = health(root, capsys)
    assert code == 0, out  # and the store is healthy again


RETRAINS = [
    (
        "NaN in a branch's metrics",
        "level_02/reinit/metrics.json",
        _nan_curve,
        "holds NaN or infinity",
        "the next run that includes level 2 [reinit] trains it again",
        "level  2 [reinit] done",
    ),
    (
        "garbled copy metrics in a finished pair",
        os.path.join(PAIR, "copy_a", "metrics.json"),
        _garble,
        "is unreadable",
        "the next run that includes the analysis trains this copy again and recomputes instability.json",
        "[instability ticket k=0 pair 0] instability",
    ),
]


@pytest.mark.parametrize("case, relative, damage, what, says, does", RETRAINS, ids=[c[0] for c in RETRAINS])
def test_health_check_says_train_again_and_the_run_trains_exactly_that(
    finished, tmp_path, capsys, case, relative, damage, what, says, does
):
    root, experiment, rep = _copy(finished, tmp_path)
    before = snapshot(root)
    path = os.path.join(rep, relative)
    damage(path)
    code, out = health(root, capsys)
    line = next(l for l in out.splitlines() if path in l)
    assert code == 1 and what in line and says in line, out
    code, out, err = cli(root, capsys)
    assert code == 0, err
    assert does in out
    trained = [l for l in out.splitlines() if " done: density" in l]
    assert len(trained) == 1, trained  # that level or copy alone
    after = snapshot(root)
    folder = os.path.dirname(path)
    changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p)]
    kept = [
        p
        for p in changed
        if not (
            p.startswith(folder)
            or "tensorboard" in p
            or p.endswith(("summary.csv", "summary.md"))
            or (case.startswith("garbled copy") and p.endswith("instability.json"))
        )
    ]
    assert kept == [], kept
    assert health(root, capsys)[0] == 0


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_data_record_lost_with_finished_levels_is_refused_until_rerecorded(finished, tmp_path, capsys, damage):
    root, experiment, rep = _copy(finished, tmp_path)
    path = os.path.join(experiment, "data.json")
    original = open(path).read()
    os.remove(path) if damage == "missing" else _garble(path)
    before = snapshot(root)
    code, out = health(root, capsys)
    line = next(l for l in out.splitlines() if path in l).strip()
    assert code == 1 and line.startswith(f"DAMAGED: {path}: ") and "a run refuses" in line, out
    code, out, err = cli(root, capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and lines == [f"error: {line[len('DAMAGED: ') :]}"]  # the health check's very line
    assert snapshot(root) == before
    code, out, err = cli(root, capsys, "--rerecord_data")
    assert code == 0 and "nothing to do" in out
    assert json.loads(open(path).read()) == json.loads(original)
    said = f"note: --rerecord_data: {path} now records the data found here, synthetic (fingerprint "
    assert f"{said}{json.loads(original)['fingerprint']}); what the levels already done" in out, out  # not silent


def test_rerecord_data_in_a_sweep_repairs_only_the_run_that_lost_its_record(finished, tmp_path, capsys):
    """A sweep whose k=0 run lost data.json and whose k=50 run is new: the flag is read (by k=0 alone)."""
    root, experiment, rep = _copy(finished, tmp_path)
    path = os.path.join(experiment, "data.json")
    os.remove(path)
    before = snapshot(root)
    code, out, err = cli(root, capsys, "--sweep_rewind_steps=0,50", "--dry_run")
    assert code == 2 and f"error: {path}: is missing" in err  # without the flag: refused
    code, out, err = cli(root, capsys, "--sweep_rewind_steps=0,50", "--dry_run", "--rerecord_data")
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note: --rerecord_data")]
    assert notes == [f"note: --rerecord_data: a run records the data it loads in {path}"]
    # k=0's study is done (its instability copies are not judged from the folder), k=50's is not started.
    assert "done already: 4 of 14 trainings (main levels and branches with a complete metrics.json;" in out
    assert snapshot(root) == before
    # Where no run of the invocation reads it, the flag is refused, and the line says to leave the flag out.
    code, out, err = cli(root, capsys, "--rewind_step=50", "--rerecord_data")
    assert code == 2 and err.strip().endswith("so nothing reads --rerecord_data; leave the flag out"), err


def test_identity_replaced_by_an_empty_object_is_refused_by_both(finished, tmp_path, capsys):
    root, experiment, rep = _copy(finished, tmp_path)
    path = os.path.join(experiment, "identity.json")
    with open(path, "w") as handle:
        handle.write("{}")
    before = snapshot(root)
    code, out = health(root, capsys)
    line = next(l for l in out.splitlines() if path in l).strip()
    assert code == 1 and line.startswith(f"DAMAGED: {path}: gives the hash") and "a run refuses this folder" in line
    code, out, err = cli(root, capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {line[len('DAMAGED: ') :]}"]
    assert snapshot(root) == before


def test_a_damaged_folder_is_refused_by_a_dry_run_and_by_a_ray_driver_before_ray_starts(
    finished, tmp_path, capsys, monkeypatch
):
    """Neither needs TensorFlow or the data to read a folder's identity: the health check's line, exit 2."""
    from lottery_tf.engine import ray_executor

    root, experiment, rep = _copy(finished, tmp_path)
    path = os.path.join(experiment, "identity.json")
    with open(path, "w") as handle:
        json.dump({"model": {"name": "conv2"}}, handle)  # another experiment's identity, as JSON
    before = snapshot(root)
    code, out = health(root, capsys)
    line = next(l for l in out.splitlines() if path in l).strip()
    assert code == 1 and line.startswith(f"DAMAGED: {path}: ")

    def never(run):
        raise AssertionError("Ray was started for a folder the driver can refuse")

    monkeypatch.setattr(ray_executor, "connect", never)
    for extra in (["--dry_run"], ["--executor=ray"], ["--executor=ray", "--dry_run"]):
        code, out, err = cli(root, capsys, *extra)
        assert code == 2 and err.strip().splitlines() == [f"error: {line[len('DAMAGED: ') :]}"], (extra, err)
        assert "ray:" not in out and "{" not in out, extra  # refused before Ray, and before the settings
    assert snapshot(root) == before


def test_missing_trained_weights_are_named_and_rebuilt_only_when_needed(finished, tmp_path, capsys):
    root, experiment, rep = _copy(finished, tmp_path)
    path = os.path.join(rep, "level_01", "main", "final_weights.npz")
    original = _content(path)
    os.remove(path)
    code, out = health(root, capsys)
    line = next(l for l in out.splitlines() if path in l)
    assert code == 1 and "is missing" in line and "a run that needs level 1's trained weights" in line
    before = snapshot(root)
    code, out, err = cli(root, capsys)  # nothing this command runs needs them
    assert code == 0 and "nothing to do" in out and snapshot(root) == before
    # A branch that starts from them: level 1 is trained again (deterministic run), checked, and kept.
    main_only = [a for a in ARGS if not a.startswith(("--branch", "--interpolation", "--instability", "--analysis"))]
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            *main_only,
            "--branch=lr_rewind_oneshot",
            "--branch_levels=2",
            f"--output_dir={root}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"rebuilt {path} (level 1 trained again: the same curves and masks)" in result.stdout
    assert _content(path) == original
    assert "level  2 [lr_rewind_oneshot_0] done" in result.stdout


def _event_file(rep):
    tree = os.path.join(os.path.dirname(rep), "tensorboard", "r0", "L01-main")
    return sorted(glob.glob(os.path.join(tree, "events.out.tfevents.*")))[0]


def test_tensorboard_events_in_either_layout_are_checked_and_a_clean_run_stays_clean(finished, tmp_path, capsys):
    root, experiment, rep = _copy(finished, tmp_path)
    code, out = health(root, capsys)
    assert code == 0 and "note:" not in out, out  # a new run: its tensorboard tree raises nothing
    # A run from before issue 30 kept its events in replicate_<r>/tensorboard/level_<LL>_<run>.
    old = os.path.join(rep, "tensorboard")
    os.makedirs(old)
    for folder in glob.glob(os.path.join(experiment, "tensorboard", "r0", "L*-*")):
        level, run = os.path.basename(folder)[1:].split("-", 1)
        shutil.move(folder, os.path.join(old, f"level_{level}_{run}"))
    shutil.rmtree(os.path.join(experiment, "tensorboard"))
    code, out = health(root, capsys)
    assert code == 0 and "note:" not in out, out
    events = sorted(glob.glob(os.path.join(old, "level_01_main", "events.out.tfevents.*")))[0]
    with open(events, "r+b") as handle:
        handle.truncate(os.path.getsize(events) - 7)
    code, out = health(root, capsys)
    assert code == 0 and f"note: {events}: is truncated after" in out, out


def test_notes_truncated_events_stale_and_unreadable_locks_and_leftovers(finished, tmp_path, capsys):
    root, experiment, rep = _copy(finished, tmp_path)
    events = _event_file(rep)
    size = os.path.getsize(events)
    with open(events, "r+b") as handle:
        handle.truncate(size - 7)
    os.makedirs(os.path.join(rep, ".locks"), exist_ok=True)
    empty = os.path.join(rep, ".locks", "main.lock")
    open(empty, "w").close()  # a kill between creating the lock and writing it
    os.utime(empty, (time.time() - 60, time.time() - 60))
    dead = os.path.join(rep, ".locks", "reinit_level_02.lock")
    with open(dead, "w") as handle:
        json.dump({"host": os.uname().nodename, "pid": 2**22 + 12345, "since": "2026-01-01 00:00:00"}, handle)
    leftover = os.path.join(rep, "level_01", "main", ".tmp-abc123")
    open(leftover, "w").close()
    code, out = health(root, capsys)
    assert code == 0, out  # notes only: nothing a run needs is damaged
    assert f"note: {events}: is truncated after" in out and "it is not needed to continue" in out
    assert f"note: {empty}: unreadable and 60 s old" in out and "the next run takes it over" in out
    assert f"note: {dead}: stale (its process, pid {2**22 + 12345}" in out
    assert f"note: {leftover}: is a leftover temporary file" in out  # a stale lock does not hide it
    code, out, err = cli(root, capsys)
    assert code == 0 and "nothing to do" in out  # the stale and unreadable locks are taken over


def test_a_live_lock_is_reported_and_hides_temporary_files(finished, tmp_path, capsys):
    root, experiment, rep = _copy(finished, tmp_path)
    os.makedirs(os.path.join(rep, ".locks"), exist_ok=True)
    with open(os.path.join(rep, ".locks", "main.lock"), "w") as handle:
        json.dump({"host": os.uname().nodename, "pid": os.getpid(), "since": "now"}, handle)
    open(os.path.join(rep, "level_01", "main", ".tmp-xyz"), "w").close()
    code, out = health(root, capsys)
    assert code == 0 and f"lock: {os.path.join(rep, '.locks', 'main.lock')}: held by pid {os.getpid()}" in out
    assert ".tmp-xyz" not in out


def test_a_checkpoint_of_another_level_is_refused_by_name(finished, tmp_path):
    root, experiment, rep = _copy(finished, tmp_path)
    # A checkpoint of level 0, taken from a run killed right after it, copied into level 1.
    donor = str(tmp_path / "donor")
    killed = launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={donor}"],
        cwd=REPO,
        env={**ENV, "LOTTERY_TF_CRASH_AT": "after_checkpoint:1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode != 0
    (meta,) = glob.glob(
        os.path.join(donor, "lottery_*", "replicate_0", "level_00", "main", "checkpoints", "ckpt-*.json")
    )
    target = os.path.join(rep, "level_01", "main", "checkpoints")
    os.makedirs(target)
    for source in (meta, meta[:-5] + ".npz"):
        shutil.copy(source, target)
    metrics = os.path.join(rep, "level_01", "main", "metrics.json")
    recorded = json.load(open(metrics))
    os.remove(metrics)
    result = launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={root}"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    copied = os.path.join(target, os.path.basename(meta))
    assert (
        f"warning: checkpoint {copied} is refused: it belongs to replicate 0 level 0 [main]" in result.stderr
        and "the level restarts from its first step" in result.stderr
    ), result.stderr
    again = json.load(open(metrics))
    assert again["curves"] == recorded["curves"] and again["masks_sha256"] == recorded["masks_sha256"]


def test_two_processes_asked_for_different_branches_of_a_fresh_experiment(tmp_path):
    out = str(tmp_path / "runs")
    common = [
        "--flagfile=flags/smoke.flags",
        "--levels=1",
        "--iterations=100",
        "--eval_every=50",
        "--checkpoint_every=50",
        f"--output_dir={out}",
    ]
    # The first process waits after its first checkpoint, holding the main line, until the second is waiting.
    release = tmp_path / "release"
    first = launcher.popen(
        [sys.executable, "-m", "lottery_tf.main", *common, "--branch=reinit", "--branch_levels=1"],
        cwd=REPO,
        env={**ENV, "LOTTERY_TF_CRASH_AT": f"after_checkpoint:1:wait={release}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not glob.glob(os.path.join(out, "lottery_*", "replicate_0", ".locks", "main.lock")):
        assert time.time() < deadline and first.poll() is None, "the first process never took the main line"
        time.sleep(0.2)
    with open(tmp_path / "second.out", "w") as log, open(tmp_path / "second.err", "w") as err:
        second = launcher.popen(
            [sys.executable, "-m", "lottery_tf.main", *common, "--branch=random_prune", "--branch_levels=1"],
            cwd=REPO,
            env=ENV,
            stdout=log,
            stderr=err,
        )
        wait_until_printed(second, tmp_path / "second.out", "s so far: held by pid")
        release.touch()
        assert second.wait(600) == 0, (tmp_path / "second.err").read_text()[-2000:]
    second_out = (tmp_path / "second.out").read_text()
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-2000:]
    assert "(the main lineage: this command's branches need its levels)" in second_out
    assert " s so far: held by pid " in second_out
    assert "level  1 [random_prune_layerwise] done" in second_out and "[main] done" not in second_out
    assert "level  1 [reinit] done" in first_out
