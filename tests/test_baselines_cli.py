"""The baselines through the real CLI: every pruning-at-initialization method and ablation and GMP at one level."""

import glob
import json
import os
import sys

import launcher
import numpy as np
import pytest
from conftest import REPO

from lottery_tf.reports import cli as report_cli
from lottery_tf.reports import plotting
from lottery_tf.store import atomic

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
METHODS = ("magnitude", "random", "snip", "grasp", "synflow")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("baselines") / "runs")
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            "--flagfile=flags/smoke.flags",
            "--levels=1",
            "--iterations=50",
            "--eval_every=50",
            "--branch=" + ",".join(f"pai_{m}" for m in METHODS) + ",gmp",
            "--branch_levels=1",
            "--pai_ablations=shuffle,reinit,invert",
            "--synflow_rounds=3",
            "--gmp_begin_step=11",
            "--gmp_frequency=10",
            "--gmp_end_step=41",
            f"--output_dir={out}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (rep,) = glob.glob(os.path.join(out, "lottery_*", "replicate_0"))
    return out, rep


def _read(rep, folder, name):
    path = os.path.join(rep, "level_01", folder, name)
    return atomic.read_npz(path) if name.endswith(".npz") else json.load(open(path))


def _density(masks):
    return sum(m.sum() for m in masks.values()) / sum(m.size for m in masks.values())


def test_every_method_and_ablation_trains_at_the_levels_density(run):
    _, rep = run
    target = _density(_read(rep, "main", "masks.npz"))
    for method in METHODS:
        for suffix in ("", "_shuffled", "_reinit", "_inverted"):
            folder = f"pai_{method}{suffix}"
            metrics = _read(rep, folder, "metrics.json")
            assert metrics["density"] == pytest.approx(target, abs=1e-6), folder
            info = _read(rep, folder, "branch.json")
            assert info["method"] == method and info["scope"] == "global"
            assert (
                info["ablation"]
                == {"": "none", "_shuffled": "shuffle", "_reinit": "reinit", "_inverted": "invert"}[suffix]
            )


def test_magnitude_at_initialization_keeps_the_largest_start_weights_globally(run):
    _, rep = run
    start = atomic.read_npz(os.path.join(rep, "rewind_point.npz"))
    masks = _read(rep, "pai_magnitude", "masks.npz")
    kept, pruned = [], []
    for name, mask in masks.items():
        (path,) = [p for p in start if p.endswith(name.split("/")[0] + "/kernel")]
        kept.append(np.abs(start[path])[mask == 1])
        pruned.append(np.abs(start[path])[mask == 0])
    assert np.concatenate(kept).min() >= np.concatenate(pruned).max()
    inverted = _read(rep, "pai_magnitude_inverted", "masks.npz")  # keeps the smallest instead
    kept, pruned = [], []
    for name, mask in inverted.items():
        (path,) = [p for p in start if p.endswith(name.split("/")[0] + "/kernel")]
        kept.append(np.abs(start[path])[mask == 1])
        pruned.append(np.abs(start[path])[mask == 0])
    assert np.concatenate(kept).max() <= np.concatenate(pruned).min()


def test_ablations_do_what_their_names_say(run):
    _, rep = run
    for method in ("snip", "grasp", "synflow"):
        plain = _read(rep, f"pai_{method}", "masks.npz")
        shuffled = _read(rep, f"pai_{method}_shuffled", "masks.npz")
        reinit = _read(rep, f"pai_{method}_reinit", "masks.npz")
        inverted = _read(rep, f"pai_{method}_inverted", "masks.npz")
        for name in plain:
            assert shuffled[name].sum() == plain[name].sum()  # per-layer density kept
            np.testing.assert_array_equal(reinit[name], plain[name])  # same mask, other weights
        assert any(not np.array_equal(shuffled[n], plain[n]) for n in plain)
        assert any(not np.array_equal(inverted[n], plain[n]) for n in plain)
        assert (
            _read(rep, f"pai_{method}_reinit", "branch.json")["seed"]
            != _read(rep, f"pai_{method}", "branch.json")["seed"]
        )


def test_gmp_ends_at_the_levels_density_and_records_its_schedule(run):
    _, rep = run
    metrics = _read(rep, "gmp", "metrics.json")
    target = _density(_read(rep, "main", "masks.npz"))
    assert metrics["target_density"] == pytest.approx(target)
    assert metrics["density"] == pytest.approx(target, abs=0.01)  # each layer rounded on its own, as TFMOT
    assert metrics["gmp"] == {
        "final_sparsity": pytest.approx(1 - target),
        "begin_step": 11,
        "end_step": 41,
        "frequency": 10,
        "power": 3,
        "schedule": "lottery_tf",
    }
    assert _density(_read(rep, "gmp", "masks.npz")) == pytest.approx(metrics["density"])


def test_the_report_compares_every_method(run, tmp_path):
    out, _ = run
    assert report_cli.main([out, "--out", str(tmp_path / "report")]) == 0
    table = open(tmp_path / "report" / "table.md").read()
    for folder in ["gmp"] + [f"pai_{m}{s}" for m in METHODS for s in ("", "_shuffled", "_reinit", "_inverted")]:
        assert f"| {folder} | 1 |" in table, folder
    comparison = open(tmp_path / "report" / "baselines_table.md").read()
    for folder in ["main", "gmp"] + [f"pai_{m}{s}" for m in METHODS for s in ("", "_shuffled", "_reinit", "_inverted")]:
        assert f"| {folder} | " in comparison, folder
    assert (tmp_path / "report" / "baselines_vs_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plotting.branch_label("pai_grasp_shuffled") == "GraSP at initialization, layer masks shuffled"
