"""Locks on what one process trains in a replicate folder (no TensorFlow here).

Two processes training the same levels of the same replicate would delete each
other's checkpoints and temporary files. Each lineage a process trains (the
main line, one branch at one level, the learning-rate-rewinding lineage) is
guarded by a lock file ``<replicate>/.locks/<name>.lock`` created atomically
(``O_CREAT | O_EXCL``) and holding the owner's host, pid and start time.
Different replicates, and different branches of one replicate, take different
locks, so they run in parallel from several processes or machines.

A lock whose owner is a process of this host that no longer exists is stale
and taken over, as is an unreadable lock older than a few seconds (a kill
between creating the file and writing it); a lock held by a live process, or
by another host, makes the second process exit with one line naming the
holder, or wait (``--wait_for_lock``). A process that asks for branches waits
for a main line another process is training (it needs those levels), then runs
its branches. Lock states are read by :mod:`lottery_tf.store.reader`, which the
health check reports from.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from lottery_tf.store import atomic
from lottery_tf.store import reader as store


class LockedError(RuntimeError):
    """Another process holds the lock; the message names it."""


def _try_acquire(path: str) -> dict | None:
    """Takes the lock; returns None on success, else what the holder wrote.

    A lock whose process is gone (same host), or that is unreadable and older
    than :data:`lottery_tf.store.reader.STALE_LOCK_SECONDS` (a kill between creating
    and writing it), is stale and taken over.
    """
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            state = store.lock_state(path)
            if state is None:
                continue  # released meanwhile
            if state.state in ("stale", "unreadable"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            return state.holder
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        return None
    state = store.lock_state(path)
    return state.holder if state else {}


def is_held(replicate_folder: str, name: str) -> bool:
    """Whether another live process holds ``name``'s lock."""
    state = store.lock_state(os.path.join(replicate_folder, ".locks", f"{name}.lock"))
    return state is not None and state.state == "live" and state.holder.get("pid") != os.getpid()


def wait_until_free(replicate_folder: str, name: str, why: str, poll_seconds: float = 2.0) -> None:
    """Waits while another process holds ``name``'s lock (it is producing what this process needs).

    Does nothing where this process does not write (a worker that is not the chief follows the chief).
    """
    if not atomic.writes_enabled():
        return
    announced = False
    while is_held(replicate_folder, name):
        if not announced:
            state = store.lock_state(os.path.join(replicate_folder, ".locks", f"{name}.lock"))
            holder = state.holder if state else {}
            print(
                f"waiting for pid {holder.get('pid', '?')} on {holder.get('host', '?')} to finish the {name} "
                f"lineage ({why})",
                flush=True,
            )
            announced = True
        time.sleep(poll_seconds)


@contextlib.contextmanager
def hold(replicate_folder: str, name: str, wait: bool = False, poll_seconds: float = 5.0):
    """Holds ``<replicate_folder>/.locks/<name>.lock`` inside the block.

    Does nothing where this process does not write (a worker that is not the
    chief).

    Raises:
        LockedError: If another live process holds it and ``wait`` is false.
    """
    if not atomic.writes_enabled():
        yield
        return
    path = os.path.join(replicate_folder, ".locks", f"{name}.lock")
    announced = False
    while True:
        holder = _try_acquire(path)
        if holder is None:
            break
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
        if not wait:
            raise LockedError(
                f"{path} is held by {who}: that process is training the same levels; wait for it, pass "
                "--wait_for_lock, or delete the lock file if that process is gone"
            )
        if not announced:
            print(f"waiting for {path}, held by {who}", flush=True)
            announced = True
        time.sleep(poll_seconds)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
