"""``--executor=ray``: a whole study as a graph of Ray tasks, one task per training.

The graph is :mod:`lottery_tf.engine.study`'s; each task runs one node with
:func:`lottery_tf.engine.study.run_training` (the level code of the local
executor: checkpoints, resume, locks, atomic writes) in a Ray worker process,
on the CPUs and the GPU share Ray assigned it. The driver submits a node when
the nodes it waits for have finished, longest remaining path first, and prints
one line per finished training.

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
import socket
import time
import traceback
import uuid

from lottery_tf.engine import errors, study
from lottery_tf.engine.config import ConfigError, ExperimentConfig

MAX_RETRIES = 3  # Ray re-runs a task whose worker died this many times
_PROBE_PREFIX = ".lottery_tf_probe_"
_WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


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

    def close(self) -> None:
        import ray

        ray.shutdown()


def _reachable(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError("ray_address", f"expected auto or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
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


def connect(run) -> Session:
    """Starts a local Ray instance (no ``--ray_address``) or joins a cluster, and checks what it offers.

    Args:
        run: :class:`lottery_tf.engine.config.RunConfig`.

    Raises:
        ConfigError: For an unreachable address, GPUs asked where Ray sees none, or more CPUs per
            training than any node has.
    """
    import logging

    import ray

    address = run.ray_address
    if address:
        _reachable(_resolve(address))
    options = dict(
        include_dashboard=False,
        log_to_driver=False,  # each task's TensorFlow output stays in Ray's worker logs
        logging_level=logging.ERROR,
        runtime_env={"env_vars": dict(_WORKER_ENV)},
    )
    try:
        # "local" always starts a new instance: with no address Ray would join the cluster `ray start` last
        # started on this machine, and hang if that one has stopped.
        ray.init(address=address or "local", **options)
    except (ConnectionError, RuntimeError) as error:
        cause = str(error).splitlines()[0]
        if "auth" in repr(error.__cause__ or error).lower():
            cause = "the cluster asks for its authentication token: copy ~/.ray/auth_token from its head node"
        raise ConfigError(
            "ray_address",
            f"{address}: cannot join a Ray cluster there ({cause}); start one with `ray start --head`, "
            "or leave --ray_address out to start a local Ray instance",
        ) from None
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    session = Session(
        started_here=not address,
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        slots=0,
        nodes=nodes,
    )
    where = "this machine" if not address else f"the cluster at {address}"
    try:
        if run.gpus_per_training > 0 and session.gpus == 0:
            raise ConfigError(
                "gpus_per_training", f"{run.gpus_per_training:g} asked, but Ray sees no GPU on {where}; leave it at 0"
            )
        biggest = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        if run.cpus_per_training > biggest:
            raise ConfigError(
                "cpus_per_training",
                f"{run.cpus_per_training:g} asked, but the largest node of {where} has {biggest:g} CPUs",
            )
    except ConfigError:
        session.close()
        raise
    per_node = []
    for n in nodes:
        cpu_slots = int(n["Resources"].get("CPU", 0) // run.cpus_per_training)
        if run.gpus_per_training > 0:
            cpu_slots = min(cpu_slots, int(round(n["Resources"].get("GPU", 0) / run.gpus_per_training, 6)))
        per_node.append(cpu_slots)
    session.slots = max(1, sum(per_node))
    return session


def _probe(folder: str, token: str) -> dict:
    """On a worker: write a probe file in the output folder for the driver to read."""
    host = socket.gethostname()
    if not os.path.isdir(folder):
        return {"host": host, "path": None, "why": f"{folder} does not exist there"}
    path = os.path.join(folder, f"{_PROBE_PREFIX}{token}_{uuid.uuid4().hex[:8]}")
    try:
        with open(path, "w") as handle:
            handle.write(token)
    except OSError as error:
        return {"host": host, "path": None, "why": f"cannot write {path}: {error.strerror or error}"}
    return {"host": host, "path": path, "why": ""}


def check_shared_store(session: Session, folder: str) -> None:
    """Every node's workers must see the output folder: a worker on each node writes a file the driver reads.

    Raises:
        ConfigError: Naming ``--output_dir`` and the node that does not share it.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = os.path.abspath(folder)
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    token = uuid.uuid4().hex
    probe = ray.remote(_probe)
    refs = [
        probe.options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(folder, token)
        for node in session.nodes
    ]
    problem = None
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
        if not seen and problem is None:
            why = result["why"] or f"a worker on {result['host']} wrote {path}, which this machine cannot read"
            problem = why
    if problem:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise ConfigError(
            "output_dir",
            f"{folder} is not shared with Ray's workers ({problem}); on a cluster --output_dir must be a "
            "shared filesystem every node mounts at the same path",
        )


# -- the worker side ---------------------------------------------------------------------------------------

_PROCESS: dict = {}  # what one worker process built once: threads set, strategy, data per data config


def _setup(config: ExperimentConfig, threads: int, record: dict):
    """The strategy and data of this worker (built once per process and data), checked against the driver's record.

    Raises:
        ConfigError: If the data this worker finds is not the data the study was checked with.
    """
    import tensorflow as tf

    from lottery_tf.engine.data import get_splits
    from lottery_tf.engine.data.registry import splits_fingerprint
    from lottery_tf.engine.distribute import make_strategy, split_cpu

    if "threads" not in _PROCESS:
        with contextlib.suppress(RuntimeError):  # already initialized in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
        for gpu in tf.config.list_physical_devices("GPU"):  # trainings sharing a GPU take memory as they need it
            with contextlib.suppress(RuntimeError):
                tf.config.experimental.set_memory_growth(gpu, True)
        split_cpu(config.run.cpu_devices)
        if config.run.deterministic:
            tf.config.experimental.enable_op_determinism()
        _PROCESS["threads"] = threads
        _PROCESS["strategy"] = make_strategy(config.run.strategy, config.run.tpu)
    key = json.dumps(dataclasses.asdict(config.data), sort_keys=True)
    if key not in _PROCESS:
        splits = get_splits(config.data)
        found = splits_fingerprint(splits)
        if found != record["fingerprint"]:
            raise ConfigError(
                "data_dir",
                f"a Ray worker on {socket.gethostname()} finds {splits.source} (data fingerprint {found}), "
                f"but the study was checked with {record['source']} (fingerprint {record['fingerprint']}); "
                "every node must see the same data at the same path",
            )
        _PROCESS[key] = splits
    return _PROCESS["strategy"], _PROCESS[key]


def _train(config_dict: dict, record: dict, replicate: int, key: str, threads: int) -> dict:
    """A Ray task: one node of the study. Returns what the driver reports; never raises for a user's mistake."""
    config = ExperimentConfig.from_dict(config_dict)
    started = time.time()
    output = io.StringIO()
    result = {"seconds": 0.0, "trained": False, "resumed": False, "error": None, "bug": None, "host": ""}
    result["host"] = socket.gethostname()
    try:
        with contextlib.redirect_stdout(output):
            from lottery_tf.engine import experiment

            strategy, splits = _setup(config, threads, record)
            ctx = experiment.context(config, splits, replicate, strategy, record.get("fingerprint"))
            result["trained"] = bool(study.run_training(ctx, key))
    except Exception as error:  # noqa: BLE001  (reported to the driver, which stops the study)
        line = errors.user_message(error, config.data.name)
        if line is None:
            result["bug"] = {"line": errors.bug_line(error), "traceback": traceback.format_exc()}
        else:
            result["error"] = line
    result["seconds"] = time.time() - started
    result["resumed"] = "resuming from" in output.getvalue()
    result["tail"] = output.getvalue()[-2000:]
    return result


# -- the driver ------------------------------------------------------------------------------------------


def _label(node: study.Training, configs) -> str:
    run = f"k={configs[node.run].pruning.rewind_step} " if len(configs) > 1 else ""
    return f"{run}replicate {node.replicate} {node.key}"


def run_study(session: Session, configs, records, run_config) -> list[bool]:
    """Runs every node of the study of ``configs`` on Ray; returns, per config, whether anything trained.

    Args:
        session: From :func:`connect`.
        configs: The invocation's configs (one per sweep run), their folders already prepared.
        records: Per config, the data record (source and fingerprint) the driver checked.
        run_config: The ``--executor`` settings (:class:`lottery_tf.engine.config.RunConfig`).

    Raises:
        StudyError: With the one line of a task that failed on a user's mistake, or when a task's
            workers died more than :data:`MAX_RETRIES` times.
    """
    import ray

    nodes = study.plan(configs)
    by_id = {n.id: n for n in nodes}
    priority = study.remaining_path(nodes)
    waiting = {n.id: set(n.deps) for n in nodes}
    children = study.children_of(nodes)
    threads = max(1, int(run_config.cpus_per_training))
    task = ray.remote(_train).options(
        num_cpus=run_config.cpus_per_training,
        num_gpus=run_config.gpus_per_training,
        max_retries=MAX_RETRIES,
        retry_exceptions=False,
    )
    plain = [dataclasses.asdict(c) for c in configs]
    trained = [False] * len(configs)
    in_flight: dict = {}
    finished: set = set()
    seconds_per_step: list = []  # (seconds, steps) of finished trainings
    started = time.time()
    print(
        f"ray: {len(nodes)} tasks on {len(session.nodes)} node(s), {session.cpus:g} CPUs, {session.gpus:g} GPUs; "
        f"{session.slots} training(s) at once ({run_config.cpus_per_training:g} CPU"
        f"{f', {run_config.gpus_per_training:g} GPU' if run_config.gpus_per_training else ''} each, "
        f"{threads} TensorFlow thread(s))",
        flush=True,
    )

    def submit_ready():
        ready = sorted((i for i, deps in waiting.items() if not deps), key=lambda i: -priority[i])
        for node_id in ready:
            del waiting[node_id]
            node = by_id[node_id]
            ref = task.remote(plain[node.run], records[node.run], node.replicate, node.key, threads)
            in_flight[ref] = node

    def stop_all():
        for ref in in_flight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    submit_ready()
    try:
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
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
            if result["bug"]:
                stop_all()
                print(result["bug"]["traceback"], flush=True)
                raise RuntimeError(f"in {_label(node, configs)}: {result['bug']['line']}")
            if result["error"]:
                stop_all()
                raise errors.StudyError(result["error"])
            finished.add(node.id)
            trained[node.run] |= result["trained"]
            if node.steps and result["trained"]:
                seconds_per_step.append((result["seconds"], node.steps))
            for child in children[node.id]:
                waiting[child].discard(node.id)
            submit_ready()
            print(
                _progress(node, result, configs, finished, in_flight, waiting, nodes, session, seconds_per_step),
                flush=True,
            )
    finally:
        stop_all()
    print(f"ray: {len(nodes)} tasks done in {study.format_duration(time.time() - started)}", flush=True)
    return trained


def _progress(node, result, configs, finished, in_flight, waiting, nodes, session, seconds_per_step) -> str:
    """One line per finished node: which, how long, how many done / running / waiting, an ETA."""
    running = min(len(in_flight), session.slots)
    queued = len(waiting) + len(in_flight) - running
    what = "measured" if not node.steps else ("resumed from a checkpoint, trained" if result["resumed"] else "trained")
    if not result["trained"]:
        what = "already done"
    line = (
        f"[{len(finished)}/{len(nodes)} done, {running} running, {queued} waiting] {_label(node, configs)}: "
        f"{what} in {result['seconds']:.1f}s"
    )
    if seconds_per_step:
        rate = sum(s for s, _ in seconds_per_step) / sum(n for _, n in seconds_per_step)
        left = [n for n in nodes if n.id not in finished]
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
