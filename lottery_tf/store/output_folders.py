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
