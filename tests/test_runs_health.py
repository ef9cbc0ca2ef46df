"""`python -m lottery_tf.runs ROOT`: levels and branches done, incomplete, corrupted."""

import glob
import os
import shutil
import signal
import sys

import launcher
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def runs(root):
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.runs", root], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("health") / "root")
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            "--flagfile=flags/smoke.flags",
            "--replicates=2",
            f"--output_dir={root}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def test_healthy_runs_listed(finished):
    result = runs(finished)
    assert result.returncode == 0, result.stderr
    (experiment,) = glob.glob(os.path.join(finished, "lottery_*"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{os.path.basename(experiment)}  data.name=synthetic")
    assert "  replicate_0: ok; main levels 0-2 (next: level 3); branches reinit 2" in lines
    assert "  replicate_1: ok; main levels 0-2 (next: level 3); branches reinit 2" in lines


def test_incomplete_and_corrupted(finished, tmp_path):
    root = str(tmp_path / "root")
    shutil.copytree(finished, root)
    (rep0,) = glob.glob(os.path.join(root, "lottery_*", "replicate_0"))
    with open(os.path.join(rep0, "level_01", "main", "metrics.json"), "w") as handle:
        handle.write("{broken")
    os.remove(os.path.join(rep0, "level_02", "reinit", "metrics.json"))
    os.makedirs(os.path.join(rep0, "level_02", "reinit", "checkpoints"))
    with open(os.path.join(rep0, "rewind_point.npz"), "wb") as handle:
        handle.write(b"PK\x03\x04 truncated")
    result = runs(root)
    assert result.returncode == 1
    out = result.stdout
    assert "  replicate_0: DAMAGED; main levels 0,2 (next: level 1); branches -" in out
    assert "    in progress (a run continues it): level 2 [reinit]" in out
    assert (
        f"    DAMAGED: {os.path.join(rep0, 'level_01', 'main', 'metrics.json')}: is unreadable" in out
        and "the next run that includes level 1 [main] trains it again" in out
    )
    assert (
        f"    DAMAGED: {os.path.join(rep0, 'rewind_point.npz')}: is unreadable or corrupted" in out
        and "the next run replays it" in out
    )
    assert "  replicate_1: ok;" in out


def test_interrupted_run_shows_incomplete(tmp_path):
    root = str(tmp_path / "root")
    killed = launcher.run(
        [sys.executable, "-m", "lottery_tf.main", "--flagfile=flags/smoke.flags", f"--output_dir={root}"],
        cwd=REPO,
        env={**ENV, "LOTTERY_TF_CRASH_AT": "checkpoint_write:5"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    result = runs(root)
    assert result.returncode == 0
    assert "  replicate_0: incomplete; main levels 0 (next: level 1); branches -" in result.stdout
    assert "    in progress (a run continues it): level 1 [main]" in result.stdout


def test_root_without_runs(tmp_path):
    result = runs(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path} holds no lottery_tf runs (no lottery_*/identity.json)"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{root}", "--lvl=2"], "--lvl: unknown flag; python -m lottery_tf.runs --help lists the flags"),
        (["--lvl=2"], "--lvl: unknown flag; python -m lottery_tf.runs --help lists the flags"),  # before ROOT
        ([], "the following arguments are required: root"),
    ],
)
def test_runs_input_errors_are_one_line(tmp_path, capsys, argv, message):
    """Issue 28, item 6: argparse's usage lines and "unrecognized arguments" last; an unknown flag comes first."""
    from lottery_tf.reports import health

    with pytest.raises(SystemExit) as exit_info:
        health.main([a.format(root=tmp_path) for a in argv])
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert exit_info.value.code == 2 and lines == [f"error: {message}"]
