"""Dynamic sparse training through the CLI: ``--branch=set,rigl`` end to end, a kill -9 resume, mirrored."""

import glob
import json
import os
import signal
import sys

import launcher
import numpy as np
import pytest
from conftest import REPO, results

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
ENV.pop("TF_NUM_INTRAOP_THREADS", None)  # TensorFlow's default pool: bit-identical resumes with several threads
# 60 steps a level, checkpoints at step 30, mask updates at steps 15, 30 and 45 (75% of 60).
ARGS = [
    "--flagfile=flags/smoke.flags",
    "--deterministic",
    "--iterations=60",
    "--eval_every=30",
    "--checkpoint_every=30",
    "--levels=1",
    "--branch=set,rigl",
    "--branch_levels=1",
    "--dst_distribution=erk",
    "--dst_update_every=15",
]
BRANCHES = ("set_erk_89fa11c5", "rigl_erk_89fa11c5")  # the suffix: the hash of --dst_update_every=15


def run(out, *extra, crash=None, args=ARGS):
    env = dict(ENV)
    if crash:
        env["LOTTERY_TF_CRASH_AT"] = crash
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *args, *extra, f"--output_dir={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def level_folder(out, branch, level=1):
    (found,) = glob.glob(os.path.join(out, "lottery_*", "replicate_0", f"level_{level:02d}", branch))
    return found


def npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def moved_of(out):
    return {
        b: json.load(open(os.path.join(level_folder(out, b), "metrics.json")))["connections_moved"] for b in BRANCHES
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference"))
    result = run(out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_set_and_rigl_train_at_the_levels_density_and_move_connections(reference, tmp_path):
    main_masks = npz(os.path.join(level_folder(reference, "main"), "masks.npz"))
    kept = sum(int(np.count_nonzero(m)) for m in main_masks.values())
    assert kept < sum(m.size for m in main_masks.values())  # level 1 is pruned
    for branch in BRANCHES:
        folder = level_folder(reference, branch)
        metrics = json.load(open(os.path.join(folder, "metrics.json")))
        info = json.load(open(os.path.join(folder, "branch.json")))
        masks, weights = npz(os.path.join(folder, "masks.npz")), npz(os.path.join(folder, "final_weights.npz"))
        assert sorted(masks) == sorted(main_masks)
        assert sum(int(np.count_nonzero(m)) for m in masks.values()) == kept  # the level's count, exactly
        assert masks != {} and any(not np.array_equal(masks[n], main_masks[n]) for n in masks)
        for name, mask in masks.items():
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert np.all(weights[name][mask == 0] == 0.0), (branch, name)
            assert np.count_nonzero(weights[name][mask == 1]) > 0.9 * mask.sum()
        assert metrics["dst_updates"] == 3  # steps 15, 30 and 45
        assert metrics["connections_moved"]["fc1/kernel"] > 0
        assert info["dst"]["distribution"] == "erk" and info["dst"]["end_step"] == 45
        assert metrics["density"] == pytest.approx(kept / sum(m.size for m in main_masks.values()), abs=0)
    report = str(tmp_path / "report")
    made = launcher.run(
        [sys.executable, "-m", "lottery_tf.report", "--out", report, "--no_plots", reference],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    table = open(os.path.join(report, "baselines_table.md")).read()
    for branch, words in zip(BRANCHES, ("SET (ERK)", "RigL (ERK)")):
        assert f"| {words} [89fa11c5] | {branch} |" in table
        assert branch in open(os.path.join(report, "table.md")).read()
    moved = open(os.path.join(report, "baselines_connections_moved.md")).read()
    fc1 = moved_of(reference)[BRANCHES[1]]["fc1/kernel"]
    assert f"| RigL (ERK) [89fa11c5] | 1 | {fc1} (" in moved
    # Time per step: each training's wall seconds / steps, beside the main line's at the same level (not level 0).
    timing = open(os.path.join(report, "baselines_time_per_step.md")).read()
    per_step = {
        b: 1000 * m["wall_seconds"] / m["steps"]
        for b in ("main", *BRANCHES)
        for m in [json.load(open(os.path.join(level_folder(reference, b), "metrics.json")))]
    }
    assert f"| lottery ticket (IMP main line) | 1 | {per_step['main']:.3f} ± 0.000 | 1.00 |" in timing, timing
    ratio = per_step[BRANCHES[1]] / per_step["main"]
    assert f"| RigL (ERK) [89fa11c5] | 1 | {per_step[BRANCHES[1]]:.3f} ± 0.000 | {ratio:.2f} |" in timing, timing


def test_kill_9_in_set_then_in_rigl_resumes_to_the_same_bits(reference, tmp_path):
    out = str(tmp_path / "run")
    # Checkpoints at step 30: level 0, level 1, then set's (3rd) - killed there; the resumed run's first
    # checkpoint is rigl's (set has no other) - killed there; the last run finishes.
    for crash, branch in (("after_checkpoint:3", BRANCHES[0]), ("after_checkpoint:1", BRANCHES[1])):
        killed = run(out, crash=crash)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        (checkpoint,) = glob.glob(os.path.join(level_folder(out, branch), "checkpoints", "ckpt-000000030.json"))
        state = json.load(open(checkpoint))["state"]["dynamic_sparse"]
        # The update after step 30 runs when step 31 begins: after the checkpoint, made again on resume.
        assert [u["step"] for u in state["updates"]] == [15] and state["rng"]["bit_generator"] == "PCG64"
    resumed = run(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("resuming from") == 1  # rigl's; set resumed in the run before
    a, b = results(out), results(reference)
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], dict):
            for name in a[key]:
                np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key}:{name}")
        else:
            assert a[key] == b[key], key
    assert moved_of(out) == moved_of(reference)


GRADIENTS = """
import numpy as np
from lottery_tf.engine.distribute import make_strategy, split_cpu
split_cpu(2)
from lottery_tf.core.sparse_training import DynamicSparseCallback
from lottery_tf.engine.branches.dst import EngineDynamicSparse
from lottery_tf.engine.config import DataConfig, ExperimentConfig, TrainingConfig
from lottery_tf.engine.data import get_splits
from lottery_tf.engine.levels import Context
from lottery_tf.engine.recipe import build_masked_model
config = ExperimentConfig(data=DataConfig(name="synthetic", synthetic_train_examples=256, synthetic_test_examples=64,
                                          validation_examples=64), training=TrainingConfig(batch_size=64))
splits = get_splits(config.data)
strategy = make_strategy("mirrored")
model = build_masked_model(config, splits, 7, strategy=strategy)
one = Context(config, splits, 0, 7, "unused", strategy=None)
two = Context(config, splits, 0, 7, "unused", strategy=strategy)
kwargs = dict(method="rigl", density=0.5, total_steps=100)
reference = EngineDynamicSparse(one, 64, **kwargs)
reference.set_model(model)
mirrored = EngineDynamicSparse(two, 64, **kwargs)
mirrored.set_model(model)
# The library's eager one-device gradient on the same batch, the engine's on one device, the engine's mirrored.
a = DynamicSparseCallback.dense_gradients(reference, 40)
one_device, b = reference.dense_gradients(40), mirrored.dense_gradients(40)
assert strategy.num_replicas_in_sync == 2
for name in a:
    assert np.abs(a[name]).max() > 0, name
    np.testing.assert_allclose(one_device[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)
print("same gradients:", sorted(a))
"""


def test_rigl_gradient_under_mirrored_is_the_all_reduced_one():
    """On 2 logical CPUs the replicas' gradients of half batches, summed, are the one-device full-batch gradient."""
    result = launcher.run(
        [sys.executable, "-c", GRADIENTS], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same gradients: ['fc1/kernel', 'fc2/kernel', 'output/kernel']" in result.stdout


def test_rigl_runs_under_mirrored_on_two_cpus(tmp_path):
    out = str(tmp_path / "mirrored")
    short = [
        "--iterations=40",
        "--eval_every=20",
        "--checkpoint_every=20",
        "--dst_update_every=10",
        "--steps_per_execution=1",
    ]
    result = run(out, "--strategy=mirrored", "--cpu_devices=2", "--branch=rigl", *short)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "strategy: mirrored, 2 replica(s)" in result.stdout
    (folder,) = glob.glob(os.path.join(out, "lottery_*", "replicate_0", "level_01", "rigl_erk_*"))
    metrics = json.load(open(os.path.join(folder, "metrics.json")))
    assert metrics["dst_updates"] == 3 and metrics["connections_moved"]["fc1/kernel"] > 0  # steps 10, 20, 30


def test_layer_counts_add_up_to_the_levels_count_with_literal_values():
    from lottery_tf.core.sparse_training import layer_counts, random_masks_with_counts

    shapes = {"a": (10, 10), "b": (5, 4), "c": (3,)}
    # Uniform 0.5 of 123 weights, 61 kept: shares 100*61/123 = 49.59, 20*61/123 = 9.92, 3*61/123 = 1.49;
    # floors 49 + 9 + 1 = 59, the 2 left go to b (.92) and a (.59).
    assert layer_counts(shapes, {"a": 0.5, "b": 0.5, "c": 0.5}, 61) == {"a": 50, "b": 10, "c": 1}
    # A layer at density 1 beside one at 0.1 (ERK-like): shares 61 * 10/30 = 20.33 and 61 * 20/30 = 40.67,
    # capped at the layer's size (b: 20), the rest to the room left in a.
    assert layer_counts({"a": (100,), "b": (20,)}, {"a": 0.1, "b": 1.0}, 61) == {"a": 41, "b": 20}
    assert layer_counts(shapes, {"a": 1.0, "b": 1.0, "c": 1.0}, 123) == {"a": 100, "b": 20, "c": 3}
    with pytest.raises(ValueError, match="total must be an integer in \\[1, 123\\]"):
        layer_counts(shapes, {"a": 0.5, "b": 0.5, "c": 0.5}, 124)
    masks = random_masks_with_counts(shapes, {"a": 50, "b": 10, "c": 1}, np.random.default_rng(0))
    assert {n: int(m.sum()) for n, m in masks.items()} == {"a": 50, "b": 10, "c": 1}
    assert {n: m.shape for n, m in masks.items()} == shapes
