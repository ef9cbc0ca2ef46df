"""Capture and restore the state a lottery ticket is rewound to.

A rewind point is the value of every model variable except the masks (weights,
biases, BatchNorm statistics) at one optimizer step, keyed by variable path so
it can be saved to disk and restored into a freshly built model.
"""

from __future__ import annotations

import collections
import os
from typing import Mapping

import numpy as np

from lottery_tf import atomic
from lottery_tf.masking import apply_masks, masked_layers


def _mask_ids(model) -> set:
    return {id(m) for layer in masked_layers(model) for m in layer.masks.values()}


def _state_variables(model):
    masks = _mask_ids(model)
    return [v for v in model.variables if id(v) not in masks]


def capture(model) -> "collections.OrderedDict[str, np.ndarray]":
    """Copies every non-mask model variable: path -> numpy array."""
    state = collections.OrderedDict()
    for variable in _state_variables(model):
        if variable.path in state:
            raise ValueError(
                f"Two model variables share the path {variable.path!r}; give layers "
                "unique names."
            )
        state[variable.path] = np.array(variable.numpy(), copy=True)
    return state


def restore(model, state: Mapping[str, np.ndarray]) -> None:
    """Assigns a captured state to ``model`` and re-applies its current masks.

    Raises:
        ValueError: If the state does not cover exactly the model's variables.
    """
    variables = _state_variables(model)
    paths = [v.path for v in variables]
    if sorted(paths) != sorted(state):
        missing = sorted(set(paths) - set(state))
        extra = sorted(set(state) - set(paths))
        raise ValueError(
            f"Rewind point does not match the model: missing {missing[:5]}, "
            f"unexpected {extra[:5]}."
        )
    for variable in variables:
        variable.assign(state[variable.path])
    apply_masks(model)


def reset_optimizer(optimizer, step: int) -> None:
    """Zeroes the optimizer's slots (moments, velocities) and sets its step.

    The step counter drives the learning-rate schedule, so the schedule resumes
    at ``step``. A float learning rate (stored as a variable) is kept.
    """
    keep = {id(optimizer.iterations)}
    learning_rate = getattr(optimizer, "_learning_rate", None)
    if learning_rate is not None and hasattr(learning_rate, "assign"):
        keep.add(id(learning_rate))
    for variable in optimizer.variables:
        if id(variable) not in keep:
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    optimizer.iterations.assign(step)


def save(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes a state atomically as ``.npz``."""
    atomic.write_npz(path, state)


def load(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Reads a state written by :func:`save`.

    Raises:
        atomic.CorruptFileError: Naming the file, if it cannot be read.
    """
    return collections.OrderedDict(atomic.read_npz(path))
