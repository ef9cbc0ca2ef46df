"""Where a command may write its output: never over, into or around run data.

The commands that write a folder of their own (``python -m lottery_tf.export
--out``, ``python -m lottery_tf.report --out``) ask :func:`output_problem`
before they touch anything; the runner's ``--output_dir`` asks
:func:`holding_run_folder`. The rule is decided on real paths (symbolic links
and ``..`` resolved), so that a second spelling of a folder is the same folder:

* the output is not a folder the command reads, nor an ancestor of one (an
  export replaced with ``--overwrite`` would take the experiment with it);
* it is not a run folder nor inside one, except below an experiment's own
  ``exports/`` folder, where an export may go (its default);
* it holds no run folder, however deep (a runs root, a folder of studies).

A run folder is an experiment (:func:`is_experiment`: its ``identity.json``,
or its replicates, when copied, renamed or damaged) or a replicate with levels
copied out of one. Whether an existing folder is an earlier export that
``--overwrite`` may replace is the export command's own question
(:func:`lottery_tf.engine.export_files.earlier_export_problem`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

EXPORTS = "exports"  # <experiment>/exports/<ticket>: where exports go by default
_EXPERIMENT_NAME = re.compile(r"lottery_[0-9a-f]+")
_REPLICATE_NAME = re.compile(r"replicate_\d+")
_LEVEL_NAME = re.compile(r"level_\d+")
_LEVEL_FILES = ("masks.npz", "metrics.json", "final_weights.npz", "checkpoints")  # what a level's main holds


def home_problem(path: str) -> str | None:
    """Why ``path`` cannot be used because of a leading ``~``, or None.

    The commands expand ``~`` and ``~user`` as a shell would; what still starts
    with ``~`` names a user this machine does not have (or was never expanded),
    and would become a folder literally named ``~user`` in the working folder.
    """
    if not isinstance(path, str) or not path.startswith("~"):
        return None
    head = path[1:].split(os.sep, 1)[0]
    if os.path.expanduser(path) != path:  # a caller that did not expand it
        return f"{path} starts with ~, which is not expanded here: pass os.path.expanduser({path!r})"
    if head:
        return f"{path}: there is no user {head!r} to expand ~{head} for; expected a path (a folder named '~{head}' is not made)"
    return f"{path}: ~ cannot be expanded (no home folder is known); expected a path"


def nearest_existing(path: str) -> str:
    """``path`` itself if it exists (as a link or not), else its nearest existing ancestor."""
    folder = os.path.abspath(path)
    while not os.path.lexists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


# Filesystems that hold no user files: a folder cannot be made there, whatever the permissions say.
_PSEUDO_FILESYSTEMS = frozenset(
    "proc sysfs devtmpfs devpts cgroup cgroup2 debugfs tracefs securityfs configfs mqueue bpf pstore "
    "fusectl binfmt_misc efivarfs autofs rpc_pipefs nsfs".split()
)


def _mount_of(path: str) -> tuple[str, str, set] | None:
    """(mount point, filesystem type, mount options) of the mount holding real path ``path`` (Linux), or None."""
    try:
        with open("/proc/self/mountinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 6 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if _within(path, point) or point == "/":
            if best is None or len(point) >= len(best[0]):
                best = (point, rest[0], set(fields[5].split(",")))
    return best


def creatable_problem(out: str) -> str | None:
    """Why folder ``out`` cannot be made (or written) by this process, or None; nothing is written to find out.

    Names what is wrong with the path itself: a component that is a file, a
    symbolic link that leads nowhere (a loop, a missing target), a folder that
    is not writable, or a filesystem that holds no files (``/proc``, ``/sys``)
    or is mounted read-only.
    """
    problem = home_problem(out)
    if problem:
        return problem
    absolute = os.path.abspath(out)
    parts = absolute.split(os.sep)
    for end in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:end]) or os.sep
        if not os.path.lexists(prefix):
            break
        try:
            os.stat(prefix)
        except OSError as error:
            if os.path.islink(prefix):
                return f"{prefix} is a symbolic link that leads nowhere ({error.strerror.lower()}: a loop or a missing target)"
            return f"{prefix} cannot be read ({error.strerror})"
        if not os.path.isdir(prefix) and prefix != absolute:
            return f"{prefix} is a file, not a folder: nothing can be made below it"
    existing = nearest_existing(absolute)
    folder = existing if os.path.isdir(existing) else os.path.dirname(existing)
    real = os.path.realpath(folder)
    mount = _mount_of(real)
    where = "" if mount is None or real == mount[0] else f" is in {mount[0]}, which"
    if mount is not None and mount[1] in _PSEUDO_FILESYSTEMS:
        return f"{real}{where} is a {mount[1]} filesystem that holds no files: write to a folder on a disk"
    if mount is not None and "ro" in mount[2]:
        return f"{real}{where} is mounted read-only: write to a writable folder"
    if not os.access(real, os.W_OK | os.X_OK):
        return f"{real} is not writable by this user: write to a folder you can write"
    return None


def _names(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _is_replicate(folder: str) -> bool:
    """A replicate folder, whatever its name: a ``level_<nn>/main`` folder in it holds a level's files."""
    return any(
        _LEVEL_NAME.fullmatch(n) and any(os.path.exists(os.path.join(folder, n, "main", f)) for f in _LEVEL_FILES)
        for n in _names(folder)
    )


def is_experiment(folder: str) -> bool:
    """Whether ``folder`` is an experiment folder, damaged, copied or renamed.

    ``identity.json`` marks one (every experiment writes it first). Without it,
    a folder still is one if it holds a ``replicate_<n>`` folder with a
    level's files in ``level_<nn>/main``, or if it is named
    ``lottery_<hash>`` and holds ``settings.json``, ``data.json`` or a
    ``replicate_<n>`` folder.
    """
    if os.path.isfile(os.path.join(folder, "identity.json")):
        return True
    names = _names(folder)
    if any(_REPLICATE_NAME.fullmatch(n) and _is_replicate(os.path.join(folder, n)) for n in names):
        return True
    if not _EXPERIMENT_NAME.fullmatch(os.path.basename(os.path.normpath(folder))):
        return False
    return any(n in ("settings.json", "data.json") or _REPLICATE_NAME.fullmatch(n) for n in names)


def is_run_data(folder: str) -> bool:
    """An experiment folder, or a replicate folder (one copied out of its experiment, under any name)."""
    return is_experiment(folder) or _is_replicate(folder)


def run_folders_holding(path: str) -> list[str]:
    """The run folders (experiments, lone replicates) that are ``path`` or hold it, innermost first (real paths)."""
    found, folder = [], os.path.realpath(path)
    while True:
        if is_run_data(folder):
            found.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            return found
        folder = parent


def holding_run_folder(path: str) -> str | None:
    """The run folder to name for ``path``: the innermost experiment that is or holds it, else the innermost
    run folder, else None."""
    return _named(run_folders_holding(path))


def _named(holders: list[str]) -> str | None:
    return next((h for h in holders if is_experiment(h)), holders[0] if holders else None)


def run_folder_below(folder: str) -> str | None:
    """A run folder (experiment or lone replicate) anywhere inside ``folder``, or None.

    The whole tree is searched, without following symbolic links: a study kept
    many folders deep is found as surely as one at the top.
    """
    for root, dirs, _ in os.walk(folder):
        dirs.sort()
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path) and is_run_data(path):
                return path
    return None


def in_run_folder(path: str, run_folder: str) -> str:
    """``"PATH is the run folder R"`` or ``"PATH is inside the run folder R"``."""
    return f"{path} is {'the' if os.path.realpath(path) == run_folder else 'inside the'} run folder {run_folder}"


def _within(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def output_problem(out: str, reads: Sequence[str] = (), exports_allowed: bool = False) -> str | None:
    """Why a command may not write its output folder ``out``, or None if it may.

    Args:
        out: The folder the command would write (it need not exist yet).
        reads: The run folders the command reads (experiments, replicates,
            roots); ``out`` may be none of them and hold none of them.
        exports_allowed: Whether ``out`` may lie below an experiment's
            ``exports/`` folder (an export's default place).

    Returns:
        One sentence naming ``out`` and the run data it would touch, or None.
    """
    real = os.path.realpath(out)
    for source in reads:
        source_real = os.path.realpath(source)
        if _within(source_real, real):
            if source_real == real:
                also = "" if os.path.normpath(out) == os.path.normpath(source) else f" ({source})"
                return f"{out} is the run folder this command reads{also}: write to a folder of its own"
            return f"{out} holds {source}, which this command reads: write to a folder of its own"
    holders = run_folders_holding(real)
    if holders:
        innermost = holders[0]
        exports = os.path.join(innermost, EXPORTS)
        if exports_allowed and is_experiment(innermost) and _within(real, exports) and real != exports:
            return None
        named = _named(holders)
        real_experiment = os.path.isfile(os.path.join(named, "identity.json"))
        where = f"{os.path.join(named, EXPORTS, '<name>')} or " if exports_allowed and real_experiment else ""
        return f"{in_run_folder(out, named)}: write to {where}a folder outside every run folder"
    found = run_folder_below(real)
    if found is not None:
        return f"{out} holds run data ({found}): write to a folder of its own"
    return None
