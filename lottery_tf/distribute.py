"""The tf.distribute strategy from its name.

``default`` (no distribution), ``one_device`` (the first GPU, else the CPU),
``mirrored`` (synchronous data parallelism over all local GPUs, or over the
logical CPU devices made with ``cpu_devices``). The global batch size is split
across replicas by Keras; masks are synchronized variables and pruning runs in
the cross-replica context, so every replica holds the same mask.
"""

from __future__ import annotations

import tensorflow as tf


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


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy called ``name``.

    Raises:
        ValueError: For an unknown name.
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
    raise ValueError(f"unknown strategy {name!r}; expected default, one_device or mirrored")
