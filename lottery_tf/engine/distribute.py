"""The tf.distribute strategy from its name, and what its workers must agree on.

``default`` (no distribution), ``one_device`` (the first GPU, else the CPU),
``mirrored`` (synchronous data parallelism over all local GPUs, or over the
logical CPU devices made with ``cpu_devices``), ``multi_worker_mirrored`` (the
same across worker processes; the cluster comes from ``TF_CONFIG``) and
``tpu`` (a Cloud TPU, by name or ``grpc://`` address, or ``local``).

The global batch size is split across replicas. Masks are mirrored variables
and pruning runs in the cross-replica context, so every replica holds the same
mask; across workers, :func:`broadcast_from_chief` makes the chief's pruning
decision the one every worker uses. Only the chief (:func:`is_chief`) writes,
and no worker exits before every worker is past its last collective
(:func:`leave_together`).
"""

from __future__ import annotations

import json
import os
import socket
import weakref
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from lottery_tf.engine.config import DETERMINISTIC_THREADS, STRATEGIES, StrategyError  # noqa: F401  (StrategyError is raised here)


def describe_devices() -> str:
    """One line naming the devices TensorFlow will use (without initializing them)."""
    gpus = tf.config.list_physical_devices("GPU")
    tpus = tf.config.list_physical_devices("TPU")
    if tpus:
        return f"{len(tpus)} TPU core(s)"
    if gpus:
        names = []
        for gpu in gpus:
            try:
                names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
            except (RuntimeError, ValueError):
                names.append(gpu.name)
        return f"{len(gpus)} GPU(s): {', '.join(names)}"
    return f"CPU only ({os.cpu_count()} cores; no GPU found)"


def split_cpu(count: int) -> None:
    """Splits the host CPU into ``count`` logical devices (before TensorFlow starts).

    Raises:
        RuntimeError: If TensorFlow's devices are already initialized differently.
    """
    if count <= 0:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == count:
        return
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def make_deterministic() -> None:
    """Op determinism and one intra-op thread (before TensorFlow starts): the same bits on any executor or machine.

    TensorFlow's CPU kernels split a sum (a loss's mean, a matmul's reduction) into one part per thread, so
    the thread count changes the order of the additions and the last bits: on an AMD EPYC with two cores,
    one thread and two differ from the first evaluation on. Op determinism fixes the kernels; one thread in
    every process (the local executor, each Ray worker, each multi-worker process) fixes the order, so a
    study gives the same files whichever executor or machine runs it, or resumes it.

    Raises:
        RuntimeError: If TensorFlow already runs with another intra-op thread count.
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(DETERMINISTIC_THREADS)
    except RuntimeError:  # TensorFlow already started: fine only if it started with one thread
        # 0 is TensorFlow's default: $TF_NUM_INTRAOP_THREADS where set, else one per core.
        threads = tf.config.threading.get_intra_op_parallelism_threads() or int(
            os.environ.get("TF_NUM_INTRAOP_THREADS") or os.cpu_count() or 0
        )
        if threads != DETERMINISTIC_THREADS:
            raise RuntimeError(
                f"--deterministic needs {DETERMINISTIC_THREADS} TensorFlow intra-op thread, but TensorFlow started "
                f"with {threads} before the run could set it"
            ) from None
    tf.config.experimental.enable_op_determinism()


def cluster_from_environment() -> dict | None:
    """The parsed ``TF_CONFIG``, or None when it is unset.

    Raises:
        StrategyError: If ``TF_CONFIG`` is not JSON with ``cluster`` and ``task``.
    """
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return None
    try:
        parsed = json.loads(text)
        cluster, task = parsed["cluster"], parsed["task"]
        if not isinstance(cluster, dict) or not isinstance(task, dict):
            raise TypeError("cluster and task must be objects")
        task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise StrategyError(
            f'TF_CONFIG: expected JSON like {{"cluster": {{"worker": ["host:port", ...]}}, '
            f'"task": {{"type": "worker", "index": 0}}}}; got {text[:80]!r} ({error})'
        ) from None
    return parsed


def make_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    """The strategy called ``name``.

    Args:
        name: One of :data:`STRATEGIES`.
        tpu: For ``tpu``: the TPU's name, ``grpc://host:port`` address, or
            ``local`` (a TPU VM).

    Raises:
        ValueError: For an unknown name.
        StrategyError: If the cluster or TPU cannot be set up.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        cluster_from_environment()  # a clear error for a malformed TF_CONFIG
        tf.get_logger().setLevel("WARNING")  # one INFO line per collective otherwise
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        if not tpu:
            raise StrategyError("--tpu: --strategy=tpu needs the TPU's name, grpc:// address, or 'local'")
        tf.get_logger().setLevel("WARNING")
        _check_reachable(tpu)
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
            if tpu != "local":
                tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise StrategyError(f"--tpu: cannot use TPU {tpu!r}: {first_line}") from None
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def _check_reachable(tpu: str, seconds: float = 10.0) -> None:
    """Fails fast for a ``grpc://host:port`` that does not answer (TensorFlow
    would wait for it forever)."""
    if not tpu.startswith("grpc://"):
        return
    host, _, port = tpu[len("grpc://") :].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds):
            pass
    except (OSError, ValueError) as error:
        raise StrategyError(f"--tpu: cannot reach {tpu}: {getattr(error, 'strerror', None) or error}") from None


def is_multi_worker(strategy) -> bool:
    """Whether ``strategy`` synchronizes worker processes (Keras ``fit`` cannot drive it)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy) -> bool:
    """Whether this process writes the run's files (always, except on non-chief workers)."""
    return strategy is None or bool(strategy.extended.should_checkpoint)


def worker_label(strategy) -> str:
    """``"worker i/n"`` for multi-worker runs, else an empty string."""
    if not is_multi_worker(strategy):
        return ""
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    count = sum(len(tasks) for kind, tasks in spec.items() if kind in ("chief", "worker")) or 1
    return f"{resolver.task_type or 'worker'} {resolver.task_id or 0} of {count} workers"


_broadcasts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _from_replica_zero(strategy, vector: tf.Tensor) -> tf.Tensor:
    """Replica 0's ``vector`` (the chief's first device), on every worker: a
    sum over replicas in which the others contribute zeros."""
    if strategy not in _broadcasts:

        @tf.function(reduce_retracing=True)
        def broadcast(vector):
            def contribute(vector):
                first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
                return tf.where(first, vector, tf.zeros_like(vector))

            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute, args=(vector,)), axis=None)

        _broadcasts[strategy] = broadcast
    return _broadcasts[strategy](vector)


def barrier(strategy) -> None:
    """Waits until every worker gets here (files the chief wrote before are visible)."""
    if is_multi_worker(strategy):
        _from_replica_zero(strategy, tf.ones([1])).numpy()


_leaves = 0  # how many times this process left together: every worker counts the same


def leave_together(strategy, seconds: float = 600.0) -> None:
    """Waits until every worker is past its last collective, before any of them exits.

    A collective ends on each worker on its own: a worker that holds every
    chunk it needs may exit while the chief still fetches its last chunk from
    that worker, and the chief's step then fails ("a worker stopped") though
    nothing went wrong. The coordination service's barrier, held by the chief,
    lets a worker leave only once every worker has called it. Public TensorFlow
    has no such call except through DTensor meshes, hence the eager context's.

    Raises:
        tf.errors.DeadlineExceededError: If some worker does not arrive within ``seconds``.
        tf.errors.UnavailableError: If the chief stopped.
    """
    global _leaves
    if not is_multi_worker(strategy):
        return
    from tensorflow.python.eager import context  # the one private TensorFlow module used; see above

    if context.context().coordination_service is None:  # MultiWorkerMirroredStrategy configures it for its workers
        return
    _leaves += 1
    context.context().wait_at_barrier(f"lottery_tf_leave_{_leaves}", int(seconds * 1000))


def broadcast_from_chief(strategy, arrays: Mapping[str, np.ndarray]) -> dict:
    """The chief's ``arrays`` (same names and shapes on every worker), on every worker.

    Used for pruning decisions: each worker computes them from its copy of the
    synchronized weights, and the chief's is the one all of them keep.
    """
    names = list(arrays)
    if not is_multi_worker(strategy) or not names:
        return dict(arrays)
    flat = np.concatenate([np.asarray(arrays[n], np.float32).ravel() for n in names])
    summed = _from_replica_zero(strategy, tf.constant(flat)).numpy()
    out, start = {}, 0
    for name in names:
        size = int(np.asarray(arrays[name]).size)
        out[name] = summed[start : start + size].reshape(np.shape(arrays[name])).astype(np.asarray(arrays[name]).dtype)
        start += size
    return out


def per_worker_batches(
    dataset: tf.data.Dataset, global_batch: int, context: tf.distribute.InputContext
) -> tf.data.Dataset:
    """This input pipeline's share of each global batch, split per local replica.

    Global batch i is the concatenation, in replica order, of what every
    replica receives at step i, so a distributed step sees the same examples as
    a single-device step.

    Raises:
        ValueError: If the global batch does not divide evenly.
    """
    replicas = context.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"--batch_size={global_batch} is not divisible by the {replicas} replicas")
    share = global_batch // context.num_input_pipelines
    first = context.input_pipeline_id * share
    sliced = dataset.map(lambda x, y: (x[first : first + share], y[first : first + share]))
    return split_per_replica(sliced, global_batch, context)


def split_per_replica(
    shares: tf.data.Dataset, global_batch: int, context: tf.distribute.InputContext
) -> tf.data.Dataset:
    """Batches of this input pipeline's share of each global batch, split into
    one batch per local replica (unchanged with one replica per pipeline)."""
    per_replica = context.get_per_replica_batch_size(global_batch)
    return shares if per_replica == global_batch // context.num_input_pipelines else shares.rebatch(per_replica)
