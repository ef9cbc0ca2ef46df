"""Every finished file carries whose it is and what it held, and the runner, the health check, the reports and
the export give one verdict on it (issue 28, items 2-4).

Two finished experiments of the same model (``A``, and ``B`` with another learning rate) are damaged in
ways a user's hands or tools damage a run store: folders copied in from the other experiment, renamed
replicates and levels, files swapped or edited. For every kind of damage the health check
(``python -m lottery_tf.runs``) and the runner (``python -m lottery_tf.main``, the command that made the run)
must say the same lines and act on them as the lines say: refuse (exit 2, nothing written), or repair and
leave a store the health check finds sound.
"""

import glob
import json
import os
import shutil
import sys

import launcher
import numpy as np
import pytest
from absl import flags
from conftest import REPO

from lottery_tf import main as cli_main
from lottery_tf.engine import ticket
from lottery_tf.engine.config import experiment_hash_of
from lottery_tf.reports import health, tables
from lottery_tf.store import reader as store

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
FLAGS_A = ["--flagfile=flags/smoke.flags", "--levels=2", "--branch=reinit", "--branch_levels=1"]
FLAGS_B = [*FLAGS_A, "--learning_rate=1e-3"]  # the same model and data, other settings: another experiment


def _train(out, flags_, extra_env=None):
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *flags_, f"--output_dir={out}"],
        cwd=REPO,
        env={**ENV, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    found = {}
    for name, flags_ in (("A", FLAGS_A), ("B", FLAGS_B)):
        result = _train(str(root / name), flags_)
        assert result.returncode == 0, result.stderr[-1500:]
        (found[name],) = glob.glob(str(root / name / "lottery_*"))
    assert os.path.basename(found["A"]) != os.path.basename(found["B"])
    return found


def snapshot(root):
    return {
        p: open(p, "rb").read() for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if os.path.isfile(p)
    }


def _health(root, capfd):
    code = health.main([root])
    out = capfd.readouterr().out
    lines = set()
    for line in out.splitlines():
        line = line.strip()
        for prefix in ("DAMAGED: ", "note: "):
            if line.startswith(prefix):
                lines.add(line[len(prefix) :])
    return code, lines, out


def _runner(root, capfd, flags_=FLAGS_A):
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:
        cli_main.run(["lottery_tf.main", *flags_, f"--output_dir={root}"])
    captured = capfd.readouterr()
    said = set()
    for line in (captured.out + captured.err).splitlines():
        for prefix in ("warning: ", "note: ", "error: "):
            if line.startswith(prefix):
                said.add(line[len(prefix) :])
    return exit_info.value.code or 0, said, captured


def _swap(a, b):
    tmp = a + ".swap"
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def _edit_json(path, change):
    record = json.load(open(path))
    change(record)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)


def _level(exp, level, folder="main"):
    return os.path.join(exp, "replicate_0", f"level_{level:02d}", folder)


# Each damage: (what it does to experiment A, given A and B; the verdict; a piece of the line every side says).
def _copy_folder(src, dst):
    shutil.rmtree(dst)
    shutil.copytree(src, dst)


DAMAGE = {
    # Folders from another experiment, replicate or level (item 2): refused by name.
    "reinit_folder_from_B": (
        lambda a, b: _copy_folder(_level(b, 1, "reinit"), _level(a, 1, "reinit")),
        store.REFUSE,
        "is the record of level 1 [reinit], replicate 0, experiment {B}",
    ),
    "level_01_main_from_B": (
        lambda a, b: _copy_folder(_level(b, 1), _level(a, 1)),
        store.REFUSE,
        "is the record of level 1 [main], replicate 0, experiment {B}",
    ),
    "replicate_0_renamed_1": (
        lambda a, b: os.replace(os.path.join(a, "replicate_0"), os.path.join(a, "replicate_1")),
        store.REFUSE,
        "not of level 0 [main], replicate 1",
    ),
    "level_01_copied_as_level_07": (
        lambda a, b: shutil.copytree(
            os.path.join(a, "replicate_0", "level_01"), os.path.join(a, "replicate_0", "level_07")
        ),
        store.REFUSE,
        "is the record of level 1 [main]",
    ),
    "level_1_metrics_over_level_2": (
        lambda a, b: shutil.copy(
            os.path.join(_level(a, 1), "metrics.json"), os.path.join(_level(a, 2), "metrics.json")
        ),
        store.REFUSE,
        "not of level 2 [main]",
    ),
    # Own shapes: a reinit level copied into the main line of the same replicate; B's rewind point.
    "reinit_metrics_into_main": (
        lambda a, b: shutil.copy(
            os.path.join(_level(a, 1, "reinit"), "metrics.json"), os.path.join(_level(a, 1), "metrics.json")
        ),
        store.REFUSE,
        "is the record of level 1 [reinit]",
    ),
    "rewind_point_from_B": (
        lambda a, b: [
            shutil.copy(os.path.join(b, "replicate_0", name), os.path.join(a, "replicate_0", name))
            for name in ("rewind_point.npz", "rewind_point.json")
        ],
        store.REFUSE,
        "rewind_point.json: is the record of replicate 0, experiment {B}",
    ),
    # Own shape: the masks of a level not trained yet (level 2, its run killed) taken from B.
    "unstarted_level_masks_from_B": (
        lambda a, b: [
            [os.remove(os.path.join(_level(a, 2), name)) for name in ("metrics.json", "final_weights.npz")],
            shutil.copy(os.path.join(_level(b, 2), "masks.npz"), os.path.join(_level(a, 2), "masks.npz")),
        ],
        store.REBUILD,
        "level_02/main/masks.npz: does not hold what the previous level's metrics.json recorded",
    ),
    # Damage of earlier rounds, in the same table: the two sides say the same lines for them too.
    "middle_metrics_missing": (
        lambda a, b: os.remove(os.path.join(_level(a, 1), "metrics.json")),
        store.RETRAIN,
        "level_01/main/metrics.json: is missing, but later levels are done",
    ),
    "masks_truncated": (
        lambda a, b: open(os.path.join(_level(a, 2), "masks.npz"), "r+b").truncate(40),
        store.REBUILD,
        "level_02/main/masks.npz: is unreadable or corrupted",
    ),
    "rewind_point_deleted": (
        lambda a, b: os.remove(os.path.join(a, "replicate_0", "rewind_point.npz")),
        store.REBUILD,
        "rewind_point.npz: is missing; the next run replays it",
    ),
    "identity_edited": (
        lambda a, b: _edit_json(os.path.join(a, "identity.json"), lambda r: r.update({"training.learning_rate": 0.5})),
        store.REFUSE,
        "identity.json: gives the hash",
    ),
    "settings_not_settings": (
        lambda a, b: open(os.path.join(a, "settings.json"), "w").write('{"no": "settings"}'),
        store.REBUILD,
        "settings.json: is not a lottery_tf settings file",
    ),
    "reinit_curves_nan": (
        lambda a, b: _edit_json(
            os.path.join(_level(a, 1, "reinit"), "metrics.json"),
            lambda r: r["curves"]["test"]["accuracy"].__setitem__(0, float("nan")),
        ),
        store.RETRAIN,
        "level_01/reinit/metrics.json: holds NaN or infinity in its test accuracy curves",
    ),
    "lock_is_a_folder": (
        lambda a, b: os.makedirs(os.path.join(a, "replicate_0", ".locks", "main.lock", "inside")),
        store.REFUSE,
        ".locks/main.lock: is a folder, not a lock file",
    ),
    "leftover_temporary_file": (
        lambda a, b: open(os.path.join(_level(a, 1), ".tmp-abc123"), "w").close(),
        store.NOTE,
        ".tmp-abc123: is a leftover temporary file",
    ),
    # A branch's trained weights swapped with the main line's: only the export reads them, and it refuses.
    "branch_final_weights_swapped": (
        lambda a, b: _swap(
            os.path.join(_level(a, 1, "reinit"), "final_weights.npz"), os.path.join(_level(a, 1), "final_weights.npz")
        ),
        store.REBUILD_WHEN_NEEDED,
        "final_weights.npz: does not hold what metrics.json recorded",
    ),
    # Seals removed by hand: a replicate whose records are all sealed when written has no unsealed one.
    "seal_removed_after_an_edit": (
        lambda a, b: _edit_json(
            os.path.join(_level(a, 2), "metrics.json"),
            lambda r: [r.update(final_test_accuracy=0.99), r.pop("record_sha256")],
        ),
        store.RETRAIN,
        "level_02/main/metrics.json: has no record_sha256, but every record of this replicate is sealed",
    ),
    "level_from_B_stripped_of_its_record_keys": (
        lambda a, b: [
            _copy_folder(_level(b, 1), _level(a, 1)),
            _edit_json(
                os.path.join(_level(a, 1), "metrics.json"),
                lambda r: [r.pop(k) for k in ("belongs_to", "files_sha256", "record_sha256", "next_masks_sha256")],
            ),
        ],
        store.RETRAIN,
        "level_01/main/metrics.json: has no record_sha256",
    ),
    # Finished files changed after the fact (item 3): named, and rebuilt or trained again.
    "final_weights_1_2_swapped": (
        lambda a, b: _swap(
            os.path.join(_level(a, 1), "final_weights.npz"), os.path.join(_level(a, 2), "final_weights.npz")
        ),
        store.REBUILD_WHEN_NEEDED,
        "final_weights.npz: does not hold what metrics.json recorded",
    ),
    "metrics_numbers_edited": (
        lambda a, b: _edit_json(
            os.path.join(_level(a, 2), "metrics.json"), lambda r: r.update(final_test_accuracy=0.99)
        ),
        store.RETRAIN,
        "level_02/main/metrics.json: was edited after it was written",
    ),
    "masks_stored_as_float64": (
        lambda a, b: np.savez(
            os.path.join(_level(a, 1), "masks.npz"),
            **{k: v.astype(np.float64) for k, v in np.load(os.path.join(_level(a, 1), "masks.npz")).items()},
        ),
        store.REBUILD,
        "level_01/main/masks.npz: does not hold what metrics.json recorded",
    ),
    "data_fingerprint_edited": (
        lambda a, b: _edit_json(os.path.join(a, "data.json"), lambda r: r.update(fingerprint="0123456789abcdef")),
        store.REFUSE,
        "data.json: was edited after it was written",
    ),
    "rewind_point_json_edited": (
        lambda a, b: _edit_json(
            os.path.join(a, "replicate_0", "rewind_point.json"), lambda r: r.update(sha256="0123456789abcdef")
        ),
        store.REBUILD,
        "rewind_point.json: was edited after it was written",
    ),
    "branch_json_edited": (
        lambda a, b: _edit_json(os.path.join(_level(a, 1, "reinit"), "branch.json"), lambda r: r.update(level=5)),
        store.REBUILD,
        "level_01/reinit/branch.json: does not hold what metrics.json recorded",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_one_verdict_for_every_damage(studies, tmp_path, capfd, monkeypatch, kind):
    monkeypatch.chdir(REPO)
    damage, action, named = DAMAGE[kind]
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    damage(a, studies["B"])
    named = named.format(B=os.path.basename(studies["B"])[len("lottery_") :])

    code, said_by_health, report = _health(root, capfd)
    assert code == (0 if action == store.NOTE else 1), report
    assert any(named in line for line in said_by_health), (named, report)
    inspected = store.inspect_experiment(a, folder_hash=experiment_hash_of)
    found = [p for p in inspected.problems + [p for r in inspected.replicates.values() for p in r.problems]]
    found = [p for p in found if named in p.line()]
    assert found and {p.action for p in found} == {action}, found

    before = snapshot(root)
    exit_code, said_by_runner, captured = _runner(root, capfd)
    if action == store.REFUSE:
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
        assert lines[0][len("error: ") :] in said_by_health  # the health check's line, word for word
        assert snapshot(root) == before  # nothing written, nothing taken over
        return
    assert exit_code == 0, captured.err[-3000:]
    assert said_by_health <= said_by_runner, (said_by_health - said_by_runner, captured.err[-2000:])
    code, after, report = _health(root, capfd)
    if action == store.REBUILD_WHEN_NEEDED:  # nothing this command runs needs them: still named, still not used
        assert after == said_by_health, report
        with pytest.raises(ticket.TicketError, match="final_weights.npz: does not hold what metrics.json recorded"):
            ticket.load_ticket(a, level=found[0].level, branch=found[0].folder)
        return
    assert "DAMAGED" not in report and code == 0, report  # repaired as the line said


def test_edited_metrics_never_reach_a_summary(studies, tmp_path):
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    path = os.path.join(_level(a, 2), "metrics.json")
    _edit_json(path, lambda r: r.update(final_test_accuracy=0.99))
    with pytest.raises(tables.ReportError, match="metrics.json was edited after it was written"):
        tables.aggregate([root])


def test_a_record_written_again_with_the_same_content_is_no_damage(studies, tmp_path, capfd):
    """The seal is on what a record says, not on its bytes: re-indenting it by hand is not an edit."""
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    for path in glob.glob(os.path.join(a, "**", "*.json"), recursive=True):
        record = json.load(open(path))
        with open(path, "w") as handle:
            json.dump(dict(reversed(list(record.items()))), handle)
    code, lines, report = _health(root, capfd)
    assert code == 0 and not lines, report


def test_export_refuses_a_folder_the_runner_refuses(studies, tmp_path):
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    _edit_json(os.path.join(a, "identity.json"), lambda r: r.update({"training.learning_rate": 0.5}))
    with pytest.raises(ticket.TicketError, match="identity.json: gives the hash"):
        ticket.load_ticket(a, level=1)


def test_export_names_a_garbled_metrics_file(studies, tmp_path):
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    path = os.path.join(_level(a, 1), "metrics.json")
    with open(path, "w") as handle:
        handle.write('{"level": 1, "curv')
    with pytest.raises(ticket.TicketError, match=f"{path}: is unreadable"):
        ticket.load_ticket(a, level=1)


def test_a_checkpoint_from_another_experiment_is_skipped_by_both(studies, tmp_path, capfd):
    """Level 0 killed after its second checkpoint; B's checkpoint of the same step (same model, same dense
    masks, other settings) put in its place.

    The health check names it (a resumed run skips it); the run resumes from the earlier checkpoint and ends
    where an undamaged run ends.
    """
    root = str(tmp_path / "runs")
    crash = {"LOTTERY_TF_CRASH_AT": "after_checkpoint:2"}
    for name, flags_ in (("A", FLAGS_A), ("B", FLAGS_B)):
        result = _train(os.path.join(root, name), [*flags_, "--branch=", "--branch_levels="], crash)
        assert result.returncode != 0
    (a,) = glob.glob(os.path.join(root, "A", "lottery_*"))
    (b,) = glob.glob(os.path.join(root, "B", "lottery_*"))
    ours = sorted(glob.glob(os.path.join(_level(a, 0), "checkpoints", "ckpt-*")))
    theirs = sorted(glob.glob(os.path.join(_level(b, 0), "checkpoints", "ckpt-*")))
    assert [os.path.basename(p) for p in ours] == [os.path.basename(p) for p in theirs] and len(ours) >= 2
    for mine, other in zip(ours[-2:], theirs[-2:]):  # the newest checkpoint (npz and json) is B's
        shutil.copy(other, mine)
    shutil.rmtree(os.path.join(root, "B"))
    code, lines, report = _health(root, capfd)
    newest = ours[-1] if ours[-1].endswith(".json") else ours[-2]
    assert any(line.startswith(f"{newest}: is the checkpoint of") for line in lines), report
    result = _train(os.path.join(root, "A"), [*FLAGS_A, "--branch=", "--branch_levels="])
    assert result.returncode == 0, result.stderr[-1500:]
    assert f"checkpoint {newest} is refused" in result.stderr
    reference = os.path.join(_level(studies["A"], 0), "metrics.json")
    resumed = json.load(open(os.path.join(_level(a, 0), "metrics.json")))
    assert resumed["curves"] == json.load(open(reference))["curves"]


def test_a_killed_exports_folder_is_named_and_removed_by_the_next_export(studies, tmp_path, capfd):
    from lottery_tf import export as export_cli
    from lottery_tf.engine import export_files

    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    exports = os.path.join(a, "exports")
    host = export_files._owner_tag().rsplit(".", 1)[0]
    dead = os.path.join(exports, f".tmp-export-{host}.{2**22 + 7}-k1ll3d")  # above Linux's pid_max default
    unowned = os.path.join(exports, ".tmp-export-x9y8z7")  # written before exports named their owner
    for folder in (dead, unowned):
        os.makedirs(folder)
        open(os.path.join(folder, "ticket.keras"), "wb").close()
    code, lines, report = _health(root, capfd)
    assert code == 0  # a note: harmless for the results
    assert {
        f"{dead}: is a leftover of an interrupted write or export",
        f"{unowned}: is a leftover of an interrupted write or export",
    } <= {line.split("; ")[0] for line in lines}, report
    assert export_cli.main([a, "--level=1", "--formats=keras"]) == 0, capfd.readouterr().err
    assert not os.path.exists(dead) and os.path.exists(unowned)


def test_the_export_cli_refuses_weights_swapped_between_levels(studies, tmp_path, capfd):
    from lottery_tf import export as export_cli

    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    level1, level2 = (os.path.join(_level(a, level), "final_weights.npz") for level in (1, 2))
    _swap(level1, level2)
    before = snapshot(root)
    assert export_cli.main([a, "--level=2", "--formats=keras"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {level2}: does not hold what metrics.json recorded"), err
    assert snapshot(root) == before


@pytest.mark.parametrize("where", ["replicate_0", "replicate_0/level_01"])
def test_a_folder_this_user_cannot_read_is_refused_by_both(studies, tmp_path, capfd, monkeypatch, where):
    """Root reads every folder, so the denial is made where the store lists folders (os.scandir)."""
    monkeypatch.chdir(REPO)
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    denied = os.path.join(a, where)
    scandir = os.scandir

    def guarded(path="."):
        if os.path.normpath(os.fspath(path)) == denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    code, lines, report = _health(root, capfd)
    line = f"{denied}: cannot be read (Permission denied); a run refuses this replicate"
    assert code == 1 and any(x.startswith(line) for x in lines), report
    before = snapshot(root)
    exit_code, said, captured = _runner(root, capfd)
    assert exit_code == 2 and captured.err.strip().startswith(f"error: {line}"), captured.err[-1500:]
    assert snapshot(root) == before  # settings.json included: nothing rewritten before the refusal


REWIND_A = [
    "--flagfile=flags/smoke.flags",
    "--levels=1",
    "--branch=rewind",
    "--branch_levels=1",
    "--branch_rewind_step=50",
]


@pytest.fixture(scope="module")
def rewind_studies(tmp_path_factory):
    """Two experiments whose replicates hold a replayed state (the dense run at step 50, for ``rewind``)."""
    root = tmp_path_factory.mktemp("rewind")
    found = {}
    for name, flags_ in (("A", REWIND_A), ("B", [*REWIND_A, "--learning_rate=1e-3"])):
        result = _train(str(root / name), flags_)
        assert result.returncode == 0, result.stderr[-1500:]
        (found[name],) = glob.glob(str(root / name / "lottery_*"))
    return found


@pytest.mark.parametrize("what", ["state_and_record", "state_alone", "renamed_to_another_step"])
def test_a_replayed_state_from_another_experiment(rewind_studies, tmp_path, capfd, monkeypatch, what):
    """With its record, it is refused by name; alone, it no longer holds what its record says and is replayed."""
    monkeypatch.chdir(REPO)
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(rewind_studies["A"]))
    shutil.copytree(rewind_studies["A"], a)
    cache = os.path.join(a, "replicate_0", "rewind_points", "step_50.npz")
    original = store.records.content_sha256(cache)
    if what == "renamed_to_another_step":  # the step-50 state named as step 100's, asked for by the next command
        for name in ("step_50.npz", "step_50.json", "step_50_optimizer.npz", "step_50_optimizer.json"):
            os.replace(
                os.path.join(os.path.dirname(cache), name),
                os.path.join(os.path.dirname(cache), name.replace("50", "100")),
            )
        code, lines, report = _health(root, capfd)
        line = f"{os.path.dirname(cache)}/step_100.json: is the record of the state at step 50, replicate 0"
        assert code == 1 and any(x.startswith(line) for x in lines), report
        exit_code, said, captured = _runner(root, capfd, [*REWIND_A, "--branch_rewind_step=100"])
        assert exit_code == 2 and captured.err.startswith(f"error: {line}"), captured.err[-1500:]
        return
    names = ("step_50.npz", "step_50.json") if what == "state_and_record" else ("step_50.npz",)
    for name in names:
        shutil.copy(os.path.join(rewind_studies["B"], "replicate_0", "rewind_points", name), os.path.dirname(cache))
    code, lines, report = _health(root, capfd)
    assert code == 1, report
    before = snapshot(root)
    flags_ = [*REWIND_A, "--levels=2", "--branch_levels=1,2"]  # level 2's rewind branch needs the state
    exit_code, said, captured = _runner(root, capfd, flags_)
    if what == "state_and_record":
        experiment_b = os.path.basename(rewind_studies["B"])[len("lottery_") :]
        line = f"{cache[: -len('.npz')]}.json: is the record of the state at step 50, replicate 0, experiment {experiment_b}"
        assert any(x.startswith(line) for x in lines), report
        assert exit_code == 2 and captured.err.startswith(f"error: {line}"), captured.err[-1500:]
        assert snapshot(root) == before
        return
    assert any(x.startswith(f"{cache}: does not hold what step_50.json recorded") for x in lines), report
    assert exit_code == 0 and lines <= said, captured.err[-1500:]
    assert store.records.content_sha256(cache) == original  # replayed: the dense run's own step 50 again
    assert _health(root, capfd)[0] == 0


def test_a_replayed_state_copied_over_the_rewind_point(rewind_studies, tmp_path, capfd, monkeypatch):
    """step_50's state and record put in place of the rewind point (step 0): named; the export refuses it;
    the runner replays the rewind point, checks it against what the main line trained from, and goes on."""
    monkeypatch.chdir(REPO)
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(rewind_studies["A"]))
    shutil.copytree(rewind_studies["A"], a)
    replicate = os.path.join(a, "replicate_0")
    point = os.path.join(replicate, "rewind_point.npz")
    original = store.records.content_sha256(point)
    for suffix in (".npz", ".json"):
        shutil.copy(os.path.join(replicate, "rewind_points", f"step_50{suffix}"), point[: -len(".npz")] + suffix)
    code, lines, report = _health(root, capfd)
    line = f"{point}: does not hold what the main line's levels recorded they trained from"
    assert code == 1 and any(x.startswith(line) for x in lines), report
    with pytest.raises(ticket.TicketError, match="rewind_point.npz: does not hold"):
        ticket.load_ticket(a, level=1, weights="rewind")
    exit_code, said, captured = _runner(root, capfd, [*REWIND_A, "--levels=2"])
    assert exit_code == 0 and lines <= said, captured.err[-1500:]
    assert store.records.content_sha256(point) == original
    assert _health(root, capfd)[0] == 0


@pytest.mark.parametrize("kind", ["level_01_main_from_B", "metrics_numbers_edited", "reinit_curves_nan"])
def test_the_report_gives_the_same_verdict_on_what_it_reads(studies, tmp_path, capfd, kind):
    """A record the report would read, damaged, edited or another experiment's, is refused with the health
    check's line, and nothing is written."""
    from lottery_tf.reports import cli as report_cli

    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    damage, action, named = DAMAGE[kind]
    damage(a, studies["B"])
    named = named.format(B=os.path.basename(studies["B"])[len("lottery_") :])
    code, lines, report = _health(root, capfd)
    out = str(tmp_path / "report")
    assert report_cli.main([root, f"--out={out}", "--no_plots"]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert err[0][len("error: ") :] in lines, (err, report)
    assert not os.path.exists(out)


def test_a_lock_refusal_writes_nothing(studies, tmp_path, capfd, monkeypatch):
    """Another host's live lease on the main line refuses a command that would train it (no --wait_for_lock,
    no branches) before settings.json or anything else is written."""
    import time

    monkeypatch.chdir(REPO)
    root = str(tmp_path / "runs")
    a = os.path.join(root, os.path.basename(studies["A"]))
    shutil.copytree(studies["A"], a)
    lock = os.path.join(a, "replicate_0", ".locks", "main.lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    now = time.time()
    holder = {"host": "elsewhere.invalid", "pid": 4242, "since": "2026-01-01 00:00:00", "token": "0" * 32}
    with open(lock, "w") as handle:
        json.dump({**holder, "renewed": now, "expires": now + 600}, handle)
    before = snapshot(root)
    flags_ = ["--flagfile=flags/smoke.flags", "--levels=3", "--branch=", "--branch_levels="]
    exit_code, said, captured = _runner(root, capfd, flags_)
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_code == 2 and len(lines) == 1, captured.err[-1500:]
    assert lines[0].startswith(f"error: {lock} is held by pid 4242 on elsewhere.invalid"), lines
    assert snapshot(root) == before  # settings.json included
