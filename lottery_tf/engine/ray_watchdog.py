"""Ends the Ray processes a driver started, when the driver ends, killed or not.

Run as a script (it imports nothing of lottery_tf, so it starts in milliseconds)::

    python ray_watchdog.py ROOT_PID...

by :func:`lottery_tf.engine.ray_executor.connect` when it starts a local Ray instance: the roots are the
processes ``ray.init`` started (the GCS, the raylet, the dashboard, the monitors). Its stdin is a pipe whose
other end only the driver holds: end of file means the driver ended (it closed the pipe after
``ray.shutdown``, or it died). Until then, every :data:`POLL_SECONDS`, it records the roots and all their
descendants (Ray's agents and workers) by pid and start time; at the end it SIGKILLs those still alive with
the same start time (a pid used again since is not Ray's).

Why: Ray ends its GCS and raylet with the driver (kernel fate-sharing), but its dashboard and runtime-env
agents then wait a minute or more for the dead GCS before they exit, and a worker can outlive its raylet by
seconds.
"""

from __future__ import annotations

import os
import select
import signal
import sys

POLL_SECONDS = 0.5


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time in clock ticks after boot), from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            table[int(name)] = (int(fields[1]), fields[19])
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
    return table


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``."""
    return {child for child, (parent, _) in process_table().items() if parent == pid}


def tree(table: dict, roots) -> dict[int, str]:
    """pid -> start time of ``roots`` (those alive) and all their descendants, in ``table``."""
    below: dict = {}
    for pid, (parent, _) in table.items():
        below.setdefault(parent, []).append(pid)
    found, stack = {}, [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            stack.extend(below.get(pid, ()))
    return found


def watch(roots, stdin: int = 0) -> list[int]:
    """Records ``roots`` and their descendants until ``stdin`` reaches end of file; kills them; returns whom."""
    me = os.getpid()
    seen: dict = {}
    while True:
        table = process_table()
        # Kept while alive with the same start time: a process whose parent died is no longer in the tree.
        seen = {pid: start for pid, start in seen.items() if table.get(pid, (0, None))[1] == start}
        seen.update(tree(table, roots))
        seen.pop(me, None)
        if select.select([stdin], [], [], POLL_SECONDS)[0] and not os.read(stdin, 1):
            break
    table = process_table()
    killed = []
    for pid, start in seen.items():
        if table.get(pid, (0, None))[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


def main(argv) -> None:
    # A Ctrl-C in the terminal reaches the driver (which shuts Ray down, then closes the pipe), not this.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch([int(pid) for pid in argv[1:]])


if __name__ == "__main__":
    main(sys.argv)
