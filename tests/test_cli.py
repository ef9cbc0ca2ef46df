"""End-to-end: the real CLI (`python -m lottery_tf.main`) in a subprocess."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "lottery_tf.main", *args],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout,
    )


def smoke(out, *extra):
    return cli("--flagfile=flags/smoke.flags", f"--output_dir={out}", *extra)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "smoke")
    result = smoke(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_smoke_run_writes_every_level_and_prints_table(smoke_run):
    out, result = smoke_run
    assert "level  branch weights %" in result.stdout
    with open(os.path.join(out, "config.json")) as handle:
        config = json.load(handle)
    assert config["pruning"]["levels"] == 2 and config["data"]["name"] == "synthetic"
    rows = json.load(open(os.path.join(out, "summary.json")))
    assert [(r["level"], r["branch"]) for r in rows] == [(0, "main"), (1, "main"), (2, "main"), (2, "reinit")]
    # Layer-wise: hidden layers keep 80% then 64%, the output layer 90% then 81%.
    level2 = json.load(open(os.path.join(out, "level_02", "main", "metrics.json")))
    assert level2["layer_densities"] == {
        "fc1/kernel": 150528 / 235200, "fc2/kernel": 19200 / 30000, "output/kernel": 810 / 1000,
    }
    assert level2["iterations"] == [0, 50, 100, 150, 200]
    for key in ("val", "test"):
        assert len(level2["curves"][key]["accuracy"]) == 5
    assert level2["early_stop_iteration"] in level2["iterations"]
    best = int(np.argmin(level2["curves"]["val"]["loss"]))
    assert level2["early_stop_test_accuracy"] == level2["curves"]["test"]["accuracy"][best]
    assert level2["final_test_accuracy"] > 0.5  # learns the synthetic task
    reinit = json.load(open(os.path.join(out, "level_02", "reinit", "metrics.json")))
    assert reinit["layer_densities"] == level2["layer_densities"]
    with np.load(os.path.join(out, "level_02", "reinit", "masks.npz")) as a, \
            np.load(os.path.join(out, "level_02", "main", "masks.npz")) as b:
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


def test_tensorboard_event_files_hold_accuracy_and_sparsity(smoke_run):
    import tensorflow as tf

    out, _ = smoke_run
    folders = sorted(os.path.basename(f) for f in glob.glob(os.path.join(out, "tensorboard", "*")))
    assert folders == ["level_00_main", "level_01_main", "level_02_main", "level_02_reinit"]
    tags, values = set(), {}
    for path in glob.glob(os.path.join(out, "tensorboard", "level_01_main", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
                values[value.tag] = float(tf.make_ndarray(value.tensor))
    assert {"val/accuracy", "val/loss", "test/accuracy", "test/loss", "sparsity/overall",
            "sparsity/fc1/kernel", "sparsity/fc2/kernel", "sparsity/output/kernel"} <= tags
    assert values["sparsity/fc1/kernel"] == pytest.approx(0.2)
    assert values["sparsity/output/kernel"] == pytest.approx(0.1)


def test_rerun_does_no_work_and_resume_trains_only_missing_level(smoke_run, tmp_path):
    out, _ = smoke_run
    stamp = os.path.getmtime(os.path.join(out, "level_01", "main", "metrics.json"))
    again = smoke(out)
    assert again.returncode == 0
    assert "done:" not in again.stdout  # nothing retrained
    assert os.path.getmtime(os.path.join(out, "level_01", "main", "metrics.json")) == stamp

    # Simulate a crash during level 2: its metrics were never written.
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-r", out, copy], check=True)
    level2 = json.load(open(os.path.join(copy, "level_02", "main", "metrics.json")))
    os.remove(os.path.join(copy, "level_02", "main", "metrics.json"))
    resumed = smoke(copy)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "level  2 [main] done" in resumed.stdout and "level  1 [main] done" not in resumed.stdout
    again2 = json.load(open(os.path.join(copy, "level_02", "main", "metrics.json")))
    assert again2["layer_densities"] == level2["layer_densities"]
    # Same masks, same rewind point, same data order: the same curve.
    np.testing.assert_allclose(again2["curves"]["test"]["accuracy"], level2["curves"]["test"]["accuracy"], atol=0.01)


def test_other_settings_in_same_folder_refused_and_untouched(smoke_run):
    out, _ = smoke_run
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "**"), recursive=True)}
    result = smoke(out, "--pruning_fraction=0.5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --output_dir: '{out}' holds a run with other settings (differs in pruning.fraction); choose a new folder"
    ]
    after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "**"), recursive=True)}
    assert after == before


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--dataset=cifar", "--dataset: unknown dataset 'cifar'; expected one of fashion_mnist, mnist, synthetic"),
        ("--model=resnet", "--model: unknown model 'resnet'; expected one of lenet_300_100"),
        ("--pruning_fraction=0", "--pruning_fraction: expected a fraction in (0, 1), got 0.0"),
        ("--pruning_fraction=1.5", "--pruning_fraction: expected a fraction in (0, 1), got 1.5"),
        ("--output_pruning_fraction=-0.2", "--output_pruning_fraction: expected a fraction in (0, 1), got -0.2"),
        ("--iterations=-3", "--iterations: expected an integer >= 1, got -3"),
        ("--iterations=1.5", "flag --iterations=1.5: invalid literal for int() with base 10: '1.5'"),
        ("--rewind_step=-1", "--rewind_step: expected an integer >= 0, got -1"),
        ("--rewind_step=500", "--rewind_step: must be below --iterations=200; got 500"),
        ("--levels=-1", "--levels: expected an integer >= 0, got -1"),
        ("--reinit_levels=7", "--reinit_levels: expected levels in 0..2 (--levels), got 7"),
        ("--data_dir=/no/such/folder", "--data_dir: '/no/such/folder' is not a readable folder of MNIST-format IDX files"),
        ("--flagfile=flags/nope.flags", "--flagfile: 'flags/nope.flags' does not exist or is not readable"),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, flag, message):
    out = str(tmp_path / "run")
    result = smoke(out, flag)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not os.path.exists(out)


def test_output_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("precious")
    result = smoke(str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --output_dir: '{path}' exists and is not a folder"
    assert path.read_text() == "precious"


def test_missing_data_is_one_line_naming_both_ways(tmp_path):
    env = {**ENV, "LOTTERY_TF_IDX_SEARCH_PATH": str(tmp_path / "none")}
    result = subprocess.run(
        [sys.executable, "-m", "lottery_tf.main", "--flagfile=flags/smoke.flags", "--dataset=mnist",
         "--tfds_download=false", f"--tfds_data_dir={tmp_path / 'tfds'}", f"--output_dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "--data_dir" in lines[0] and "tfds build mnist" in lines[0]
    assert not glob.glob(str(tmp_path / "run" / "level_*"))


def test_helpfull_lists_every_flag_with_help():
    result = cli("--helpfull")  # absl exits 1 after printing help
    for flag in ("dataset", "data_dir", "model", "optimizer", "iterations", "pruning_method",
                 "pruning_fraction", "output_pruning_fraction", "levels", "rewind_step", "reinit_levels", "output_dir"):
        assert f"--{flag}" in result.stdout, flag
    assert "Fraction of the remaining weights pruned per level" in result.stdout
