"""The one line a user's mistake ends in, for every executor (no TensorFlow here).

``python -m lottery_tf.main`` prints ``error: <line>`` and exits with status 2;
``--executor=ray`` computes the same line inside the task that failed and the
driver prints it, so a study fails the same way on either executor.
"""

from __future__ import annotations

from lottery_tf.engine.config import ConfigError, StrategyError
from lottery_tf.engine.data.registry import DataUnavailableError
from lottery_tf.store.atomic import CorruptFileError

# The library's one-line errors, by type name (their modules import TensorFlow).
_BY_NAME = ("DivergedError", "LockedError", "ReportError", "StoreError", "RepairError", "StudyError")


class StudyError(RuntimeError):
    """A study executor stopped on a user's mistake (a task's one line) or a setting it cannot serve."""


def user_message(error: BaseException, dataset: str) -> str | None:
    """The one line for a user's mistake, or None for anything else (a bug: the traceback is shown).

    Args:
        error: What was raised.
        dataset: ``--dataset`` (named in data errors).
    """
    if isinstance(error, (ConfigError, StrategyError)):
        return str(error)
    if isinstance(error, DataUnavailableError):
        return f"--dataset={dataset}: {error}"
    if isinstance(error, (FileNotFoundError, CorruptFileError)):
        return str(error)
    if isinstance(error, OSError):  # disk full, permissions: earlier files are intact
        return f"cannot write {error.filename or 'a run file'}: {error.strerror or error}"
    if isinstance(error, ValueError):  # the library's checks on what the user asked for
        return str(error)
    if type(error).__name__ in _BY_NAME:
        return str(error)
    return None


def bug_line(error: BaseException) -> str:
    return (
        f"{type(error).__name__}: {error}. This is a bug in lottery_tf, not in your settings; please "
        "report it with the command line and the traceback above"
    )
