"""Rebuilding the main line's files a damaged run store lost, from the files it kept.

What :mod:`lottery_tf.store.reader` marks ``rebuild`` or ``rebuild_when_needed`` on
the main line (and the learning-rate-rewinding lineage) is rebuilt here, with
the code that wrote it the first time, and checked against the fingerprint the
run recorded before it is written:

* a level's masks: level 0's are dense; level L's are the pruning decision
  (:meth:`lottery_tf.core.callbacks.PruneRewindCallback.next_masks`) on level L-1's
  trained weights and masks; checked against ``metrics.json``'s
  ``masks_sha256`` when the level is done;
* the rewind point: the initialization (k = 0) or the dense run's first k
  steps replayed; checked against ``rewind_point.json``;
* a level's trained weights (only when something needs them): the level is
  trained again from its masks and rewind point, and kept only if its curves
  equal the recorded ``metrics.json`` and it prunes to the next level's
  recorded masks.

A rebuild that does not match raises :class:`RepairError`, one line naming
what to delete; every other file stays byte-identical.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tempfile

from lottery_tf.core import rewind
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.masking import get_masks, set_masks
from lottery_tf.core.pruning import fingerprint
from lottery_tf.engine.config import lr_rewind_step
from lottery_tf.engine.levels import Context, SaveTrainedState, dense_optimizer_at, pruning_spec, replay, train_level
from lottery_tf.engine.recipe import build_masked_model
from lottery_tf.engine.run_dir import MAIN, level_dir
from lottery_tf.store import atomic, records, states
from lottery_tf.store import reader as store
from lottery_tf.store.reader import RepairError, StoreError  # noqa: F401  (raised here)


def record_rewind_point(ctx: Context, state) -> None:
    """Writes ``rewind_point.json``: the step and fingerprint a rebuilt rewind point is checked against.

    It also says whether every record of the replicate is sealed when written (a replicate this version
    started, or one whose records all are): then a record found without a seal had it removed by hand.
    """
    path = os.path.join(ctx.folder, "rewind_point.json")
    previous = store.read_json(path) if store.json_problem(path) is None else None
    if previous is not None and records.ALL_SEALED in previous:
        all_sealed = previous[records.ALL_SEALED] is True
    else:
        found = glob.glob(os.path.join(ctx.folder, "level_*", "**", "*.json"), recursive=True)
        all_sealed = all(
            records.SEAL in (store.read_json(p) if store.json_problem(p, content=False) is None else {})
            for p in found
            if os.path.basename(p) in ("metrics.json", "instability.json", "stability.json")
        )
    atomic.write_json(
        path,
        records.seal(
            {
                "step": ctx.config.pruning.rewind_step,
                "sha256": store.state_fingerprint(state),
                records.BELONGS: ctx.belongs_to(),
                records.ALL_SEALED: all_sealed,
            }
        ),
    )


def _problems(ctx: Context, kinds) -> list:
    return [
        p
        for p in store.inspect_replicate(ctx.folder).problems
        if p.kind in kinds and p.action in (store.REBUILD, store.REBUILD_WHEN_NEEDED)
    ]


def main_line_damage(ctx: Context) -> list:
    """The damage :func:`rebuild_main_line` rebuilds (the rewind point, lineage masks)."""
    return [
        p
        for p in _problems(ctx, ("rewind_point", "rewind_record", "masks"))
        if p.kind.startswith("rewind") or p.folder == MAIN
    ]


def rebuild_input(ctx: Context, relative: str) -> None:
    """Rebuilds one main-line file a branch reads (``level_LL/main/masks.npz``, ``final_weights.npz``, the rewind point)."""
    parts = relative.split(os.sep)
    if parts == ["rewind_point.npz"]:
        rebuild_rewind_point(ctx)
        return
    level, lineage, name = int(parts[0].split("_")[1]), parts[1], parts[2]
    if name == "masks.npz":
        rebuild_masks(ctx, lineage, level)
    elif name == "final_weights.npz" and store.is_done(ctx.folder, level, lineage):
        rebuild_final_weights(ctx, lineage, level)


def rebuild_main_line(ctx: Context) -> None:
    """Rebuilds the rewind point (or its record) and the main line's masks that are damaged."""
    for problem in _problems(ctx, ("rewind_point",)):
        rebuild_rewind_point(ctx, problem)
    for problem in _problems(ctx, ("rewind_record",)):
        record_rewind_point(ctx, states.load(os.path.join(ctx.folder, "rewind_point.npz")))
        print(f"rebuilt {problem.path} (from rewind_point.npz)", flush=True)
    for problem in sorted(_problems(ctx, ("masks",)), key=lambda p: p.level):
        if problem.folder == MAIN:
            rebuild_masks(ctx, MAIN, problem.level)


def rebuild_rewind_point(ctx: Context, problem=None) -> None:
    k = ctx.config.pruning.rewind_step
    path = os.path.join(ctx.folder, "rewind_point.npz")
    if k == 0:
        state = rewind.capture(build_masked_model(ctx.config, ctx.splits, ctx.seed, strategy=ctx.strategy))
    else:
        state = replay(ctx, k)[0]
    record_path = os.path.join(ctx.folder, "rewind_point.json")
    if store.json_problem(record_path) is None:
        recorded = store.read_json(record_path).get("sha256")
        if recorded and store.state_fingerprint(state) != recorded:
            cause = (
                "although the run is deterministic: the data, the code or rewind_point.json changed"
                if ctx.config.run.deterministic
                else "it cannot be rebuilt without --deterministic"
            )
            raise RepairError(
                f"{path}: the replayed rewind point (step {k}) differs from the one the run recorded "
                f"({recorded}); {cause}: delete {ctx.folder} to train this replicate again"
            )
    trained_from = records.recorded_sha256(path)  # what the main line's finished levels trained from
    with tempfile.TemporaryDirectory(dir=ctx.folder, prefix=".tmp-repair-") as scratch:
        replayed = os.path.join(scratch, "rewind_point.npz")
        states.save(state, replayed)
        if trained_from and records.content_sha256(replayed) != trained_from:
            raise RepairError(
                f"{path}: the replayed rewind point (step {k}) is not the one the main line's levels trained "
                f"from ({trained_from}): delete {ctx.folder} to train this replicate again"
            )
        os.replace(replayed, path)
    if store.json_problem(record_path):
        record_rewind_point(ctx, state)
    print(f"rebuilt {path} ({'the initialization' if k == 0 else f'step {k} of the dense run, replayed'})", flush=True)


def _pruner(ctx: Context, model) -> PruneRewindCallback:
    imp = PruneRewindCallback(
        pruning_spec(ctx.config),
        rewind_step=ctx.config.pruning.rewind_step,
        rewind_optimizer=ctx.config.pruning.rewind_optimizer,
    )
    imp.set_model(model)
    return imp


def _masks_from_previous(ctx: Context, lineage: str, level: int) -> dict:
    """The masks level ``level`` of ``lineage`` trains with, computed again from level ``level - 1``."""
    model = build_masked_model(ctx.config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    if level == 0:
        return get_masks(model)  # dense
    if lineage != MAIN and level == 1:  # lr_rewind's first level uses the main line's level-1 masks
        return masks_of(ctx, MAIN, 1)
    set_masks(model, masks_of(ctx, lineage, level - 1))
    rewind.restore(model, final_weights_of(ctx, lineage, level - 1))
    return _pruner(ctx, model).next_masks()


def masks_of(ctx: Context, lineage: str, level: int) -> dict:
    """A level's masks, rebuilt first if damaged."""
    path = os.path.join(level_dir(ctx.folder, level, lineage), "masks.npz")
    if store.npz_problem(path):
        rebuild_masks(ctx, lineage, level)
    return atomic.read_npz(path)


def final_weights_of(ctx: Context, lineage: str, level: int) -> dict:
    """A finished level's trained weights, rebuilt first if missing or damaged."""
    path = os.path.join(level_dir(ctx.folder, level, lineage), "final_weights.npz")
    if store.npz_problem(path):
        rebuild_final_weights(ctx, lineage, level)
    return states.load(path)


def rebuild_masks(ctx: Context, lineage: str, level: int) -> None:
    folder = level_dir(ctx.folder, level, lineage)
    path = os.path.join(folder, "masks.npz")
    masks = _masks_from_previous(ctx, lineage, level)
    metrics = os.path.join(folder, "metrics.json")
    if store.metrics_problem(metrics) is None:
        expected = store.read_json(metrics).get("masks_sha256")
        if expected and fingerprint(masks) != expected:
            raise RepairError(
                f"{path}: rebuilt masks have fingerprint {fingerprint(masks)}, but {metrics} says level "
                f"{level} trained with {expected}; delete {metrics} (and the later levels of {lineage}) "
                "to train them again"
            )
    atomic.write_npz(path, masks)
    print(f"rebuilt {path} (fingerprint {fingerprint(masks)})", flush=True)


def rebuild_final_weights(ctx: Context, lineage: str, level: int) -> None:
    """Trains a finished level again to recover its trained weights; keeps them only if they reproduce the run."""
    folder = level_dir(ctx.folder, level, lineage)
    path = os.path.join(folder, "final_weights.npz")
    metrics_path = os.path.join(folder, "metrics.json")
    recorded = store.read_json(metrics_path)
    print(f"rebuilding {path}: training level {level} [{lineage}] again", flush=True)
    model = build_masked_model(ctx.config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    set_masks(model, masks_of(ctx, lineage, level))
    mode = ctx.config.pruning.rewind_optimizer
    if lineage != MAIN:  # learning-rate rewinding: the previous level's trained weights, the schedule rewound to k
        origin = lr_rewind_step(ctx.config)
        imp = _pruner(ctx, model)
        imp.check_model()
        previous = final_weights_of(ctx, MAIN, 0) if level == 1 else final_weights_of(ctx, lineage, level - 1)
        rewind.restore(model, previous)
        rewind.reset_optimizer(model.optimizer, origin, mode, dense_optimizer_at(ctx, origin))
    else:
        origin = ctx.config.pruning.rewind_step if level > 0 else 0
    if lineage == MAIN and level > 0:  # as the main line starts a level: the rewind point, optimizer rewound
        imp = _pruner(ctx, model)
        imp.check_model()
        imp.rewind_point = states.load(os.path.join(ctx.folder, "rewind_point.npz"))
        imp.optimizer_point = dense_optimizer_at(ctx, ctx.config.pruning.rewind_step)
        imp.rewind()
    quiet = dataclasses.replace(
        ctx,
        config=dataclasses.replace(
            ctx.config, run=dataclasses.replace(ctx.config.run, tensorboard=False, checkpoint_every=0)
        ),
    )
    with tempfile.TemporaryDirectory(dir=ctx.folder, prefix=".tmp-repair-") as scratch:
        scratch_ctx = dataclasses.replace(quiet, folder=scratch)
        trained_path = os.path.join(scratch, "final_weights.npz")
        metrics = train_level(
            scratch_ctx,
            model,
            level,
            lineage,
            origin,
            ctx.config.training.iterations - origin,
            extra_callbacks=[SaveTrainedState(trained_path)],
        )
        if metrics["curves"] != recorded.get("curves"):
            raise RepairError(
                f"{path} is missing and training level {level} again does not reproduce {metrics_path} "
                "(this run is not deterministic: pass --deterministic); delete that metrics.json and the "
                "later levels to train them again"
            )
        following = os.path.join(level_dir(ctx.folder, level + 1, lineage), "masks.npz")
        if store.npz_problem(following) is None:
            if fingerprint(_pruner(ctx, model).next_masks()) != fingerprint(atomic.read_npz(following)):
                raise RepairError(
                    f"{path} is missing and level {level} trained again prunes to other masks than "
                    f"{following}; delete level {level + 1} onward to train them again"
                )
        recorded_content = records.recorded_sha256(path)
        if recorded_content and records.content_sha256(trained_path) != recorded_content:
            raise RepairError(
                f"{path}: level {level} trained again gives the same curves but other weights than metrics.json "
                f"recorded ({recorded_content}); delete that metrics.json and the later levels to train them again"
            )
        os.replace(trained_path, path)
    print(f"rebuilt {path} (level {level} trained again: the same curves and masks)", flush=True)
