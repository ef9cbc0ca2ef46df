"""--executor=ray: the study graph, the same files as the local executor, a killed worker, a failed task, bad inputs.

The graph tests are pure; the end-to-end tests run the real CLI with a real local
Ray instance (or a cluster started with ``ray start --head``) on this machine.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import launcher
import pytest
import ray  # noqa: F401  (tools/setup.sh installs the extra: without it these tests fail, never skip)
from conftest import REPO, cli_runs

from lottery_tf.engine import config as config_lib
from lottery_tf.engine import study
from tools.benchmark_ray import results_of

ENV = {**os.environ, "PYTHONPATH": REPO}
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)
ENV.pop("TF_NUM_INTRAOP_THREADS", None)  # local runs with TensorFlow's default pool; Ray's workers with one thread
STUDY = [
    "--flagfile=flags/smoke.flags",
    "--branch=reinit,instability,pai_snip",
    "--branch_levels=2",
    "--instability_pairs=1",
    "--deterministic",
]


def cli(*args, env=None, timeout=600):
    return launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *args],
        cwd=REPO,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def config_of(**changes):
    sections = {}
    for field, value in changes.items():
        section, name = field.split("__")
        sections.setdefault(section, {})[name] = value
    base = config_lib.ExperimentConfig()
    import dataclasses

    return dataclasses.replace(base, **{s: dataclasses.replace(getattr(base, s), **v) for s, v in sections.items()})


# -- the graph ------------------------------------------------------------------------------------------


def test_graph_of_a_study_with_branches_analyses_and_a_lineage():
    config = config_of(
        training__iterations=100,
        pruning__levels=3,
        pruning__rewind_step=10,
        branches__names=("reinit", "instability", "stability", "lr_rewind", "pai_snip"),
        branches__levels=(2,),
        branches__instability_pairs=1,
        run__replicates=2,
    )
    nodes = study.plan([config])
    by_id = {n.id: n for n in nodes}
    main = [n for n in nodes if n.key.startswith("main/")]
    assert [n.steps for n in main[:4]] == [100, 90, 90, 90]
    assert by_id["0/0/main/level_03"].deps == ("0/0/main/level_02",)
    # Level 2's mask is written when main level 1 ends: the branch need not wait for level 2.
    assert by_id["0/0/level_02/reinit"].deps == ("0/0/main/level_01",)
    assert by_id["0/0/level_02/pai_snip"].deps == ("0/0/main/level_01",)
    # lr_rewind: its own lineage of levels 1..2 from main level 0's trained weights.
    assert by_id["0/1/lr_rewind_10"].deps == ("0/1/main/level_00",) and by_id["0/1/lr_rewind_10"].steps == 180
    measure = by_id["0/0/level_02/instability/ticket_k10/pair_0"]
    assert measure.steps == 0 and measure.deps == (
        "0/0/main/level_01",
        "0/0/level_02/instability/ticket_k10/pair_0/copy_a",
        "0/0/level_02/instability/ticket_k10/pair_0/copy_b",
    )
    # Stability of the ticket at the main rewind step: the main line is its same-order copy.
    assert "0/0/level_02/stability/ticket_k10/same_order" not in by_id
    assert by_id["0/0/level_02/stability/ticket_k10"].deps == (
        "0/0/main/level_02",
        "0/0/level_02/stability/ticket_k10/other_order",
    )
    assert by_id["0/0/level_02/stability/random_prune_k10/same_order"].steps == 90
    assert len({n.replicate for n in nodes}) == 2
    # Parents come before children.
    seen = set()
    for n in nodes:
        assert set(n.deps) <= seen, n.id
        seen.add(n.id)


def test_graph_size_and_ideal_speedups_of_a_small_graph():
    nodes = [
        study.Training(0, 0, "main/level_00", 0, 100),
        study.Training(0, 0, "main/level_01", 1, 50, ("0/0/main/level_00",)),
        study.Training(0, 0, "a", 1, 50, ("0/0/main/level_00",)),
        study.Training(0, 0, "b", 1, 50, ("0/0/main/level_00",)),
        study.Training(0, 0, "c", 1, 0, ("0/0/a", "0/0/b")),
    ]
    graph = study.size(nodes)
    assert graph["trainings"] == 4 and graph["measurements"] == 1
    assert graph["total_steps"] == 250 and graph["critical_path_steps"] == 150
    assert [study.makespan(nodes, w) for w in (1, 2, 3, 16)] == [250, 200, 150, 150]
    assert graph["speedups"][1] == 1.0 and graph["speedups"][2] == 1.25 and graph["speedups"][4] == 250 / 150
    assert "5 trainings" not in study.format_size(graph) and "critical path 150 steps" in study.format_size(graph)


def test_dry_run_prints_the_graph_size_for_either_executor():
    local = cli("--flagfile=flags/smoke.flags", "--dry_run")
    assert local.returncode == 0, local.stderr
    assert "study graph: 4 trainings, 800 training steps, critical path 600 steps" in local.stdout
    assert "1: 1.00x  2: 1.33x  4: 1.33x" in local.stdout
    on_ray = cli(*STUDY, "--dry_run", "--executor=ray", "--replicates=2")
    assert on_ray.returncode == 0, on_ray.stderr
    # Per replicate: 3 main levels, reinit, pai_snip, 2 x 2 instability copies, 2 measurements.
    assert "study graph: 18 trainings (4 analysis measurements besides), 3,600 training steps" in on_ray.stdout


# -- end to end ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_and_ray(tmp_path_factory):
    """The smoke study with a control, an analysis and a baseline, local and on Ray with a worker killed."""
    root = tmp_path_factory.mktemp("ray_study")
    local = cli(*STUDY, f"--output_dir={root / 'local'}")
    assert local.returncode == 0, local.stderr[-2000:]
    out = root / "ray"
    # Each worker process waits at its first checkpoint until the test has killed the one training main level 0
    # in the middle of its training (and then releases them all).
    release = root / "release"
    env = {**ENV, "LOTTERY_TF_CRASH_AT": f"after_checkpoint:1:wait={release}"}
    # A fresh interpreter (not tests/launcher.py's fork): the driver's silence without TF_CPP_MIN_LOG_LEVEL is checked.
    process = subprocess.Popen(
        [sys.executable, "-m", "lottery_tf.main", *STUDY, f"--output_dir={out}", "--executor=ray"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed, seen = None, None
    deadline = time.time() + 240
    while killed is None and time.time() < deadline and process.poll() is None:
        locks = glob.glob(str(out / "lottery_*" / "replicate_0" / ".locks" / "main.lock"))
        checkpoints = glob.glob(
            str(out / "lottery_*" / "replicate_0" / "level_00" / "main" / "checkpoints" / "ckpt-*.json")
        )
        seen = (seen or time.time()) if checkpoints else None
        if locks and seen and time.time() - seen > 0.5:  # its .json is written last: the worker waits after it
            try:
                holder = json.load(open(locks[0]))
            except (OSError, ValueError):
                holder = None
            if holder and holder.get("pid") not in (None, process.pid):
                os.kill(holder["pid"], signal.SIGKILL)
                killed = holder["pid"]
        time.sleep(0.1)
    release.touch()
    stdout, stderr = process.communicate(timeout=600)
    return root, local, (process.returncode, stdout, stderr), killed


@pytest.mark.slow
def test_ray_study_is_bit_identical_to_local_after_a_killed_worker(local_and_ray):
    root, local, (code, stdout, stderr), killed = local_and_ray
    assert killed, "no worker was caught in the middle of main level 0"
    assert code == 0, stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 0, stderr[-2000:]  # no TensorFlow or Ray chatter
    local_files, ray_files = results_of(root / "local"), results_of(root / "ray")
    assert len(local_files) > 20 and sorted(local_files) == sorted(ray_files)
    different = [name for name in local_files if local_files[name] != ray_files[name]]
    assert not different, different[:5]
    # The killed training was retried and resumed from its checkpoint; one line per finished node.
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 11, stdout
    assert any("main/level_00: resumed from a checkpoint, trained in" in line for line in lines), lines
    assert lines[-1].startswith("[11/11 done, 0 running, 0 waiting]")
    assert "ETA" in lines[0] and "ray: 11 tasks done in" in stdout
    # The final table as the local executor prints it.
    table = [line for line in local.stdout.splitlines() if line.startswith("| lottery_")]
    assert table and all(line in stdout for line in table)


@pytest.fixture
def cluster():
    """A Ray cluster started with ``ray start --head`` (another process), to join with --ray_address."""
    port = _free_port()
    head = _start_head(
        ["ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--block"], port
    )
    yield f"127.0.0.1:{port}"
    _stop(head)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(command: list, port: int):
    """Starts a ``ray start --head --block`` command in its own process group; returns once it listens on ``port``."""
    head = launcher.popen(
        command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(2)
    return head


def _stop(head):
    """Stops a ``ray start --block`` and the processes it started."""
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=15)


@pytest.mark.slow
def test_a_task_that_fails_for_a_user_error_stops_the_study_with_the_local_line(tmp_path, cluster):
    diverging = [
        "--flagfile=flags/smoke.flags",
        "--levels=1",
        "--branch=retrain",
        "--branch_optimizer=sgd",
        "--branch_learning_rate=100",
        "--branch_levels=1",
    ]
    local = cli(*diverging, f"--output_dir={tmp_path / 'local'}")
    on_ray = cli(*diverging, f"--output_dir={tmp_path / 'ray'}", "--executor=ray", f"--ray_address={cluster}")
    assert local.returncode == 2 and on_ray.returncode == 2, on_ray.stderr[-2000:]
    line = local.stderr.strip().splitlines()
    assert len(line) == 1 and "diverged at step" in line[0]
    assert on_ray.stderr.strip().splitlines() == line
    assert "ray: 3 tasks on 1 node(s), 2 CPUs" in on_ray.stdout
    # The main line it branched from is kept, done; the diverged branch is not.
    done = sorted(glob.glob(str(tmp_path / "ray" / "lottery_*" / "replicate_0" / "level_*" / "*" / "metrics.json")))
    assert [os.path.relpath(p, tmp_path / "ray").split(os.sep)[2:4] for p in done] == [
        ["level_00", "main"],
        ["level_01", "main"],
    ]


# -- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, expected",
    [
        (
            {"run__executor": "ray", "run__gpus_per_training": 0.0 - 0.5},
            "--gpus_per_training: expected a number in (0, 1]",
        ),
        ({"run__executor": "ray", "run__gpus_per_training": 1.5}, "--gpus_per_training: expected a number in (0, 1]"),
        (
            {"run__executor": "ray", "run__cpus_per_training": 0.0},
            "--cpus_per_training: expected a number in (0, 1024]",
        ),
        ({"run__ray_address": "auto"}, "--ray_address: auto is set, but only --executor=ray reads it"),
        ({"run__gpus_per_training": 0.5}, "--gpus_per_training: 0.5 is set, but only --executor=ray reads it"),
        ({"run__executor": "ray", "run__strategy": "multi_worker_mirrored"}, "--executor: ray schedules whole"),
        ({"run__executor": "dask"}, "--executor: unknown value 'dask'; expected one of local, ray"),
    ],
)
def test_executor_settings_are_checked_with_one_line(changes, expected):
    with pytest.raises(config_lib.ConfigError) as raised:
        config_lib.validate(config_of(**changes))
    assert str(raised.value).startswith(expected), str(raised.value)


def _one_line_and_nothing_written(result, out, starts):
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(starts), lines
    assert not os.path.exists(out), os.listdir(out)


@pytest.mark.slow
def test_ray_inputs_that_cannot_be_served_fail_before_anything_is_written(tmp_path):
    out = tmp_path / "runs"
    ray_args = [*STUDY, f"--output_dir={out}", "--executor=ray"]
    blocked = launcher.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['ray'] = None; sys.argv[0] = 'lottery_tf'; from lottery_tf.main import run; run()",
            *ray_args,
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_and_nothing_written(blocked, out, "error: --executor: ray needs Ray, which is not installed")
    # A cluster `ray start` started here and that has since stopped: "auto" names it and cannot reach it, and
    # no --ray_address starts a local instance regardless (Ray's own default would join it, and hang).
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    env = {"RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": ""}
    try:
        cases = [
            (["--ray_address=auto"], "error: --ray_address: auto: no Ray cluster was started"),
            (["--ray_address=127.0.0.1:1"], "error: --ray_address: cannot reach a Ray cluster at 127.0.0.1:1"),
            (["--ray_address=nohost"], "error: --ray_address: expected auto or HOST:PORT"),
        ]
        for result, (_, starts) in zip(cli_runs([ray_args + a for a, _ in cases], env=env), cases):
            _one_line_and_nothing_written(result, out, starts)
        os.mkdir(os.path.join(ray_tmp, "ray"))
        with open(os.path.join(ray_tmp, "ray", "ray_current_cluster"), "w") as f:
            f.write("127.0.0.1:1")
        cases = [
            (["--cpus_per_training=64"], "error: --cpus_per_training: 64 asked, but the largest node"),
            (["--ray_address=auto"], "error: --ray_address: cannot reach a Ray cluster at 127.0.0.1:1"),
        ]
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            cases.append((["--gpus_per_training=0.5"], "error: --gpus_per_training: 0.5 asked, but Ray sees no GPU"))
        for result, (_, starts) in zip(cli_runs([ray_args + a for a, _ in cases], env=env), cases):
            _one_line_and_nothing_written(result, out, starts)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs mount namespaces (unshare -m) to hide the folder from Ray")
def test_an_output_folder_the_workers_do_not_share_is_refused(tmp_path):
    """Ray's workers run in a mount namespace where the output folder is another (empty) filesystem."""
    out = tmp_path / "runs"
    out.mkdir()
    port = _free_port()
    script = (
        f"mount -t tmpfs none {out} && exec ray start --head --port={port} --num-cpus=1 "
        "--include-dashboard=false --block"
    )
    head = _start_head(["unshare", "-m", "--propagation", "private", "sh", "-c", script], port)
    try:
        result = cli(*STUDY, f"--output_dir={out}", "--executor=ray", f"--ray_address=127.0.0.1:{port}")
    finally:
        _stop(head)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --output_dir: {out} is not shared with Ray's workers"), (
        lines
    )
    assert "shared filesystem" in lines[0]
    assert os.listdir(out) == []  # no run folder, no probe left behind
