"""Checkpoints within a level: save every N steps, resume from the newest good one.

A checkpoint is two files in ``<level>/<branch>/checkpoints/``:

* ``ckpt-<step>.npz``: every model variable (weights, masks, BatchNorm
  statistics, seed-generator state) by path, and every optimizer variable
  (slots, step counter: the learning-rate schedule position) by index;
* ``ckpt-<step>.json``: the step, the SHA-256 of the ``.npz``, whose
  checkpoint it is (replicate, level, branch, start step, mask fingerprint)
  and the caller's state (evaluation curves so far). Written after the
  ``.npz``: a checkpoint without its ``.json`` is incomplete and ignored. A
  checkpoint of another level or branch (copied by hand, or left behind) is
  refused by name, and the previous one, or the level's start, is used.

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

from lottery_tf.core import naming
from lottery_tf.store import atomic, faults

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
    owner: dict = dataclasses.field(default_factory=dict)  # whose checkpoint it is (see save)


def _model_variables(model) -> dict:
    """Unique name (:mod:`lottery_tf.core.naming`) -> variable, masks included.

    Masks attached in place are not variables of the model; they are stored
    under the names earlier versions gave their wrappers' mask variables.
    """
    from lottery_tf.core.masking import mask_variables

    try:
        variables = naming.variable_names(model)
        try:
            masks = mask_variables(model)
        except ValueError:  # nothing masked
            masks = {}
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    clash = sorted(set(masks) & set(variables))
    if clash:
        raise CheckpointError(f"model variables are named like masks: {clash[:3]}")
    variables.update(masks)
    return variables


def save(folder: str, model, step: int, state: dict[str, Any], owner: dict | None = None) -> str:
    """Writes a checkpoint of ``model`` and its optimizer at ``step``; prunes old ones.

    ``owner`` says whose checkpoint it is (replicate, level, branch, start step,
    mask fingerprint); :func:`latest` refuses a checkpoint whose owner differs.

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
    meta = {
        "step": step,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "owner": owner or {},
        "state": state,
    }
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
        size, recorded = len(payload), meta.get("bytes")
        if recorded not in (None, size):
            raise CheckpointError(f"{npz_path}: checksum mismatch ({size} bytes, expected {recorded})")
        same = ", the size recorded" if recorded == size else ""  # the size is right: the content is not
        raise CheckpointError(f"{npz_path}: checksum mismatch: the content differs ({size} bytes{same})")
    with np.load(io.BytesIO(payload)) as data:
        model = {k[len("model/") :]: data[k] for k in data.files if k.startswith("model/")}
        optimizer = [data[k] for k in sorted(k for k in data.files if k.startswith("optimizer/"))]
    return Checkpoint(step, model, optimizer, meta.get("state", {}), meta_path, meta.get("owner") or {})


def mask_variable_names(model) -> dict:
    """``{"mask_names": [...], "mask_variables": [...]}``: each mask's name and its variable's name in a checkpoint."""
    from lottery_tf.core.masking import masked_weights

    names = {id(v): name for name, v in _model_variables(model).items()}
    triples = masked_weights(model)
    return {"mask_names": [name for name, _, _ in triples], "mask_variables": [names[id(m)] for _, m, _ in triples]}


def mismatch(found: Checkpoint, owner: dict) -> str | None:
    """Why ``found`` is not a checkpoint of ``owner`` (None if it is).

    Checks the identity it recorded (replicate, level, branch, start step, mask
    fingerprint) and, for checkpoints that recorded none, that its step lies
    within the level and that its masks are the level's masks.
    """
    recorded = found.owner
    for key in ("experiment", "data", "replicate", "level", "branch", "start_step", "masks_sha256"):
        if key in recorded and key in owner and recorded[key] != owner[key]:
            return f"it belongs to {_describe(recorded)}, not to {_describe(owner)}"
    if (
        "start_step" in owner
        and "steps" in owner
        and not owner["start_step"] < found.step < owner["start_step"] + owner["steps"]
    ):
        return f"its step {found.step} is outside this level's steps {owner['start_step']}..{owner['start_step'] + owner['steps']}"
    if "mask_names" in owner:
        expected = dict(zip(owner["mask_names"], owner["mask_variables"]))
        held = {name: found.model[variable] for name, variable in expected.items() if variable in found.model}
        if len(held) == len(expected):
            from lottery_tf.core.pruning import fingerprint

            if fingerprint(held) != owner.get("masks_sha256"):
                return "its masks are not this level's masks"
    return None


def _describe(owner: dict) -> str:
    experiment = f" in experiment {owner['experiment']}" if "experiment" in owner else ""
    data = f" (data {owner['data']})" if "data" in owner else ""
    return (
        f"replicate {owner.get('replicate', '?')} level {owner.get('level', '?')} [{owner.get('branch', '?')}] "
        f"from step {owner.get('start_step', '?')} with masks {owner.get('masks_sha256', '?')}{experiment}{data}"
    )


def latest(folder: str, warn=None, owner: dict | None = None) -> Checkpoint | None:
    """The newest checkpoint that verifies and belongs to ``owner``; others are reported and skipped."""
    warn = warn or (lambda message: print(f"warning: {message}", file=sys.stderr, flush=True))
    metas = sorted(glob.glob(os.path.join(folder, "ckpt-*.json")), reverse=True)
    for index, meta in enumerate(metas):
        last = index == len(metas) - 1
        fallback = (
            "no usable checkpoint is left: the level restarts from its first step"
            if last
            else "falling back to the previous one"
        )
        try:
            found = read(meta)
        except CheckpointError as error:
            warn(f"checkpoint {error}; {fallback}")
            continue
        problem = mismatch(found, owner) if owner else None
        if problem:
            warn(f"checkpoint {meta} is refused: {problem}; {fallback}")
            continue
        return found
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
    from lottery_tf.core.masking import legacy_keras_paths

    variables = _model_variables(model)
    try:  # checkpoints written before names were unique are keyed by Keras paths
        values = naming.rename_keys(checkpoint.model, variables, "checkpoint", legacy_keras_paths(model))
    except ValueError:
        raise CheckpointError(f"{checkpoint.path}: does not match the model's variables") from None
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    if len(model.optimizer.variables) != len(checkpoint.optimizer):
        raise CheckpointError(f"{checkpoint.path}: does not match the optimizer's variables")
    for name, variable in variables.items():
        variable.assign(values[name])
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
