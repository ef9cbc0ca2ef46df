"""Weight states on disk: rewind points, trained weights, optimizer states (``.npz``, written atomically).

A state is what :func:`lottery_tf.core.rewind.capture` returns: every non-mask
variable by its unique name. Files written before names were unique are keyed
by Keras variable paths; :func:`lottery_tf.core.rewind.restore` reads both.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence

import numpy as np

from lottery_tf.store import atomic


def save(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes a state atomically as ``.npz``."""
    atomic.write_npz(path, state)


def load(path: str | os.PathLike) -> collections.OrderedDict[str, np.ndarray]:
    """Reads a state written by :func:`save`.

    Raises:
        atomic.CorruptFileError: Naming the file, if it cannot be read.
    """
    return collections.OrderedDict(atomic.read_npz(path))


def save_optimizer(values: Sequence[np.ndarray], path: str | os.PathLike) -> None:
    """Writes :func:`optimizer_values` atomically (by index)."""
    atomic.write_npz(path, {f"{i:05d}": v for i, v in enumerate(values)})


def load_optimizer(path: str | os.PathLike) -> list[np.ndarray]:
    """Reads what :func:`save_optimizer` wrote."""
    arrays = atomic.read_npz(path)
    return [arrays[k] for k in sorted(arrays)]
