"""Atomic file writes: write a temporary file in the same folder, then rename.

A reader therefore sees either the previous complete file or the new complete
file, never a half-written one, even if the process is killed mid-write. The
file is fsynced before the rename and its folder after it, so the rename
itself survives a power loss. Files get the permissions an ordinary write
gives (0666 less the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from lottery_tf.store import faults


class CorruptFileError(RuntimeError):
    """A run file exists but cannot be read; the message names it."""


_discarding = False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open folders; the file itself is synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def writes_enabled() -> bool:
    """False inside :func:`discarding_writes` (a worker that is not the chief)."""
    return not _discarding


@contextlib.contextmanager
def discarding_writes(discard: bool = True):
    """Within this block (if ``discard``), every write through this module is dropped.

    A multi-worker run computes the same thing on every worker, and only the
    chief may write; the other workers run the same code inside this block.
    Code that deletes run files checks :func:`writes_enabled` as well.
    """
    global _discarding
    previous, _discarding = _discarding, bool(discard) or _discarding
    try:
        yield
    finally:
        _discarding = previous


def read_npz(path: str | os.PathLike) -> dict:
    """Reads every array of an ``.npz`` file.

    Raises:
        CorruptFileError: If the file is missing, truncated or not an archive.
    """
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CorruptFileError(f"{path} is unreadable or corrupted ({error})") from None


@contextlib.contextmanager
def _temporary_beside(path: str | os.PathLike, mode: str, crash_point: str = "atomic_write"):
    if _discarding:
        yield io.BytesIO() if "b" in mode else io.StringIO()
        return
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            faults.crash_point(crash_point)
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # Name the file meant, not the temporary one (or none, as write() gives).
        raise OSError(error.errno, error.strerror, path) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with _temporary_beside(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike, data: bytes, crash_point: str = "atomic_write") -> None:
    """Writes ``data`` to ``path`` atomically (``crash_point`` names the moment
    between writing the temporary file and renaming it, for tests)."""
    with _temporary_beside(path, "wb", crash_point) as handle:
        handle.write(data)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as indented JSON atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes arrays as an ``.npz`` archive atomically."""
    with _temporary_beside(path, "wb") as handle:
        np.savez(handle, **dict(arrays))
