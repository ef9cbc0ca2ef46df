"""Named crash points, so tests can kill a run (or fill its disk) at an exact moment.

``LOTTERY_TF_CRASH_AT=<name>:<n>`` makes the n-th (1-based) pass through
``crash_point(<name>)`` kill the process with SIGKILL, as a power cut or an OOM
killer would. ``LOTTERY_TF_CRASH_AT=<name>:<n>:enospc`` raises the OSError a
full disk raises instead, ``<name>:<n>:pause=<seconds>`` sleeps there (a
slow process holding its locks), and ``<name>:<n>:wait=<path>`` waits there
until ``<path>`` exists (at most ten minutes), so a test holds a process at
that point exactly as long as it needs to, however loaded the machine is; on
arrival it creates ``<path>.waiting``, so the test knows the process is there.
Without the variable, ``crash_point`` does nothing.
"""

import errno
import os
import signal
import time

_ENV = "LOTTERY_TF_CRASH_AT"
_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(_ENV)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    count, _, kind = rest.partition(":")
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != int(count or 1):
        return
    if kind.startswith("pause="):
        time.sleep(float(kind.split("=", 1)[1]))
        return
    if kind.startswith("wait="):
        release, deadline = kind.split("=", 1)[1], time.monotonic() + 600
        open(release + ".waiting", "w").close()
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return
    if kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<simulated full disk at {name}>")
    os.kill(os.getpid(), signal.SIGKILL)
