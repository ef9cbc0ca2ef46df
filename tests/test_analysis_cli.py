"""The instability and stability branches through the real CLI: two levels, killed once, resumed, same numbers."""

import glob
import json
import os
import shutil
import signal
import sys

import launcher
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
ENV.pop("TF_NUM_INTRAOP_THREADS", None)  # TensorFlow's default pool: bit-identical resumes with several threads
ARGS = [
    "--flagfile=flags/smoke.flags",
    "--deterministic",
    "--levels=1",
    "--iterations=100",
    "--eval_every=50",
    "--checkpoint_every=50",
    "--branch=instability,stability",
    "--branch_levels=0,1",
    "--analysis_rewind_steps=0,50",
    "--interpolation_points=4",
    "--instability_pairs=1",
    "--analysis_controls=random_prune",
]


def run(out, crash=None):
    env = dict(ENV)
    if crash:
        env["LOTTERY_TF_CRASH_AT"] = crash
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *ARGS, f"--output_dir={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def analysis_results(out):
    found = {}
    for name in ("instability.json", "stability.json"):
        for path in glob.glob(
            os.path.join(out, "lottery_*", "replicate_0", "level_*", "*", "**", name), recursive=True
        ):
            found[os.path.relpath(path, out)] = json.load(open(path))
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("analysis") / "reference")
    result = run(out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_both_analyses_at_two_levels_write_named_numbers(reference):
    out, stdout = reference
    found = analysis_results(out)
    names = sorted(os.path.relpath(p, "x").split("replicate_0/")[1] for p in found)
    assert names == sorted(
        [
            "level_00/instability/dense_k0/pair_0/instability.json",
            "level_00/instability/dense_k50/pair_0/instability.json",
            "level_01/instability/ticket_k0/pair_0/instability.json",
            "level_01/instability/ticket_k50/pair_0/instability.json",
            "level_01/instability/random_prune_k0/pair_0/instability.json",
            "level_01/instability/random_prune_k50/pair_0/instability.json",
            "level_00/stability/dense_k0/stability.json",
            "level_00/stability/dense_k50/stability.json",
            "level_01/stability/ticket_k0/stability.json",
            "level_01/stability/ticket_k50/stability.json",
            "level_01/stability/random_prune_k0/stability.json",
            "level_01/stability/random_prune_k50/stability.json",
        ]
    )
    for path, record in found.items():
        if record["analysis"] == "instability":
            assert (
                len(record["alphas"]) == 4 and len(record["test"]["error"]) == 4 and len(record["train"]["error"]) == 4
            )
            errors = record["test"]["error"]
            assert record["instability"] == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)
            assert record["stable"] == (record["instability"] < 0.02)
            assert record["batchnorm_statistics"] == "none"  # LeNet has no BatchNorm
            assert record["copies"]["l2_distance"] > 0  # two data orders end at different weights
            assert record["data_seeds"][0] != record["data_seeds"][1]
            # The path's endpoints are the two trained copies: their errors are the copies' final test errors.
            pair = os.path.dirname(os.path.join(out, path))
            for index, copy in enumerate(("copy_a", "copy_b")):
                metrics = json.load(open(os.path.join(pair, copy, "metrics.json")))
                assert metrics["start_step"] == record["rewind_step"]
                assert errors[[0, -1][index]] == pytest.approx(1 - metrics["final_test_accuracy"], abs=1e-6)
        else:
            for key in ("to_pruning", "to_data_order"):
                assert {"l2_distance", "normalized_l2_distance", "angle_degrees"} <= set(record[key])
            if record["network"] == "dense" and record["rewind_step"] == 0:
                assert record["to_pruning"]["l2_distance"] == 0.0  # the main line is that very network
    ticket = found[next(p for p in found if p.endswith("level_01/stability/ticket_k0/stability.json"))]
    assert ticket["same_order_from"] == "main" and 0 < ticket["density"] < 1
    assert "instability test" in stdout and "to pruning: L2" in stdout


def test_killed_in_a_copy_then_resumed_gives_the_same_numbers(tmp_path, reference):
    # The reference without both analyses of the level-1 ticket rewound to k = 0 (an instability pair, the
    # stability copies): a run whose main line is done. Every checkpoint left to write is a copy's.
    out = str(tmp_path / "killed")
    shutil.copytree(reference[0], out)
    (replicate,) = glob.glob(os.path.join(out, "lottery_*", "replicate_0"))
    for analysis in ("instability", "stability"):
        shutil.rmtree(os.path.join(replicate, "level_01", analysis, "ticket_k0"))
    killed = run(out, crash="after_checkpoint:1")
    assert killed.returncode == -signal.SIGKILL
    (written,) = glob.glob(os.path.join(replicate, "level_01", "*", "**", "checkpoints", "ckpt-*.json"), recursive=True)
    assert "copy_" in written or "_order" in written, written  # killed in the middle of a copy's training
    assert not analysis_results(out).keys() >= analysis_results(reference[0]).keys()
    resumed = run(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert analysis_results(out) == analysis_results(reference[0])
    before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(out, "**", "*.json"), recursive=True)}
    again = run(out)  # every result exists: nothing is trained or written again
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert {
        p: open(p, "rb").read()
        for p in glob.glob(os.path.join(out, "**", "*.json"), recursive=True)
        if "settings.json" not in p
    } == {p: b for p, b in before.items() if "settings.json" not in p}


def test_a_copy_another_process_is_training_is_not_trained_twice(tmp_path, reference):
    """Each copy has its own lock, which the local executor takes as Ray's tasks do (one per copy)."""
    from lottery_tf.store import locks

    out = str(tmp_path / "copy")
    shutil.copytree(reference[0], out)
    replicate = glob.glob(os.path.join(out, "lottery_*", "replicate_0"))[0]
    pair = os.path.join(replicate, "level_01", "instability", "ticket_k50", "pair_0")
    shutil.rmtree(os.path.join(pair, "copy_b"))
    os.remove(os.path.join(pair, "instability.json"))
    name = "level_01_instability_ticket_k50_pair_0_copy_b"
    with locks.hold(replicate, name):  # this (live) process is "training" copy_b
        refused = run(out)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert f"{name}.lock is held by pid {os.getpid()}" in lines[0]
    assert not os.path.exists(os.path.join(pair, "copy_b", "metrics.json"))


def test_rewinding_sweep_runs_one_experiment_per_step_and_reports_them(tmp_path):
    from lottery_tf.reports import cli as report_cli

    out = str(tmp_path / "sweep")
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            "--flagfile=flags/smoke.flags",
            "--levels=1",
            "--iterations=100",
            "--eval_every=50",
            "--sweep_rewind_steps=0,50",
            "--branch=instability",
            "--branch_levels=1",
            "--interpolation_points=3",
            "--instability_pairs=1",
            "--analysis_controls=reinit",
            f"--output_dir={out}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    experiments = sorted(glob.glob(os.path.join(out, "lottery_*")))
    steps = sorted(json.load(open(os.path.join(e, "settings.json")))["pruning"]["rewind_step"] for e in experiments)
    assert steps == [0, 50]
    # Each run's analysis starts at its own rewind step.
    found = sorted(
        os.path.relpath(p, out).split(os.sep)[-3]
        for p in glob.glob(
            os.path.join(out, "lottery_*", "replicate_0", "level_01", "instability", "*", "*", "instability.json")
        )
    )
    assert found == ["reinit_k0", "reinit_k50", "ticket_k0", "ticket_k50"]
    # The reinit control: the same mask on a fresh initialization (another seed), started at k like the ticket.
    for experiment in experiments:
        level = os.path.join(experiment, "replicate_0", "level_01", "instability")
        (ticket,) = glob.glob(os.path.join(level, "ticket_k*", "pair_0", "copy_a", "branch.json"))
        (reinit,) = glob.glob(os.path.join(level, "reinit_k*", "pair_0", "copy_a", "branch.json"))
        ticket, reinit = json.load(open(ticket)), json.load(open(reinit))
        assert reinit["init_seed"] != ticket["init_seed"] and reinit["start_step"] == ticket["start_step"]
    assert "sweep over rewind steps 0, 50" in result.stdout
    assert report_cli.main([out, "--out", str(tmp_path / "report")]) == 0
    assert os.path.exists(tmp_path / "report" / "rewind_sweep.png")


def test_health_check_lists_analyses_copies_in_progress_and_unreadable_results(reference, tmp_path):
    import shutil

    from lottery_tf.reports import health as runs

    out = str(tmp_path / "copy")
    shutil.copytree(reference[0], out)
    (record,) = runs.check(out)
    health = record.replicates["replicate_0"]
    assert health.done["instability"] == [0, 1] and health.done["stability"] == [0, 1]
    assert not health.incomplete and not health.problems
    rep = glob.glob(os.path.join(out, "lottery_*", "replicate_0"))[0]
    os.remove(os.path.join(rep, "level_01", "instability", "ticket_k50", "pair_0", "copy_b", "metrics.json"))
    with open(os.path.join(rep, "level_01", "stability", "ticket_k0", "stability.json"), "w") as handle:
        handle.write("{")
    (record,) = runs.check(out)
    health = record.replicates["replicate_0"]
    assert health.incomplete == ["level 1 [instability/ticket_k50/pair_0/copy_b]"]
    (problem,) = health.problems
    assert problem.path.endswith("stability/ticket_k0/stability.json") and problem.what.startswith("is unreadable")
    assert problem.fix == "the next run that includes the analysis recomputes it from its copies"
