"""Where the run folder is decided and what is in it (no TensorFlow here).

The folder depends on the experiment's settings alone: a short stable hash of
the settings that differ from their defaults (:func:`config.experiment_hash`),
so adding a new flag with a default never moves an old run. Layout::

    <output_dir>/lottery_<hash>/settings.json         every setting of the latest invocation
    <output_dir>/lottery_<hash>/identity.json         the hashed settings (never changes)
    <output_dir>/lottery_<hash>/summary.{csv,md}      over replicates, per level and branch
    .../replicate_<r>/rewind_point.npz                non-mask variables at the rewind step
    .../replicate_<r>/rewind_points/step_<k>.npz      states replayed for `rewind` branches
    .../replicate_<r>/level_<LL>/main/masks.npz       the masks level LL trains with
    .../replicate_<r>/level_<LL>/<branch>/metrics.json  curves and summary: written last
    .../replicate_<r>/level_<LL>/<branch>/final_weights.npz  trained state (main line)
    .../replicate_<r>/level_<LL>/<branch>/checkpoints/ckpt-<step>.{npz,json}  while running
    .../replicate_<r>/level_<LL>/<branch>/branch.json  the branch's settings
    .../replicate_<r>/level_<LL>/instability/<network>_k<k>/pair_<p>/instability.json  (copies beside it)
    .../replicate_<r>/level_<LL>/stability/<network>_k<k>/stability.json
    <output_dir>/lottery_<hash>/tensorboard/r<r>/L<LL>-<branch>/  TensorBoard events (runs before
                                                    issue 30: .../replicate_<r>/tensorboard/level_<LL>_<branch>/)

A level whose ``metrics.json`` exists is done and is never trained again.
"""

from __future__ import annotations

import glob
import json
import os
import re

from lottery_tf.engine.config import (
    ConfigError,
    ExperimentConfig,
    experiment_hash,
    experiment_hash_of,
    non_default_identity,
)
from lottery_tf.store import atomic, locks, records
from lottery_tf.store import reader as store

MAIN = "main"
_LEVEL = re.compile(r"level_(\d+)$")


def experiment_dir(config: ExperimentConfig) -> str:
    return os.path.join(config.run.output_dir, f"lottery_{experiment_hash(config)}")


def replicate_dir(config: ExperimentConfig, replicate: int) -> str:
    return os.path.join(experiment_dir(config), f"replicate_{replicate}")


def level_dir(replicate_folder: str, level: int, branch: str) -> str:
    """The folder of one level of one branch."""
    return os.path.join(replicate_folder, f"level_{level:02d}", branch)


def metrics_problem(path: str) -> str | None:
    """What is wrong with a ``metrics.json`` (None if it is a complete, finite record); see :mod:`lottery_tf.store.reader`."""
    problem = store.metrics_problem(path)
    return f"{path} {problem}" if problem else None


def is_done(replicate_folder: str, level: int, branch: str) -> bool:
    """Whether that level's metrics were written (the last file a level writes) and are a complete, finite record."""
    return store.is_done(replicate_folder, level, branch)


def levels_with(replicate_folder: str, branch: str, filename: str) -> list[int]:
    """Levels of ``branch`` whose folder holds ``filename``."""
    found = []
    for path in glob.glob(os.path.join(replicate_folder, "level_*", branch, filename)):
        match = _LEVEL.search(os.path.dirname(os.path.dirname(path)))
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def read_json(path: str, what: str) -> dict:
    """Reads a JSON file.

    Raises:
        ConfigError: Naming the file, if it cannot be read or parsed.
    """
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError("output_dir", f"cannot read {what} {path}: {error}") from None


def prepare(config: ExperimentConfig) -> str:
    """Creates the experiment folder, or checks that it holds this experiment.

    Writes ``identity.json`` once and ``settings.json`` (all settings of this
    invocation) every time, atomically.

    Returns:
        The experiment folder.

    Raises:
        ConfigError: If the folder's identity file is unreadable or differs;
            nothing is written then.
    """
    folder = experiment_dir(config)
    identity_path = os.path.join(folder, "identity.json")
    identity = non_default_identity(config)
    if os.path.exists(identity_path):
        previous = read_json(identity_path, "settings file")
        if previous != json.loads(json.dumps(identity)):
            raise ConfigError(
                "output_dir", f"{identity_path} does not match these settings; the folder was changed by hand"
            )
    if not atomic.writes_enabled():  # a worker that is not the chief only reads
        return folder
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.path.exists(identity_path):
            atomic.write_json(identity_path, identity)
        atomic.write_text(os.path.join(folder, "settings.json"), config.to_json())
    except OSError as error:
        raise ConfigError("output_dir", f"cannot write to {folder!r}: {error.strerror}") from None
    return folder


def check_folder(config: ExperimentConfig, rerecord_data: bool = False, trains_here: bool = True) -> list[str]:
    """What an existing run folder allows, before anything is written: its identity, its damage, its lock.

    The verdict is the health check's (:func:`lottery_tf.store.reader.inspect_experiment`, the same code):
    a problem it marks ``refuse`` stops the run with its line; every other problem is returned with its
    line, the one ``python -m lottery_tf.runs`` prints, for the run to print before it acts on it. Where
    this process trains (``trains_here``: not a multi-worker non-chief, not a Ray driver), a main-line lock
    another process holds refuses the command here, as taking it would. Needs neither TensorFlow nor the
    data: a Ray driver runs it before Ray starts. The data record is compared with the data by
    :func:`lottery_tf.engine.experiment.check_store`.

    Returns:
        ``warning: <problem>`` for damage the run repairs, ``note: <problem>`` for what it leaves alone
        (nothing for a folder that does not exist yet).

    Raises:
        StoreError: For damage no run can rebuild (the line the health check prints).
        LockedError: If another process holds the main line's lock this command would take.
    """
    folder = experiment_dir(config)
    if not os.path.isdir(folder):
        return []
    expected = json.loads(json.dumps(non_default_identity(config)))
    report = store.inspect_experiment(folder, expected_identity=expected, folder_hash=experiment_hash_of)
    problems = report.problems + [p for health in report.replicates.values() for p in health.problems]
    lines = []
    for problem in problems:
        if problem.kind == "data" and rerecord_data:  # the run records the data found now (it says so)
            continue
        if problem.action == store.REFUSE:
            raise store.StoreError(problem.line())
        lines.append(f"{'note' if problem.action == store.NOTE else 'warning'}: {problem.line()}")
    if trains_here and not config.run.wait_for_lock and not config.branches.names:
        # (A worker that is not the chief takes no lock: the chief's is not in its way.)
        for r in replicates(config):
            health = report.replicates.get(f"replicate_{r}")
            if health is not None and health.next_main_level() <= config.pruning.levels:
                line = locks.refusal(replicate_dir(config, r), MAIN)
                if line:
                    raise locks.LockedError(line)
    return lines


def print_store_lines(lines) -> None:
    """The store check's lines: ``warning: ...`` (damage a run repairs) to stderr, ``note: ...`` to stdout."""
    import sys

    for line in lines:
        print(line, file=sys.stderr if line.startswith("warning") else sys.stdout, flush=True)


def open_experiment(config: ExperimentConfig, record: dict, new_data_record: bool, store_lines=()) -> None:
    """Creates (or checks) the experiment folder and records the data; prints the store's lines and the data line.

    Called only after every check (:func:`lottery_tf.engine.experiment.check`): a command whose data, model
    or store fails writes nothing.

    Args:
        config: The experiment's settings.
        record: The data record the check made (source, fingerprint, sizes, input shape, classes).
        new_data_record: Whether ``data.json`` is to be written (a new run, or ``--rerecord_data``).
        store_lines: What the store check found and the run does about it (``warning: ...`` to stderr).
    """
    print_store_lines(store_lines)
    prepare(config)
    if new_data_record:
        atomic.write_json(os.path.join(experiment_dir(config), "data.json"), records.seal(record))
    train, val, test = record["sizes"]
    print(
        f"data: {record['source']}  train {train}  val {val}  test {test}  fingerprint {record['fingerprint']}",
        flush=True,
    )


def describe(config: ExperimentConfig) -> str:
    """One line naming the experiment, for logs."""
    return (
        f"{config.model.name} on {config.data.name}, levels 0-{config.pruning.levels}, "
        f"replicates {replicates(config)}, seed {config.seed}"
    )


def find_experiments(path: str) -> list[str]:
    """Experiment folders at or under ``path`` (a root, an experiment, or a replicate)."""
    path = os.path.normpath(path)
    if os.path.isfile(os.path.join(path, "identity.json")):
        return [path]
    parent = os.path.dirname(path)
    if os.path.basename(path).startswith("replicate_") and os.path.isfile(os.path.join(parent, "identity.json")):
        return [parent]
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, "**", "identity.json"), recursive=True))


def replicates(config: ExperimentConfig) -> list[int]:
    """The replicates a command runs: ``--replicate`` alone, or all of ``--replicates``."""
    return [config.run.replicate] if config.run.replicate >= 0 else list(range(config.run.replicates))


def replicates_of(experiment_folder: str) -> list[str]:
    """Replicate folders of an experiment, by index."""
    folders = glob.glob(os.path.join(experiment_folder, "replicate_*"))
    return sorted(folders, key=lambda f: int(f.rsplit("_", 1)[1]) if f.rsplit("_", 1)[1].isdigit() else 1 << 30)
