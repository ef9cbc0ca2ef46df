"""Checkpoints within a level: save every N steps, resume from the newest good one.

A checkpoint is two files in ``<level>/<branch>/checkpoints/``:

* ``ckpt-<step>.npz``: every model variable (weights, masks, BatchNorm
  statistics, seed-generator state) by path, and every optimizer variable
  (slots, step counter: the learning-rate schedule position) by index;
* ``ckpt-<step>.json``: the step, the SHA-256 of the ``.npz``, and the caller's
  state (evaluation curves so far). Written after the ``.npz``: a checkpoint
  without its ``.json`` is incomplete and ignored.

The input pipeline's position is the step itself (batches are a deterministic
function of seed and step), so it needs no file. Both files are written
atomically; on load the checksum is verified, and a corrupted or truncated
checkpoint is reported by name and skipped for the previous good one.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
import sys
from typing import Any

import numpy as np

from lottery_tf import atomic, faults

KEEP = 2  # checkpoints kept: the newest and one to fall back to


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file."""


@dataclasses.dataclass
class Checkpoint:
    step: int
    model: dict  # path -> array
    optimizer: list  # arrays in optimizer.variables order
    state: dict  # caller's JSON state
    path: str


def _model_variables(model) -> dict:
    out = {}
    for variable in model.variables:
        if variable.path in out:
            raise CheckpointError(f"two model variables share the path {variable.path!r}; give layers unique names")
        out[variable.path] = variable
    return out


def save(folder: str, model, step: int, state: dict[str, Any]) -> str:
    """Writes a checkpoint of ``model`` and its optimizer at ``step``; prunes old ones.

    Returns:
        The path of the ``.json`` file.

    Raises:
        OSError: If writing fails (disk full, ...); earlier checkpoints are intact.
    """
    arrays = {f"model/{path}": np.asarray(v.numpy()) for path, v in _model_variables(model).items()}
    for i, variable in enumerate(model.optimizer.variables):
        arrays[f"optimizer/{i:05d}"] = np.asarray(variable.numpy())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    base = os.path.join(folder, f"ckpt-{step:09d}")
    atomic.write_bytes(base + ".npz", payload, crash_point="checkpoint_write")
    faults.crash_point("checkpoint_between_files")
    meta = {"step": step, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), "state": state}
    atomic.write_json(base + ".json", meta)
    _prune_old(folder)
    return base + ".json"


def _prune_old(folder: str) -> None:
    if not atomic.writes_enabled():
        return
    metas = sorted(glob.glob(os.path.join(folder, "ckpt-*.json")))
    for meta in metas[:-KEEP]:
        for path in (meta, meta[: -len(".json")] + ".npz"):
            if os.path.exists(path):
                os.remove(path)


def read(meta_path: str) -> Checkpoint:
    """Reads and verifies one checkpoint.

    Raises:
        CheckpointError: If either file is missing, unreadable, or fails its checksum.
    """
    try:
        with open(meta_path) as handle:
            meta = json.load(handle)
        step = int(meta["step"])
        expected = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{meta_path}: unreadable ({error})") from None
    npz_path = meta_path[: -len(".json")] + ".npz"
    try:
        with open(npz_path, "rb") as handle:
            payload = handle.read()
    except OSError as error:
        raise CheckpointError(f"{npz_path}: unreadable ({error.strerror})") from None
    if hashlib.sha256(payload).hexdigest() != expected:
        raise CheckpointError(f"{npz_path}: checksum mismatch ({len(payload)} bytes, expected {meta.get('bytes')})")
    with np.load(io.BytesIO(payload)) as data:
        model = {k[len("model/"):]: data[k] for k in data.files if k.startswith("model/")}
        optimizer = [data[k] for k in sorted(k for k in data.files if k.startswith("optimizer/"))]
    return Checkpoint(step, model, optimizer, meta.get("state", {}), meta_path)


def latest(folder: str, warn=None) -> Checkpoint | None:
    """The newest checkpoint that verifies; corrupted ones are reported and skipped."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))
    metas = sorted(glob.glob(os.path.join(folder, "ckpt-*.json")), reverse=True)
    for index, meta in enumerate(metas):
        try:
            return read(meta)
        except CheckpointError as error:
            last = index == len(metas) - 1
            warn(f"checkpoint {error}; " + ("no usable checkpoint is left: the level restarts from its first step"
                                            if last else "falling back to the previous one"))
    return None


def verify_all(folder: str) -> list[str]:
    """Problems found in a checkpoint folder (for the health check)."""
    problems = []
    for meta in sorted(glob.glob(os.path.join(folder, "ckpt-*.json"))):
        try:
            read(meta)
        except CheckpointError as error:
            problems.append(str(error))
    return problems


def restore(model, checkpoint: Checkpoint) -> None:
    """Assigns a checkpoint's variables to ``model`` and its (built) optimizer.

    Raises:
        CheckpointError: If the checkpoint does not match the model.
    """
    variables = _model_variables(model)
    if sorted(variables) != sorted(checkpoint.model):
        raise CheckpointError(f"{checkpoint.path}: does not match the model's variables")
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    if len(model.optimizer.variables) != len(checkpoint.optimizer):
        raise CheckpointError(f"{checkpoint.path}: does not match the optimizer's variables")
    for path, variable in variables.items():
        variable.assign(checkpoint.model[path])
    for variable, value in zip(model.optimizer.variables, checkpoint.optimizer):
        variable.assign(value)


def remove_all(folder: str) -> None:
    """Deletes a finished level's checkpoints (not on a worker that only reads)."""
    if not atomic.writes_enabled():
        return
    for path in glob.glob(os.path.join(folder, "ckpt-*")) + glob.glob(os.path.join(folder, ".tmp-*")):
        os.remove(path)
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)
