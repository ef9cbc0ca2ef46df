"""The run store read by one piece of code: what is done, what is damaged, and what a run does about it.

The runner (:mod:`lottery_tf.engine.experiment` and the modules it drives), the
health check (``python -m lottery_tf.runs``), the reports, ``load_ticket`` and
the export read run folders through this module, so they cannot disagree: the
health check prints, for every problem, the sentence the runner prints and
acts on. A file whose content no longer matches what its record holds
(:mod:`lottery_tf.store.records`) is damaged like an unreadable one. No
TensorFlow here.

Every :class:`Problem` carries an ``action``:

* ``retrain``: a level's (or an analysis copy's) ``metrics.json`` is missing,
  unreadable, incomplete or holds NaN: the level is not done, and the next run
  that includes it trains it again; nothing else is touched.
* ``rebuild``: a file that is a pure function of others (a level's masks, the
  rewind point, a branch's ``branch.json``, an analysis result) is damaged:
  the next run rebuilds it before training and, where the run recorded a
  fingerprint (``metrics.json``'s ``masks_sha256``, ``rewind_point.json``),
  checks the rebuilt file against it; if they differ it stops, naming what to
  delete.
* ``rebuild_when_needed``: a finished level's trained weights are missing; a
  run that needs them (the next level's masks, a branch that starts from them)
  trains the level again and keeps the weights only if they prune to the masks
  the run already recorded.
* ``refuse``: nothing can be rebuilt (the data record, the identity), a
  record is another experiment's, replicate's, level's or branch's (copied or
  renamed here: :mod:`lottery_tf.store.records`), or a folder cannot be read;
  a run refuses with the same line.
* ``note``: harmless for the results (a leftover temporary file, a stale lock,
  a damaged checkpoint that a resume skips, a truncated TensorBoard file).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import socket
import struct
import time
import zipfile

import numpy as np

from lottery_tf.core.pruning import fingerprint
from lottery_tf.store import records

RETRAIN, REBUILD, REBUILD_WHEN_NEEDED, REFUSE, NOTE = "retrain", "rebuild", "rebuild_when_needed", "refuse", "note"
MAIN = "main"
ANALYSES = ("instability", "stability")
LINEAGE_PREFIXES = ("lr_rewind_",)  # branch lineages: level L is pruned from level L-1 of the same folder
REQUIRED_METRICS = ("level", "branch", "density", "iterations", "curves")
STALE_LOCK_SECONDS = 10.0  # an unreadable lock older than this was left by a kill between creating and writing it
_LEVEL = re.compile(r"level_(\d+)$")


class StoreError(RuntimeError):
    """The run folder cannot be used as it is; the message names the file and what to do."""


class RepairError(StoreError):
    """A damaged file cannot be rebuilt to what the run recorded; the message says what to delete."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong in a run folder, and what a run does about it."""

    path: str
    what: str
    action: str
    fix: str
    kind: str = ""  # masks, metrics, final_weights, branch_info, rewind_point, result, data, identity, ...
    level: int | None = None
    folder: str | None = None  # the branch folder under level_LL/ (``main``, ``reinit``, ``instability/...``)

    def line(self) -> str:
        return f"{self.path}: {self.what}" + (f"; {self.fix}" if self.fix else "")


def format_levels(levels) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``; ``"-"`` for none."""
    levels = sorted(levels)
    if not levels:
        return "-"
    parts, start, prev = [], levels[0], levels[0]
    for level in levels[1:] + [None]:
        if level is not None and level == prev + 1:
            prev = level
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if level is not None:
            start = prev = level
    return ",".join(parts)


# -- single files -------------------------------------------------------------------------------------


def json_problem(path: str, required=(), content: bool = True) -> str | None:
    """What is wrong with a JSON file (None if it reads as an object with the ``required`` keys).

    With ``content``, also a sealed record edited after it was written, or a file that no longer holds what
    its level's record says it held (:mod:`lottery_tf.store.records`).
    """
    try:
        with open(path) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return "is missing"
    except (OSError, ValueError) as error:
        return f"is unreadable ({error})"
    if not isinstance(record, dict):
        return "is not a JSON object"
    missing = [k for k in required if k not in record]
    if missing:
        return f"is incomplete (no {', '.join(missing)})"
    return (records.seal_problem(record) or records.content_problem(path)) if content else None


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def npz_problem(path: str, content: bool = True) -> str | None:
    """What is wrong with an ``.npz`` archive (None if every array reads back; zip CRCs are checked).

    With ``content``, also an archive that no longer holds what its level's record says it held.
    """
    if not os.path.exists(path):
        return "is missing"
    try:
        with np.load(path) as data:
            for key in data.files:
                data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        return f"is unreadable or corrupted ({error})"
    return records.content_problem(path) if content else None


def read_npz(path: str) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def state_fingerprint(state) -> str:
    """A short hash of a saved state (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        value = np.ascontiguousarray(state[name])
        digest.update(f"{name}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _non_finite_curves(record) -> list[str]:
    bad = []
    curves = record.get("curves", {}) if isinstance(record, dict) else {}
    for split, metrics in curves.items() if isinstance(curves, dict) else ():
        for metric, values in metrics.items() if isinstance(metrics, dict) else ():
            if any(
                not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) for v in values or ()
            ):
                bad.append(f"{split} {metric}")
    return bad


def expected_owner(path: str) -> dict:
    """What a record at ``path`` (inside ``replicate_R/level_LL/<folder>/``, or a replicate's own file) belongs to."""
    location = records.level_location(path)
    if location:
        replicate_folder = location.pop("replicate_folder")
        return {**records.experiment_of(replicate_folder), **location}
    return records.experiment_of(os.path.dirname(path))


def owner_problem(path: str) -> str | None:
    """Why the record at ``path`` is another experiment's, replicate's, level's or branch's (None if it is this one's)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return records.owner_problem(record, expected_owner(path))


def metrics_problem(path: str) -> str | None:
    """What is wrong with a ``metrics.json`` (None if it is a complete, finite, sealed record of this level: done)."""
    problem = json_problem(path, REQUIRED_METRICS, content=False) or owner_problem(path)
    if problem:
        return problem
    record = read_json(path)
    bad = _non_finite_curves(record)
    if bad:
        return f"holds NaN or infinity in its {', '.join(bad)} curves (a diverged or damaged result)"
    return records.seal_problem(record) or records.unsealed_problem(path, record)


def level_dir(replicate_folder: str, level: int, branch: str) -> str:
    return os.path.join(replicate_folder, f"level_{level:02d}", branch)


def is_done(replicate_folder: str, level: int, branch: str) -> bool:
    """Whether that level's ``metrics.json`` is a complete, finite record (the last file a level writes)."""
    return metrics_problem(os.path.join(level_dir(replicate_folder, level, branch), "metrics.json")) is None


_RESULT_KEYS = {
    "instability": ("test", "train", "alphas", "instability", "density"),
    "stability": ("to_pruning", "to_data_order", "density"),
}


def result_problem(path: str) -> str | None:
    """What is wrong with an analysis result (``instability.json``, ``stability.json``): unreadable or incomplete."""
    analysis = os.path.basename(path)[: -len(".json")]
    return (
        json_problem(
            path, ("analysis", "network", "level", "rewind_step", "replicate", *_RESULT_KEYS.get(analysis, ()))
        )
        or owner_problem(path)
        or records.unsealed_problem(path, read_json(path))
    )


_COPY_FILES = ("branch.json", "metrics.json", "masks.npz", "final_weights.npz")


def copies_of(result_folder: str) -> list[str]:
    """The copy folders an analysis result is computed from (``copy_a``, ``same_order``, ...)."""
    found = {os.path.dirname(p) for name in _COPY_FILES for p in glob.glob(os.path.join(result_folder, "*", name))}
    return sorted(found)


def analysis_done(result_path: str) -> bool:
    """An analysis result is done when it reads and every copy it was computed from is a finished level."""
    if result_problem(result_path):
        return False
    for copy in copies_of(os.path.dirname(result_path)):
        if metrics_problem(os.path.join(copy, "metrics.json")) or npz_problem(os.path.join(copy, "final_weights.npz")):
            return False
    return True


def copy_files_damaged(copy_folder: str) -> bool:
    """Whether a finished copy's masks or ``branch.json`` are damaged (rebuilt from its start, without training)."""
    metrics = os.path.join(copy_folder, "metrics.json")
    masks = os.path.join(copy_folder, "masks.npz")
    if metrics_problem(metrics) or npz_problem(masks) or json_problem(os.path.join(copy_folder, "branch.json")):
        return metrics_problem(metrics) is None
    expected = read_json(metrics).get("masks_sha256")
    return bool(expected) and fingerprint(read_npz(masks)) != expected


def analysis_complete(result_path: str) -> bool:
    """Done, and nothing of its copies to rebuild."""
    return analysis_done(result_path) and not any(
        copy_files_damaged(c) for c in copies_of(os.path.dirname(result_path))
    )


# -- TensorBoard event files (TFRecord framing, CRC32C), read without TensorFlow ------------------------


def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def event_file_problem(path: str) -> str | None:
    """What is wrong with a TensorBoard event file: a truncated last record, or a record failing its CRC."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return f"is unreadable ({error.strerror})"
    offset, records, check_data = 0, 0, len(data) < 20_000_000
    while offset < len(data):
        if offset + 12 > len(data):
            return f"is truncated after {records} complete records"
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        if _masked_crc(header) != header_crc:
            return f"is damaged at byte {offset} (record {records + 1})"
        end = offset + 12 + length + 4
        if end > len(data):
            return f"is truncated after {records} complete records"
        if check_data:
            (data_crc,) = struct.unpack("<I", data[end - 4 : end])
            if _masked_crc(data[offset + 12 : end - 4]) != data_crc:
                return f"is damaged at byte {offset} (record {records + 1})"
        offset, records = end, records + 1
    return None


# -- locks ----------------------------------------------------------------------------------------------

_LOCK_MAX_BYTES = 65536  # a lock file is a few dozen bytes of JSON; anything longer is not one
LEASE_GRACE_SECONDS = 60.0  # an expired lease is stale this long after it ran out: clocks of two hosts may differ
GRACE_ENV = "LOTTERY_TF_LOCK_GRACE_SECONDS"  # overrides LEASE_GRACE_SECONDS (tests: a second or two)


def seconds_from_env(name: str, default: float) -> float:
    """A positive, finite number of seconds from environment variable ``name``, else ``default``.

    Raises:
        ValueError: If the variable is set to anything else, naming it.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def lease_grace_seconds() -> float:
    """How long after its end an expired lease still counts as held (clock skew between hosts)."""
    return seconds_from_env(GRACE_ENV, LEASE_GRACE_SECONDS)


def process_identity(pid: int) -> dict:
    """What tells process ``pid`` from a later process given the same pid: ``{"boot_id", "start_ticks"}``.

    On Linux, the boot's id (``/proc/sys/kernel/random/boot_id``) and the
    process's start time in clock ticks since boot (field 22 of
    ``/proc/<pid>/stat``). Empty where these cannot be read (no ``/proc``, as
    on macOS, or a ``/proc`` that hides other users' processes): a lock
    written there records no start time and is read like an old lock.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as handle:
            boot_id = handle.read(256).decode("ascii").strip()
        with open(f"/proc/{int(pid)}/stat", "rb") as handle:
            stat = handle.read(4096).decode("ascii", "replace")
        # Field 2 (the command name, in parentheses) may hold spaces and ")": field 3 starts after the last ")".
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22
    except (OSError, ValueError, IndexError, OverflowError):
        return {}
    return {"boot_id": boot_id, "start_ticks": start_ticks} if boot_id else {}


@dataclasses.dataclass(frozen=True)
class Lease:
    """A lock's lease as this host sees it: ``renewed_ago`` and ``ends_in`` seconds (negative: over), ``grace``.

    Both come from the later of two clocks: the time the holder wrote into the
    lock (``renewed``, ``expires``: the holder's clock) and the file's
    modification time (the file system's clock; on a shared folder, often the
    file server's). A lease is ``expired`` only once both say it ended more
    than ``grace`` seconds ago, so a holder or a file server whose clock lags
    this host's by less than the grace is never taken over early.
    """

    seconds: float
    renewed_ago: float
    ends_in: float
    grace: float

    @property
    def expired(self) -> bool:
        return self.ends_in + self.grace < 0

    def text(self) -> str:
        """``lease renewed N s ago, expires in M s`` (or how long ago it ran out, and when it is taken over)."""
        ago = f"lease renewed {max(0, round(self.renewed_ago))} s ago"
        if self.ends_in >= 0:
            ahead = ""
            if self.ends_in > self.seconds + self.grace:
                ahead = " (the holder's clock is ahead of this host's)"
            return f"{ago}, expires in {round(self.ends_in)} s{ahead}"
        over = f"{ago}, expired {round(-self.ends_in)} s ago"
        if self.expired:
            return over
        left = round(self.ends_in + self.grace)
        return f"{over}: taken over in {left} s unless renewed ({self.grace:g} s grace for clock skew)"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _lease_of(holder: dict, modified: float, now: float) -> Lease | None:
    """The lease a lock records (None for a lock written before leases, or a lease that makes no sense)."""
    renewed, expires = holder.get("renewed"), holder.get("expires")
    if not _number(renewed) or not _number(expires) or expires <= renewed:
        return None
    seconds = expires - renewed
    last = max(renewed, modified)  # the later of the holder's clock and the file system's
    return Lease(seconds, now - last, last + seconds - now, lease_grace_seconds())


@dataclasses.dataclass(frozen=True)
class LockState:
    """A lock file and who holds it: ``live`` (a running process, or another host's), ``stale`` or ``unreadable``.

    ``detail`` says why: what makes a lock stale (its process is gone, its pid
    is now another process, or its lease expired), what cannot be checked
    about a live one (an old lock of another host, without a lease; an old lock
    without the holder's start time), or what is wrong with an unreadable one.
    ``lease`` is the lock's :class:`Lease`, None for a lock written before
    leases.
    """

    path: str
    state: str
    holder: dict
    age_seconds: float
    detail: str = ""
    lease: Lease | None = None

    def who(self) -> str:
        if not self.holder:
            return f"a process still writing it (unreadable for now, {self.age_seconds:.0f} s old)"
        return (
            f"pid {self.holder.get('pid', '?')} on {self.holder.get('host', '?')} since {self.holder.get('since', '?')}"
        )

    def reason(self) -> str:
        """Why the lock is stale or unreadable, or what cannot be checked about a live one ("" if nothing)."""
        if self.state == "stale":
            return self.detail or f"its process, {self.who()}, is gone"
        if self.state == "unreadable":
            return self.detail or "a process was killed while creating it"
        return self.detail

    def line(self) -> str:
        if self.state == "live":
            lease = self.lease.text() if self.lease else ""
            return f"{self.path}: held by {self.who()}" + "".join(f"; {part}" for part in (self.detail, lease) if part)
        if self.state == "stale":
            return f"{self.path}: stale ({self.reason()}); the next run takes it over"
        return f"{self.path}: unreadable and {self.age_seconds:.0f} s old ({self.reason()}); the next run takes it over"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):
        return False  # no process has such a pid
    except PermissionError:
        return True
    return True


def _unreadable(path: str, age: float, why: str) -> LockState:
    # Young, it may be a lock another process is writing this instant; old, a kill or damage left it.
    if age < STALE_LOCK_SECONDS:
        return LockState(path, "live", {}, age)
    return LockState(path, "unreadable", {}, age, why)


def _expired(path: str, holder: dict, age: float, lease: Lease) -> LockState:
    expired = f"its lease expired {round(-lease.ends_in)} s ago"
    if holder["host"] == socket.gethostname() and _pid_alive(holder["pid"]):
        gone = f"{expired}: its holder, pid {holder['pid']} on this host, stopped renewing it (stopped, hung or gone)"
    else:
        gone = f"{expired}: the holder on host {holder['host']} is gone"
    return LockState(path, "stale", holder, age, gone, lease)


def lock_state(path: str, now: float | None = None) -> LockState | None:
    """The state of one lock file (None if it does not exist).

    Read as bytes, so no content can make it raise: content that is not UTF-8
    JSON naming a host and pid is ``unreadable`` (taken over once older than
    :data:`STALE_LOCK_SECONDS`).

    A lock with a lease (``renewed``, ``expires``: its holder renews it while
    it holds it, :mod:`lottery_tf.store.locks`) is ``stale``, from any host,
    once the lease ended more than :func:`lease_grace_seconds` ago ("its lease
    expired N s ago: the holder on host H is gone"), and ``live`` before that
    unless this host can tell that the holder is gone.

    A lock of this host is also ``stale`` when its pid is gone, or when the pid
    is alive but started at another time than the holder it records ("pid N is
    now another process"); or, without a lease, when the machine rebooted since
    it was written (with a lease that has not expired, another boot id may be
    another machine of the same name: the lease decides). A lock without the
    holder's start time (written before locks recorded it, or where ``/proc``
    is missing) whose pid is alive stays ``live`` until its lease expires, or,
    without a lease, as before: it says it cannot be checked, since taking over
    a lock a running trainer holds would let two processes delete each other's
    files, whereas a wrong wait ends when the user deletes the lock, as the
    wait says. Another host's lock without a lease (written before leases) is
    ``live``: nothing here can check it.
    """
    now = time.time() if now is None else now
    try:
        modified = os.path.getmtime(path)
        age = now - modified
        with open(path, "rb") as handle:
            data = handle.read(_LOCK_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        return LockState(path, "unreadable", {}, 0.0, f"cannot be read: {error.strerror or error}")
    if not data:
        return _unreadable(path, age, "empty: a process was killed while creating it")
    try:
        if len(data) > _LOCK_MAX_BYTES:
            raise ValueError
        holder = json.loads(data.decode("utf-8"))
        pid = holder.get("pid") if isinstance(holder, dict) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(holder.get("host"), str):
            raise ValueError
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _unreadable(path, age, "not a lock this package writes: not UTF-8 JSON naming a host and pid")
    lease = _lease_of(holder, modified, now)
    if lease is not None and lease.expired:
        return _expired(path, holder, age, lease)
    if holder.get("host") != socket.gethostname():
        if lease is not None:
            return LockState(path, "live", holder, age, "", lease)
        elsewhere = "an older lock without a lease, on another host: whether it still runs cannot be checked from here"
        return LockState(path, "live", holder, age, elsewhere)
    if not _pid_alive(pid):
        return LockState(path, "stale", holder, age, "", lease)
    boot_id, start_ticks = holder.get("boot_id"), holder.get("start_ticks")
    if not isinstance(boot_id, str) or not isinstance(start_ticks, int):
        if lease is not None:
            return LockState(path, "live", holder, age, "", lease)  # someone renews it: its lease decides
        unchecked = f"an older lock, without its holder's start time: whether pid {pid} is still its holder"
        return LockState(path, "live", holder, age, f"{unchecked} cannot be checked")
    current = process_identity(pid)
    if not current:
        if lease is not None:
            return LockState(path, "live", holder, age, "", lease)
        unchecked = f"pid {pid}'s start time cannot be read here: whether it is still the lock's holder"
        return LockState(path, "live", holder, age, f"{unchecked} cannot be checked")
    if current["boot_id"] != boot_id:
        if lease is not None:
            other = (
                "written under another boot id (another machine of this name, or before a reboot): its lease decides"
            )
            return LockState(path, "live", holder, age, other, lease)
        reused = f"the machine rebooted since {holder.get('since', '?')}"
        return LockState(path, "stale", holder, age, f"pid {pid} is now another process: {reused}")
    if current["start_ticks"] != start_ticks:
        reused = f"not the one that took the lock at {holder.get('since', '?')}, which is gone"
        return LockState(path, "stale", holder, age, f"pid {pid} is now another process: {reused}", lease)
    return LockState(path, "live", holder, age, "", lease)


def locks_of(replicate_folder: str) -> list[LockState]:
    found = [lock_state(p) for p in sorted(glob.glob(os.path.join(replicate_folder, ".locks", "*.lock")))]
    return [lock for lock in found if lock is not None]


# -- a replicate ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReplicateReport:
    """What one replicate folder holds."""

    folder: str
    done: dict = dataclasses.field(default_factory=dict)  # branch folder -> finished levels
    incomplete: list = dataclasses.field(default_factory=list)  # "level L <folder>" in progress (will resume)
    problems: list = dataclasses.field(default_factory=list)
    locks: list = dataclasses.field(default_factory=list)

    def next_main_level(self) -> int:
        """The level the main line trains next: the first one that is not done."""
        done = set(self.done.get(MAIN, []))
        level = 0
        while level in done:
            level += 1
        return level


def _levels(replicate_folder: str) -> list[tuple[int, str]]:
    found = []
    for path in glob.glob(os.path.join(replicate_folder, "level_*")):
        match = _LEVEL.search(path)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def is_lineage(folder: str) -> bool:
    return folder == MAIN or folder.startswith(LINEAGE_PREFIXES)


def inspect_replicate(folder: str) -> ReplicateReport:
    """Reads one replicate folder: done levels, levels in progress, problems (with what a run does), locks."""
    report = ReplicateReport(folder)
    unreadable = _unreadable_folders(folder)
    for path, error in unreadable:
        report.problems.append(
            Problem(
                path,
                f"cannot be read ({error})",
                REFUSE,
                "a run refuses this replicate: give this user access to it again, or move it aside",
                "unreadable",
            )
        )
    if unreadable and os.path.normpath(unreadable[0][0]) == os.path.normpath(folder):
        return report  # nothing in it can be seen: no verdict on its levels
    report.locks = locks_of(folder)
    levels = _levels(folder)
    done_main = {level for level, path in levels if is_done(folder, level, MAIN)}
    for level, level_folder in levels:
        for branch_folder in sorted(glob.glob(os.path.join(level_folder, "*"))):
            if not os.path.isdir(branch_folder):
                continue
            branch = os.path.basename(branch_folder)
            if branch in ANALYSES:
                _inspect_analysis(report, level, branch_folder)
            else:
                _inspect_level(report, level, branch, branch_folder, done_main)
    _inspect_main_gaps(report, done_main)
    _inspect_rewind_points(report, done_main, levels)
    _inspect_tensorboard(report)
    _inspect_leftovers(report)
    for branch in report.done:
        report.done[branch].sort()
    return report


def _unreadable_folders(folder: str) -> list[tuple[str, str]]:
    """Folders of a replicate this process cannot list (``(path, reason)``): what is in them is unknown."""
    found = []

    def note(error: OSError) -> None:
        found.append((error.filename or folder, error.strerror or str(error)))

    for _ in os.walk(folder, onerror=note):
        pass
    return found


def _mark_done(report, level, branch):
    report.done.setdefault(branch, []).append(level)


def _inspect_level(
    report: ReplicateReport, level: int, branch: str, folder: str, done_main: set, copy_of: str | None = None
) -> None:
    """One level of one lineage or branch (or one analysis copy, ``copy_of`` = the analysis result)."""
    rel = os.path.relpath(folder, level_dir(report.folder, level, ""))
    metrics_path = os.path.join(folder, "metrics.json")
    masks_path = os.path.join(folder, "masks.npz")
    checkpoints = os.path.join(folder, "checkpoints")
    label = f"level {level} [{branch if copy_of is None else rel}]"
    for meta in sorted(glob.glob(os.path.join(checkpoints, "ckpt-*.json"))):
        problem = _checkpoint_problem(meta)
        if problem:
            report.problems.append(
                Problem(
                    meta,
                    problem,
                    NOTE,
                    "a resumed run skips it for the previous checkpoint or the level's first step",
                    "checkpoint",
                    level,
                    rel,
                )
            )
    if os.path.exists(metrics_path):
        foreign = owner_problem(metrics_path)
        if foreign:
            report.problems.append(
                Problem(metrics_path, foreign, REFUSE, _foreign_fix(folder, label), "foreign", level, rel)
            )
            return
        problem = metrics_problem(metrics_path)
        if problem:
            fix = (
                f"the next run that includes the analysis trains this copy again and recomputes {os.path.basename(copy_of)}"
                if copy_of
                else f"the next run that includes {label} trains it again; other levels' files are kept"
            )
            report.problems.append(Problem(metrics_path, problem, RETRAIN, fix, "metrics", level, rel))
            return
        record = read_json(metrics_path)
        if copy_of is None:
            _mark_done(report, level, branch)
        _inspect_done_files(report, level, branch, folder, rel, record, copy_of)
        return
    # Not done: in progress (checkpoints or branch files), or the masks of the next main level.
    masks_damage = npz_problem(masks_path) if os.path.exists(masks_path) else None
    if is_lineage(branch) and copy_of is None and os.path.exists(masks_path) and not os.path.isdir(checkpoints):
        previous_done = level > 0 and is_done(report.folder, level - 1, branch)
        if masks_damage and previous_done:
            report.problems.append(
                Problem(
                    masks_path,
                    masks_damage,
                    REBUILD,
                    f"the next run rebuilds it by pruning level {level - 1}'s trained weights",
                    "masks",
                    level,
                    rel,
                )
            )
        elif masks_damage:
            report.problems.append(
                Problem(
                    masks_path,
                    masks_damage,
                    RETRAIN,
                    f"the next run that includes {label} starts it again",
                    "masks",
                    level,
                    rel,
                )
            )
        if not previous_done:
            report.incomplete.append(label)
        return
    if os.path.isdir(checkpoints) or os.path.exists(os.path.join(folder, "branch.json")) or os.path.exists(masks_path):
        report.incomplete.append(label)


def _foreign_fix(folder: str, label: str) -> str:
    return (
        f"a run refuses this folder: move {folder} back where it came from, or aside (then the next run "
        f"trains {label} here)"
    )


def checkpoint_owner_problem(meta_path: str, owner: dict) -> str | None:
    """Why a checkpoint's recorded owner (``ckpt-*.json``'s ``owner``) is not this location's experiment and level."""
    recorded = {
        "experiment": owner.get("experiment"),
        "data": owner.get("data"),
        "replicate": owner.get("replicate"),
        "level": owner.get("level"),
        "folder": owner.get("branch"),
    }
    recorded = {k: v for k, v in recorded.items() if v is not None}
    return records.owner_problem({records.BELONGS: recorded}, expected_owner(os.path.dirname(meta_path)))


def _checkpoint_problem(meta: str) -> str | None:
    try:
        with open(meta) as handle:
            record = json.load(handle)
        expected = record["sha256"]
        owner = record.get("owner") or {}
        if not isinstance(owner, dict):
            raise TypeError("its owner is not a JSON object")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"is unreadable ({error})"
    foreign = checkpoint_owner_problem(meta, owner)
    if foreign:
        return foreign.replace("is the record of", "is the checkpoint of", 1)
    npz = meta[: -len(".json")] + ".npz"
    try:
        with open(npz, "rb") as handle:
            payload = handle.read()
    except OSError as error:
        return f"has no readable {os.path.basename(npz)} ({error.strerror})"
    if hashlib.sha256(payload).hexdigest() != expected:
        return f"does not match its {os.path.basename(npz)} (checksum; {len(payload)} bytes)"
    return None


def _inspect_done_files(report, level, branch, folder, rel, record, copy_of) -> None:
    masks_path = os.path.join(folder, "masks.npz")
    problem = npz_problem(masks_path, content=False)
    expected = record.get("masks_sha256")
    if problem is None and expected:
        found = fingerprint(read_npz(masks_path))
        if found != expected:
            problem = (
                f"has mask fingerprint {found}, but metrics.json says the level trained with {expected}: "
                "the masks were changed"
            )
    problem = problem or records.content_problem(masks_path)
    if problem:
        if copy_of is not None:
            who, source = "the next run that includes the analysis", "the copy's start"
        elif is_lineage(branch):
            who = "the next run"
            source = f"pruning level {level - 1}'s trained weights" if level > 0 else "the dense masks"
        else:
            who, source = "the next run that includes this branch", "the branch's start"
        report.problems.append(
            Problem(
                masks_path,
                problem,
                REBUILD,
                f"{who} rebuilds it from {source} and checks it against metrics.json's fingerprint {expected}",
                "masks",
                level,
                rel,
            )
        )
    if copy_of is not None:
        info = os.path.join(folder, "branch.json")
        damage = json_problem(info)
        if damage:
            report.problems.append(
                Problem(
                    info,
                    damage,
                    REBUILD,
                    "the next run that includes the analysis writes it again",
                    "branch_info",
                    level,
                    rel,
                )
            )
        weights = os.path.join(folder, "final_weights.npz")
        damage = npz_problem(weights)
        if damage:
            report.problems.append(
                Problem(
                    weights,
                    damage,
                    RETRAIN,
                    "the next run that includes the analysis trains "
                    f"this copy again and recomputes {os.path.basename(copy_of)}",
                    "final_weights",
                    level,
                    rel,
                )
            )
        return
    weights = os.path.join(folder, "final_weights.npz")
    if is_lineage(branch):
        damage = npz_problem(weights)
        fix = (
            f"a run that needs level {level}'s trained weights (level {level + 1}'s masks, lr_rewind, "
            f"lr_rewind_oneshot at level {level + 1}, stability) trains level {level} again and keeps them only if "
            f"they prune to the masks already recorded"
        )
    else:  # a branch's: checked where it exists or its record lists it (older branches wrote none)
        recorded = "final_weights.npz" in (record.get(records.FILES) or {})
        damage = npz_problem(weights) if os.path.exists(weights) or recorded else None
        fix = (
            f"only the export and load_ticket read it, and they refuse level {level} [{branch}] until "
            f"it is right: restore it, or delete {folder} to train the branch there again"
        )
    if damage:
        report.problems.append(Problem(weights, damage, REBUILD_WHEN_NEEDED, fix, "final_weights", level, rel))
    if branch != MAIN:
        info = os.path.join(folder, "branch.json")
        damage = json_problem(info)
        if damage:
            report.problems.append(
                Problem(
                    info,
                    damage,
                    REBUILD,
                    "the next run that includes this branch writes it again from the branch's settings",
                    "branch_info",
                    level,
                    rel,
                )
            )


def _inspect_analysis(report: ReplicateReport, level: int, folder: str) -> None:
    analysis = os.path.basename(folder)
    results = {}
    copies = {
        os.path.dirname(p) for name in _COPY_FILES for p in glob.glob(os.path.join(folder, "**", name), recursive=True)
    }
    for copy in sorted(copies):
        result = os.path.join(os.path.dirname(copy), f"{analysis}.json")
        results.setdefault(result, []).append(copy)
    for path in glob.glob(os.path.join(folder, "**", f"{analysis}.json"), recursive=True):
        results.setdefault(path, [])
    any_done = False
    for result, copies in sorted(results.items()):
        for copy in copies:
            _inspect_level(report, level, analysis, copy, set(), copy_of=result)
        if os.path.exists(result):
            problem = result_problem(result)
            if problem:
                report.problems.append(
                    Problem(
                        result,
                        problem,
                        REBUILD,
                        "the next run that includes the analysis recomputes it from its copies",
                        "result",
                        level,
                        os.path.relpath(os.path.dirname(result), os.path.dirname(folder)),
                    )
                )
            elif analysis_done(result):
                any_done = True
                continue
    if any_done:
        _mark_done(report, level, analysis)


def _inspect_main_gaps(report: ReplicateReport, done_main: set) -> None:
    if not done_main:
        return
    for level in sorted(set(range(max(done_main) + 1)) - done_main):
        path = os.path.join(level_dir(report.folder, level, MAIN), "metrics.json")
        if not os.path.exists(path):
            report.problems.append(
                Problem(
                    path,
                    "is missing, but later levels are done",
                    RETRAIN,
                    f"the next run trains level {level} alone; other levels' files are kept",
                    "metrics",
                    level,
                    MAIN,
                )
            )


def _inspect_rewind_points(report: ReplicateReport, done_main: set, levels) -> None:
    folder = report.folder
    point = os.path.join(folder, "rewind_point.npz")
    needed = bool(done_main) or any(level > 0 for level, _ in levels)
    record_path = os.path.join(folder, "rewind_point.json")
    foreign = owner_problem(record_path) if os.path.exists(record_path) else None
    if foreign:
        report.problems.append(
            Problem(
                record_path,
                foreign,
                REFUSE,
                f"a run refuses this replicate: move {record_path} and rewind_point.npz back where they came "
                "from, or aside (then the next run replays the rewind point)",
                "foreign",
                None,
                None,
            )
        )
        return
    if needed:
        problem = npz_problem(point)
        record = json_problem(record_path, ("step", "sha256"))
        if problem is None and record is None:
            recorded = read_json(record_path).get("sha256")
            if recorded and state_fingerprint(read_npz(point)) != recorded:
                problem = f"does not match rewind_point.json's fingerprint {recorded}"
        if problem is None and record is not None and os.path.exists(record_path):
            report.problems.append(
                Problem(
                    record_path,
                    record,
                    REBUILD,
                    "the next run writes it again from rewind_point.npz (the record a rebuilt rewind point is "
                    "checked against)",
                    "rewind_record",
                    None,
                    None,
                )
            )
        if problem:
            report.problems.append(
                Problem(
                    point,
                    problem,
                    REBUILD,
                    "the next run replays it (the initialization, or "
                    "the dense run's first k steps) and checks it against rewind_point.json",
                    "rewind_point",
                    None,
                    None,
                )
            )
    for path in sorted(
        glob.glob(os.path.join(folder, "rewind_points", "*.npz"))
        + glob.glob(os.path.join(folder, "rewind_optimizer.npz"))
    ):
        cache_record = records.cache_record(path)
        try:
            owner = read_json(cache_record) if os.path.exists(cache_record) else {}
        except (OSError, ValueError):
            owner = {}
        expected = records.experiment_of(folder)
        if records.cache_step(path) is not None:
            expected["step"] = records.cache_step(path)
        foreign = records.owner_problem(owner, expected) if isinstance(owner, dict) else None
        if foreign:
            report.problems.append(
                Problem(
                    cache_record,
                    foreign,
                    REFUSE,
                    f"a run refuses this replicate: move {cache_record} and {os.path.basename(path)} back where "
                    "they came from, or aside (then the next run that needs them replays them)",
                    "foreign",
                    None,
                    None,
                )
            )
            continue
        problem = npz_problem(path)
        if problem:
            report.problems.append(
                Problem(
                    path,
                    problem,
                    REBUILD,
                    "the next run that needs it replays it from the initialization",
                    "replay_cache",
                    None,
                    None,
                )
            )


TENSORBOARD = "tensorboard"


def tensorboard_dir(replicate_folder: str, level: int, run: str) -> str:
    """Where a training of a replicate writes its TensorBoard events: ``<experiment>/tensorboard/r<r>/L<LL>-<run>``.

    One tree per experiment, so that TensorBoard's run names are short and end in what differs: pointed at
    the output folder it names a run ``lottery_<hash>/tensorboard/r0/L07-main``, pointed at the experiment's
    ``tensorboard`` folder ``r0/L07-main``. (Runs before issue 30 wrote ``replicate_<r>/tensorboard/level_<LL>_<run>``;
    :func:`tensorboard_folders` finds both.)

    Args:
        replicate_folder: The replicate's folder (``.../lottery_<hash>/replicate_<r>``).
        level: The level trained.
        run: The branch folder name (``main``, ``reinit``, ...) or an analysis' run name.

    Returns:
        The folder to give ``tf.summary.create_file_writer``.
    """
    experiment, name = os.path.split(os.path.normpath(replicate_folder))
    replicate = name[len("replicate_") :] if name.startswith("replicate_") else name
    return os.path.join(experiment, TENSORBOARD, f"r{replicate}", f"L{level:02d}-{run}")


def tensorboard_folders(replicate_folder: str) -> list[str]:
    """The folders holding a replicate's TensorBoard events: the experiment's tree and the older layout's."""
    return [os.path.dirname(tensorboard_dir(replicate_folder, 0, "")), os.path.join(replicate_folder, TENSORBOARD)]


def _inspect_tensorboard(report: ReplicateReport) -> None:
    for path in sorted(
        path
        for folder in tensorboard_folders(report.folder)
        for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)
    ):
        problem = event_file_problem(path)
        if problem:
            report.problems.append(
                Problem(
                    path,
                    problem,
                    NOTE,
                    "TensorBoard shows the records before the damage; it "
                    "is not needed to continue (delete it to drop it)",
                    "tensorboard",
                )
            )


def _inspect_leftovers(report: ReplicateReport) -> None:
    live = [lock for lock in report.locks if lock.state == "live"]
    for lock in report.locks:
        if os.path.isdir(lock.path):  # no run can take a folder over: it is not a lock a process wrote
            report.problems.append(
                Problem(lock.path, "is a folder, not a lock file", REFUSE, "a run refuses: remove it by hand", "lock")
            )
            continue
        if lock.state != "live":
            report.problems.append(Problem(lock.path, lock.line().split(": ", 1)[1], NOTE, "", "lock"))
    if live:
        return  # a running process may be writing its temporary files
    for leftover in sorted(glob.glob(os.path.join(report.folder, "**", ".tmp-*"), recursive=True)):
        report.problems.append(
            Problem(leftover, "is a leftover temporary file (an interrupted write)", NOTE, "harmless; delete it", "tmp")
        )


# -- an experiment --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExperimentReport:
    folder: str
    identity: dict | None
    problems: list
    replicates: dict  # replicate folder name -> ReplicateReport


def experiment_problems(
    folder: str, any_done: bool, expected_identity: dict | None = None, folder_hash=None
) -> list[Problem]:
    """Problems of the experiment's own files (identity, settings, data record).

    Args:
        folder: The experiment folder.
        any_done: Whether any level of any replicate is done.
        expected_identity: The identity the current settings give (runner), or None (health check).
        folder_hash: ``hash(identity) -> str``, to check identity.json against the folder's name.
    """
    problems = []
    identity_path = os.path.join(folder, "identity.json")
    if os.path.exists(identity_path) or any_done:
        damage = json_problem(identity_path)
        if damage is None:
            identity = read_json(identity_path)
            suffix = os.path.basename(os.path.normpath(folder)).rsplit("_", 1)[-1]
            if folder_hash is not None and folder_hash(identity) != suffix:
                damage = f"gives the hash {folder_hash(identity)}, not this folder's {suffix}: it was changed by hand"
            elif expected_identity is not None and identity != expected_identity:
                damage = "does not match these settings; the folder was changed by hand"
        if damage:
            problems.append(
                Problem(
                    identity_path,
                    damage,
                    REFUSE,
                    "a run refuses this folder: restore identity.json or move the experiment aside",
                    "identity",
                )
            )
    settings = os.path.join(folder, "settings.json")
    if os.path.exists(settings):
        damage = json_problem(settings, ("data", "model", "training", "pruning"))
        if damage:
            problems.append(
                Problem(
                    settings,
                    f"is not a lottery_tf settings file ({damage})",
                    REBUILD,
                    "the next run writes it again",
                    "settings",
                )
            )
    for leftover in sorted(
        glob.glob(os.path.join(folder, ".tmp-*"))
        + glob.glob(os.path.join(folder, "exports", "**", ".tmp-*"), recursive=True)
    ):
        problems.append(
            Problem(
                leftover,
                "is a leftover of an interrupted write or export",
                NOTE,
                "harmless; the next export removes those of processes that are gone, or delete it",
                "tmp",
            )
        )
    data_path = os.path.join(folder, "data.json")
    if os.path.exists(data_path) or any_done:
        damage = json_problem(data_path, ("source", "fingerprint"))
        if damage:
            problems.append(
                Problem(
                    data_path,
                    f"{damage}, but levels are done: the data they were trained on is unknown",
                    REFUSE,
                    "a run refuses: restore data.json, or pass --rerecord_data if "
                    "the data found now is the data the run was trained on",
                    "data",
                )
            )
    return problems


def inspect_experiment(folder: str, expected_identity: dict | None = None, folder_hash=None) -> ExperimentReport:
    """Reads an experiment folder: its own files and every replicate."""
    replicates = {}
    for replicate in sorted(
        glob.glob(os.path.join(folder, "replicate_*")),
        key=lambda f: int(f.rsplit("_", 1)[1]) if f.rsplit("_", 1)[1].isdigit() else 1 << 30,
    ):
        replicates[os.path.basename(replicate)] = inspect_replicate(replicate)
    any_done = any(r.done for r in replicates.values())
    identity = None
    if json_problem(os.path.join(folder, "identity.json")) is None:
        identity = read_json(os.path.join(folder, "identity.json"))
    problems = experiment_problems(folder, any_done, expected_identity, folder_hash)
    return ExperimentReport(folder, identity, problems, replicates)
