"""What every finished record of a run carries: whose it is, what the files beside it hold, and a seal.

A level's ``metrics.json`` (and an analysis result, the rewind point's record,
the data record) is the last file its writer writes, atomically. When written
it records:

* ``belongs_to``: the experiment (the folder's settings hash), the data
  fingerprint, the replicate, the level and the folder under ``level_LL/``
  (``main``, ``reinit``, ``instability/lottery_k0/pair_0/copy_a``): a record
  copied or renamed into another experiment, replicate, level or branch no
  longer matches where it lies;
* ``files_sha256``: a content fingerprint of each finished file beside it
  (``masks.npz``, ``final_weights.npz``, ``branch.json``): names, shapes,
  dtypes and values of an archive, the parsed content of a JSON file, so a
  file rebuilt with the same content matches and a swapped, edited or
  re-typed one does not;
* ``record_sha256``: the fingerprint of the record itself (every other key),
  so a number edited by hand is named.

Records written before these keys existed are read as before (the location
is still checked against the ``level``, ``branch`` and ``replicate`` they
hold). Checked by :mod:`lottery_tf.store.reader`, which the runner, the
health check, the reports and the export share. No TensorFlow here.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import zipfile

import numpy as np

SEAL = "record_sha256"
BELONGS = "belongs_to"
FILES = "files_sha256"
SEALED_FILES = ("masks.npz", "final_weights.npz", "branch.json")  # what a level's record fingerprints
NEXT_MASKS = "next_masks_sha256"  # a lineage level's record: the content of the next level's masks it wrote
REWIND_POINT = "rewind_point_sha256"  # a main-line level's record: the content of the rewind point it trained from
ALL_SEALED = "all_records_sealed"  # rewind_point.json: every record of the replicate is sealed when written
CACHES = re.compile(r"(step_\d+(_optimizer)?|rewind_optimizer)\.npz$")  # replayed states: a record beside each
_REPLICATE = re.compile(r"replicate_(\d+)$")
_LEVEL = re.compile(r"level_(\d+)$")


def _canonical(record) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def normalized(record: dict) -> dict:
    """The record as it reads back from JSON (tuples become lists), so its seal survives the round trip."""
    return json.loads(json.dumps(record))


def seal(record: dict) -> dict:
    """``record`` with ``record_sha256``, the fingerprint of everything else in it."""
    body = {k: v for k, v in normalized(record).items() if k != SEAL}
    return {**body, SEAL: hashlib.sha256(_canonical(body)).hexdigest()[:16]}


def seal_problem(record: dict) -> str | None:
    """Why a sealed record is not as written (None if it is, or if it was written without a seal)."""
    recorded = record.get(SEAL)
    if recorded is None:
        return None
    found = seal(record)[SEAL]
    if found != recorded:
        return f"was edited after it was written (its content gives {found}, it was sealed with {recorded})"
    return None


def content_sha256(path: str) -> str:
    """A fingerprint of what a file holds: an archive's names, shapes, dtypes and values; a JSON file's content.

    Raises:
        OSError, ValueError: If the file cannot be read.
    """
    digest = hashlib.sha256()
    if path.endswith(".npz"):
        try:
            with np.load(path) as data:
                for name in sorted(data.files):
                    value = np.ascontiguousarray(data[name])
                    digest.update(f"{name}{value.shape}{value.dtype.str}".encode())
                    digest.update(value.tobytes())
        except (EOFError, zipfile.BadZipFile, KeyError) as error:
            raise ValueError(str(error)) from None
    elif path.endswith(".json"):
        with open(path) as handle:
            digest.update(_canonical(json.load(handle)))
    else:
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def files_of(folder: str) -> dict:
    """``files_sha256`` for a finished level folder: the content fingerprint of each finished file in it."""
    return {
        name: content_sha256(os.path.join(folder, name))
        for name in SEALED_FILES
        if os.path.isfile(os.path.join(folder, name))
    }


def recorded_sha256(path: str) -> str | None:
    """The content fingerprint the record beside ``path`` holds for it (None if none was recorded)."""
    return _recorded(path)[0]


def _recorded(path: str) -> tuple:
    """(the content fingerprint recorded for ``path`` or None, which record holds it)."""
    folder, name = os.path.split(path)
    if name == "rewind_point.npz":  # what the main line's levels trained from, as their records say
        for record_path in sorted(glob.glob(os.path.join(folder, "level_*", "main", "metrics.json"))):
            found = (_read(record_path) or {}).get(REWIND_POINT)
            if isinstance(found, str):
                return found, "the main line's levels recorded they trained from"
        return None, ""
    if CACHES.match(name):
        record = _read(cache_record(path)) or {}
        who = f"{os.path.basename(cache_record(path))} recorded when it was written"
        if seal_problem(record):
            return "its record was edited", who  # matches no content: the state is replayed again
        found = record.get("content_sha256")
        return (found if isinstance(found, str) else None), who
    if name not in SEALED_FILES:
        return None, ""
    files = (_read(os.path.join(folder, "metrics.json")) or {}).get(FILES)
    if isinstance(files, dict) and isinstance(files.get(name), str):
        return files[name], "metrics.json recorded when the level finished"
    if name == "masks.npz":  # a lineage level's masks were written, and recorded, by the level before it
        location = level_location(path)
        if location.get("level", 0) > 0:
            previous = os.path.join(
                location["replicate_folder"], f"level_{location['level'] - 1:02d}", location["folder"], "metrics.json"
            )
            found = (_read(previous) or {}).get(NEXT_MASKS)
            if isinstance(found, str):
                return found, "the previous level's metrics.json recorded when it wrote them"
    return None, ""


def cache_record(path: str) -> str:
    """The record beside a replayed state (``rewind_points/step_50.npz`` -> ``rewind_points/step_50.json``)."""
    return path[: -len(".npz")] + ".json"


def cache_record_of(path: str, owner: dict, step: int) -> dict:
    """The sealed record written beside a replayed state: its content, whose it is and the step it holds."""
    return seal({"content_sha256": content_sha256(path), BELONGS: {**owner, "step": int(step)}})


def cache_step(path: str) -> int | None:
    """The step a replayed state's name says it holds (``step_50.npz``, ``step_50_optimizer.npz``)."""
    found = re.match(r"step_(\d+)(_optimizer)?\.npz$", os.path.basename(path))
    return int(found.group(1)) if found else None


def sealed_store(replicate_folder: str) -> bool:
    """Whether every record of this replicate was sealed when written (its rewind record says so)."""
    record = _read(os.path.join(replicate_folder, "rewind_point.json")) or {}
    return record.get(ALL_SEALED) is True and seal_problem(record) is None and SEAL in record


def unsealed_problem(path: str, record: dict) -> str | None:
    """A record without a seal where every record is sealed when written (its seal was removed by hand)."""
    if SEAL in record:
        return None
    location = level_location(path)
    replicate_folder = location.get("replicate_folder")
    if replicate_folder and sealed_store(replicate_folder):
        return "has no record_sha256, but every record of this replicate is sealed when written: it was edited"
    return None


def _read(path: str) -> dict | None:
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def content_problem(path: str) -> str | None:
    """Why ``path`` no longer holds what its level's record says it held (None if it does or nothing was recorded)."""
    expected, who = _recorded(path)
    if expected is None or not os.path.isfile(path):
        return None
    try:
        found = content_sha256(path)
    except (OSError, ValueError):
        return None  # unreadable: the caller's own check names it
    if found != expected:
        return f"does not hold what {who} (content {found}, recorded {expected}): it was replaced or edited"
    return None


def experiment_of(replicate_folder: str) -> dict:
    """What a record in this replicate must say it belongs to: experiment hash, data fingerprint, replicate.

    Each is left out where it cannot be known from the folders (a replicate outside an experiment folder,
    an unreadable data record: those are named by their own checks).
    """
    expected = {}
    experiment = os.path.dirname(os.path.normpath(replicate_folder))
    if os.path.isfile(os.path.join(experiment, "identity.json")):
        expected["experiment"] = os.path.basename(experiment).rsplit("_", 1)[-1]
        try:
            with open(os.path.join(experiment, "data.json")) as handle:
                fingerprint = json.load(handle).get("fingerprint")
            if fingerprint:
                expected["data"] = fingerprint
        except (OSError, ValueError, AttributeError):
            pass
    match = _REPLICATE.search(os.path.normpath(replicate_folder))
    if match:
        expected["replicate"] = int(match.group(1))
    return expected


def belongs_to(experiment: str, data: str | None, replicate: int, level: int | None = None, folder=None) -> dict:
    """The ``belongs_to`` a writer records (``level`` and ``folder`` for level records)."""
    owner = {"experiment": experiment, "replicate": int(replicate)}
    if data:
        owner["data"] = data
    if level is not None:
        owner["level"] = int(level)
    if folder is not None:
        owner["folder"] = folder
    return owner


def describe(owner: dict) -> str:
    """``level 1 [main], replicate 0, experiment 3f1c2a9b (data 5d41402a)``: as much as ``owner`` says."""
    where = []
    if "step" in owner:
        where.append(f"the state at step {owner['step']}")
    if "level" in owner:
        where.append(f"level {owner['level']}" + (f" [{owner['folder']}]" if owner.get("folder") else ""))
    if "replicate" in owner:
        where.append(f"replicate {owner['replicate']}")
    if "experiment" in owner:
        where.append(f"experiment {owner['experiment']}")
    return ", ".join(where) + (f" (data {owner['data']})" if owner.get("data") else "")


def owner_problem(record: dict, expected: dict) -> str | None:
    """Why a record is not this location's: it names another experiment, data, replicate, level or folder.

    Old records without ``belongs_to`` are checked by the ``level``, ``branch`` and ``replicate`` they hold.
    """
    owner = record.get(BELONGS)
    if not isinstance(owner, dict):
        owner = {}
        for key, old in (("level", "level"), ("folder", "branch"), ("replicate", "replicate")):
            if old in record:
                owner[key] = record[old]
    keys = ("experiment", "data", "replicate", "level", "folder", "step")
    if not any(key in owner and key in expected and owner[key] != expected[key] for key in keys):
        return None
    return f"is the record of {describe(owner)}, not of {describe(expected)}: it was copied or renamed here"


def level_location(path: str) -> dict:
    """``{"replicate", "level", "folder"}`` of a file inside ``replicate_R/level_LL/<folder>/`` (what can be read)."""
    parts = os.path.normpath(path).split(os.sep)
    found = {}
    for index, part in enumerate(parts):
        if _LEVEL.match(part) and index > 0 and _REPLICATE.match(parts[index - 1]):
            found["replicate"] = int(parts[index - 1].rsplit("_", 1)[1])
            found["level"] = int(part.rsplit("_", 1)[1])
            found["folder"] = "/".join(parts[index + 1 : -1])
            found["replicate_folder"] = os.sep.join(parts[:index]) or os.sep
    return found
