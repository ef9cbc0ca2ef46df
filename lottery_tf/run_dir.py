"""Where the run folder is decided and what is in it (no TensorFlow here).

Layout::

    <output_dir>/config.json                     every setting, resolved
    <output_dir>/rewind_point.npz                weights at the rewind step
    <output_dir>/level_LL/<branch>/masks.npz     the masks the level trained with
    <output_dir>/level_LL/<branch>/metrics.json  curves and summary (written last)
    <output_dir>/summary.{csv,md,json}           one row per level and branch
    <output_dir>/tensorboard/level_LL_<branch>/  TensorBoard events

A level whose ``metrics.json`` exists is done and is never trained again.
"""

from __future__ import annotations

import json
import os

from lottery_tf import atomic
from lottery_tf.config import ConfigError, ExperimentConfig

# Settings that do not change what is computed, left out of the identity check
# (a run folder may be moved or copied).
_NOT_IDENTITY = ("output_dir",)


def level_dir(output_dir: str, level: int, branch: str) -> str:
    """The folder of one level of one branch."""
    return os.path.join(output_dir, f"level_{level:02d}", branch)


def is_done(output_dir: str, level: int, branch: str) -> bool:
    """Whether that level's metrics were written (the last file a level writes)."""
    return os.path.isfile(os.path.join(level_dir(output_dir, level, branch), "metrics.json"))


def _identity(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in _NOT_IDENTITY}


def prepare(config: ExperimentConfig) -> None:
    """Creates the run folder, or checks that it holds this same experiment.

    Raises:
        ConfigError: If the folder holds other files or a run with other settings;
            nothing in it is touched.
    """
    out = config.output_dir
    config_path = os.path.join(out, "config.json")
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(config_path):
            raise ConfigError("output_dir", f"{out!r} is not empty and holds no lottery_tf run; choose a new folder")
        try:
            with open(config_path) as handle:
                previous = json.load(handle)
        except (OSError, ValueError) as error:
            raise ConfigError("output_dir", f"cannot read {config_path}: {error}") from None
        current = json.loads(config.to_json())
        if _identity(previous) != _identity(current):
            changed = sorted(_diff_keys(_identity(previous), _identity(current)))
            raise ConfigError(
                "output_dir",
                f"{out!r} holds a run with other settings (differs in {', '.join(changed)}); "
                "choose a new folder",
            )
        return
    try:
        os.makedirs(out, exist_ok=True)
        atomic.write_text(config_path, config.to_json())
    except OSError as error:
        raise ConfigError("output_dir", f"cannot write to {out!r}: {error.strerror}") from None


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")
