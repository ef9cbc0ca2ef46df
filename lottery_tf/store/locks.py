"""Locks on what one process trains in a replicate folder (no TensorFlow here).

Two processes training the same levels of the same replicate would delete each
other's checkpoints and temporary files. Each lineage a process trains (the
main line, one branch at one level, the learning-rate-rewinding lineage) is
guarded by a lock file ``<replicate>/.locks/<name>.lock`` created atomically
(``O_CREAT | O_EXCL``) and holding JSON: the owner's ``host``, ``pid`` and
``since`` (local time), and on Linux what tells the owner from a later process
given the same pid: ``boot_id`` (``/proc/sys/kernel/random/boot_id``) and
``start_ticks`` (the process's start time, field 22 of ``/proc/<pid>/stat``).
Different replicates, and different branches of one replicate, take different
locks, so they run in parallel from several processes or machines.

A lock of this host is stale, and taken over with one line saying why, when its
pid no longer exists, when the machine rebooted since it was taken, or when its
pid is alive but is another process (another start time: pid reuse, such as
pid 1 after a reboot). An unreadable lock (empty, garbage bytes, not JSON naming
a pid) older than :data:`lottery_tf.store.reader.STALE_LOCK_SECONDS` (a kill
between creating the file and writing it) is taken over too; younger, it may be
a lock being written, and counts as held. Lock files are read as bytes, so no
content makes a reader raise.

Two cases cannot be checked, and count as held: a lock without a start time
(written before locks recorded one, or where ``/proc`` is missing) whose pid is
alive; and a lock of another host (until leases exist; see the issue "A study on
a real cluster"). Taking over a lock a running trainer holds would let two
processes delete each other's files, whereas a wrong wait ends when the user
deletes the lock. So a second process exits with one line naming the holder, or,
with ``--wait_for_lock``, waits; a process that asks for branches waits for a
main line another process is training (it needs those levels), then runs its
branches. A waiting process prints one line when it starts waiting and then
every :data:`REPORT_SECONDS`: the lock file, the holder (pid, host, since), how
long it has waited, what cannot be checked, where the holder's progress shows
(``python -m lottery_tf.runs <replicate>``) and how to clear the lock if the
holder is gone. Lock states are read by :mod:`lottery_tf.store.reader`, which
the health check reports from.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from lottery_tf.store import atomic
from lottery_tf.store import reader as store

REPORT_SECONDS = 60.0  # a waiting process prints where it stands this often


class LockedError(RuntimeError):
    """Another process holds the lock; the message names it."""


def lock_path(replicate_folder: str, name: str) -> str:
    return os.path.join(replicate_folder, ".locks", f"{name}.lock")


def _me() -> dict:
    """What this process writes into a lock it takes."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        **store.process_identity(os.getpid()),
    }


def _try_acquire(path: str) -> store.LockState | None:
    """Takes the lock; returns None on success, else the holder's state.

    A stale lock (see the module's docstring), or one that is unreadable and
    older than :data:`lottery_tf.store.reader.STALE_LOCK_SECONDS`, is taken
    over, with one line saying why.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = None
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            state = store.lock_state(path)
            if state is None:
                continue  # released meanwhile
            if state.state in ("stale", "unreadable"):
                print(f"taking over {path}: {state.state} ({state.reason()})", flush=True)
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as error:
                    raise LockedError(
                        f"{path} is {state.state} ({state.reason()}) but cannot be removed "
                        f"({error.strerror or error}): remove it by hand"
                    ) from error
                continue
            return state
        with os.fdopen(fd, "w") as handle:
            json.dump(_me(), handle)
        return None
    return store.lock_state(path) or state or store.LockState(path, "live", {}, 0.0)


def _held_by_another(state: store.LockState | None) -> bool:
    if state is None or state.state != "live":
        return False
    return (state.holder.get("host"), state.holder.get("pid")) != (socket.gethostname(), os.getpid())


def is_held(replicate_folder: str, name: str) -> bool:
    """Whether another live process (or one that cannot be checked) holds ``name``'s lock."""
    return _held_by_another(store.lock_state(lock_path(replicate_folder, name)))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


def _if_gone(state: store.LockState) -> str:
    """How to clear the lock if its holder is gone."""
    pid, path = state.holder.get("pid"), state.path
    if not state.holder:
        return f"a run takes it over once it is {store.STALE_LOCK_SECONDS:.0f} s old and still unreadable"
    if state.holder.get("host") != socket.gethostname():
        return f"if that process is gone, delete {path}"
    if state.detail:  # alive, but not known to be the holder
        return f"if pid {pid} is not a lottery_tf process training this lineage, delete {path}"
    return f"if that process hangs, stop it (kill {pid}): its lock is then taken over"


def waiting_line(state: store.LockState, waited: float, what: str, replicate_folder: str) -> str:
    """One line of a waiting process: the lock, its holder, how long it has waited, and what the user can do."""
    parts = [
        f"waiting for {state.path} ({what}), {_duration(waited)} so far: held by {state.who()}",
        state.detail,
        f"progress: python -m lottery_tf.runs {replicate_folder}",
        _if_gone(state),
    ]
    return "; ".join(part for part in parts if part)


class _Reporter:
    """Prints the waiting line at once and then every ``report_seconds``."""

    def __init__(self, what: str, replicate_folder: str, report_seconds: float | None):
        self.what, self.folder = what, replicate_folder
        self.every = REPORT_SECONDS if report_seconds is None else report_seconds
        self.started = time.monotonic()
        self.next = self.started

    def __call__(self, state: store.LockState) -> None:
        now = time.monotonic()
        if now >= self.next:
            print(waiting_line(state, now - self.started, self.what, self.folder), flush=True)
            self.next = now + self.every


def wait_until_free(
    replicate_folder: str, name: str, why: str, poll_seconds: float = 2.0, report_seconds: float | None = None
) -> None:
    """Waits while another process holds ``name``'s lock (it is producing what this process needs).

    Prints :func:`waiting_line` when it starts waiting and every ``report_seconds``
    (default :data:`REPORT_SECONDS`). Does nothing where this process does not
    write (a worker that is not the chief follows the chief).
    """
    if not atomic.writes_enabled():
        return
    report = _Reporter(f"the {name} lineage: {why}", replicate_folder, report_seconds)
    while True:
        state = store.lock_state(lock_path(replicate_folder, name))
        if not _held_by_another(state):
            return
        report(state)
        time.sleep(poll_seconds)


@contextlib.contextmanager
def hold(
    replicate_folder: str,
    name: str,
    wait: bool = False,
    poll_seconds: float = 5.0,
    report_seconds: float | None = None,
):
    """Holds ``<replicate_folder>/.locks/<name>.lock`` inside the block.

    With ``wait``, polls every ``poll_seconds`` and prints :func:`waiting_line`
    when it starts waiting and every ``report_seconds`` (default
    :data:`REPORT_SECONDS`). Does nothing where this process does not write (a
    worker that is not the chief).

    Raises:
        LockedError: If another live process (or one that cannot be checked)
            holds it and ``wait`` is false.
    """
    if not atomic.writes_enabled():
        yield
        return
    path = lock_path(replicate_folder, name)
    report = _Reporter(f"the {name} lineage", replicate_folder, report_seconds)
    while True:
        state = _try_acquire(path)
        if state is None:
            break
        if not wait:
            detail = f" ({state.detail})" if state.detail else ""
            raise LockedError(
                f"{path} is held by {state.who()}{detail}: that process is training the same levels; wait for it, "
                f"pass --wait_for_lock, or {_if_gone(state)}"
            )
        report(state)
        time.sleep(poll_seconds)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
