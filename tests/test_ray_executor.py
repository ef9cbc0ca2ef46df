"""--executor=ray: the study graph, the same files as the local executor, a killed worker, a failed task, bad inputs.

The graph tests are pure; the end-to-end tests run the real CLI with a real local
Ray instance (or a cluster started with ``ray start --head``) on this machine.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import launcher
import numpy as np
import pytest
import ray  # noqa: F401  (tools/setup.sh installs the extra: without it these tests fail, never skip)
from conftest import REPO, cli_runs, results

from lottery_tf.engine import config as config_lib
from lottery_tf.engine import study
from tools.benchmark_ray import results_of
from tools.lost_node_trial import wait_for_port

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


def test_the_warm_up_count_never_exceeds_the_graph_for_any_branch_type():
    """The driver starts min(slots, study.least_trainings) workers before a worker plans the graph: never too many."""
    from lottery_tf.engine.branches import BRANCH_TYPES

    for name in BRANCH_TYPES.names():
        for levels, branch_levels, replicates in ((1, (1,), 1), (3, (1, 3), 2)):
            config = config_of(
                training__iterations=100,
                pruning__levels=levels,
                pruning__rewind_step=10,
                branches__names=(name,),
                branches__levels=branch_levels,
                branches__instability_pairs=1,
                run__replicates=replicates,
            )
            bound, nodes = study.least_trainings([config]), study.plan([config])
            assert replicates * (levels + 2) == bound <= len(nodes), (name, levels)


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


def test_the_schedule_keeps_the_longest_path_first_and_never_hands_out_more_than_its_slots():
    """Four short branches ready with the main line's next level: the level starts first, and only one branch
    beside it; handing all five to Ray at once would run them in submission order as slots free."""
    main = [
        study.Training(0, 0, f"main/level_0{level}", level, 10, ((f"0/0/main/level_0{level - 1}",) if level else ()))
        for level in range(4)
    ]
    branches = [study.Training(0, 0, f"level_01/b{i}", 1, 5, ("0/0/main/level_00",)) for i in range(4)]
    nodes = main + branches
    schedule = study.Schedule(nodes, slots=2)
    assert [n.key for n in schedule.start()] == ["main/level_00"]
    schedule.finish("0/0/main/level_00")
    assert [n.key for n in schedule.start()] == ["main/level_01", "level_01/b0"]
    assert schedule.start() == [] and len(schedule.running) == 2 and schedule.queued == 5
    schedule.finish("0/0/level_01/b0")
    assert [n.key for n in schedule.start()] == ["level_01/b1"]
    schedule.finish("0/0/main/level_01")
    assert [n.key for n in schedule.start()] == ["main/level_02"]  # the chain, not the branches waiting longer
    # The dry run's makespan is this schedule's: the chain (40 steps) bounds it with two slots.
    assert study.makespan(nodes, 2) == 40 and study.makespan(nodes, 1) == 60
    with pytest.raises(ValueError, match="slots must be at least 1"):
        study.Schedule(nodes, 0)


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
    # A status block every second: the trainings held at their first checkpoint show their step meanwhile.
    env = {**ENV, "LOTTERY_TF_CRASH_AT": f"after_checkpoint:1:wait={release}", "LOTTERY_TF_STATUS_SECONDS": "1"}
    env["LOTTERY_TF_CHECK_NOTICE_SECONDS"] = "0.1"  # the line a check that is slow to come back prints
    # A fresh interpreter (not tests/launcher.py's fork): the driver's silence without TF_CPP_MIN_LOG_LEVEL is checked.
    # -X importtime: the driver imports no TensorFlow (a warmed worker checks the study).
    # (Its stderr, with thousands of import lines, goes to a file: a pipe read only at the end would fill.)
    errors = open(root / "driver.stderr", "w+")
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "lottery_tf.main", *STUDY, f"--output_dir={out}", "--executor=ray"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=errors,
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
    stdout, _ = process.communicate(timeout=600)
    with errors:
        errors.seek(0)
        stderr = errors.read()
    return root, local, (process.returncode, stdout, stderr), killed


@pytest.mark.slow
def test_ray_study_is_bit_identical_to_local_after_a_killed_worker(local_and_ray):
    root, local, (code, stdout, stderr), killed = local_and_ray
    assert killed, "no worker was caught in the middle of main level 0"
    assert code == 0, stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    assert "ray" in imported and not imported & {"tensorflow", "keras"}, "the driver imported TensorFlow"
    stderr = "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))
    assert len(stderr.strip().splitlines()) == 0, stderr[-2000:]  # no TensorFlow or Ray chatter
    assert re.search(r"ray: 2 worker\(s\) warmed: .* the study checked on the first in \d", stdout), stdout
    assert "ray: still waiting, after 0.1 s, for the Ray worker that checks the study (its data, model" in stdout
    local_files, ray_files = results_of(root / "local"), results_of(root / "ray")
    assert len(local_files) > 20 and sorted(local_files) == sorted(ray_files)
    different = [name for name in local_files if local_files[name] != ray_files[name]]
    assert not different, different[:5]
    # The killed training was retried and resumed from its checkpoint; one line per finished node.
    lines = [line for line in stdout.splitlines() if re.match(r"\[\d+/\d+ done, .*\] replicate ", line)]
    assert len(lines) == 11, stdout
    # The dead worker is named by its training, once, and Ray's own lines about it are not shown.
    retries = [line for line in stdout.splitlines() if line.startswith("[retry] ")]
    assert len(retries) == 1 and retries[0].startswith("[retry] replicate 0 main/level_00: its worker (pid "), stdout
    assert "Ray started attempt 2 of 4" in retries[0]
    assert "A worker died or was killed" not in stdout and "retries remaining" not in stdout
    # While trainings ran: status blocks with each running training's step and rate, from its log.
    status = [
        line for line in stdout.splitlines() if re.match(r"  replicate 0 \S+: step \d+/200, \d+ steps/s on ", line)
    ]
    assert any(line.startswith("  replicate 0 main/level_00: step 50/200, ") for line in status), stdout
    (log,) = glob.glob(str(root / "ray" / "lottery_*" / "replicate_0" / "logs" / "main" / "level_00.log"))
    headers = [line for line in open(log).read().splitlines() if line.startswith("== attempt ")]
    assert [h.split()[2] for h in headers] == ["1", "2"] and f"pid {killed} " in headers[0], headers
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
    wait_for_port(port, 60)
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
    # The main line it branched from is kept, done; the diverged branch is not. Main level 1 runs beside the
    # branch: done if it finished before the branch failed, else cancelled (it resumes with the same command).
    done = sorted(glob.glob(str(tmp_path / "ray" / "lottery_*" / "replicate_0" / "level_*" / "*" / "metrics.json")))
    found = [os.path.relpath(p, tmp_path / "ray").split(os.sep)[2:4] for p in done]
    assert found in ([["level_00", "main"]], [["level_00", "main"], ["level_01", "main"]]), found


# -- bad input -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_what_a_worker_checks_for_the_driver_fails_with_the_local_line_and_writes_nothing(tmp_path, cluster):
    """The driver imports no TensorFlow: a warmed worker checks the model and the data, and says what a local run says."""
    cases = [["--exclude_layers=fc9"], ["--levels=60"], ["--dataset=mnist"]]
    local = cli_runs([["--flagfile=flags/smoke.flags", f"--output_dir={tmp_path / 'local'}", *c] for c in cases])
    for case, here in zip(cases, local):
        out = tmp_path / "ray"
        on_ray = cli(
            "--flagfile=flags/smoke.flags", f"--output_dir={out}", "--executor=ray", f"--ray_address={cluster}", *case
        )
        assert here.returncode == 2 and on_ray.returncode == 2, (case, on_ray.stderr[-2000:])
        (line,) = here.stderr.strip().splitlines()
        assert line.startswith(f"error: --{case[0][2:].split('=')[0]}"), line
        assert on_ray.stderr.strip().splitlines() == [line], case
        assert not out.exists() and not (tmp_path / "local").exists(), case


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
        (
            {"run__executor": "ray", "run__ray_address": "ray://head:10001"},
            "--ray_address: ray://head:10001 is a Ray Client address, which lottery_tf does not support",
        ),
        ({"run__executor": "ray", "run__ray_address": "head:port"}, "--ray_address: expected auto or HOST:PORT"),
        ({"run__executor": "ray", "run__ray_address": "http://head:8265"}, "--ray_address: expected auto or HOST:PORT"),
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
            (["--cpus_per_training=64"], "error: --cpus_per_training: 64 asked, but this machine has"),
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
@pytest.mark.parametrize(
    "mount, starts, says",
    [
        ("mount -t tmpfs none {out}", "{out} is not shared with Ray's workers", "shared filesystem"),
        (
            "mount --bind -o ro {out} {out}",
            "Ray's worker on ",
            "cannot write in {out} (Read-only file system): --output_dir must be a folder every node can write",
        ),
    ],
    ids=["another_filesystem", "read_only"],
)
def test_an_output_folder_the_workers_do_not_share_is_refused(tmp_path, mount, starts, says):
    """Ray's workers run in a mount namespace where the output folder is another (empty) filesystem, or read-only."""
    out = tmp_path / "runs"
    out.mkdir()
    port = _free_port()
    script = (
        f"{mount.format(out=out)} && exec ray start --head --port={port} --num-cpus=1 --include-dashboard=false --block"
    )
    head = _start_head(["unshare", "-m", "--propagation", "private", "sh", "-c", script], port)
    try:
        result = cli(*STUDY, f"--output_dir={out}", "--executor=ray", f"--ray_address=127.0.0.1:{port}")
    finally:
        _stop(head)
    assert result.returncode == 2, result.stderr[-1500:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --output_dir: {starts.format(out=out)}"), lines
    assert says.format(out=out) in lines[0]
    assert os.listdir(out) == []  # no run folder, no probe left behind


# -- a lost node ------------------------------------------------------------------------------------------

# Short leases and a quick node-death check, so the trial takes a minute rather than the real 3 minutes
# (tools/lost_node_trial.py runs it with the real ones, before and after leases).
FAST = {
    "LOTTERY_TF_LOCK_LEASE_SECONDS": "2",
    "LOTTERY_TF_LOCK_GRACE_SECONDS": "1",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
SHORTER = ("--iterations=600",)  # still 500 steps after the first checkpoint to kill the node in


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs UTS namespaces (unshare -u) for a node with its own host name")
def test_a_node_lost_mid_training_is_taken_over_and_the_study_is_bit_identical(tmp_path):
    """A two-node cluster; the second node (its own host name) is killed whole while it trains: the study ends.

    Ray retries the task on the head node, which finds the dead node's lock, waits for its lease to run out,
    takes it over and resumes from the training's checkpoint; every result equals the local run's.
    """
    from tools import lost_node_trial as trial

    out, reference = str(tmp_path / "ray"), str(tmp_path / "local")
    env = {**ENV, **FAST}
    address, head, node = trial.start_cluster(env)
    try:
        lost = trial.lose_a_node(address, node, out, env, REPO, timeout=600, extra=SHORTER)
    finally:
        trial.stop_cluster(head, node)
    assert lost["victim"] and lost["killed_processes"] >= 2, lost["output"][-3000:]
    assert lost["finished"] and lost["returncode"] == 0, lost["output"][-3000:]
    replicate = lost["victim"].split("replicate_")[1].split(os.sep)[0]
    level = lost["victim"].split("level_")[1].split(os.sep)[0]
    assert f"[retry] replicate {replicate} main/level_{level}: its worker (pid " in lost["output"]
    (log,) = glob.glob(os.path.join(out, "lottery_*", f"replicate_{replicate}", "logs", "main", f"level_{level}.log"))
    text = open(log).read()
    assert f"== attempt 1 on {trial.LOST_HOST} " in text and "== attempt 2 on " in text
    assert "its lease expired" in text and f"the holder on host {trial.LOST_HOST} is gone" in text, text[-2000:]
    assert "resuming from" in text, text[-2000:]

    local = cli(*trial.STUDY, *SHORTER, f"--output_dir={reference}", env=env)
    assert local.returncode == 0, local.stderr[-2000:]
    a, b = results(out), results(reference)
    assert sorted(a) == sorted(b) and sum(key.endswith("final_weights.npz") for key in a) == 4
    for key in a:
        if isinstance(a[key], dict):
            for name in a[key]:
                np.testing.assert_array_equal(a[key][name], b[key][name], err_msg=f"{key}:{name}")
        else:
            assert a[key] == b[key], key


# -- addresses, the dry run, a killed driver, local or Ray ----------------------------------------------------


@pytest.mark.slow
def test_an_address_where_no_ray_cluster_answers_fails_with_one_line(tmp_path):
    """Another server there, a port that accepts and never answers, Ray Client's ray://, a far host: one line each.

    Ray's own client retries such an address for minutes with a warning a second; the subprocess timeout is
    the guard (no assertion on speed).
    """
    from concurrent import futures

    import grpc

    out = tmp_path / "runs"
    http_port = _free_port()
    http = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    silent = socket.socket()  # accepts connections (the kernel does), never reads or answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    other = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # a gRPC server that knows none of Ray's calls
    grpc_port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        silent_address = f"127.0.0.1:{silent.getsockname()[1]}"
        not_ray = "something listens there, but it is not a Ray cluster (no gRPC answer within 5 s)"
        cases = [
            (f"127.0.0.1:{http_port}", f"127.0.0.1:{http_port}: {not_ray}"),
            (silent_address, f"{silent_address}: {not_ray}"),
            (f"127.0.0.1:{grpc_port}", f"127.0.0.1:{grpc_port}: a server answers there, but not as a Ray cluster"),
            (
                "ray://127.0.0.1:10001",
                "ray://127.0.0.1:10001 is a Ray Client address, which lottery_tf does not support",
            ),
            # TEST-NET-3: routed nowhere (a timeout), or answered by a proxy that is not Ray's.
            ("203.0.113.1:6379", ""),
        ]
        for address, says in cases:
            result = cli(*STUDY, f"--output_dir={out}", "--executor=ray", f"--ray_address={address}", timeout=60)
            _one_line_and_nothing_written(result, out, "error: --ray_address: ")
            assert says in result.stderr and address in result.stderr, result.stderr
    finally:
        http.kill()
        http.wait()
        silent.close()
        other.stop(0)


@pytest.mark.slow
def test_dry_run_checks_the_ray_settings_a_run_checks(tmp_path, cluster):
    """Joined and left (an address), or this machine read as Ray counts it (none): no study starts, nothing written."""
    from lottery_tf.engine import ray_executor

    out = tmp_path / "runs"
    dry = [*STUDY, f"--output_dir={out}", "--executor=ray", "--dry_run"]
    cpus, gpus = ray_executor._this_machine()
    more = max(64, 2 * cpus)
    cases = [
        (["--ray_address=127.0.0.1:1"], "error: --ray_address: cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--ray_address=ray://127.0.0.1:10001"], "error: --ray_address: ray://127.0.0.1:10001 is a Ray Client"),
        ([f"--cpus_per_training={more:g}"], f"error: --cpus_per_training: {more:g} asked, but this machine has"),
        (
            [f"--ray_address={cluster}", "--cpus_per_training=3"],
            f"error: --cpus_per_training: 3 asked, but the largest node of the cluster at {cluster} has 2 CPUs",
        ),
    ]
    if not gpus:
        cases.append((["--gpus_per_training=0.5"], "error: --gpus_per_training: 0.5 asked, but Ray sees no GPU"))
    for args, starts in cases:
        _one_line_and_nothing_written(cli(*dry, *args, timeout=120), out, starts)
    # Settings that can be served: what the study would get, and whether the local executor would be faster.
    whole = cli(*dry, f"--cpus_per_training={cpus:g}")
    assert whole.returncode == 0, whole.stderr[-1500:]
    assert f"ray: this machine offers {cpus:g} CPUs, {gpus:g} GPUs: 1 training(s) at once ({cpus:g} CPU each)" in (
        whole.stdout
    )
    assert "estimate (training steps only, not measured): the local executor would be faster" in whole.stdout
    joined = cli(*dry, f"--ray_address={cluster}")
    assert joined.returncode == 0, joined.stderr[-1500:]
    assert f"ray: the cluster at {cluster} offers 2 CPUs, 0 GPUs: 2 training(s) at once (1 CPU each)" in joined.stdout
    assert not joined.stderr.strip() and not os.path.exists(out)


def test_a_local_ray_instance_that_does_not_start_is_one_line_not_a_bug(monkeypatch):
    """Ray raises a plain Exception when its node is slow to start (a very busy machine): named as such."""
    from lottery_tf.engine import ray_executor

    def slow(**options):
        raise Exception("The current node timed out during startup. This could happen because some of the Ray "
                        "processes failed to startup.\nmore detail")  # fmt: skip

    monkeypatch.setattr(ray, "init", slow)
    with pytest.raises(config_lib.ConfigError) as raised:
        ray_executor.connect(config_lib.RunConfig(executor="ray"))
    assert str(raised.value) == (
        "--executor: a local Ray instance did not start on this machine (The current node timed out during "
        "startup. This could happen because some of the Ray processes failed to startup.); run the command again "
        "when the machine is less busy, or use --executor=local"
    )


def test_the_estimate_says_when_the_local_executor_would_be_faster():
    from lottery_tf.engine import ray_executor

    nodes = [
        study.Training(0, 0, "main/level_00", 0, 100),
        study.Training(0, 0, "main/level_01", 1, 50, ("0/0/main/level_00",)),
        study.Training(0, 0, "a", 1, 50, ("0/0/main/level_00",)),
        study.Training(0, 0, "b", 1, 50, ("0/0/main/level_00",)),
    ]
    run = config_lib.RunConfig(executor="ray")
    here = [{"NodeID": "", "Resources": {"CPU": 2.0}}]
    one = ray_executor.estimate(nodes, ray_executor.Session(True, 2.0, 0.0, 1, here), run)
    assert one.startswith("estimate (training steps only, not measured): the local executor would be faster")
    two = ray_executor.estimate(nodes, ray_executor.Session(True, 2.0, 0.0, 2, here), run)
    # 250 steps in the time of 200: Ray gains 50 steps' time and pays 9 s to start (5 s here, 4 s its workers).
    assert "finish this graph's 250 steps in the time of 200 (1.25x), but Ray takes about 9 s more to start" in two
    assert "faster if it needs under 0m 45s for the study (a step under 180 ms)" in two
    wide = [nodes[0], *(study.Training(0, 0, f"x{i}", 1, 50_000, ("0/0/main/level_00",)) for i in range(4))]
    long = ray_executor.estimate(wide, ray_executor.Session(True, 2.0, 0.0, 2, here), run)
    assert "(a step under 0.09 ms)" in long, long  # 9 s over the 100,000 steps Ray saves: not "0 ms"
    assert two.endswith("or if a training on 1 CPU runs over 1.25x slower than one on all 2 CPUs")
    joined = ray_executor.estimate(nodes, ray_executor.Session(False, 2.0, 0.0, 2, here, "the cluster at h:1"), run)
    assert "Ray takes about 4 s more to start" in joined  # the cluster runs already: only its workers start
    cluster = ray_executor.Session(False, 4.0, 0.0, 4, here * 2, "the cluster at h:1")
    assert ray_executor.estimate(nodes, cluster, run) == ""  # several machines: nothing local to compare with


def test_what_ray_writes_to_file_descriptor_2_while_the_driver_leaves_is_not_shown(capfd, monkeypatch):
    """Pending tasks fail as the driver leaves, and Ray's C++ core says so on fd 2 (seen in 1 of 5 refused
    studies: 'task_manager.cc:1545: Failed to push error to driver' before the one-line error)."""
    import ray

    from lottery_tf.engine import ray_executor

    said = []

    def shutdown():
        os.write(2, b"[E task_manager.cc:1545] Failed to push error to driver for task 16310a\n")
        said.append(True)

    monkeypatch.setattr(ray, "shutdown", shutdown)
    os.write(2, b"before\n")
    ray_executor.Session(False, 2.0, 0.0, 2, []).close()
    os.write(2, b"after\n")
    assert said and capfd.readouterr().err == "before\nafter\n"


def _alive(pid: int, start: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"  # the same process, not a zombie waiting to be reaped


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="follows processes through /proc")
def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):
    """SIGKILL the driver that started Ray while a training runs: every process Ray started ends within seconds.

    Ray ends its GCS and raylet with the driver, but its agents would wait a minute or more for the dead GCS.
    """
    from conftest import wait_until_printed

    from lottery_tf.engine import ray_watchdog

    out = tmp_path / "runs"
    printed = tmp_path / "stdout"
    with open(printed, "w") as handle:
        driver = launcher.popen(
            [sys.executable, "-m", "lottery_tf.main", *STUDY, f"--output_dir={out}", "--executor=ray"],
            cwd=REPO,
            env=ENV,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_printed(driver, printed, "its processes end with this command, killed or not", timeout=180)
        deadline = time.time() + 180
        while not glob.glob(str(out / "lottery_*" / "replicate_0" / "level_00" / "main" / "checkpoints" / "*")):
            assert driver.poll() is None and time.time() < deadline, open(printed).read()[-2000:]
            time.sleep(0.2)
        started = ray_watchdog.tree(ray_watchdog.process_table(), ray_watchdog.children(driver.pid))
        names = " ".join(open(f"/proc/{pid}/cmdline").read() for pid in started if _alive(pid, started[pid]))
        assert "raylet" in names and "ray_watchdog" in names, names
    finally:
        driver.kill()
        driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(pid, start) for pid, start in started.items()):
        time.sleep(0.5)
    left = [open(f"/proc/{pid}/cmdline").read()[:80] for pid, start in started.items() if _alive(pid, start)]
    assert not left, left


@pytest.mark.slow
def test_an_interrupted_driver_says_one_line_and_its_rerun_resumes_without_a_retry_line(tmp_path):
    """Ctrl-C mid-training: one line, exit 130, no traceback; the same command resumes and reports no retry.

    The first run's attempt stays in each training's log: the rerun's first attempt is not a retry of it.
    """
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "lottery_tf.main", *STUDY, f"--output_dir={out}", "--executor=ray"]
    # A process started from a non-interactive shell's background job inherits SIGINT ignored (CI's): the
    # driver gets the default back, so Python turns Ctrl-C into KeyboardInterrupt as in a terminal.
    driver = subprocess.Popen(
        args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not glob.glob(str(out / "lottery_*" / "replicate_0" / "level_00" / "main" / "checkpoints" / "*")):
            assert driver.poll() is None and time.time() < deadline
            time.sleep(0.1)
        driver.send_signal(signal.SIGINT)
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        "error: interrupted: every finished level and branch is kept; run the same command again and the "
        "trainings that were running resume from their last checkpoints"
    )
    again = cli(*STUDY, f"--output_dir={out}", "--executor=ray")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[retry]" not in again.stdout, again.stdout[-3000:]
    # A training the interrupt stopped ran again: its log holds the interrupted run's attempt and the rerun's.
    logs = glob.glob(str(out / "lottery_*" / "replicate_0" / "logs" / "**" / "*.log"), recursive=True)
    assert any(open(path).read().count("== attempt ") >= 2 for path in logs)
    # The study is done: the estimate counts what is left, not the whole graph (main levels 0-2, the reinit
    # control and the SNIP baseline are judged done from their metrics.json; the analysis's units by their tasks).
    dry = cli(*STUDY, f"--output_dir={out}", "--executor=ray", "--dry_run")
    (line,) = [line for line in dry.stdout.splitlines() if line.startswith("estimate ")]
    assert line.startswith("estimate (training steps only, not measured; 5 of 11 trainings done already): "), line
    assert "the time of 400 (2.00x), but Ray takes about 9 s more to start" in line, line  # 3 left: 2 copies, 1 check
