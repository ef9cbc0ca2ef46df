"""The baselines as branches: pruning at initialization (``pai_<method>``) and gradual magnitude pruning (``gmp``).

Both run at the densities of chosen main-line levels, so that they sit beside
the ticket of the same density in the report (Frankle et al., "Pruning Neural
Networks at Initialization: Why are We Missing the Mark?", ICLR 2021):

* ``pai_<method>`` (``magnitude``, ``random``, ``snip``, ``grasp``,
  ``synflow``; scores in :mod:`lottery_tf.core.saliency`): the start point (the
  main line's rewind point: the initialization at k = 0) is pruned in one shot
  to the level's overall density (``--pai_scope``: one global threshold, the
  output layer included, or layer-wise), then trained from step k like every
  level. ``--pai_ablations`` adds, each in its own folder,
  ``pai_<method>_shuffled`` (each layer's mask shuffled at random: only the
  per-layer densities kept), ``pai_<method>_reinit`` (the mask on a fresh
  initialization, new seed, same distribution) and ``pai_<method>_inverted``
  (the highest scores pruned instead of the lowest).
* ``gmp`` (Zhu & Gupta 2017, :mod:`lottery_tf.core.gradual`): from the dense
  initialization, one training run that prunes every layer to the level's
  sparsity with TFMOT's polynomial schedule. Its ``metrics.json`` records the
  density it ends with and the schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import numpy as np

from lottery_tf.core import rewind, saliency
from lottery_tf.core.gradual import GradualPruningCallback
from lottery_tf.core.masking import get_masks, layer_densities, overall_density
from lottery_tf.core.pruning import density, fingerprint, prune_to_density, random_masks_like
from lottery_tf.engine.branches.registry import (
    BranchStart,
    Unit,
    branch_start,
    level_masks,
    level_masks_and_rewind_point,
    register_branch,
    structure,
    train_start,
)
from lottery_tf.engine.config import PAI_METHODS, derived_seed, gmp_steps
from lottery_tf.engine.levels import Context
from lottery_tf.engine.recipe import build_masked_model
from lottery_tf.engine.run_dir import MAIN, level_dir
from lottery_tf.store import atomic, states

ABLATION_SUFFIX = {"shuffle": "_shuffled", "reinit": "_reinit", "invert": "_inverted"}


def pai_folder(method: str, ablation: str | None = None) -> str:
    """``pai_<method>`` and the ablation's suffix (``_shuffled``, ``_reinit``, ``_inverted``)."""
    return f"pai_{method}" + (ABLATION_SUFFIX[ablation] if ablation else "")


def level_density(ctx: Context, level: int) -> float:
    """The overall density of a main-line level's masks (fraction of masked weights kept)."""
    return density(atomic.read_npz(os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz")))


def pai_masks(ctx: Context, method: str, level: int, invert: bool = False):
    """The start point pruned in one shot by ``method`` to the level's density. Returns (masks, start state, info)."""
    config, b = ctx.config, ctx.config.branches
    state = states.load(os.path.join(ctx.folder, "rewind_point.npz"))
    model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    rewind.restore(model, state)
    target = level_density(ctx, level)

    def prune(importance, masks, target):  # with the run's structure (blocks, N:M), if any
        return prune_to_density(
            saliency.invert(importance) if invert else importance, masks, target, scope=b.pai_scope, **structure(config)
        )

    info = {"method": method, "target_density": target, "scope": b.pai_scope, "inverted": invert}
    if method == "synflow":
        masks = saliency.synflow_masks(model, ctx.splits.input_shape, target, b.synflow_rounds, prune=prune)
        info["synflow_rounds"] = b.synflow_rounds
        return masks, state, info
    batches = ()
    if method in ("snip", "grasp"):
        if not hasattr(ctx.splits, "x_train"):
            raise ValueError(
                f"--branch=pai_{method} needs the training set in memory for its scoring examples; "
                f"--dataset={config.data.name} is streamed"
            )
        seed = derived_seed(ctx.seed, "scoring", level)
        batches = saliency.balanced_batches(ctx.splits.x_train, ctx.splits.y_train, b.scoring_examples_per_class, seed)
        info.update(scoring_examples_per_class=b.scoring_examples_per_class, scoring_seed=seed)
    importance = saliency.scores(method, model, batches, seed=derived_seed(ctx.seed, "pai_random", level))
    return prune(importance, get_masks(model), target), state, info


def start_pai(ctx: Context, method: str, level: int, ablation: str | None) -> BranchStart:
    """A ``pai_<method>`` branch (or one of its ablations) at the level's density, ready to train from step k."""
    masks, state, info = pai_masks(ctx, method, level, invert=ablation == "invert")
    seed = ctx.seed
    if ablation == "shuffle":
        masks = random_masks_like(
            masks, derived_seed(ctx.seed, "pai_shuffle", method, level), per_layer=True, **structure(ctx.config)
        )
    if ablation == "reinit":
        seed, state = derived_seed(ctx.seed, "pai_reinit", method, level), None
    mode = "fresh" if ctx.config.pruning.rewind_optimizer == "restore" and ablation == "reinit" else None
    start = branch_start(
        ctx,
        f"pai_{method}",
        level,
        ctx.config.pruning.rewind_step,
        masks=masks,
        state=state,
        seed=seed,
        mode=mode,
        folder=pai_folder(method, ablation),
        state_file=None if state is None else "rewind_point.npz",
    )
    start.info.update(info, ablation=ablation or "none", density=overall_density(start.model))
    return start


def _run_pai(method: str, ctx: Context, levels) -> bool:
    trained = False
    for level in levels:
        for ablation in (None, *ctx.config.branches.pai_ablations):
            trained |= _run_pai_one(method, level, ablation, ctx)
    return trained


def _pai_units(method: str, config, levels) -> list:
    """One unit per level and ablation (each its own training)."""
    steps = config.training.iterations - config.pruning.rewind_step
    return [
        Unit(
            f"level_{level:02d}/{pai_folder(method, ablation)}",
            level,
            steps,
            tuple(level_masks_and_rewind_point(config, level)),
            run=functools.partial(_run_pai_one, method, level, ablation),
        )
        for level in levels
        for ablation in (None, *config.branches.pai_ablations)
    ]


def _run_pai_one(method: str, level: int, ablation: str | None, ctx: Context) -> bool:
    return train_start(
        ctx, level, pai_folder(method, ablation), functools.partial(start_pai, ctx, method, level, ablation)
    )


for _method in PAI_METHODS:
    register_branch(
        f"pai_{_method}",
        needs=level_masks_and_rewind_point,
        lineage=True,
        units=functools.partial(_pai_units, _method),
    )(functools.partial(_run_pai, _method))


def start_gmp(ctx: Context, level: int) -> BranchStart:
    """Gradual magnitude pruning to the level's density in one run from the dense initialization."""
    config, b = ctx.config, ctx.config.branches
    begin, end, frequency = gmp_steps(config)
    target = level_density(ctx, level)
    # The callback sees the model between executions: every pruning step must start one.
    steps = math.gcd(math.gcd(frequency, begin - 1 or frequency), config.training.resolved_steps_per_execution())
    training = dataclasses.replace(config.training, steps_per_execution=steps)
    callback = GradualPruningCallback(1.0 - target, begin, end, frequency, schedule=b.gmp_schedule)
    start = branch_start(
        ctx,
        "gmp",
        level,
        0,
        masks={
            n: np.ones_like(m)
            for n, m in atomic.read_npz(os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz")).items()
        },
        training=training,
    )
    schedule = {
        "final_sparsity": 1.0 - target,
        "begin_step": begin,
        "end_step": end,
        "frequency": frequency,
        "power": 3,
        "schedule": b.gmp_schedule,
    }
    start.info.update(target_density=target, gmp=schedule)

    def finish(model, metrics):
        masks = get_masks(model)
        atomic.write_npz(
            os.path.join(level_dir(ctx.folder, level, "gmp"), "masks.npz"), masks
        )  # the masks it ended with
        return {
            **metrics,
            "density": overall_density(model),
            "layer_densities": layer_densities(model),
            "masks_sha256": fingerprint(masks),
            "target_density": target,
            "gmp": schedule,
        }

    return dataclasses.replace(start, callbacks=(callback,), finish=finish)


@register_branch("gmp", needs=level_masks, steps=lambda config, level: config.training.iterations)
def _start_gmp(ctx: Context, level: int) -> BranchStart:
    return start_gmp(ctx, level)
