"""The branch registry: every kind of branch of the main line, one object each, and how one trains.

A branch reuses the main line's files (masks, rewind point, trained weights)
and never retrains the main line. Each :class:`BranchType` says which files it
needs (checked before anything trains), how it names its folder, and how it
runs: either ``start`` (a one-level branch: build the model at its first step;
:func:`run_branch` trains it like a level, :func:`train_start` keeps its files)
or ``run`` (a branch that organises its own work: a lineage, or an analysis
that trains copies and measures them).

The families register in their own modules: the training controls
(:mod:`~lottery_tf.engine.branches.controls`), the analyses
(:mod:`~lottery_tf.engine.branches.analyses`) and the baselines
(:mod:`~lottery_tf.engine.branches.baselines`); importing
:mod:`lottery_tf.engine.branches` registers all of them. The optimizer is
rewound as ``--rewind_optimizer`` says
(:func:`lottery_tf.core.rewind.reset_optimizer`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

from lottery_tf.core import rewind
from lottery_tf.core.masking import get_masks, set_masks
from lottery_tf.core.pruning import fingerprint
from lottery_tf.engine.config import ExperimentConfig, derived_seed, lr_rewind_step  # noqa: F401
from lottery_tf.engine.levels import (
    Context,
    SaveTrainedState,
    dense_optimizer_at,
    finish_level,
    todo,
    train_level,
)
from lottery_tf.engine.recipe import build_masked_model
from lottery_tf.engine.registry import Registry
from lottery_tf.engine.run_dir import MAIN, is_done, level_dir
from lottery_tf.store import atomic, locks
from lottery_tf.store import reader as store


@dataclasses.dataclass
class BranchStart:
    """A branch's model at its first step, and how it trains from there."""

    name: str  # folder name
    model: object
    origin: int  # the training step it starts at (learning-rate schedule, data order)
    training: object  # TrainingConfig
    info: dict  # written to branch.json
    callbacks: tuple = ()  # extra Keras callbacks while it trains (e.g. gradual pruning)
    finish: Callable | None = None  # finish(model, metrics) -> metrics, before metrics.json is written


@dataclasses.dataclass(frozen=True)
class Unit:
    """One training (or one measurement) of a branch: what a study executor schedules on its own.

    Args:
        key: Unique within a replicate (``level_02/reinit``); the executor finds the unit again by it.
        level: The level it belongs to.
        steps: The training steps it runs (0 for a measurement that only evaluates).
        needs: Main-line files (relative to the replicate folder) it reads; the executor runs it after
            the main-line levels that write them.
        after: Keys of this branch's units it waits for (an analysis's measurement after its copies).
        run: ``run(ctx)`` -> whether it trained; the same level code the local executor runs.
    """

    key: str
    level: int
    steps: int
    needs: tuple = ()
    after: tuple = ()
    run: Callable | None = None


@dataclasses.dataclass(frozen=True)
class BranchType:
    """One kind of branch.

    Args:
        name: What ``--branch`` calls it.
        needs: ``needs(config, level)`` -> the files (relative to the replicate
            folder) the branch reads at ``level``; :func:`check_branch_inputs`
            checks them before anything trains.
        folder: ``folder(config)`` -> the folder name under ``level_<LL>/``.
        start: For one-level branches: ``start(ctx, level)`` -> :class:`BranchStart`.
        run: For branches that organise their own work:
            ``run(ctx, levels)`` -> whether anything was trained.
        steps: For one-level branches: ``steps(config, level)`` -> the training steps of one level.
        units: For branches that organise their own work: ``units(config, levels)`` -> the
            :class:`Unit` list a study executor schedules (one-level branches: one unit per level).
    """

    name: str
    needs: Callable[[ExperimentConfig, int], list]
    folder: Callable[[ExperimentConfig], str]
    start: Callable | None = None
    run: Callable | None = None
    steps: Callable | None = None
    units: Callable | None = None


BRANCH_TYPES: Registry[BranchType] = Registry("branch")


def _steps_from_rewind_step(config: ExperimentConfig, level: int) -> int:
    return config.training.iterations - config.pruning.rewind_step


def register_branch(
    name: str,
    needs: Callable,
    folder: Callable | None = None,
    lineage: bool = False,
    steps: Callable | None = None,
    units: Callable | None = None,
) -> Callable:
    """Decorator registering a branch type: a ``start(ctx, level)`` function, or a ``run(ctx, levels)`` if ``lineage``.

    A one-level branch says how many steps it trains (``steps(config, level)``; default: from the
    main line's rewind step to the end); a lineage says how it splits into :class:`Unit` s
    (``units(config, levels)``), which a study executor (``--executor=ray``) schedules one by one.

    Example:

    >>> @register_branch("my_control", needs=level_masks)  # doctest: +SKIP
    ... def start_my_control(ctx, level):
    ...     return BranchStart(...)
    """

    if lineage and units is None:
        raise ValueError(f"branch {name!r} organises its own work: give units(config, levels)")

    def decorator(function):
        BRANCH_TYPES.register(name)(
            BranchType(
                name=name,
                needs=needs,
                folder=folder or (lambda config: name),
                start=None if lineage else function,
                run=function if lineage else None,
                steps=None if lineage else (steps or _steps_from_rewind_step),
                units=units,
            )
        )
        return function

    return decorator


def branch_type(name: str) -> BranchType:
    """The registered type; ``ValueError`` listing the valid names otherwise."""
    return BRANCH_TYPES.get(name)


def branch_folder_name(config: ExperimentConfig, name: str) -> str:
    """The folder name of a branch: its type plus what distinguishes it."""
    return branch_type(name).folder(config)


def level_masks_file(level: int) -> str:
    return os.path.join(f"level_{level:02d}", MAIN, "masks.npz")


def level_masks(config: ExperimentConfig, level: int) -> list:
    """What most branches need: the level's mask."""
    return [level_masks_file(level)]


def level_masks_and_rewind_point(config: ExperimentConfig, level: int) -> list:
    return [level_masks_file(level), "rewind_point.npz"]


def structure(config: ExperimentConfig) -> dict:
    """The pruning structure (``block``, ``n_m``) controls and baselines keep, as keyword arguments."""
    return {"block": tuple(config.pruning.block) or None, "n_m": tuple(config.pruning.n_m) or None}


def branch_start(
    ctx: Context,
    name: str,
    level: int,
    origin: int,
    masks=None,
    state=None,
    seed=None,
    training=None,
    mode=None,
    folder=None,
    state_file: str | None = None,
) -> BranchStart:
    """The model of a one-level branch: the level's mask (or ``masks``), ``state`` (None = the fresh
    initialization from ``seed``), optimizer rewound to ``origin``.

    ``state_file`` names the run file ``state`` came from (relative to the replicate folder): it goes into
    ``branch.json`` as ``start_state``, so :func:`lottery_tf.load_ticket` can give the ticket's start weights.
    """
    config = ctx.config
    training = training or config.training
    seed = ctx.seed if seed is None else seed
    mode = mode or config.pruning.rewind_optimizer
    if masks is None:
        masks = atomic.read_npz(os.path.join(ctx.folder, level_masks_file(level)))
    model = build_masked_model(config, ctx.splits, seed, training, ctx.strategy)
    set_masks(model, masks)
    if state is not None:
        rewind.restore(model, state)
    rewind.reset_optimizer(
        model.optimizer, origin, mode, dense_optimizer_at(ctx, origin) if mode == "restore" else None
    )
    info = {
        "type": name,
        "level": level,
        "start_step": origin,
        "seed": seed,
        "rewind_optimizer": mode,
        "training": dataclasses.asdict(training),
        "random_prune_scope": config.branches.random_prune_scope,
        "start_state": {"init_seed": seed} if state is None else {"file": state_file},
    }
    return BranchStart(folder or branch_folder_name(config, name), model, origin, training, info)


def prepare_branch(ctx: Context, name: str, level: int) -> BranchStart:
    """Builds the model a one-level branch starts from (mask, weights, optimizer at its start step).

    Raises:
        ValueError: For an unknown branch type, or one that is not a one-level branch.
    """
    kind = branch_type(name)
    if kind.start is None:
        raise ValueError(f"branch {name!r} organises its own levels; it has no single start")
    return kind.start(ctx, level)


def branch_units(config: ExperimentConfig, name: str) -> list[Unit]:
    """The units of one requested branch at every requested level (what ``--executor=ray`` schedules)."""
    kind = branch_type(name)
    levels = list(config.branches.levels)
    if kind.units is not None:
        return kind.units(config, levels)
    folder = branch_folder_name(config, name)
    return [
        Unit(
            f"level_{level:02d}/{folder}",
            level,
            kind.steps(config, level),
            tuple(kind.needs(config, level)),
            run=functools.partial(_run_one, name, level),
        )
        for level in levels
    ]


def _run_one(name: str, level: int, ctx: Context) -> bool:
    return run_branch(ctx, name, level)


def run_branch(ctx: Context, name: str, level: int) -> bool:
    """Runs one one-level branch at one level unless done. Returns whether it trained."""
    return train_start(ctx, level, branch_folder_name(ctx.config, name), lambda: prepare_branch(ctx, name, level))


def train_start(ctx: Context, level: int, folder_name: str, make_start: Callable[[], BranchStart]) -> bool:
    """Trains the branch ``make_start()`` builds in ``level_LL/<folder_name>`` unless done; locked, resumable.

    Returns:
        Whether it trained.
    """
    if is_done(ctx.folder, level, folder_name):
        if files_damaged(level_dir(ctx.folder, level, folder_name)):
            with locks.hold(ctx.folder, f"{folder_name}_level_{level:02d}", ctx.config.run.wait_for_lock):
                start = make_start()
                rebuild_start_files(level_dir(ctx.folder, level, folder_name), start.model, lambda: start)
        return False
    with locks.hold(ctx.folder, f"{folder_name}_level_{level:02d}", ctx.config.run.wait_for_lock):
        if not todo(ctx, folder_name, [level]):
            return False
        start = make_start()
        folder = level_dir(ctx.folder, level, start.name)
        atomic.write_json(os.path.join(folder, "branch.json"), start.info)
        atomic.write_npz(os.path.join(folder, "masks.npz"), get_masks(start.model))
        trained = SaveTrainedState(os.path.join(folder, "final_weights.npz"))  # the ticket's final weights
        metrics = train_level(
            ctx,
            start.model,
            level,
            start.name,
            start.origin,
            start.training.iterations - start.origin,
            start.training,
            extra_callbacks=(*start.callbacks, trained),
        )
        if start.finish is not None:
            metrics = start.finish(start.model, metrics)
        finish_level(ctx, level, start.name, metrics)
    return True


def files_damaged(folder: str) -> bool:
    """Whether a finished branch level's masks or ``branch.json`` are damaged (see :mod:`lottery_tf.store.reader`)."""
    metrics = store.read_json(os.path.join(folder, "metrics.json"))
    masks = os.path.join(folder, "masks.npz")
    return bool(
        store.npz_problem(masks)
        or store.json_problem(os.path.join(folder, "branch.json"))
        or (metrics.get("masks_sha256") and fingerprint(store.read_npz(masks)) != metrics["masks_sha256"])
    )


def rebuild_start_files(folder: str, model, make_info) -> None:
    """Writes a finished level's masks and ``branch.json`` again from its start, if they match what it trained with.

    Args:
        folder: The level's folder.
        model: The model at the level's start (its masks are the level's).
        make_info: ``make_info()`` -> an object with ``info`` (the ``branch.json`` content).

    Raises:
        RepairError: If the start's masks are not the ones ``metrics.json`` recorded.
    """
    masks_path, info_path = os.path.join(folder, "masks.npz"), os.path.join(folder, "branch.json")
    expected = store.read_json(os.path.join(folder, "metrics.json")).get("masks_sha256")
    masks = get_masks(model)
    if expected and fingerprint(masks) != expected:
        raise store.RepairError(
            f"{masks_path}: rebuilt from the branch's start, its masks have fingerprint {fingerprint(masks)}, "
            f"but metrics.json says it trained with {expected} (a branch whose masks change while it "
            f"trains, such as gmp, cannot be rebuilt); delete {folder} to train it again"
        )
    damaged_masks = store.npz_problem(masks_path) or (expected and fingerprint(store.read_npz(masks_path)) != expected)
    if damaged_masks:
        atomic.write_npz(masks_path, masks)
        print(f"rebuilt {masks_path} (fingerprint {fingerprint(masks)})", flush=True)
    if store.json_problem(info_path):
        atomic.write_json(info_path, make_info().info)
        print(f"rebuilt {info_path}", flush=True)


def check_branch_inputs(ctx: Context, names=None, levels=None) -> None:
    """Fails before training if a branch (of ``names`` at ``levels``; default: every requested one) needs a
    main-line file that is missing.

    Raises:
        FileNotFoundError: Naming the branch, the level and the file.
    """
    b = ctx.config.branches
    for name in b.names if names is None else names:
        for level in b.levels if levels is None else levels:
            for relative in branch_type(name).needs(ctx.config, level):
                path = os.path.join(ctx.folder, relative)
                if not os.path.exists(path):
                    raise FileNotFoundError(
                        f"--branch_levels: branch {name} at level {level} needs {path}, which the main line has not written"
                    )


def run_branches(ctx: Context) -> bool:
    """Every requested branch at every requested level. Returns whether any trained."""
    b = ctx.config.branches
    trained = False
    for name in b.names:
        kind = branch_type(name)
        if kind.run is not None:
            trained |= bool(kind.run(ctx, list(b.levels)))
            continue
        for level in b.levels:
            trained |= run_branch(ctx, name, level)
    return trained
