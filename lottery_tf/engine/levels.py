"""How one level is trained: the step counter, checkpoints, resume, the trained state, lineages.

Every level of every branch (and every copy an analysis trains) goes through
:func:`train_level`, which checkpoints every ``checkpoint_every`` steps and
resumes from the newest good checkpoint, so a killed run continues where it
stopped; a level whose ``metrics.json`` exists is never trained again. States
of the dense run at any step k come from :func:`replayed_state` (replayed
deterministically from the initialization and cached).

Every strategy runs this same code: training goes through Keras ``fit``, or
:func:`lottery_tf.engine.loop.fit` under ``multi_worker_mirrored``; there, every
worker computes everything, only the chief writes (the others run inside
:func:`lottery_tf.store.atomic.discarding_writes`), pruning decisions are the
chief's, and workers meet at a barrier after every level.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

from lottery_tf.core import rewind
from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import apply_masks, get_masks, layer_densities, mask_names, overall_density
from lottery_tf.core.pruning import PruningSpec, fingerprint, resolve_mask_name, satisfies_n_m
from lottery_tf.engine import loop
from lottery_tf.engine.config import ConfigError, ExperimentConfig, experiment_hash, non_default_identity
from lottery_tf.engine.data import Splits, StreamingSplits
from lottery_tf.engine.distribute import (
    barrier,
    broadcast_from_chief,
    is_multi_worker,
    per_worker_batches,
    split_per_replica,
)
from lottery_tf.engine.monitor import PeriodicEvaluation, summarize_curves
from lottery_tf.engine.recipe import build_masked_model, compiled_fast_path, evaluation_splits, training_batches
from lottery_tf.engine.run_dir import MAIN, is_done, level_dir
from lottery_tf.store import atomic, checkpoint, faults, records, states
from lottery_tf.store import reader as store


@dataclasses.dataclass
class Context:
    """What every level of one replicate needs."""

    config: ExperimentConfig
    splits: Splits
    replicate: int
    seed: int  # the replicate's seed: initialization and data order
    folder: str  # the replicate's folder
    strategy: object = None  # tf.distribute.Strategy; None = the default one
    data_fingerprint: str | None = None  # data.json's fingerprint: every record says which data it was trained on
    print_every_evaluation: bool = False  # a line per evaluation (a Ray worker's log, which the driver shows)

    def belongs_to(self, level: int | None = None, folder: str | None = None) -> dict:
        """What a record of this replicate (a level's, with ``level`` and ``folder``) says it belongs to."""
        return records.belongs_to(experiment_hash(self.config), self.data_fingerprint, self.replicate, level, folder)


def pruning_spec(config: ExperimentConfig) -> PruningSpec:
    p = config.pruning
    return PruningSpec(
        method=p.method,
        fraction=p.fraction,
        output_fraction=p.output_fraction or None,
        layer_fractions=dict(p.layer_fractions),
        block=tuple(p.block) or None,
        n_m=tuple(p.n_m) or None,
    )


def _step(model) -> int:
    """The training step (one batch = one step), whatever the optimizer's rewind."""
    return rewind.global_step(model.optimizer)


def fit(ctx: Context, model, batch_size: int, start_step: int, steps: int, callbacks=()) -> None:
    """Trains ``steps`` steps from data batch ``start_step``: Keras ``fit``, or
    :func:`lottery_tf.engine.loop.fit` for multi-worker strategies (which ``fit``
    cannot drive)."""
    splits = ctx.splits
    if is_multi_worker(ctx.strategy):

        def per_worker(context):
            if isinstance(splits, StreamingSplits):  # each worker decodes only its own share
                shares = splits.train_batches(
                    batch_size, ctx.seed, start_step, pipeline=(context.input_pipeline_id, context.num_input_pipelines)
                )
                return split_per_replica(shares, batch_size, context)
            return per_worker_batches(training_batches(splits, batch_size, ctx.seed, start_step), batch_size, context)

        loop.fit(model, ctx.strategy, per_worker, steps, callbacks)
    else:
        model.fit(
            training_batches(splits, batch_size, ctx.seed, start_step),
            epochs=1,
            steps_per_epoch=steps,
            verbose=0,
            shuffle=False,
            callbacks=list(callbacks),
        )


class _CheckpointSaver(keras.callbacks.Callback):
    def __init__(self, folder, every, monitor, origin, end, wall_before, owner, stateful=()):
        super().__init__()
        self.folder, self.every, self.monitor, self.stateful = folder, every, monitor, stateful
        self.origin, self.end, self.wall_before = origin, end, wall_before
        keys = ("experiment", "data", "replicate", "level", "branch", "start_step", "masks_sha256")
        self.owner = {k: owner[k] for k in keys if k in owner}

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if self.every and (step - self.origin) % self.every == 0 and step < self.end:
            state = {"monitor": self.monitor.state(), "wall_seconds": self.wall_before + time.time() - self.start}
            state.update({c.checkpoint_key: c.get_state() for c in self.stateful})  # e.g. DST's generator
            checkpoint.save(self.folder, self.model, step, state, self.owner)  # the chief's; dropped on other workers
            faults.crash_point("after_checkpoint")  # every worker passes here: a whole-cluster preemption


class SaveTrainedState(keras.callbacks.Callback):
    """Keeps the trained state (before the pruning callback rewinds it)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        apply_masks(self.model)  # Keras may have copied unmasked moving averages in (use_ema)
        states.save(rewind.capture(self.model), self.path)


def train_level(
    ctx: Context, model, level: int, branch: str, origin: int, total_steps: int, training=None, extra_callbacks=()
) -> dict:
    """Trains one level of one branch from step ``origin`` for ``total_steps``.

    Resumes from the newest good checkpoint in the level's folder, if any.

    Returns:
        The level's metrics (curves and summary).
    """
    config = ctx.config
    training = training or config.training
    folder = level_dir(ctx.folder, level, branch)
    checkpoints = os.path.join(folder, "checkpoints")
    density = overall_density(model)
    label = f"replicate {ctx.replicate} level {level:2d} [{branch}] density {100 * density:6.2f}%"
    hparams = {
        k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in non_default_identity(config).items()
    }
    hparams.update({"level": level, "branch": branch, "replicate": ctx.replicate, "density": density})
    monitor = PeriodicEvaluation(
        evaluation_splits(ctx.splits, training.batch_size),
        every=training.eval_every,
        total_steps=total_steps,
        log_dir=(
            store.tensorboard_dir(ctx.folder, level, branch)
            if config.run.tensorboard and atomic.writes_enabled()
            else None
        ),
        label=label,
        print_every=1 if ctx.print_every_evaluation else max(1, (total_steps // training.eval_every) // 5),
        jit_compile=compiled_fast_path(config, training, ctx.strategy)[1],
        origin=origin,
        hparams=hparams,
        batch_size=training.batch_size,
        strategy=ctx.strategy,
    )
    densities = layer_densities(model)
    masks = get_masks(model)
    masks_sha256 = fingerprint(masks)
    n_m = tuple(config.pruning.n_m)
    # Which weights have the N:M structure at this level, from the masks themselves: where it starts depends
    # on which weights survive (their kept count must fit among the N largest survivors of every group).
    structure = {"n_m_holds": {name: satisfies_n_m(mask, n_m) for name, mask in masks.items()}} if n_m else {}
    belongs = ctx.belongs_to()
    owner = {
        **{k: belongs[k] for k in ("experiment", "data") if k in belongs},
        "replicate": ctx.replicate,
        "level": level,
        "branch": branch,
        "start_step": origin,
        "steps": total_steps,
        "masks_sha256": masks_sha256,
        # A checkpoint's masks are the level's, unless a callback moves them while it trains (DST): then
        # the start's fingerprint above is what identifies the level.
        **(
            {}
            if any(getattr(c, "changes_masks", False) for c in extra_callbacks)
            else checkpoint.mask_variable_names(model)
        ),
    }
    wall_before = 0.0
    # Callbacks with their own state (``checkpoint_key``, ``get_state``, ``set_state``) are checkpointed with the model.
    stateful = [c for c in extra_callbacks if getattr(c, "checkpoint_key", None)]
    found = checkpoint.latest(checkpoints, owner=owner)
    if found:
        checkpoint.restore(model, found)
        monitor.restore(found.state["monitor"])
        wall_before = float(found.state.get("wall_seconds", 0.0))
        for callback in stateful:
            if callback.checkpoint_key in found.state:
                callback.set_state(found.state[callback.checkpoint_key])
        print(f"{label}: resuming from {found.path}", flush=True)
    start_step = _step(model)
    end = origin + total_steps
    saver = _CheckpointSaver(
        checkpoints, config.run.checkpoint_every, monitor, origin, end, wall_before, owner, stateful
    )
    start = time.time()
    fit(ctx, model, training.batch_size, start_step, end - start_step, [monitor, saver, *extra_callbacks])
    return {
        "level": level,
        "branch": branch,
        "replicate": ctx.replicate,
        "density": density,
        "layer_densities": densities,
        "masks_sha256": masks_sha256,
        "start_step": origin,
        "steps": total_steps,
        "wall_seconds": wall_before + time.time() - start,
        **structure,
        **summarize_curves(monitor.iterations, monitor.curves),
        "iterations": monitor.iterations,
        "curves": monitor.curves,
    }


def finish_level(ctx: Context, level: int, branch: str, metrics: dict) -> None:
    folder = level_dir(ctx.folder, level, branch)
    record = {**metrics, records.BELONGS: ctx.belongs_to(level, branch)}
    if atomic.writes_enabled():  # the files beside it as they are now (a worker that only reads has none)
        record[records.FILES] = records.files_of(folder)
        rewind_point = os.path.join(ctx.folder, "rewind_point.npz")
        if branch == MAIN and os.path.isfile(rewind_point):  # what every main level after level 0 starts from
            record[records.REWIND_POINT] = records.content_sha256(rewind_point)
    atomic.write_json(os.path.join(folder, "metrics.json"), records.seal(record))
    checkpoint.remove_all(os.path.join(folder, "checkpoints"))
    print(
        f"replicate {ctx.replicate} level {level:2d} [{branch}] done: density {100 * metrics['density']:.2f}%  "
        f"final test acc {metrics['final_test_accuracy']:.4f}  early stop at "
        f"{metrics['early_stop_iteration']} (test acc {metrics['early_stop_test_accuracy']:.4f})  "
        f"{metrics['wall_seconds']:.0f}s  masks {metrics['masks_sha256']}",
        flush=True,
    )
    holds = metrics.get("n_m_holds")
    if holds:
        n, m = ctx.config.pruning.n_m
        have = [name for name, ok in holds.items() if ok]
        lacking = [name for name, ok in holds.items() if not ok]
        print(
            f"replicate {ctx.replicate} level {level:2d} [{branch}] {n}:{m} holds for "
            f"{', '.join(have) or 'no weight yet'}"
            + (f"; not yet for {', '.join(lacking)}" if have and lacking else ""),
            flush=True,
        )
        if lacking and branch == MAIN and level == ctx.config.pruning.levels:
            print(
                f"warning: {n}:{m} never held for {', '.join(lacking)} by level {level}, the last (--levels): "
                f"the kept weights did not fit among the {n} largest survivors of every group of {m}; add levels",
                file=sys.stderr,
                flush=True,
            )
    barrier(ctx.strategy)  # what the chief wrote is on disk before any worker goes on


def train_lineage(
    ctx: Context, model, imp: PruneRewindCallback, name: str, levels, origin_of, info=None, load_level=None
) -> None:
    """Trains ``levels`` of one lineage with one model; ``imp`` prunes and rewinds between them.

    Each level's masks are written before it trains, and the next level's masks
    (the pruning decision) before the level is declared done, so a crash in
    between loses nothing. A finished level's files are never written again:
    when the next level is already done (this level's metrics were missing or
    damaged), its masks stay as they are, and ``load_level(level)`` sets up
    the model for a level that does not follow the one just trained.
    """
    config = ctx.config
    previous = None
    for level in levels:
        if previous is not None and level != previous + 1:
            load_level(level)
        folder = level_dir(ctx.folder, level, name)
        if info is not None:
            atomic.write_json(os.path.join(folder, "branch.json"), {**info, "level": level})
        atomic.write_npz(os.path.join(folder, "masks.npz"), get_masks(model))
        origin = origin_of(level)
        metrics = train_level(
            ctx,
            model,
            level,
            name,
            origin,
            config.training.iterations - origin,
            extra_callbacks=[SaveTrainedState(os.path.join(folder, "final_weights.npz")), imp],
        )
        if imp.level_trained:
            imp.prune_and_rewind()  # the next level's masks, decided now so they are written before "done"
        if not is_done(ctx.folder, level + 1, name):
            following = os.path.join(level_dir(ctx.folder, level + 1, name), "masks.npz")
            atomic.write_npz(following, get_masks(model))
            if atomic.writes_enabled():  # the next level's masks carry this level's word until that level ends
                metrics = {**metrics, records.NEXT_MASKS: records.content_sha256(following)}
        finish_level(ctx, level, name, metrics)
        previous = level


def todo(ctx: Context, name: str, levels) -> list[int]:
    """Levels of a lineage still to train (a damaged ``metrics.json`` was named by the store check's line)."""
    return [level for level in levels if not is_done(ctx.folder, level, name)]


def agreement(ctx: Context):
    return functools.partial(broadcast_from_chief, ctx.strategy) if is_multi_worker(ctx.strategy) else None


def check_layer_names(config: ExperimentConfig, model) -> None:
    """Per-layer fractions must name masked weights of the model (or layers with one mask).

    Raises:
        ConfigError: Naming the flag and the valid names.
    """
    names = mask_names(model)
    resolved = {}
    for name, _ in config.pruning.layer_fractions:
        try:
            mask = resolve_mask_name(name, names, "layer_pruning_fractions")
        except ValueError as error:
            raise ConfigError("layer_pruning_fractions", str(error).split(": ", 1)[1].rstrip(".")) from None
        if mask in resolved:
            raise ConfigError(
                "layer_pruning_fractions",
                f"{resolved[mask]} and {name} both name {mask}; give each weight one fraction",
            )
        resolved[mask] = name


def replay(ctx: Context, step: int) -> tuple[dict, list]:
    """The dense run's non-mask state and optimizer variables at ``step``, replayed from the initialization and cached."""
    path = os.path.join(ctx.folder, "rewind_points", f"step_{step}.npz")
    optimizer_path = os.path.join(ctx.folder, "rewind_points", f"step_{step}_optimizer.npz")
    if store.npz_problem(path) is None and store.npz_problem(optimizer_path) is None:
        return states.load(path), states.load_optimizer(optimizer_path)
    model = build_masked_model(ctx.config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    if step:
        fit(ctx, model, ctx.config.training.batch_size, 0, step)
    state, values = rewind.capture(model), rewind.optimizer_values(model.optimizer)
    states.save(state, path)
    states.save_optimizer(values, optimizer_path)
    record_cache(ctx, path, step)
    record_cache(ctx, optimizer_path, step)
    return state, values


def record_cache(ctx: Context, path: str, step: int) -> None:
    """Writes the record beside a replayed state: its content, whose it is, its step (checked before it is used)."""
    if atomic.writes_enabled():
        atomic.write_json(records.cache_record(path), records.cache_record_of(path, ctx.belongs_to(), step))


def replayed_state(ctx: Context, step: int) -> dict:
    """The dense run's non-mask state at ``step``."""
    main_path = os.path.join(ctx.folder, "rewind_point.npz")
    if step == ctx.config.pruning.rewind_step and os.path.exists(main_path):
        return states.load(main_path)
    path = os.path.join(ctx.folder, "rewind_points", f"step_{step}.npz")
    if store.npz_problem(path) is None:
        return states.load(path)
    return replay(ctx, step)[0]


def replayed_state_file(ctx: Context, step: int) -> str:
    """The run file (relative to the replicate folder) :func:`replayed_state` reads the state at ``step`` from."""
    if step == ctx.config.pruning.rewind_step and os.path.exists(os.path.join(ctx.folder, "rewind_point.npz")):
        return "rewind_point.npz"
    return os.path.join("rewind_points", f"step_{step}.npz")


def dense_optimizer_at(ctx: Context, step: int):
    """For ``--rewind_optimizer=restore``: the dense run's optimizer variables at ``step`` (None otherwise, or at 0)."""
    if ctx.config.pruning.rewind_optimizer != "restore" or not step:
        return None
    main_path = os.path.join(ctx.folder, "rewind_optimizer.npz")
    if step == ctx.config.pruning.rewind_step and store.npz_problem(main_path) is None:
        return states.load_optimizer(main_path)
    return replay(ctx, step)[1]
