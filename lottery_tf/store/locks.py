"""Locks on what one process trains in a replicate folder (no TensorFlow here).

Two processes training the same levels of the same replicate would delete each
other's checkpoints and temporary files. Each lineage a process trains (the
main line, one branch at one level, the learning-rate-rewinding lineage) is
guarded by a lock file ``<replicate>/.locks/<name>.lock`` created atomically
(``O_CREAT | O_EXCL``) and holding JSON: the owner's ``host``, ``pid`` and
``since`` (local time); on Linux what tells the owner from a later process
given the same pid: ``boot_id`` (``/proc/sys/kernel/random/boot_id``) and
``start_ticks`` (the process's start time, field 22 of ``/proc/<pid>/stat``);
a ``token`` naming this hold; and a lease: ``renewed`` and ``expires`` (Unix
times of the holder's clock). Different replicates, and different branches of
one replicate, take different locks, so they run in parallel from several
processes or machines.

**The lease.** While it holds a lock, a thread of the holder renews it every
lease / 4 seconds: it checks that the lock still carries its token and
rewrites it (a temporary file renamed over it) with fresh ``renewed`` and
``expires`` times, or, where that write fails (a full disk), touches it. The
lease lasts :data:`LEASE_SECONDS` (120 s; ``$LOTTERY_TF_LOCK_LEASE_SECONDS``
overrides it, for tests; a reader uses the length the holder wrote). A lock
whose lease ended more than :data:`lottery_tf.store.reader.LEASE_GRACE_SECONDS`
ago (60 s; ``$LOTTERY_TF_LOCK_GRACE_SECONDS``) is stale **from any host** and
taken over with one line ("its lease expired N s ago: the holder on host H is
gone"): a lost machine, a killed Ray worker, a force-cancelled task or a
SIGKILL leaves a lock that the next run, or a waiting process, takes over
within lease + grace (3 minutes) of the last renewal. The grace covers clocks
that differ between hosts: a reader takes the later of the holder's
``renewed`` time and the file's modification time (the file system's clock;
on a shared folder often the file server's), so a lease is taken over early
only where this host's clock runs ahead of both by more than the grace. Keep
the cluster's clocks synchronised (NTP) within a minute, or raise the grace.
A live holder renews every 30 s, so it is never taken over, however long it
trains. A holder that could not renew for longer than lease + grace (stopped
with SIGSTOP, hung, or cut off from a shared folder) and whose lock was taken
over finds another token at its next renewal: it prints one line, stops (a
KeyboardInterrupt in its main thread, turned into :class:`LockedError`), and
leaves the other process's lock alone. That stop does not depend on how the
process treats Ctrl-C: while it holds a lock, the main thread's SIGINT handler
is wrapped so that the renewer's interrupt stops it even where SIGINT is
ignored (a study started with ``nohup`` or ``&`` from a script) or handled by
the user's own handler; a real Ctrl-C still does what it did before. A holder
renews by renaming only while its own lease is still valid by its clock (a
takeover needs lease + grace to have passed); one that finds its lease
expired (it was stopped or hung) and its token still in place only touches
the file, so that a process that stopped between checking the token and
writing cannot write over another's lock.

A lock of this host is also stale, and taken over with one line saying why,
when its pid no longer exists or when its pid is alive but is another process
(another start time: pid reuse). An unreadable lock (empty, garbage bytes, not
JSON naming a pid) older than :data:`lottery_tf.store.reader.STALE_LOCK_SECONDS`
(a kill between creating the file and writing it) is taken over too; younger,
it may be a lock being written, and counts as held. Lock files are read as
bytes, so no content makes a reader raise.

Lock files written before leases existed keep the old rules: one of this host
is stale when its pid is gone, reused, or the machine rebooted since; two
cases cannot be checked and count as held: such a lock without a start time
(or where ``/proc`` is missing) whose pid is alive, and such a lock of another
host. Taking over a lock a running trainer holds would let two processes delete
each other's files, whereas a wrong wait ends when the user deletes the lock.
So a second process exits with one line naming the holder and its lease, or,
with ``--wait_for_lock``, waits, judging the lock again at every poll (the
wait ends when the lease expires); a process that asks for branches waits for
a main line another process is training (it needs those levels), then runs its
branches. A waiting process prints one line when it starts waiting and then
every :data:`REPORT_SECONDS`: the lock file, the holder (pid, host, since), its
lease (renewed N s ago, expires in M s), how long it has waited, what cannot
be checked, where the holder's progress shows (``python -m lottery_tf.runs
<replicate>``) and what happens, or what to do, if the holder is gone. Lock
states are read by :mod:`lottery_tf.store.reader`, which the health check
reports from.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid

from lottery_tf.store import atomic
from lottery_tf.store import reader as store

REPORT_SECONDS = 60.0  # a waiting process prints where it stands this often
LEASE_SECONDS = 120.0  # a holder renews its lock every LEASE_SECONDS / 4; unrenewed this long (plus grace), it is stale
LEASE_ENV = "LOTTERY_TF_LOCK_LEASE_SECONDS"  # overrides LEASE_SECONDS (tests: a second or two)
_TOKEN = re.compile(r"[0-9a-f]{32}")


class LockedError(RuntimeError):
    """Another process holds the lock (the message names it), or this process lost it while holding it."""


def lock_path(replicate_folder: str, name: str) -> str:
    return os.path.join(replicate_folder, ".locks", f"{name}.lock")


def lease_seconds() -> float:
    """How long a lock this process takes stays valid without renewal (:data:`LEASE_SECONDS`, or ``$LOTTERY_TF_LOCK_LEASE_SECONDS``)."""
    return store.seconds_from_env(LEASE_ENV, LEASE_SECONDS)


def _me(lease: float) -> dict:
    """What this process writes into a lock it takes."""
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        **store.process_identity(os.getpid()),
        "token": uuid.uuid4().hex,  # tells this hold from any other, of this process or another
        "renewed": now,
        "expires": now + lease,
    }


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(65537)
    except FileNotFoundError:
        return None


def _snapshot(path: str) -> bytes | None:
    """The lock's bytes as they are now (None if missing or unreadable), to tell whether it changed."""
    try:
        return _read(path)
    except OSError:
        return None


def _token_of(data: bytes | None) -> str | None:
    try:
        token = json.loads(data.decode("utf-8")).get("token")
    except (AttributeError, ValueError, RecursionError):
        return None
    return token if isinstance(token, str) and _TOKEN.fullmatch(token) else None


def _renewal_file(path: str, token: str) -> str:
    """The temporary file a holder writes its renewed lock into before renaming it over the lock."""
    return f"{path}.{token}.renew"


def _try_acquire(path: str, me: dict) -> store.LockState | None:
    """Takes the lock, writing ``me``; returns None on success, else the holder's state.

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
            judged = _snapshot(path)
            state = store.lock_state(path)
            if state is None:
                continue  # released meanwhile
            if state.state in ("stale", "unreadable"):
                if _snapshot(path) != judged:
                    continue  # renewed or replaced while it was judged: judge it again
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
                token = _token_of(judged)
                if token:  # what a holder killed while renewing left
                    with contextlib.suppress(OSError):
                        os.remove(_renewal_file(path, token))
                continue
            return state
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        return None
    return store.lock_state(path) or state or store.LockState(path, "live", {}, 0.0)


class _Renewer(threading.Thread):
    """Renews a held lock every lease / 4 seconds; notices when another process took it over.

    A renewal rewrites the lock with fresh ``renewed`` and ``expires`` times (a
    temporary file renamed over it), after checking that the lock still holds
    this hold's token; where the rewrite fails (a full disk) it touches the
    file instead (readers take the later of ``renewed`` and the modification
    time). A lock deleted by hand is written again. A lock another process
    took over (this process did not renew it for longer than its lease and
    grace: stopped, hung, or cut off from the folder) is lost: one line on
    stderr, and, where the lock was taken in the main thread, a
    KeyboardInterrupt there, which :func:`hold` turns into :class:`LockedError`.
    """

    def __init__(self, path: str, holder: dict, lease: float):
        super().__init__(name=f"lottery_tf lease {os.path.basename(path)}", daemon=True)
        self.path, self.holder, self.lease = path, dict(holder), lease
        self.lost: str | None = None
        self.stopping = threading.Event()
        self.deciding = threading.Lock()  # no interrupt once the hold has ended
        self.in_main = threading.current_thread() is threading.main_thread()
        self.warned = False

    def run(self) -> None:
        while not self.stopping.wait(self.lease / 4):
            with self.deciding:
                if self.stopping.is_set():
                    return
                try:
                    self._renew()
                except OSError as error:
                    if not self.warned:
                        print(
                            f"warning: cannot renew the lease of {self.path} ({error.strerror or error}); "
                            f"retrying every {self.lease / 4:g} s",
                            file=sys.stderr,
                            flush=True,
                        )
                        self.warned = True
                if self.lost:
                    print(f"error: {self.lost}", file=sys.stderr, flush=True)
                    if self.in_main:
                        _thread.interrupt_main()
                    return

    def _renew(self) -> None:
        token = self.holder["token"]
        current = _read(self.path)
        if current is None:  # deleted by hand while held: write it again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                current = _read(self.path)
            else:
                self._stamp()
                with os.fdopen(fd, "w") as handle:
                    json.dump(self.holder, handle)
                print(f"warning: {self.path} was deleted while this process held it; written again", flush=True)
                return
        if _token_of(current) != token:
            state = store.lock_state(self.path)
            who = state.who() if state and state.holder else "another process"
            self.lost = (
                f"lost the lock {self.path}: {who} took it over (this process did not renew its lease for longer "
                f"than the lease and its grace: it was stopped, hung, or cut off from the folder); stopping, so "
                f"that two processes do not train the same levels"
            )
            return
        expires = self.holder["expires"]
        self._stamp()
        renewal = _renewal_file(self.path, token)
        try:
            with open(renewal, "w") as handle:
                json.dump(self.holder, handle)
            if time.time() >= expires:
                # Stopped or hung past its lease: another process may be taking the lock over now, and a rename
                # could write over its new lock. A touch cannot (readers take the later of ``renewed`` and the
                # modification time); the next renewal, inside the lease again, rewrites the file.
                raise OSError("lease expired before the renewal")
            os.replace(renewal, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(renewal)
            os.utime(self.path)  # needs no space; raises if this fails too

    def _stamp(self) -> None:
        now = time.time()
        self.holder["renewed"], self.holder["expires"] = now, now + self.lease

    def stop(self) -> None:
        with self.deciding:
            self.stopping.set()
        self.join(timeout=10)


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
        if state.lease:
            left = _duration(max(0.0, state.lease.ends_in + state.lease.grace))
            return (
                f"if host {state.holder.get('host')} is lost, the lock is taken over when its lease runs out "
                f"(in {left} unless renewed)"
            )
        return f"if that process is gone, delete {path}"
    if state.detail:  # alive, but not known to be the holder
        return f"if pid {pid} is not a lottery_tf process training this lineage, delete {path}"
    return f"if that process hangs, stop it (kill {pid}): its lock is then taken over"


def waiting_line(state: store.LockState, waited: float, what: str, replicate_folder: str) -> str:
    """One line of a waiting process: the lock, its holder, how long it has waited, and what the user can do."""
    parts = [
        f"waiting for {state.path} ({what}), {_duration(waited)} so far: held by {state.who()}",
        state.detail,
        state.lease.text() if state.lease else "",
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

    Judges the lock again at every poll, so the wait ends when the holder
    releases it or when it turns stale (its lease expires, its process is
    gone). Prints :func:`waiting_line` when it starts waiting and every
    ``report_seconds`` (default :data:`REPORT_SECONDS`). Does nothing where
    this process does not write (a worker that is not the chief follows the
    chief).
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


def _release(path: str, token: str) -> None:
    """Removes the lock if it is still this hold's."""
    if _token_of(_snapshot(path)) == token:
        with contextlib.suppress(OSError):
            os.remove(path)


def held_line(path: str, state) -> str:
    """The line a process that does not wait refuses with, while ``state``'s holder has the lock."""
    detail = "".join(f" ({part})" for part in (state.detail, state.lease.text() if state.lease else "") if part)
    return (
        f"{path} is held by {state.who()}{detail}: that process is training the same levels; wait for it, "
        f"pass --wait_for_lock, or {_if_gone(state)}"
    )


def refusal(replicate_folder: str, name: str) -> str | None:
    """The line :func:`hold` without ``wait`` would refuse with now (None if it would take the lock).

    For checks made before anything is written; :func:`hold` decides again when it takes the lock.
    """
    if not is_held(replicate_folder, name):
        return None
    path = lock_path(replicate_folder, name)
    state = store.lock_state(path)
    return held_line(path, state) if state is not None else None


@contextlib.contextmanager
def hold(
    replicate_folder: str,
    name: str,
    wait: bool = False,
    poll_seconds: float = 5.0,
    report_seconds: float | None = None,
):
    """Holds ``<replicate_folder>/.locks/<name>.lock`` inside the block, renewing its lease.

    With ``wait``, judges the lock again every ``poll_seconds`` (so the wait
    ends when the holder releases it or when it turns stale: its lease
    expires, its process is gone) and prints :func:`waiting_line` when it
    starts waiting and every ``report_seconds`` (default
    :data:`REPORT_SECONDS`). Inside the block a thread renews the lease every
    :func:`lease_seconds` / 4. Does nothing where this process does not write
    (a worker that is not the chief).

    Raises:
        LockedError: If another live process (or one that cannot be checked)
            holds it and ``wait`` is false; or if another process took the
            lock over while this one held it (its lease was not renewed in
            time: this process was stopped, hung, or cut off from the folder).
    """
    if not atomic.writes_enabled():
        yield
        return
    path = lock_path(replicate_folder, name)
    lease = lease_seconds()
    report = _Reporter(f"the {name} lineage", replicate_folder, report_seconds)
    while True:
        me = _me(lease)
        state = _try_acquire(path, me)
        if state is None:
            break
        if not wait:
            raise LockedError(held_line(path, state))
        report(state)
        time.sleep(poll_seconds)
    renewer = _Renewer(path, me, lease)
    previous = _stop_on_loss(renewer) if renewer.in_main else None
    renewer.start()
    try:
        yield
    except KeyboardInterrupt:
        if renewer.lost:
            raise LockedError(renewer.lost) from None
        raise
    finally:
        renewer.stop()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if not renewer.lost:
            _release(path, me["token"])
    if renewer.lost:
        raise LockedError(renewer.lost)


def _stop_on_loss(renewer: _Renewer):
    """Wraps the main thread's SIGINT handler so that the renewer's interrupt stops the holder; returns the old one.

    ``_thread.interrupt_main`` only runs a Python-level SIGINT handler: where SIGINT is ignored (a process
    started in the background by a script, or with ``nohup``) it does nothing, and a user's handler may not
    raise. A lost lock must stop the holder either way; any other SIGINT is passed to the previous handler.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed outside Python: left alone (then a lost lock stops the holder only if it raises)
        return None

    def handler(signum, frame):
        if renewer.lost:
            raise KeyboardInterrupt
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_DFL:
            signal.default_int_handler(signum, frame)
        return None  # SIG_IGN (or a handler Python cannot call): ignored, as before

    try:
        signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # not the main thread of the main interpreter after all
        return None
    return previous
