"""``--executor=ray``: a whole study as a graph of Ray tasks, one task per training.

The graph is :mod:`lottery_tf.engine.study`'s; each task runs one node with
:func:`lottery_tf.engine.study.run_training` (the level code of the local
executor: checkpoints, resume, locks, atomic writes) in a Ray worker process,
on the CPUs and the GPU share Ray assigned it. The driver submits a node when
the nodes it waits for have finished, longest remaining path first, and prints
one line per finished training.

The driver imports no TensorFlow: it checks the run folders before Ray starts
(:func:`lottery_tf.engine.run_dir.check_folder`); as Ray starts, one worker per
slot imports it and loads the data (:func:`warm_up`), and the first of them
checks the study (data, model, the run's data record:
:func:`lottery_tf.engine.experiment.check`) and plans its graph for the
driver (:func:`check_study`).

Faults: a worker that dies (SIGKILL, out of memory, a lost node) is retried by
Ray up to :data:`MAX_RETRIES` times; the retry resumes from the training's last
checkpoint, as a resumed local run does (the dead worker's lock is stale and
taken over). A user's mistake inside a task (a diverged training, damaged
files) comes back as its one line (:func:`lottery_tf.engine.errors.user_message`):
the driver stops every other task (their finished files and checkpoints stay)
and fails with that line.

This is the only module that imports Ray; Ray is the optional extra
``lottery_tf[ray]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import socket
import time
import traceback
import uuid

from lottery_tf.engine import errors, study
from lottery_tf.engine.config import DETERMINISTIC_THREADS, ConfigError, ExperimentConfig

MAX_RETRIES = 3  # Ray re-runs a task whose worker died this many times
_PROBE_PREFIX = ".lottery_tf_probe_"
_WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
PROBE_SECONDS = 5.0  # how long the address checks wait for an answer
# A call every Ray GCS answers (Ray 2.x), made with grpc alone: Ray's own client retries a server that is not
# Ray's for minutes, with a warning a second.
_GCS_CALL = "/ray.rpc.NodeInfoGcsService/GetClusterId"
# What Ray costs beyond the local executor's own start, measured on this project's 2-core machine (an estimate
# elsewhere; tools/benchmark_ray.py, results/ray/local_vs_ray.txt): starting a local instance (ray.init, about
# 5 s) and stopping it (ray.shutdown, 1.2 s); joining, and the workers' start beyond the TensorFlow import
# every executor pays (the driver imports none), 1-4 s: one worker alone, 5.7 s in all (18.1 s before the
# driver left TensorFlow and the checks to a warmed worker); two importing beside Ray's own processes on 2
# cores, about 9 s (the smoke and quickstart studies there).
RAY_INIT_SECONDS = 5.0
WORKER_START_SECONDS = 4.0


def check_installed(run) -> None:
    """``--executor=ray`` needs the ``ray`` extra (checked before anything else).

    Args:
        run: :class:`lottery_tf.engine.config.RunConfig`.

    Raises:
        ConfigError: Naming ``--executor`` and how to install it.
    """
    if run.ray_address and "RAY_AUTH_MODE" not in os.environ and _has_token():
        # `ray start` turns token authentication on and writes the token; a driver joining the cluster
        # must say it uses it (Ray's default for a joining driver is off), before Ray is imported.
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(
            "executor", "ray needs Ray, which is not installed: pip install 'lottery_tf[ray]' (or bash tools/setup.sh)"
        ) from None


@dataclasses.dataclass
class Session:
    """A connection to a Ray instance (local, or a cluster joined with ``--ray_address``)."""

    started_here: bool
    cpus: float
    gpus: float
    slots: int  # trainings Ray can run at once with the per-training resources
    nodes: list
    where: str = "this machine"
    watchdog: object = dataclasses.field(default=None, repr=False)  # (process, pipe) of :func:`_start_watchdog`
    warming: list = dataclasses.field(default_factory=list, repr=False)  # refs of :func:`warm_up`'s tasks
    started: float = dataclasses.field(default_factory=time.time, repr=False)  # when Ray was joined or started

    def describe(self) -> str:
        """The line the driver prints once connected: what Ray offers, and what outlives this command."""
        nodes = f"{len(self.nodes)} node(s), " if len(self.nodes) > 1 else ""
        offers = f"{nodes}{self.cpus:g} CPUs, {self.gpus:g} GPUs"
        if self.started_here:
            ends = "its processes end with this command, killed or not"
            if not self.watchdog:  # no /proc to follow them: Ray's own fate-sharing only
                ends = "it stops with this command; if the command is killed, Ray's agents may linger for a minute"
            return f"ray: started a local Ray instance ({offers}); {ends}"
        return (
            f"ray: joined {self.where} ({offers}); if this command is killed, Ray stops its trainings and the "
            "cluster keeps running"
        )

    def close(self) -> None:
        import ray

        # Tasks still pending (warming workers after a failed check, trainings after Ctrl-C) fail as the
        # driver leaves, and Ray's C++ core reports on file descriptor 2 that it could not tell the driver.
        with _stderr_silenced():
            ray.shutdown()
        if self.watchdog is not None:
            process, pipe = self.watchdog
            self.watchdog = None
            os.close(pipe)  # the watchdog ends what ray.shutdown left running, then exits
            with contextlib.suppress(Exception):
                process.wait(timeout=10)


@contextlib.contextmanager
def _environment(values: dict):
    """``values`` in this process's environment inside the block: a local instance's workers inherit them.

    Ray's raylet, started inside the block, passes its environment to the workers it starts. A job-wide
    ``runtime_env`` would say the same, but Ray then starts each worker through its runtime-env agent
    (about 1 s more for the first task on 2 cores: tools/benchmark_ray.py).
    """
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start_watchdog(before: set):
    """Starts :mod:`lottery_tf.engine.ray_watchdog` over the processes ray.init started (children not in ``before``).

    Returns:
        (process, pipe): the driver closes ``pipe`` after ``ray.shutdown``, or dies; either way the watchdog
        then ends what is left. None where it cannot run (no /proc).
    """
    import subprocess
    import sys

    from lottery_tf.engine import ray_watchdog

    roots = _own_children() - before
    if not roots:
        return None
    read, write = os.pipe()
    try:
        process = subprocess.Popen(  # -I: no environment, no script folder on the path (only the standard library)
            [sys.executable, "-I", ray_watchdog.__file__, *map(str, sorted(roots))],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or a kill of the driver's process group leaves it to do its work
        )
    except OSError:
        os.close(write)
        return None
    finally:
        os.close(read)
    return process, write


def _stop_what_ray_started(before: set) -> None:
    """Ends the processes a failed ``ray.init`` left (this process's children not in ``before``)."""
    import signal

    from lottery_tf.engine import ray_watchdog

    with contextlib.suppress(Exception), _stderr_silenced():
        import ray

        ray.shutdown()
    with contextlib.suppress(OSError):
        table = ray_watchdog.process_table()
        for pid in ray_watchdog.tree(table, _own_children() - before):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _own_children() -> set:
    from lottery_tf.engine import ray_watchdog

    try:
        return ray_watchdog.children(os.getpid())
    except OSError:  # no /proc: no watchdog
        return set()


def _split(address: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT address (``[v6]:PORT`` too)."""
    from lottery_tf.engine.config import ray_address_problem

    problem = ray_address_problem(address) if address != "auto" else "expected HOST:PORT"
    if problem:
        raise ConfigError("ray_address", problem)
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _reachable(address: str) -> None:
    host, port = _split(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            pass
    except OSError as error:
        raise ConfigError(
            "ray_address",
            f"cannot reach a Ray cluster at {address} ({error.strerror or error}); start one there with "
            "`ray start --head --port=PORT`, or leave --ray_address out to start a local Ray instance",
        ) from None


def _resolve(address: str) -> str:
    """HOST:PORT for ``address``; ``auto`` as Ray reads it: $RAY_ADDRESS, else the cluster `ray start` last started here."""
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS")
    if not found:
        # Where `ray start` records it: $RAY_TMPDIR, else $TMPDIR, else /tmp, then ray/ray_current_cluster.
        system = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        path = os.path.join(system, "ray", "ray_current_cluster")
        try:
            with open(path) as f:
                found = f.read().strip()
        except OSError:
            found = None
    if not found:
        raise ConfigError(
            "ray_address",
            "auto: no Ray cluster was started on this machine; start one with `ray start --head`, give its "
            "HOST:PORT, or leave --ray_address out to start a local Ray instance",
        )
    return found


def _has_token() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def _token() -> str:
    """This machine's Ray authentication token, where Ray reads it ('' if none)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _speaks_ray(address: str) -> None:
    """Checks that what listens at ``address`` is a Ray cluster's GCS: one gRPC call, answered within seconds.

    Raises:
        ConfigError: For another server there (an HTTP server, the dashboard's or Ray Client's port, anything
            that is not Ray's GCS), or a cluster that refuses this machine's authentication token.
    """
    import grpc

    host, port = _split(address)
    token = _token()
    hint = (
        "give the HOST:PORT that `ray start --head --port=PORT` listens on (6379 by default; not the dashboard's "
        "8265 or Ray Client's 10001)"
    )
    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=PROBE_SECONDS)
        except grpc.FutureTimeoutError:
            raise ConfigError(
                "ray_address",
                f"{address}: something listens there, but it is not a Ray cluster (no gRPC answer within "
                f"{PROBE_SECONDS:g} s); {hint}",
            ) from None
        try:
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            channel.unary_unary(_GCS_CALL)(b"", timeout=PROBE_SECONDS, metadata=metadata)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise ConfigError("ray_address", f"{address}: {_auth_problem(bool(token))}") from None
            why = "it does not know Ray's calls" if code == grpc.StatusCode.UNIMPLEMENTED else code.name.lower()
            raise ConfigError(
                "ray_address", f"{address}: a server answers there, but not as a Ray cluster ({why}); {hint}"
            ) from None
    finally:
        channel.close()


def _auth_problem(has_token: bool) -> str:
    if has_token:
        return (
            "the Ray cluster there refuses this machine's authentication token ($RAY_AUTH_TOKEN or "
            "~/.ray/auth_token): copy ~/.ray/auth_token from its head node"
        )
    return "the Ray cluster there asks for its authentication token: copy ~/.ray/auth_token from its head node"


@contextlib.contextmanager
def _stderr_silenced():
    """Ray's C++ client writes its warnings to file descriptor 2: none of them reach the terminal meanwhile."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def connect(run) -> Session:
    """Starts a local Ray instance (no ``--ray_address``) or joins a cluster, and checks what it offers.

    Joining, the address is checked first (it answers, and as a Ray cluster: :func:`_speaks_ray`), so a
    wrong one fails in seconds with one line. Starting Ray here, a watchdog process ends Ray's processes
    when this process ends, killed or not (:mod:`lottery_tf.engine.ray_watchdog`).

    Args:
        run: :class:`lottery_tf.engine.config.RunConfig`.

    Raises:
        ConfigError: For an address that is not a reachable Ray cluster, GPUs asked where Ray sees none,
            or more CPUs per training than any node has.
    """
    import logging

    import ray

    address = run.ray_address
    resolved = _resolve(address) if address else ""
    if address:
        _reachable(resolved)
        _speaks_ray(resolved)
    options = dict(
        include_dashboard=False,
        log_to_driver=False,  # each task's TensorFlow output stays in Ray's worker logs
        logging_level=logging.ERROR,
    )
    if address:  # the cluster's workers get the quiet settings with the job
        options["runtime_env"] = {"env_vars": dict(_WORKER_ENV)}
    before = set() if address else _own_children()
    try:
        # "local" always starts a new instance: with no address Ray would join the cluster `ray start` last
        # started on this machine, and hang if that one has stopped.
        with _stderr_silenced() if address else _environment(_WORKER_ENV):
            ray.init(address=address or "local", **options)
    except Exception as error:  # noqa: BLE001  (Ray raises a plain Exception when its node is slow to start)
        cause = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        if not address:
            # Not the user's settings, nor a bug here: Ray's own processes did not come up (a machine too busy).
            _stop_what_ray_started(before)
            raise ConfigError(
                "executor",
                f"a local Ray instance did not start on this machine ({cause.strip()}); run the command "
                "again when the machine is less busy, or use --executor=local",
            ) from None
        if not isinstance(error, (ConnectionError, RuntimeError)):
            raise
        cause = str(error).splitlines()[0]
        if "auth" in repr(error.__cause__ or error).lower():
            cause = _auth_problem(_has_token())
        raise ConfigError(
            "ray_address",
            f"{address}: cannot join a Ray cluster there ({cause}); start one with `ray start --head`, "
            "or leave --ray_address out to start a local Ray instance",
        ) from None
    watchdog = None if address else _start_watchdog(before)
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    where = f"the cluster at {resolved}" if address else "this machine"
    session = Session(not address, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), 0, nodes, where)
    session.watchdog = watchdog
    try:
        session.slots = _slots(run, session)
    except ConfigError:
        session.close()
        raise
    return session


def _slots(run, session: Session) -> int:
    """Trainings ``session`` can run at once with ``run``'s resources per training.

    Raises:
        ConfigError: GPUs asked where Ray sees none, more CPUs per training than any node has, or no node
            with both the CPUs and the GPU share a training asks for.
    """
    where = session.where
    if run.gpus_per_training > 0 and session.gpus == 0:
        raise ConfigError(
            "gpus_per_training", f"{run.gpus_per_training:g} asked, but Ray sees no GPU on {where}; leave it at 0"
        )
    biggest = max((n["Resources"].get("CPU", 0) for n in session.nodes), default=0)
    if run.cpus_per_training > biggest:
        what = "this machine has" if where == "this machine" else f"the largest node of {where} has"
        raise ConfigError(
            "cpus_per_training", f"{run.cpus_per_training:g} asked, but {what} {biggest:g} CPUs (Ray's count)"
        )
    per_node = []
    for n in session.nodes:
        cpu_slots = int(n["Resources"].get("CPU", 0) // run.cpus_per_training)
        if run.gpus_per_training > 0:
            cpu_slots = min(cpu_slots, int(round(n["Resources"].get("GPU", 0) / run.gpus_per_training, 6)))
        per_node.append(cpu_slots)
    if not sum(per_node):
        raise ConfigError(
            "cpus_per_training",
            f"{run.cpus_per_training:g} CPUs and {run.gpus_per_training:g} GPU asked, but no node of {where} has "
            "both; lower either",
        )
    return sum(per_node)


def _this_machine() -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray instance would offer here, as Ray counts them (cgroups, CUDA_VISIBLE_DEVICES)."""
    try:
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        spec = ResourceAndLabelSpec().resolve(is_head=True, node_ip_address="127.0.0.1")
        return float(spec.num_cpus), float(spec.num_gpus or 0)
    except Exception:  # noqa: BLE001  (another Ray version: the CPUs this process may use, the NVIDIA devices)
        import glob

        return float(len(os.sched_getaffinity(0))), float(len(glob.glob("/dev/nvidia[0-9]*")))


def check_for_dry_run(run) -> Session:
    """The checks of :func:`connect` without a study, for ``--dry_run``; a closed session says what Ray offers.

    With ``--ray_address`` it joins the cluster to read its resources and leaves; without, it reads this
    machine's as a local Ray instance would count them, and starts nothing.

    Raises:
        ConfigError: As :func:`connect`.
    """
    if run.ray_address:
        session = connect(run)
        session.close()
        return session
    cpus, gpus = _this_machine()
    nodes = [{"NodeID": "", "Resources": {"CPU": cpus, "GPU": gpus}}]
    session = Session(True, cpus, gpus, 0, nodes, "this machine")
    session.slots = _slots(run, session)
    return session


def describe_slots(session: Session, run) -> str:
    """What the study would get: Ray's resources and the trainings at once (printed by ``--dry_run``)."""
    gpu = f", {run.gpus_per_training:g} GPU" if run.gpus_per_training else ""
    return (
        f"ray: {session.where} offers {session.cpus:g} CPUs, {session.gpus:g} GPUs"
        f"{f' on {len(session.nodes)} nodes' if len(session.nodes) > 1 else ''}: {session.slots} training(s) at once "
        f"({run.cpus_per_training:g} CPU{gpu} each)"
    )


def estimate_study(configs, nodes, session: Session, done: set | None = None) -> str:
    """:func:`estimate` for what is left of the study of ``configs`` (a resumed one: its finished trainings out).

    ``done``: :func:`lottery_tf.engine.study.known_done` of the study, where the caller has it already.
    """
    if done is None:
        done = study.known_done(configs, nodes)
    left = [n for n in nodes if n.id not in done]
    return estimate(left, session, configs[0].run, len(nodes) - len(left))


def estimate(nodes, session: Session, run, done: int = 0) -> str:
    """Whether the local executor would be faster, by the study graph's numbers ('' unless Ray runs on one node).

    ``nodes`` are what is left of the study (``done`` trainings of it are done already: said in the line).

    Counts training steps only, as ``--dry_run``'s ideal speed-ups do, plus Ray's start
    (:data:`RAY_INIT_SECONDS` where it starts an instance, :data:`WORKER_START_SECONDS`): the local executor
    runs the trainings one after another; Ray runs ``session.slots`` at once, longest path first
    (:func:`lottery_tf.engine.study.makespan`). A step's cost is not known before training, so the line gives
    the break-even (the local run time above which Ray's start pays for itself, every training as fast as
    alone) and the slowdown of trainings side by side at which Ray loses whatever the run time.
    """
    total = sum(n.steps for n in nodes)
    if len(session.nodes) != 1 or not total:
        return ""
    span = study.makespan(nodes, session.slots)
    already = f"; {done} of {done + len(nodes)} trainings done already" if done else ""
    head = f"estimate (training steps only, not measured{already}): "
    seconds = WORKER_START_SECONDS + (RAY_INIT_SECONDS if session.started_here else 0)
    start = f"Ray takes about {seconds:g} s more to start"
    if span >= total:
        return (
            f"{head}the local executor would be faster: with {session.slots} training(s) at once this graph's "
            f"{total:,} steps take as long on Ray as one after another, and {start}; use --executor=local"
        )
    per_step = seconds / (total - span)  # the local seconds per step at which Ray breaks even
    speedup = total / span
    if run.gpus_per_training:
        slower = f"trainings sharing a GPU ({run.gpus_per_training:g} each) slow each other by more than {speedup:.2f}x"
    else:
        slower = f"a training on {run.cpus_per_training:g} CPU runs over {speedup:.2f}x slower than one on all {session.cpus:g} CPUs"
    return (
        f"{head}{session.slots} trainings at once finish this graph's {total:,} steps in the time of {span:,} "
        f"({speedup:.2f}x), but {start}: the local executor would be faster if it needs under "
        f"{study.format_duration(total * per_step)} for the study (a step under {_milliseconds(per_step)} ms), "
        f"or if {slower}"
    )


def _milliseconds(seconds: float) -> str:
    """``240`` or ``4.4`` or ``0.16``: two significant digits below 10 ms (never ``0``)."""
    value = seconds * 1000
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _probe(folder: str, token: str) -> dict:
    """On a worker: write a probe file in the output folder for the driver to read."""
    host = socket.gethostname()
    if not os.path.isdir(folder):
        return {"host": host, "path": None, "why": f"{folder} does not exist on {host}", "unwritable": False}
    path = os.path.join(folder, f"{_PROBE_PREFIX}{token}_{uuid.uuid4().hex[:8]}")
    try:
        with open(path, "w") as handle:
            handle.write(token)
    except OSError as error:
        return {"host": host, "path": None, "why": error.strerror or str(error), "unwritable": True}
    return {"host": host, "path": path, "why": "", "unwritable": False}


def check_shared_store(session: Session, folder: str) -> None:
    """Every node's workers must see the output folder: a worker on each node writes a file the driver reads.

    Raises:
        ConfigError: Naming ``--output_dir`` and the node that does not share it or cannot write in it.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = os.path.abspath(folder)
    created = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ConfigError("output_dir", f"cannot make {folder}: {error.strerror or error}") from None
    token = uuid.uuid4().hex
    probe = ray.remote(_probe)
    refs = [
        probe.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(folder, token)
        for node in session.nodes
    ]
    problem = unwritable = None
    for result in ray.get(refs):
        path = result["path"]
        seen = False
        if path:
            try:
                with open(path) as handle:
                    seen = handle.read() == token
                os.remove(path)
            except OSError:
                seen = False
        if result["unwritable"] and unwritable is None:
            unwritable = result
        elif not seen and problem is None:
            why = result["why"] or f"a worker on {result['host']} wrote {path}, which this machine cannot read"
            problem = why
    if (problem or unwritable) and created:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    if unwritable:  # a read-only mount, or a user that may not write there
        raise ConfigError(
            "output_dir",
            f"Ray's worker on {unwritable['host']} cannot write in {folder} ({unwritable['why']}): --output_dir "
            "must be a folder every node can write, on a filesystem they all mount read-write at the same path",
        )
    if problem:
        raise ConfigError(
            "output_dir",
            f"{folder} is not shared with Ray's workers ({problem}); on a cluster --output_dir must be a "
            "shared filesystem every node mounts at the same path",
        )


# -- the worker side ---------------------------------------------------------------------------------------

_PROCESS: dict = {}  # what one worker process built once: threads set, strategy, data per data config


def _setup(config: ExperimentConfig, threads: int, record: dict):
    """The strategy and data of this worker (built once per process and data), checked against the study's record.

    Args:
        config: The training's settings.
        threads: TensorFlow intra-op threads of this worker (set once, before TensorFlow starts).
        record: The study's data record (source, fingerprint; :func:`check_study`); None while warming up.

    Raises:
        ConfigError: If the data this worker finds is not the data the study was checked with.
    """
    import tensorflow as tf

    from lottery_tf.engine.data import get_splits
    from lottery_tf.engine.data.registry import splits_fingerprint
    from lottery_tf.engine.distribute import make_deterministic, make_strategy, split_cpu

    if "threads" not in _PROCESS:
        with contextlib.suppress(RuntimeError):  # already initialized in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
        for gpu in tf.config.list_physical_devices("GPU"):  # trainings sharing a GPU take memory as they need it
            with contextlib.suppress(RuntimeError):
                tf.config.experimental.set_memory_growth(gpu, True)
        split_cpu(config.run.cpu_devices)
        if config.run.deterministic:
            make_deterministic()  # one thread, as every executor: the same bits as the local run
        _PROCESS["threads"] = threads
        _PROCESS["strategy"] = make_strategy(config.run.strategy, config.run.tpu)
    key = json.dumps(dataclasses.asdict(config.data), sort_keys=True)
    if key not in _PROCESS:
        splits = get_splits(config.data)
        _PROCESS[key] = (splits, splits_fingerprint(splits))
    splits, found = _PROCESS[key]
    if record is not None and found != record["fingerprint"]:
        raise ConfigError(
            "data_dir",
            f"a Ray worker on {socket.gethostname()} finds {splits.source} (data fingerprint {found}), "
            f"but the study was checked with {record['source']} (fingerprint {record['fingerprint']}); "
            "every node must see the same data at the same path",
        )
    return _PROCESS["strategy"], splits


def _warm(config_dicts: list, threads: int, check: bool = False, rerecord=None, folder_lines=None) -> dict:
    """A Ray task, one per slot as the study starts: TensorFlow imported and the data loaded; the first checks.

    The trainings that follow run in these worker processes (Ray reuses a worker for the next task), so they
    start at once. The task with ``check`` runs :func:`lottery_tf.engine.experiment.check` for every run of
    the invocation (``config_dicts``; ``rerecord``: per run, whether ``--rerecord_data`` repairs it) with that
    TensorFlow and data, for :func:`check_study`: the driver imports no TensorFlow (it checked the run
    folders: ``folder_lines``). Never raises: a check's failure comes back as its line (``error``) or, for a
    bug, its traceback (``bug``); a warm-up's failure is met again, and reported, by the training that needs it.
    """
    import psutil  # Ray's own dependency

    # Ray imported this module (and with it TensorFlow and Keras) before the task began: count from the
    # worker process's start.
    born = psutil.Process().create_time()
    result = {"host": socket.gethostname(), "pid": os.getpid(), "import": 0.0, "data": 0.0, "warm_error": None}
    result.update(checked=None, nodes=None, check_seconds=0.0, output="", error=None, bug=None)
    configs = [ExperimentConfig.from_dict(plain) for plain in config_dicts]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            from lottery_tf.engine import experiment  # noqa: F401  (the engine, in case Ray had not)

            result["import"] = time.time() - born
            started = time.time()
            strategy, splits = _setup(configs[0], threads, None)
            result["data"] = time.time() - started
            if check:
                started = time.time()
                checked = [
                    experiment.check(c, again, strategy, _setup(c, threads, None)[1], lines)
                    for c, again, lines in zip(
                        configs, rerecord or [False] * len(configs), folder_lines or [None] * len(configs)
                    )
                ]
                result["checked"] = [
                    {"record": r.record, "new_data_record": r.new_data_record, "store_lines": r.store_lines}
                    for r in checked
                ]
                result["nodes"] = study.plan(configs)  # (the branch types' units need their modules: TensorFlow)
                result["check_seconds"] = time.time() - started
    except Exception as error:  # noqa: BLE001  (reported by check_study, or by the training that needs it)
        result["warm_error"] = f"{type(error).__name__}: {error}"
        if check:
            line = errors.user_message(error, configs[0].data.name)
            if line is None:
                result["bug"] = {"line": errors.bug_line(error), "traceback": traceback.format_exc()}
            result["error"] = line
    result["output"], result["errors_output"] = out.getvalue(), err.getvalue()
    return result


def _train(config_dict: dict, record: dict, replicate: int, key: str, threads: int) -> dict:
    """A Ray task: one node of the study. Returns what the driver reports; never raises for a user's mistake."""
    # A lock met here is a dead attempt's (a lost node: taken over once its lease runs out) or another
    # process's on the same training: the task waits for it, saying so in its log, rather than fail the study.
    config = ExperimentConfig.from_dict(config_dict)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, wait_for_lock=True))
    started = time.time()
    output = io.StringIO()
    result = {"seconds": 0.0, "trained": False, "resumed": False, "error": None, "bug": None, "host": ""}
    result["host"] = socket.gethostname()
    node = study.Training(0, replicate, key, 0, 0)
    with _log(log_path(config, node)) as log:
        stream = _Tee(output, log)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                from lottery_tf.engine import experiment

                strategy, splits = _setup(config, threads, record)
                ctx = experiment.context(config, splits, replicate, strategy, record.get("fingerprint"))
                # Every evaluation's line goes to the log: the driver shows each running training's step.
                ctx = dataclasses.replace(ctx, print_every_evaluation=True)
                result["trained"] = bool(study.run_training(ctx, key))
        except Exception as error:  # noqa: BLE001  (reported to the driver, which stops the study)
            line = errors.user_message(error, config.data.name)
            if line is None:
                result["bug"] = {"line": errors.bug_line(error), "traceback": traceback.format_exc()}
                log.write(result["bug"]["traceback"])
            else:
                result["error"] = line
                log.write(f"error: {line}\n")
    result["seconds"] = time.time() - started
    # Until the first progress line: the worker's set-up (if not warmed), the model built and traced, step 0 evaluated.
    result["first_step"] = stream.first_step - started if stream.first_step else None
    result["resumed"] = "resuming from" in output.getvalue()
    result["tail"] = output.getvalue()[-2000:]
    return result


class _Tee(io.TextIOBase):
    """Writes to the captured output and to the training's log (flushed per line, for the driver's status)."""

    def __init__(self, *streams):
        self.streams = streams
        self.first_step = None  # when the first progress line (step 0, after the model is built and traced) came

    def write(self, text: str) -> int:
        if self.first_step is None and _STEP.search(text):
            self.first_step = time.time()
        for stream in self.streams:
            stream.write(text)
            if "\n" in text:
                stream.flush()
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def _log(path: str):
    """The training's log, appended to, opened with a line naming this attempt (number, host, pid, time)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        number = len(read_log(path).attempts) + 1
        handle = open(path, "a", buffering=1)
    except OSError:  # a log that cannot be written never stops the training
        yield io.StringIO()
        return
    with handle:
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"== attempt {number} on {socket.gethostname()} pid {os.getpid()} at {when} ==\n")
        yield handle


# -- the driver ------------------------------------------------------------------------------------------


def _threads(run_config) -> int:
    """TensorFlow intra-op threads of each worker: its CPUs, or one under ``--deterministic`` (as every executor)."""
    return DETERMINISTIC_THREADS if run_config.deterministic else max(1, int(run_config.cpus_per_training))


def _task_options(run_config) -> dict:
    return dict(num_cpus=run_config.cpus_per_training, num_gpus=run_config.gpus_per_training)


def warm_up(session: Session, configs, folder_lines, rerecord=None) -> None:
    """Starts a worker per slot (at most one per training) that imports TensorFlow and loads the data; returns.

    Ray's fixed cost on a small machine is mostly each worker's TensorFlow import and the first data load
    (``tools/benchmark_ray.py`` measures it). The first worker also checks the study and plans its graph
    (:func:`check_study`), so the driver imports no TensorFlow of its own, and the first trainings start in
    ready workers. ``folder_lines``: per config, what the driver's check of its run folder found
    (:func:`lottery_tf.engine.run_dir.check_folder`, before Ray started); ``rerecord``: per config, whether
    ``--rerecord_data`` repairs its data record.
    """
    import ray

    task = ray.remote(_warm).options(**_task_options(configs[0].run), scheduling_strategy="SPREAD")
    plain = [dataclasses.asdict(c) for c in configs]
    threads = _threads(configs[0].run)
    count = min(session.slots, study.least_trainings(configs))
    lines = [list(each) for each in folder_lines]
    rerecord = list(rerecord or [False] * len(configs))
    session.warming = [task.remote(plain, threads, number == 0, rerecord, lines) for number in range(count)]


@dataclasses.dataclass(frozen=True)
class Checked:
    """What a worker's :func:`lottery_tf.engine.experiment.check` found for one run of the invocation."""

    record: dict  # the data record (source, fingerprint, sizes, input shape, classes)
    new_data_record: bool  # data.json is to be written
    store_lines: list  # what the store check found and the run does about it


CHECK_NOTICE_SECONDS = float(os.environ.get("LOTTERY_TF_CHECK_NOTICE_SECONDS", "30"))  # a check this late says why


def check_study(session: Session, configs) -> tuple[list[Checked], list]:
    """Waits for the first warmed worker's check of the study (:func:`warm_up`) and prints what it printed.

    Returns:
        Per config, what its check found (for :func:`lottery_tf.engine.run_dir.open_experiment`), and the
        study's graph (:func:`lottery_tf.engine.study.plan`).

    Raises:
        StudyError: With the check's one line (a flag, the data, the run folder), as a local run says it.
        RuntimeError: For a bug in the check (its traceback printed first).
    """
    import sys

    import ray

    first = session.warming[0]
    done, _ = ray.wait([first], timeout=CHECK_NOTICE_SECONDS)
    if not done:
        resources = _task_options(configs[0].run)
        gpus = f" and {resources['num_gpus']:g} GPU" if resources["num_gpus"] else ""
        print(
            f"ray: still waiting, after {CHECK_NOTICE_SECONDS:g} s, for the Ray worker that checks the study (its "
            f"data, model and run folder): it is starting and importing TensorFlow, or Ray waits for "
            f"{resources['num_cpus']:g} free CPU(s){gpus} on a node",
            flush=True,
        )
    try:
        result = ray.get(first)
    except ray.exceptions.RayError as error:
        line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise errors.StudyError(
            f"the Ray worker checking the study died ({line.strip()}); run the same command again"
        ) from None
    if result["output"]:
        print(result["output"], end="", flush=True)
    if result["errors_output"]:
        print(result["errors_output"], end="", file=sys.stderr, flush=True)
    if result["bug"]:
        print(result["bug"]["traceback"], file=sys.stderr, flush=True)
        raise RuntimeError(f"in the study's check on a Ray worker: {result['bug']['line']}")
    if result["error"]:
        raise errors.StudyError(result["error"])
    checked = [Checked(c["record"], c["new_data_record"], list(c["store_lines"])) for c in result["checked"]]
    return checked, result["nodes"]


def _warm_line(session: Session) -> str:
    """What warming the workers took (median TensorFlow import and data load), once they are done ('' before)."""
    import ray

    if not session.warming:
        return ""
    done, _ = ray.wait(session.warming, num_returns=len(session.warming), timeout=0)
    if len(done) < len(session.warming):
        return ""
    results = ray.get(done)
    checked = results[0]["check_seconds"]
    results = [r for r in results if not r["warm_error"]]
    if not results:
        return ""
    median = lambda key: sorted(r[key] for r in results)[len(results) // 2]  # noqa: E731
    return (
        f"ray: {len(results)} worker(s) warmed: TensorFlow imported {median('import'):.1f} s after the worker "
        f"started, data loaded in {median('data'):.1f} s (median); the study checked on the first in {checked:.1f} s"
    )


def _label(node: study.Training, configs) -> str:
    run = f"k={configs[node.run].pruning.rewind_step} " if len(configs) > 1 else ""
    return f"{run}replicate {node.replicate} {node.key}"


def run_study(session: Session, configs, records, run_config, nodes) -> list[bool]:
    """Runs every node of the study of ``configs`` on Ray; returns, per config, whether anything trained.

    Ray is handed no more trainings than it has slots for, chosen by :class:`lottery_tf.engine.study.Schedule`
    (longest remaining path first: the schedule ``--dry_run`` sizes). While trainings run, a status block
    every :data:`STATUS_SECONDS` shows each one's step and rate (from its log,
    ``replicate_<r>/logs/<key>.log``), and a worker that died is named with its training when Ray retries it.

    Args:
        session: From :func:`connect`.
        configs: The invocation's configs (one per sweep run), their folders already prepared.
        records: Per config, the data record (source and fingerprint) the study was checked with.
        run_config: The ``--executor`` settings (:class:`lottery_tf.engine.config.RunConfig`).
        nodes: The study's graph (:func:`lottery_tf.engine.study.plan`, from :func:`check_study`).

    Raises:
        StudyError: With the one line of a task that failed on a user's mistake, or when a task's
            workers died more than :data:`MAX_RETRIES` times.
    """
    import ray

    schedule = study.Schedule(nodes, session.slots)
    threads = _threads(run_config)
    task = ray.remote(_train).options(**_task_options(run_config), max_retries=MAX_RETRIES, retry_exceptions=False)
    plain = [dataclasses.asdict(c) for c in configs]
    trained = [False] * len(configs)
    in_flight: dict = {}
    attempts: dict = {}  # node id -> attempts seen in its log
    before: dict = {}  # node id -> attempts its log held when this run submitted it (an earlier command's)
    seconds_per_step: list = []  # (seconds, steps) of finished trainings
    first_steps: list = []  # seconds from each task's start to its training's first progress line
    warmed = ""
    started = time.time()
    print(
        f"ray: {study.count(len(nodes), 'task')} on {len(session.nodes)} node(s), {session.cpus:g} CPUs, {session.gpus:g} GPUs; "
        f"{session.slots} training(s) at once ({run_config.cpus_per_training:g} CPU"
        f"{f', {run_config.gpus_per_training:g} GPU' if run_config.gpus_per_training else ''} each, "
        f"{threads} TensorFlow thread(s)); each training's log: <replicate>/logs/<training>.log",
        flush=True,
    )

    def submit_ready():
        for node in schedule.start():
            # A log holds every attempt ever made, an earlier command's too: this run's begin after these.
            before[node.id] = len(read_log(log_path(configs[node.run], node)).attempts)
            ref = task.remote(plain[node.run], records[node.run], node.replicate, node.key, threads)
            in_flight[ref] = node

    def stop_all():
        for ref in in_flight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def report_retries(node):
        found = read_log(log_path(configs[node.run], node))
        first = before.get(node.id, 0)  # this run's first attempt is the next one in the log
        seen = attempts.get(node.id, first + 1)
        for attempt in found.attempts[seen:]:
            previous = found.attempts[attempt["number"] - 2]
            print(
                f"[retry] {_label(node, configs)}: its worker (pid {previous.get('pid', '?')} on "
                f"{previous.get('host', '?')}) died; Ray started attempt {attempt['number'] - first} of "
                f"{MAX_RETRIES + 1} on {attempt['host']}, which resumes from the training's last checkpoint",
                flush=True,
            )
        attempts[node.id] = max(seen, len(found.attempts))

    if session.warming:
        # The first trainings go to the warmed workers once they are ready: submitted earlier, Ray would start
        # new workers for them on the free CPUs, each importing TensorFlow again.
        ray.wait(session.warming, num_returns=len(session.warming), timeout=WARM_WAIT_SECONDS)
    submit_ready()
    last_status = time.time()
    try:
        _quiet_worker_deaths()
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            if not warmed and (warmed := _warm_line(session)):
                print(warmed, flush=True)
            if not done:
                for node in in_flight.values():
                    report_retries(node)
                if time.time() - last_status >= STATUS_SECONDS:
                    print(_status(in_flight.values(), configs, schedule, nodes, session.started, before), flush=True)
                    last_status = time.time()
                continue
            node = in_flight.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as error:  # the worker died MAX_RETRIES + 1 times, or the node was lost
                stop_all()
                first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
                raise errors.StudyError(
                    f"{_label(node, configs)}: its Ray worker died {MAX_RETRIES + 1} times ({first.strip()}); "
                    "run the same command again to resume from the last checkpoints"
                ) from None
            report_retries(node)
            if result["bug"]:
                stop_all()
                print(result["bug"]["traceback"], flush=True)
                raise RuntimeError(f"in {_label(node, configs)}: {result['bug']['line']}")
            if result["error"]:
                stop_all()
                print(f"[failed] {_label(node, configs)}: {result['error']}", flush=True)
                raise errors.StudyError(result["error"])
            schedule.finish(node.id)
            trained[node.run] |= result["trained"]
            if node.steps and result["trained"]:
                seconds_per_step.append((result["seconds"], node.steps))
            if result.get("first_step") is not None:
                first_steps.append(result["first_step"])
            submit_ready()
            print(_progress(node, result, configs, schedule, nodes, session, seconds_per_step), flush=True)
    finally:
        stop_all()
    first = (
        f"; a training's first step came {sorted(first_steps)[len(first_steps) // 2]:.1f} s after its task started (median: model built and traced, step 0 evaluated)"
        if first_steps
        else ""
    )
    print(
        f"ray: {study.count(len(nodes), 'task')} done in {study.format_duration(time.time() - started)}{first}",
        flush=True,
    )
    return trained


_RAY_DEATH_LINES = ("A worker died or was killed while executing a task", "Task _train failed.")


def _quiet_worker_deaths() -> None:
    """Drops Ray's own lines about a dead worker of ours (the ``[retry]`` line names the training instead).

    Ray's driver prints what its raylet publishes through ``ray._private.worker.print_to_stdstream``;
    any other message still shows. Without that function (another Ray version) Ray's lines show as before.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_lottery_tf", False):
        return

    def filtered(data, *args, **kwargs):
        lines = [line for line in data.get("lines", []) if not line.lstrip().startswith(_RAY_DEATH_LINES)]
        if lines or data.get("pid") != "raylet":
            return original({**data, "lines": lines}, *args, **kwargs)
        return None

    filtered._lottery_tf = True
    ray_worker.print_to_stdstream = filtered


WARM_WAIT_SECONDS = 300.0  # the longest the first trainings wait for the warmed workers (a stuck one: no longer)
STATUS_SECONDS = float(os.environ.get("LOTTERY_TF_STATUS_SECONDS", "30"))  # how often the running trainings show
_STEP = re.compile(r"step (\d+)/(\d+)\s.*?(\d+) steps/s")
_ATTEMPT = re.compile(r"^== attempt (\d+) on (\S+) pid (\d+) at (.+?) ==$")


def log_path(config: ExperimentConfig, node: study.Training) -> str:
    """Where a training's worker writes its output (every attempt, appended)."""
    from lottery_tf.engine import run_dir

    return os.path.join(run_dir.replicate_dir(config, node.replicate), "logs", f"{node.key}.log")


@dataclasses.dataclass
class Log:
    """What a training's log says: its attempts (number, host, pid, time) and its last step line."""

    attempts: list
    step: tuple | None  # (step, total steps, steps per second) of the newest progress line
    waiting: str | None = None  # the newest "waiting for <lock> ..." line, if no step came after it


def read_log(path: str) -> Log:
    try:
        with open(path, errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return Log([], None)
    attempts, step, waiting = [], None, None
    for line in lines:
        found = _ATTEMPT.match(line)
        if found:
            number, host, pid, at = found.groups()
            attempts.append({"number": int(number), "host": host, "pid": int(pid), "at": at})
            step = waiting = None  # a new attempt: no step yet
            continue
        if line.startswith("waiting for "):
            waiting = line
            continue
        found = _STEP.search(line)
        if found:
            step, waiting = (int(found.group(1)), int(found.group(2)), int(found.group(3))), None
    return Log(attempts, step, waiting)


def _status(running, configs, schedule, nodes, started, before=None) -> str:
    """The status block: how far the study is, then one line per running training (step, rate, or starting).

    ``started`` is when Ray was started or joined; ``before`` maps a node to the attempts its log held when this
    run submitted it (an earlier command's, not this run's).
    """
    lines = [
        f"[{len(schedule.finished)}/{len(nodes)} done, {len(schedule.running)} running, {schedule.queued} waiting; "
        f"{study.format_duration(time.time() - started)} so far]"
    ]
    for node in sorted(running, key=lambda n: n.id):
        log = read_log(log_path(configs[node.run], node))
        mine = log.attempts[(before or {}).get(node.id, 0) :]  # this run's attempts
        if not mine:
            what = "waiting for a worker"
        elif log.waiting:
            what = log.waiting.split(": held by", 1)[0]  # which lock, and for how long
        elif log.step is None:
            what = f"starting on {log.attempts[-1]['host']}" + (f" (attempt {len(mine)})" if len(mine) > 1 else "")
        else:
            step, total, rate = log.step
            speed = f", {rate} steps/s" if rate else ""  # the first evaluation has no rate yet
            what = f"step {step:,}/{total:,}{speed} on {log.attempts[-1]['host']}"
        lines.append(f"  {_label(node, configs)}: {what}")
    return "\n".join(lines)


def _progress(node, result, configs, schedule, nodes, session, seconds_per_step) -> str:
    """One line per finished node: which, how long, how many done / running / waiting, an ETA."""
    what = "measured" if not node.steps else ("resumed from a checkpoint, trained" if result["resumed"] else "trained")
    if not result["trained"]:
        what = "already done"
    line = (
        f"[{len(schedule.finished)}/{len(nodes)} done, {len(schedule.running)} running, {schedule.queued} waiting] "
        f"{_label(node, configs)}: {what} in {result['seconds']:.1f}s"
    )
    if seconds_per_step:
        rate = sum(s for s, _ in seconds_per_step) / sum(n for _, n in seconds_per_step)
        left = [n for n in nodes if n.id not in schedule.finished]
        critical = max(study.remaining_path(left).values(), default=0) if left else 0
        total = sum(n.steps for n in left)
        eta = rate * max(critical, total / session.slots)
        line += f"; ETA {study.format_duration(eta)} (critical path {critical:,} steps)"
    return line


def absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    """The config with its folders absolute, as every worker must read them whatever its working directory."""
    data = config.data
    changes = {
        name: os.path.abspath(getattr(data, name))
        for name in ("data_dir", "tfds_data_dir", "tfds_manual_dir")
        if getattr(data, name, "")
    }
    return dataclasses.replace(
        config,
        data=dataclasses.replace(data, **changes),
        run=dataclasses.replace(config.run, output_dir=os.path.abspath(config.run.output_dir)),
    )
