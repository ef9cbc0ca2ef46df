"""The branch registry: every kind of branch of the main line, one object each.

A branch reuses the main line's files (masks, rewind point, trained weights)
and never retrains the main line. Each :class:`BranchType` says which files it
needs (checked before anything trains), how it names its folder, and how it
runs: either ``start`` (a one-level branch: build the model at its first step;
:func:`run_branch` trains it like a level) or ``run`` (a branch that organises
its own work: a lineage, or an analysis that trains copies and measures them).

The training branches are registered here:

* ``reinit``: the level's mask, a fresh initialization (same distribution, a
  derived seed), trained from the ticket's start step k for the ticket's
  length (the learning-rate schedule and data order at k), so it is compared
  with the ticket on equal terms.
* ``random_prune``: a random mask with the level's per-layer density
  (``layerwise``) or overall density (``global``), started from the main line's
  rewind point: only the mask differs from the ticket.
* ``rewind``: the level's mask, rewound to step k of the dense run (weights,
  learning-rate schedule and data order at k); k = 0 is reset to
  initialization. States at k are replayed deterministically and cached.
* ``lr_rewind`` (Renda et al. 2020): its own lineage. Level 1 prunes the dense
  network's trained weights (the main line's level-1 mask) and keeps them;
  level L prunes lr_rewind level L-1's trained weights. Each level rewinds only
  the learning-rate schedule (and data order) to k.
* ``lr_rewind_oneshot``: the main line's level L-1 trained weights under its
  level-L mask, schedule rewound to k.
* ``retrain``: the ticket (mask + rewind point) trained with other settings.

The analyses (``instability``, ``stability``) register in
:mod:`lottery_tf.analysis_branches`, the baselines (``pai_*``, ``gmp``) in
:mod:`lottery_tf.baseline_branches`. The optimizer is rewound as
``--rewind_optimizer`` says (:func:`lottery_tf.rewind.reset_optimizer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable

from lottery_tf import atomic, locks, rewind, store
from lottery_tf.callbacks import PruneRewindCallback
from lottery_tf.config import ExperimentConfig, derived_seed
from lottery_tf.levels import (Context, SaveTrainedState, agreement, dense_optimizer_at, finish_level, pruning_spec,
                               replayed_state, replayed_state_file, todo, train_level, train_lineage)
from lottery_tf.masking import get_masks, set_masks
from lottery_tf.pruning import fingerprint, random_masks_like
from lottery_tf.recipe import build_masked_model
from lottery_tf.registry import Registry
from lottery_tf.run_dir import MAIN, is_done, level_dir


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
    """

    name: str
    needs: Callable[[ExperimentConfig, int], list]
    folder: Callable[[ExperimentConfig], str]
    start: Callable | None = None
    run: Callable | None = None


BRANCH_TYPES: Registry[BranchType] = Registry("branch")


def register_branch(name: str, needs: Callable, folder: Callable | None = None, lineage: bool = False) -> Callable:
    """Decorator registering a branch type: a ``start(ctx, level)`` function, or a ``run(ctx, levels)`` if ``lineage``.

    Example:

    >>> @register_branch("my_control", needs=level_masks)  # doctest: +SKIP
    ... def start_my_control(ctx, level):
    ...     return BranchStart(...)
    """

    def decorator(function):
        BRANCH_TYPES.register(name)(BranchType(
            name=name, needs=needs, folder=folder or (lambda config: name),
            start=None if lineage else function, run=function if lineage else None))
        return function

    return decorator


def branch_type(name: str) -> BranchType:
    """The registered type; ``ValueError`` listing the valid names otherwise."""
    return BRANCH_TYPES.get(name)


def branch_folder_name(config: ExperimentConfig, name: str) -> str:
    """The folder name of a branch: its type plus what distinguishes it."""
    return branch_type(name).folder(config)


def _masks(level: int) -> str:
    return os.path.join(f"level_{level:02d}", MAIN, "masks.npz")


def level_masks(config: ExperimentConfig, level: int) -> list:
    """What most branches need: the level's mask."""
    return [_masks(level)]


def level_masks_and_rewind_point(config: ExperimentConfig, level: int) -> list:
    return [_masks(level), "rewind_point.npz"]


def structure(config: ExperimentConfig) -> dict:
    """The pruning structure (``block``, ``n_m``) controls and baselines keep, as keyword arguments."""
    return {"block": tuple(config.pruning.block) or None, "n_m": tuple(config.pruning.n_m) or None}


def lr_rewind_step(config: ExperimentConfig) -> int:
    """The step learning-rate rewinding rewinds the schedule to."""
    b = config.branches
    return b.rewind_step if b.rewind_step >= 0 else config.pruning.rewind_step


def _retrain_overrides(config: ExperimentConfig) -> dict:
    b = config.branches
    return {k: v for k, v in (("optimizer", b.optimizer), ("learning_rate", b.learning_rate),
                              ("iterations", b.iterations), ("batch_size", b.batch_size)) if v}


def branch_start(ctx: Context, name: str, level: int, origin: int, masks=None, state=None, seed=None, training=None,
           mode=None, folder=None, state_file: str | None = None) -> BranchStart:
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
        masks = atomic.read_npz(os.path.join(ctx.folder, _masks(level)))
    model = build_masked_model(config, ctx.splits, seed, training, ctx.strategy)
    set_masks(model, masks)
    if state is not None:
        rewind.restore(model, state)
    rewind.reset_optimizer(model.optimizer, origin, mode, dense_optimizer_at(ctx, origin) if mode == "restore" else None)
    info = {"type": name, "level": level, "start_step": origin, "seed": seed, "rewind_optimizer": mode,
            "training": dataclasses.asdict(training), "random_prune_scope": config.branches.random_prune_scope,
            "start_state": {"init_seed": seed} if state is None else {"file": state_file}}
    return BranchStart(folder or branch_folder_name(config, name), model, origin, training, info)


@register_branch("reinit", needs=level_masks)
def start_reinit(ctx: Context, level: int) -> BranchStart:
    # Same start step and length as the ticket it controls (open_lth starts it at k too). "restore"
    # would need the optimizer state of these weights' history, which does not exist: fresh instead.
    mode = "fresh" if ctx.config.pruning.rewind_optimizer == "restore" else None
    return branch_start(ctx, "reinit", level, ctx.config.pruning.rewind_step,
                  seed=derived_seed(ctx.seed, "reinit", level), mode=mode)


@register_branch("random_prune", needs=level_masks_and_rewind_point,
                 folder=lambda config: f"random_prune_{config.branches.random_prune_scope}")
def start_random_prune(ctx: Context, level: int) -> BranchStart:
    masks = random_masks_like(atomic.read_npz(os.path.join(ctx.folder, _masks(level))),
                              derived_seed(ctx.seed, "random_prune", level),
                              per_layer=ctx.config.branches.random_prune_scope == "layerwise",
                              **structure(ctx.config))
    return branch_start(ctx, "random_prune", level, ctx.config.pruning.rewind_step, masks=masks,
                        state=rewind.load(os.path.join(ctx.folder, "rewind_point.npz")), state_file="rewind_point.npz")


@register_branch("rewind", needs=level_masks, folder=lambda config: f"rewind_{config.branches.rewind_step}")
def start_rewind(ctx: Context, level: int) -> BranchStart:
    origin = ctx.config.branches.rewind_step
    return branch_start(ctx, "rewind", level, origin, state=replayed_state(ctx, origin),
                        state_file=replayed_state_file(ctx, origin))


@register_branch("lr_rewind_oneshot", folder=lambda config: f"lr_rewind_oneshot_{lr_rewind_step(config)}",
                 needs=lambda config, level: [_masks(level), os.path.join(f"level_{level - 1:02d}", MAIN, "final_weights.npz")])
def start_lr_rewind_oneshot(ctx: Context, level: int) -> BranchStart:
    source = os.path.join(f"level_{level - 1:02d}", MAIN, "final_weights.npz")
    return branch_start(ctx, "lr_rewind_oneshot", level, lr_rewind_step(ctx.config),
                        state=rewind.load(os.path.join(ctx.folder, source)), state_file=source)


def _retrain_folder(config: ExperimentConfig) -> str:
    overrides = json.dumps(_retrain_overrides(config), sort_keys=True)
    return "retrain_" + hashlib.sha256(overrides.encode()).hexdigest()[:8]


@register_branch("retrain", needs=level_masks_and_rewind_point, folder=_retrain_folder)
def start_retrain(ctx: Context, level: int) -> BranchStart:
    config = ctx.config
    training = dataclasses.replace(config.training, **_retrain_overrides(config))
    # "restore" needs the dense run's optimizer state: only for the same optimizer and batch size.
    mode = "fresh" if config.pruning.rewind_optimizer == "restore" and (config.branches.optimizer or config.branches.batch_size) else None
    return branch_start(ctx, "retrain", level, config.pruning.rewind_step, training=training, mode=mode,
                        state=rewind.load(os.path.join(ctx.folder, "rewind_point.npz")), state_file="rewind_point.npz")


@register_branch("lr_rewind", lineage=True, folder=lambda config: f"lr_rewind_{lr_rewind_step(config)}",
                 needs=lambda config, level: [_masks(1), os.path.join("level_00", MAIN, "final_weights.npz")])
def run_lr_rewind(ctx: Context, levels) -> bool:
    return run_lr_rewind_lineage(ctx, max(levels))


def run_lr_rewind_lineage(ctx: Context, last_level: int) -> bool:
    """Learning-rate rewinding (Renda et al. 2020) as its own lineage, levels 1..``last_level``.

    Level 1 keeps the dense network's trained weights (main level 0) under the
    main line's level-1 mask (both prune the same trained weights with the same
    rule); level L keeps lr_rewind level L-1's trained weights under the mask
    pruned from them. Every level rewinds only the schedule (and data order)
    to k. Returns whether it trained any level.
    """
    config = ctx.config
    name = branch_folder_name(config, "lr_rewind")
    k = lr_rewind_step(config)
    info = {"type": "lr_rewind", "start_step": k, "seed": ctx.seed, "rewind_optimizer": config.pruning.rewind_optimizer,
            "starts_from": "the previous lr_rewind level's trained weights (level 1: main level 0's)"}
    _rebuild_lineage_files(ctx, name, range(1, last_level + 1), info)
    if all(is_done(ctx.folder, level, name) for level in range(1, last_level + 1)):
        return False
    with locks.hold(ctx.folder, name, config.run.wait_for_lock):
        levels = todo(ctx, name, range(1, last_level + 1))
        if not levels:
            return False
        model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
        mode = config.pruning.rewind_optimizer
        imp = PruneRewindCallback(pruning_spec(config), rewind_step=k, rewind_optimizer=mode, rewind_weights=False,
                                  agree_on_masks=agreement(ctx))
        imp.set_model(model)
        imp.optimizer_point = dense_optimizer_at(ctx, k)

        def load_level(level):
            if level == 1:
                masks_path = os.path.join(ctx.folder, _masks(1))
                weights_path = os.path.join(level_dir(ctx.folder, 0, MAIN), "final_weights.npz")
            else:
                masks_path = os.path.join(level_dir(ctx.folder, level, name), "masks.npz")
                weights_path = os.path.join(level_dir(ctx.folder, level - 1, name), "final_weights.npz")
            set_masks(model, atomic.read_npz(masks_path))
            rewind.restore(model, rewind.load(weights_path))
            imp.level = level
            rewind.reset_optimizer(model.optimizer, k, mode, imp.optimizer_point)

        load_level(levels[0])
        train_lineage(ctx, model, imp, name, levels, lambda level: k, info, load_level=load_level)
    return True


def _rebuild_lineage_files(ctx: Context, name: str, levels, info: dict) -> None:
    """A branch lineage's finished levels: damaged masks rebuilt (checked), damaged ``branch.json`` written again."""
    from lottery_tf import repair

    for level in levels:
        folder = level_dir(ctx.folder, level, name)
        if not is_done(ctx.folder, level, name) or not files_damaged(folder):
            continue
        with locks.hold(ctx.folder, name, ctx.config.run.wait_for_lock):
            masks = os.path.join(folder, "masks.npz")
            expected = store.read_json(os.path.join(folder, "metrics.json")).get("masks_sha256")
            if store.npz_problem(masks) or fingerprint(store.read_npz(masks)) != expected:
                repair.rebuild_masks(ctx, name, level)
            if store.json_problem(os.path.join(folder, "branch.json")):
                atomic.write_json(os.path.join(folder, "branch.json"), {**info, "level": level})
                print(f"rebuilt {os.path.join(folder, 'branch.json')}", flush=True)


def prepare_branch(ctx: Context, name: str, level: int) -> BranchStart:
    """Builds the model a one-level branch starts from (mask, weights, optimizer at its start step).

    Raises:
        ValueError: For an unknown branch type, or one that is not a one-level branch.
    """
    kind = branch_type(name)
    if kind.start is None:
        raise ValueError(f"branch {name!r} organises its own levels; it has no single start")
    return kind.start(ctx, level)


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
        metrics = train_level(ctx, start.model, level, start.name, start.origin,
                              start.training.iterations - start.origin, start.training,
                              extra_callbacks=(*start.callbacks, trained))
        if start.finish is not None:
            metrics = start.finish(start.model, metrics)
        finish_level(ctx, level, start.name, metrics)
    return True


def files_damaged(folder: str) -> bool:
    """Whether a finished branch level's masks or ``branch.json`` are damaged (see :mod:`lottery_tf.store`)."""
    metrics = store.read_json(os.path.join(folder, "metrics.json"))
    masks = os.path.join(folder, "masks.npz")
    return bool(store.npz_problem(masks) or store.json_problem(os.path.join(folder, "branch.json"))
                or (metrics.get("masks_sha256") and fingerprint(store.read_npz(masks)) != metrics["masks_sha256"]))


def rebuild_start_files(folder: str, model, make_info) -> None:
    """Writes a finished level's masks and ``branch.json`` again from its start, if they match what it trained with.

    Args:
        folder: The level's folder.
        model: The model at the level's start (its masks are the level's).
        make_info: ``make_info()`` -> an object with ``info`` (the ``branch.json`` content).

    Raises:
        RepairError: If the start's masks are not the ones ``metrics.json`` recorded.
    """
    from lottery_tf.repair import RepairError

    masks_path, info_path = os.path.join(folder, "masks.npz"), os.path.join(folder, "branch.json")
    expected = store.read_json(os.path.join(folder, "metrics.json")).get("masks_sha256")
    masks = get_masks(model)
    if expected and fingerprint(masks) != expected:
        raise RepairError(f"{masks_path}: rebuilt from the branch's start, its masks have fingerprint {fingerprint(masks)}, "
                          f"but metrics.json says it trained with {expected} (a branch whose masks change while it "
                          f"trains, such as gmp, cannot be rebuilt); delete {folder} to train it again")
    damaged_masks = store.npz_problem(masks_path) or (expected and fingerprint(store.read_npz(masks_path)) != expected)
    if damaged_masks:
        atomic.write_npz(masks_path, masks)
        print(f"rebuilt {masks_path} (fingerprint {fingerprint(masks)})", flush=True)
    if store.json_problem(info_path):
        atomic.write_json(info_path, make_info().info)
        print(f"rebuilt {info_path}", flush=True)


def check_branch_inputs(ctx: Context) -> None:
    """Fails before training if a branch needs a main-line file that is missing.

    Raises:
        FileNotFoundError: Naming the branch, the level and the file.
    """
    b = ctx.config.branches
    for name in b.names:
        for level in b.levels:
            for relative in branch_type(name).needs(ctx.config, level):
                path = os.path.join(ctx.folder, relative)
                if not os.path.exists(path):
                    raise FileNotFoundError(f"--branch_levels: branch {name} at level {level} needs {path}, which the main line has not written")


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
