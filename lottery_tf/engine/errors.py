"""The one line a user's mistake ends in, for every executor (no TensorFlow here).

``python -m lottery_tf.main`` prints ``error: <line>`` and exits with status 2;
``--executor=ray`` computes the same line inside the task that failed and the
driver prints it, so a study fails the same way on either executor.
"""

from __future__ import annotations

import argparse
import difflib
import sys

from lottery_tf.engine.config import ConfigError, StrategyError
from lottery_tf.engine.data.registry import DataUnavailableError
from lottery_tf.store.atomic import CorruptFileError

# The library's one-line errors, by type name (their modules import TensorFlow).
_BY_NAME = ("DivergedError", "LockedError", "ReportError", "StoreError", "RepairError", "StudyError")


class StudyError(RuntimeError):
    """A study executor stopped on a user's mistake (a task's one line) or a setting it cannot serve."""


def keras_backend_problem(command: str) -> str | None:
    """The line a command refuses a Keras backend other than TensorFlow with (None under TensorFlow).

    The commands (``python -m lottery_tf.main``, ``python -m lottery_tf.export``) build their models with the
    engine, which is TensorFlow: tf.distribute, TensorFlow Datasets, TensorBoard, checkpoints. Keras reads
    ``KERAS_BACKEND`` once, when it is imported, so the command cannot switch it for the user.
    """
    from lottery_tf.core.requested_backend import requested_backend

    backend = requested_backend()  # without importing Keras: python -m lottery_tf.main starts without it
    if backend == "tensorflow":
        return None
    # The library in the user's own code runs on JAX too; not on PyTorch or a backend Keras does not have.
    library = f"runs on {backend}" if backend == "jax" else "runs on tensorflow or jax"
    return (
        f"KERAS_BACKEND is {backend!r}, but {command} runs on TensorFlow (tf.distribute, TensorFlow Datasets, "
        f"TensorBoard); run it with KERAS_BACKEND=tensorflow or unset (lottery_tf's Keras library in your own "
        f"code {library})"
    )


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the commands (export, report, runs): every error is one ``error:`` line and exit status 2.

    An unknown flag is named before anything else (argparse would first say a
    required flag is missing), and flags must be spelled in full: argparse's
    abbreviations would take ``--lev`` for ``--level`` and any typo that
    happens to be a prefix.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        unknown = self.unknown_flag(args)
        if unknown:
            self.error(unknown)
        return super().parse_args(args, namespace)

    def unknown_flag(self, args) -> str | None:
        """``--NAME: unknown flag ...`` for the first argument that looks like a flag this parser lacks, or None."""
        known = [name for name in self._option_string_actions if name.startswith("--")]
        for arg in args:
            if arg == "--":
                return None
            if not arg.startswith("-") or arg == "-" or self._negative_number_matcher.match(arg):
                continue
            name = arg.split("=", 1)[0]
            if name in self._option_string_actions:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"{name}: unknown flag{hint}; {self.prog} --help lists the flags"
        return None
