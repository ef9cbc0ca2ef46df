"""The training branches: the papers' controls, rewinding and learning-rate rewinding.

* ``reinit``: the level's mask, a fresh initialization (same distribution, a
  derived seed), trained from the ticket's start step k for the ticket's
  length (the learning-rate schedule and data order at k), so it is compared
  with the ticket on equal terms.
* ``random_prune``: a random mask with the level's per-layer density
  (``layerwise``) or overall density (``global``), started from the main line's
  rewind point: only the mask differs from the ticket (random blocks, or random
  N:M, when the run prunes with a structure).
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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

from lottery_tf.core import rewind
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.masking import set_masks
from lottery_tf.core.pruning import fingerprint, random_masks_like
from lottery_tf.engine.branches.registry import (
    BranchStart,
    Unit,
    branch_folder_name,
    branch_start,
    files_damaged,
    level_masks,
    level_masks_and_rewind_point,
    level_masks_file,
    lr_rewind_step,
    register_branch,
    structure,
)
from lottery_tf.engine.config import ExperimentConfig, derived_seed
from lottery_tf.engine.levels import (
    Context,
    agreement,
    dense_optimizer_at,
    pruning_spec,
    replayed_state,
    replayed_state_file,
    todo,
    train_lineage,
)
from lottery_tf.engine.recipe import build_masked_model
from lottery_tf.engine.run_dir import MAIN, is_done, level_dir
from lottery_tf.store import atomic, locks, states
from lottery_tf.store import reader as store


@register_branch("reinit", needs=level_masks)
def start_reinit(ctx: Context, level: int) -> BranchStart:
    # Same start step and length as the ticket it controls (open_lth starts it at k too). "restore"
    # would need the optimizer state of these weights' history, which does not exist: fresh instead.
    mode = "fresh" if ctx.config.pruning.rewind_optimizer == "restore" else None
    return branch_start(
        ctx, "reinit", level, ctx.config.pruning.rewind_step, seed=derived_seed(ctx.seed, "reinit", level), mode=mode
    )


@register_branch(
    "random_prune",
    needs=level_masks_and_rewind_point,
    folder=lambda config: f"random_prune_{config.branches.random_prune_scope}",
)
def start_random_prune(ctx: Context, level: int) -> BranchStart:
    masks = random_masks_like(
        atomic.read_npz(os.path.join(ctx.folder, level_masks_file(level))),
        derived_seed(ctx.seed, "random_prune", level),
        per_layer=ctx.config.branches.random_prune_scope == "layerwise",
        **structure(ctx.config),
    )
    return branch_start(
        ctx,
        "random_prune",
        level,
        ctx.config.pruning.rewind_step,
        masks=masks,
        state=states.load(os.path.join(ctx.folder, "rewind_point.npz")),
        state_file="rewind_point.npz",
    )


@register_branch(
    "rewind",
    needs=level_masks,
    folder=lambda config: f"rewind_{config.branches.rewind_step}",
    steps=lambda config, level: config.training.iterations - config.branches.rewind_step,
)
def start_rewind(ctx: Context, level: int) -> BranchStart:
    origin = ctx.config.branches.rewind_step
    return branch_start(
        ctx, "rewind", level, origin, state=replayed_state(ctx, origin), state_file=replayed_state_file(ctx, origin)
    )


@register_branch(
    "lr_rewind_oneshot",
    folder=lambda config: f"lr_rewind_oneshot_{lr_rewind_step(config)}",
    steps=lambda config, level: config.training.iterations - lr_rewind_step(config),
    needs=lambda config, level: [
        level_masks_file(level),
        os.path.join(f"level_{level - 1:02d}", MAIN, "final_weights.npz"),
    ],
)
def start_lr_rewind_oneshot(ctx: Context, level: int) -> BranchStart:
    source = os.path.join(f"level_{level - 1:02d}", MAIN, "final_weights.npz")
    return branch_start(
        ctx,
        "lr_rewind_oneshot",
        level,
        lr_rewind_step(ctx.config),
        state=states.load(os.path.join(ctx.folder, source)),
        state_file=source,
    )


def retrain_overrides(config: ExperimentConfig) -> dict:
    b = config.branches
    return {
        k: v
        for k, v in (
            ("optimizer", b.optimizer),
            ("learning_rate", b.learning_rate),
            ("iterations", b.iterations),
            ("batch_size", b.batch_size),
        )
        if v
    }


def _retrain_folder(config: ExperimentConfig) -> str:
    overrides = json.dumps(retrain_overrides(config), sort_keys=True)
    return "retrain_" + hashlib.sha256(overrides.encode()).hexdigest()[:8]


@register_branch(
    "retrain",
    needs=level_masks_and_rewind_point,
    folder=_retrain_folder,
    steps=lambda config, level: (config.branches.iterations or config.training.iterations) - config.pruning.rewind_step,
)
def start_retrain(ctx: Context, level: int) -> BranchStart:
    config = ctx.config
    training = dataclasses.replace(config.training, **retrain_overrides(config))
    # "restore" needs the dense run's optimizer state: only for the same optimizer and batch size.
    mode = (
        "fresh"
        if config.pruning.rewind_optimizer == "restore" and (config.branches.optimizer or config.branches.batch_size)
        else None
    )
    return branch_start(
        ctx,
        "retrain",
        level,
        config.pruning.rewind_step,
        training=training,
        mode=mode,
        state=states.load(os.path.join(ctx.folder, "rewind_point.npz")),
        state_file="rewind_point.npz",
    )


def _lr_rewind_needs(config: ExperimentConfig, level: int) -> list:
    return [level_masks_file(1), os.path.join("level_00", MAIN, "final_weights.npz")]


def _lr_rewind_units(config: ExperimentConfig, levels) -> list:
    """One unit: the lineage's levels follow each other (level L starts from level L-1's trained weights)."""
    last = max(levels)
    steps = last * (config.training.iterations - lr_rewind_step(config))
    name = branch_folder_name(config, "lr_rewind")
    run = functools.partial(_run_lr_rewind_to, last)
    return [Unit(name, last, steps, tuple(_lr_rewind_needs(config, 1)), run=run)]


def _run_lr_rewind_to(last_level: int, ctx: Context) -> bool:
    return run_lr_rewind_lineage(ctx, last_level)


@register_branch(
    "lr_rewind",
    lineage=True,
    folder=lambda config: f"lr_rewind_{lr_rewind_step(config)}",
    needs=_lr_rewind_needs,
    units=_lr_rewind_units,
)
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
    info = {
        "type": "lr_rewind",
        "start_step": k,
        "seed": ctx.seed,
        "rewind_optimizer": config.pruning.rewind_optimizer,
        "starts_from": "the previous lr_rewind level's trained weights (level 1: main level 0's)",
    }
    _rebuild_lineage_files(ctx, name, range(1, last_level + 1), info)
    if all(is_done(ctx.folder, level, name) for level in range(1, last_level + 1)):
        return False
    with locks.hold(ctx.folder, name, config.run.wait_for_lock):
        levels = todo(ctx, name, range(1, last_level + 1))
        if not levels:
            return False
        model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
        mode = config.pruning.rewind_optimizer
        imp = PruneRewindCallback(
            pruning_spec(config),
            rewind_step=k,
            rewind_optimizer=mode,
            rewind_weights=False,
            agree_on_masks=agreement(ctx),
        )
        imp.set_model(model)
        imp.optimizer_point = dense_optimizer_at(ctx, k)

        def load_level(level):
            if level == 1:
                masks_path = os.path.join(ctx.folder, level_masks_file(1))
                weights_path = os.path.join(level_dir(ctx.folder, 0, MAIN), "final_weights.npz")
            else:
                masks_path = os.path.join(level_dir(ctx.folder, level, name), "masks.npz")
                weights_path = os.path.join(level_dir(ctx.folder, level - 1, name), "final_weights.npz")
            set_masks(model, atomic.read_npz(masks_path))
            rewind.restore(model, states.load(weights_path))
            imp.level = level
            rewind.reset_optimizer(model.optimizer, k, mode, imp.optimizer_point)

        load_level(levels[0])
        train_lineage(ctx, model, imp, name, levels, lambda level: k, info, load_level=load_level)
    return True


def _rebuild_lineage_files(ctx: Context, name: str, levels, info: dict) -> None:
    """A branch lineage's finished levels: damaged masks rebuilt (checked), damaged ``branch.json`` written again."""
    from lottery_tf.engine import repair

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
