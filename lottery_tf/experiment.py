"""The experiment: IMP main line per replicate, then branches (controls) at chosen levels.

Files go where :mod:`lottery_tf.run_dir` says; the recipe (model, optimizer,
loss, input order) is :mod:`lottery_tf.recipe`. Every level of every branch is
trained by :func:`train_level`, which checkpoints every ``checkpoint_every``
steps and resumes from the newest good checkpoint, so a killed run continues
where it stopped; a level whose ``metrics.json`` exists is never trained again.

Branches reuse the main line's files and never retrain it:

* ``reinit``: the level's mask, a fresh initialization (same distribution, a
  derived seed), trained from the ticket's start step k for the ticket's
  length (the learning-rate schedule and data order at k), so it is compared
  with the ticket on equal terms.
* ``random_prune``: a random mask with the level's per-layer density
  (``layerwise``) or overall density (``global``), started from the main line's
  rewind point: only the mask differs from the ticket.
* ``rewind``: the level's mask, rewound to step k of the dense run (weights,
  learning-rate schedule and data order at k); k = 0 is reset to
  initialization. States at k are replayed deterministically from the
  initialization and cached.
* ``lr_rewind`` (Renda et al. 2020): its own lineage. Level 1 prunes the dense
  network's trained weights (the main line's level-1 mask) and keeps them;
  level L prunes lr_rewind level L-1's trained weights. Each level rewinds only
  the learning-rate schedule (and data order) to k. Asking for level L trains
  every lineage level up to L.
* ``lr_rewind_oneshot``: the main line's level L-1 trained weights under its
  level-L mask, schedule rewound to k (one step of LR rewinding off the
  weight-rewinding lineage).
* ``retrain``: the ticket (mask + rewind point) trained with other settings.

The optimizer is rewound as ``--rewind_optimizer`` says
(:func:`lottery_tf.rewind.reset_optimizer`). Each lineage a process trains is
locked (:mod:`lottery_tf.locks`), so several processes can share a run folder.

Every strategy runs this same code: training goes through Keras ``fit``, or
:func:`lottery_tf.loop.fit` under ``multi_worker_mirrored``; there, every
worker computes everything, only the chief writes (the others run inside
:func:`lottery_tf.atomic.discarding_writes`), pruning decisions are the
chief's, and workers meet at a barrier after every level.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time

import tensorflow as tf

from lottery_tf import atomic, checkpoint, faults, locks, loop, report, rewind, run_dir
from lottery_tf.callbacks import PruneRewindCallback
from lottery_tf.config import ConfigError, StrategyError, ExperimentConfig, derived_seed, non_default_identity, replicate_seed
from lottery_tf.data import Splits, StreamingSplits, get_splits
from lottery_tf.data.registry import splits_fingerprint
from lottery_tf.distribute import (barrier, broadcast_from_chief, is_chief, is_multi_worker, make_strategy,
                                   per_worker_batches, split_cpu, split_per_replica, worker_label)
from lottery_tf.keras_compat import keras
from lottery_tf.masking import apply_masks, get_masks, layer_densities, mask_names, overall_density, set_masks
from lottery_tf.monitor import PeriodicEvaluation, summarize_curves
from lottery_tf.pruning import PruningSpec, fingerprint, random_masks_like, resolve_mask_name
from lottery_tf.recipe import (build_masked_model, compiled_fast_path, evaluation_splits, make_loss,  # noqa: F401
                               train_pipeline, training_batches)
from lottery_tf.optimizers import make_optimizer  # noqa: F401  (re-exported for callers of experiment)
from lottery_tf.run_dir import MAIN, is_done, level_dir

REINIT = "reinit"


@dataclasses.dataclass
class Context:
    """What every level of one replicate needs."""

    config: ExperimentConfig
    splits: Splits
    replicate: int
    seed: int  # the replicate's seed: initialization and data order
    folder: str  # the replicate's folder
    strategy: object = None  # tf.distribute.Strategy; None = the default one


def pruning_spec(config: ExperimentConfig) -> PruningSpec:
    p = config.pruning
    return PruningSpec(
        method=p.method,
        fraction=p.fraction,
        output_fraction=p.output_fraction or None,
        layer_fractions=dict(p.layer_fractions),
    )


def _step(model) -> int:
    """The training step (one batch = one step), whatever the optimizer's rewind."""
    return rewind.global_step(model.optimizer)


def _fit(ctx: Context, model, batch_size: int, start_step: int, steps: int, callbacks=()) -> None:
    """Trains ``steps`` steps from data batch ``start_step``: Keras ``fit``, or
    :func:`lottery_tf.loop.fit` for multi-worker strategies (which ``fit``
    cannot drive)."""
    splits = ctx.splits
    if is_multi_worker(ctx.strategy):
        def per_worker(context):
            if isinstance(splits, StreamingSplits):  # each worker decodes only its own share
                shares = splits.train_batches(batch_size, ctx.seed, start_step,
                                              pipeline=(context.input_pipeline_id, context.num_input_pipelines))
                return split_per_replica(shares, batch_size, context)
            return per_worker_batches(training_batches(splits, batch_size, ctx.seed, start_step), batch_size, context)

        loop.fit(model, ctx.strategy, per_worker, steps, callbacks)
    else:
        model.fit(training_batches(splits, batch_size, ctx.seed, start_step), epochs=1, steps_per_epoch=steps,
                  verbose=0, shuffle=False, callbacks=list(callbacks))


class _CheckpointSaver(keras.callbacks.Callback):
    def __init__(self, folder, every, monitor, origin, end, wall_before):
        super().__init__()
        self.folder, self.every, self.monitor = folder, every, monitor
        self.origin, self.end, self.wall_before = origin, end, wall_before

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if self.every and (step - self.origin) % self.every == 0 and step < self.end:
            state = {"monitor": self.monitor.state(), "wall_seconds": self.wall_before + time.time() - self.start}
            checkpoint.save(self.folder, self.model, step, state)  # the chief's; dropped on other workers
            faults.crash_point("after_checkpoint")  # every worker passes here: a whole-cluster preemption


class _SaveTrainedState(keras.callbacks.Callback):
    """Keeps the trained state (before the pruning callback rewinds it)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None):
        apply_masks(self.model)  # Keras may have copied unmasked moving averages in (use_ema)
        rewind.save(rewind.capture(self.model), self.path)


def train_level(ctx: Context, model, level: int, branch: str, origin: int, total_steps: int,
                training=None, extra_callbacks=()) -> dict:
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
    hparams = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in non_default_identity(config).items()}
    hparams.update({"level": level, "branch": branch, "replicate": ctx.replicate, "density": density})
    monitor = PeriodicEvaluation(
        evaluation_splits(ctx.splits, training.batch_size),
        every=training.eval_every,
        total_steps=total_steps,
        log_dir=(os.path.join(ctx.folder, "tensorboard", f"level_{level:02d}_{branch}")
                 if config.run.tensorboard and atomic.writes_enabled() else None),
        label=label,
        print_every=max(1, (total_steps // training.eval_every) // 5),
        jit_compile=compiled_fast_path(config, training, ctx.strategy)[1],
        origin=origin,
        hparams=hparams,
        batch_size=training.batch_size,
        strategy=ctx.strategy,
    )
    densities = layer_densities(model)
    masks_sha256 = fingerprint(get_masks(model))
    wall_before = 0.0
    found = checkpoint.latest(checkpoints)
    if found:
        checkpoint.restore(model, found)
        monitor.restore(found.state["monitor"])
        wall_before = float(found.state.get("wall_seconds", 0.0))
        print(f"{label}: resuming from {found.path}", flush=True)
    start_step = _step(model)
    end = origin + total_steps
    saver = _CheckpointSaver(checkpoints, config.run.checkpoint_every, monitor, origin, end, wall_before)
    start = time.time()
    _fit(ctx, model, training.batch_size, start_step, end - start_step, [monitor, saver, *extra_callbacks])
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
        **summarize_curves(monitor.iterations, monitor.curves),
        "iterations": monitor.iterations,
        "curves": monitor.curves,
    }


def _finish_level(ctx: Context, level: int, branch: str, metrics: dict) -> None:
    folder = level_dir(ctx.folder, level, branch)
    atomic.write_json(os.path.join(folder, "metrics.json"), metrics)
    checkpoint.remove_all(os.path.join(folder, "checkpoints"))
    print(
        f"replicate {ctx.replicate} level {level:2d} [{branch}] done: density {100 * metrics['density']:.2f}%  "
        f"final test acc {metrics['final_test_accuracy']:.4f}  early stop at "
        f"{metrics['early_stop_iteration']} (test acc {metrics['early_stop_test_accuracy']:.4f})  "
        f"{metrics['wall_seconds']:.0f}s  masks {metrics['masks_sha256']}",
        flush=True,
    )
    barrier(ctx.strategy)  # what the chief wrote is on disk before any worker goes on


def _train_lineage(ctx: Context, model, imp: PruneRewindCallback, name: str, levels, origin_of, info=None,
                   load_level=None) -> None:
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
            ctx, model, level, name, origin, config.training.iterations - origin,
            extra_callbacks=[_SaveTrainedState(os.path.join(folder, "final_weights.npz")), imp],
        )
        if not is_done(ctx.folder, level + 1, name):
            atomic.write_npz(os.path.join(level_dir(ctx.folder, level + 1, name), "masks.npz"), get_masks(model))
        _finish_level(ctx, level, name, metrics)
        previous = level


def _todo(ctx: Context, name: str, levels) -> list[int]:
    """Levels of a lineage still to train; a damaged ``metrics.json`` is named and its level trained again."""
    todo = []
    for level in levels:
        if is_done(ctx.folder, level, name):
            continue
        problem = run_dir.damaged_metrics(ctx.folder, level, name)
        if problem:
            print(f"warning: {problem}; level {level} [{name}] is trained again (finished levels are not touched)",
                  file=sys.stderr, flush=True)
        todo.append(level)
    return todo


def _agreement(ctx: Context):
    return functools.partial(broadcast_from_chief, ctx.strategy) if is_multi_worker(ctx.strategy) else None


def run_main_line(ctx: Context) -> bool:
    """Trains main levels 0..levels not yet done. Returns whether it trained any."""
    config, p = ctx.config, ctx.config.pruning

    if all(is_done(ctx.folder, level, MAIN) for level in range(p.levels + 1)):
        return False
    with locks.hold(ctx.folder, MAIN, config.run.wait_for_lock):
        levels = _todo(ctx, MAIN, range(p.levels + 1))
        if not levels:  # another process finished it while we waited
            return False
        first = levels[0]
        rewind_path = os.path.join(ctx.folder, "rewind_point.npz")
        optimizer_path = os.path.join(ctx.folder, "rewind_optimizer.npz")
        model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
        check_layer_names(config, model)

        def on_capture(state):
            rewind.save(state, rewind_path)
            if imp.optimizer_point is not None:
                rewind.save_optimizer(imp.optimizer_point, optimizer_path)

        imp = PruneRewindCallback(pruning_spec(config), rewind_step=p.rewind_step, on_capture=on_capture,
                                  rewind_optimizer=p.rewind_optimizer, agree_on_masks=_agreement(ctx))
        imp.set_model(model)
        if os.path.exists(rewind_path):
            imp.rewind_point = rewind.load(rewind_path)
            imp.optimizer_point = _dense_optimizer_at(ctx, p.rewind_step)

        def load_level(level):
            if imp.rewind_point is None:
                raise FileNotFoundError(f"{rewind_path} is missing; the run cannot continue at level {level}")
            # Masks of this level were written when the previous level ended.
            set_masks(model, atomic.read_npz(os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz")))
            imp.level = level
            imp.rewind()

        if first > 0:
            load_level(first)
        _train_lineage(ctx, model, imp, MAIN, levels, lambda level: p.rewind_step if level > 0 else 0,
                       load_level=load_level)
    return True


def lr_rewind_step(config: ExperimentConfig) -> int:
    """The step learning-rate rewinding rewinds the schedule to."""
    b = config.branches
    return b.rewind_step if b.rewind_step >= 0 else config.pruning.rewind_step


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

    if all(is_done(ctx.folder, level, name) for level in range(1, last_level + 1)):
        return False
    with locks.hold(ctx.folder, name, config.run.wait_for_lock):
        levels = _todo(ctx, name, range(1, last_level + 1))
        if not levels:
            return False
        model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
        mode = config.pruning.rewind_optimizer
        imp = PruneRewindCallback(pruning_spec(config), rewind_step=k, rewind_optimizer=mode, rewind_weights=False,
                                  agree_on_masks=_agreement(ctx))
        imp.set_model(model)
        imp.optimizer_point = _dense_optimizer_at(ctx, k)

        def load_level(level):
            if level == 1:
                masks_path = os.path.join(level_dir(ctx.folder, 1, MAIN), "masks.npz")
                weights_path = os.path.join(level_dir(ctx.folder, 0, MAIN), "final_weights.npz")
            else:
                masks_path = os.path.join(level_dir(ctx.folder, level, name), "masks.npz")
                weights_path = os.path.join(level_dir(ctx.folder, level - 1, name), "final_weights.npz")
            set_masks(model, atomic.read_npz(masks_path))
            rewind.restore(model, rewind.load(weights_path))
            imp.level = level
            rewind.reset_optimizer(model.optimizer, k, mode, imp.optimizer_point)

        load_level(levels[0])
        info = {"type": "lr_rewind", "start_step": k, "seed": ctx.seed, "rewind_optimizer": mode,
                "starts_from": "the previous lr_rewind level's trained weights (level 1: main level 0's)"}
        _train_lineage(ctx, model, imp, name, levels, lambda level: k, info, load_level=load_level)
    return True


def check_layer_names(config: ExperimentConfig, model) -> None:
    """Per-layer fractions must name masked weights of the model (or layers with one mask).

    Raises:
        ConfigError: Naming the flag and the valid names.
    """
    names = mask_names(model)
    for name, _ in config.pruning.layer_fractions:
        try:
            resolve_mask_name(name, names, "layer_pruning_fractions")
        except ValueError as error:
            raise ConfigError("layer_pruning_fractions", str(error).split(": ", 1)[1].rstrip(".")) from None


# -- branches ---------------------------------------------------------------------


def branch_folder_name(config: ExperimentConfig, name: str) -> str:
    """The folder name of a branch: its type plus what distinguishes it."""
    b = config.branches
    if name == "random_prune":
        return f"random_prune_{b.random_prune_scope}"
    if name == "rewind":
        return f"rewind_{b.rewind_step}"
    if name in ("lr_rewind", "lr_rewind_oneshot"):
        return f"{name}_{lr_rewind_step(config)}"
    if name == "retrain":
        overrides = json.dumps(_retrain_overrides(config), sort_keys=True)
        return "retrain_" + hashlib.sha256(overrides.encode()).hexdigest()[:8]
    return name


def _retrain_overrides(config: ExperimentConfig) -> dict:
    b = config.branches
    return {k: v for k, v in (("optimizer", b.optimizer), ("learning_rate", b.learning_rate),
                              ("iterations", b.iterations), ("batch_size", b.batch_size)) if v}


def _replay(ctx: Context, step: int) -> tuple[dict, list]:
    """The dense run's non-mask state and optimizer variables at ``step``, replayed from the initialization and cached."""
    path = os.path.join(ctx.folder, "rewind_points", f"step_{step}.npz")
    optimizer_path = os.path.join(ctx.folder, "rewind_points", f"step_{step}_optimizer.npz")
    if os.path.exists(path) and os.path.exists(optimizer_path):
        return rewind.load(path), rewind.load_optimizer(optimizer_path)
    model = build_masked_model(ctx.config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    if step:
        _fit(ctx, model, ctx.config.training.batch_size, 0, step)
    state, values = rewind.capture(model), rewind.optimizer_values(model.optimizer)
    rewind.save(state, path)
    rewind.save_optimizer(values, optimizer_path)
    return state, values


def _replayed_state(ctx: Context, step: int) -> dict:
    """The dense run's non-mask state at ``step``."""
    main_path = os.path.join(ctx.folder, "rewind_point.npz")
    if step == ctx.config.pruning.rewind_step and os.path.exists(main_path):
        return rewind.load(main_path)
    path = os.path.join(ctx.folder, "rewind_points", f"step_{step}.npz")
    if os.path.exists(path):
        return rewind.load(path)
    return _replay(ctx, step)[0]


def _dense_optimizer_at(ctx: Context, step: int):
    """For ``--rewind_optimizer=restore``: the dense run's optimizer variables at ``step`` (None otherwise, or at 0)."""
    if ctx.config.pruning.rewind_optimizer != "restore" or not step:
        return None
    main_path = os.path.join(ctx.folder, "rewind_optimizer.npz")
    if step == ctx.config.pruning.rewind_step and os.path.exists(main_path):
        return rewind.load_optimizer(main_path)
    return _replay(ctx, step)[1]


@dataclasses.dataclass
class BranchStart:
    """A branch's model at its first step, and how it trains from there."""

    name: str  # folder name
    model: object
    origin: int  # the training step it starts at (learning-rate schedule, data order)
    training: object  # TrainingConfig
    info: dict  # written to branch.json


def prepare_branch(ctx: Context, name: str, level: int) -> BranchStart:
    """Builds the model a branch starts from (mask, weights, optimizer at its start step).

    Raises:
        ValueError: For an unknown branch type.
    """
    config = ctx.config
    masks = atomic.read_npz(os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz"))
    k = config.pruning.rewind_step
    mode = config.pruning.rewind_optimizer
    training = config.training
    seed = ctx.seed
    state = None  # None = keep the fresh initialization
    if name == REINIT:
        # Same start step and length as the ticket it controls (open_lth starts it at k too).
        seed, origin = derived_seed(ctx.seed, "reinit", level), k
    elif name == "random_prune":
        masks = random_masks_like(masks, derived_seed(ctx.seed, "random_prune", level),
                                  per_layer=config.branches.random_prune_scope == "layerwise")
        state, origin = rewind.load(os.path.join(ctx.folder, "rewind_point.npz")), k
    elif name == "rewind":
        origin = config.branches.rewind_step
        state = _replayed_state(ctx, origin)
    elif name == "lr_rewind_oneshot":
        origin = lr_rewind_step(config)
        state = rewind.load(os.path.join(level_dir(ctx.folder, level - 1, MAIN), "final_weights.npz"))
    elif name == "retrain":
        training = dataclasses.replace(training, **_retrain_overrides(config))
        state, origin = rewind.load(os.path.join(ctx.folder, "rewind_point.npz")), k
    else:
        raise ValueError(f"unknown branch {name!r}")
    # "restore" needs the dense run's optimizer state, which exists only for the
    # same weights' history and the same optimizer: reinit and a retrain with
    # another optimizer or batch size start fresh instead.
    if mode == "restore" and (name == REINIT or (name == "retrain" and (config.branches.optimizer or config.branches.batch_size))):
        mode = "fresh"
    model = build_masked_model(config, ctx.splits, seed, training, ctx.strategy)
    set_masks(model, masks)
    if state is not None:
        rewind.restore(model, state)
    rewind.reset_optimizer(model.optimizer, origin, mode, _dense_optimizer_at(ctx, origin) if mode == "restore" else None)
    info = {"type": name, "level": level, "start_step": origin, "seed": seed, "rewind_optimizer": mode,
            "training": dataclasses.asdict(training), "random_prune_scope": config.branches.random_prune_scope}
    return BranchStart(branch_folder_name(config, name), model, origin, training, info)


def run_branch(ctx: Context, name: str, level: int) -> bool:
    """Runs one branch at one level unless done. Returns whether it trained."""
    folder_name = branch_folder_name(ctx.config, name)
    if is_done(ctx.folder, level, folder_name):
        return False
    with locks.hold(ctx.folder, f"{folder_name}_level_{level:02d}", ctx.config.run.wait_for_lock):
        if not _todo(ctx, folder_name, [level]):
            return False
        start = prepare_branch(ctx, name, level)
        folder = level_dir(ctx.folder, level, start.name)
        atomic.write_json(os.path.join(folder, "branch.json"), start.info)
        atomic.write_npz(os.path.join(folder, "masks.npz"), get_masks(start.model))
        metrics = train_level(ctx, start.model, level, start.name, start.origin,
                              start.training.iterations - start.origin, start.training)
        _finish_level(ctx, level, start.name, metrics)
    return True


def check_branch_inputs(ctx: Context) -> None:
    """Fails before training if a branch needs a main-line file that is missing.

    Raises:
        FileNotFoundError: Naming the level and the file.
    """
    b = ctx.config.branches
    for name in b.names:
        for level in b.levels:
            needed = [os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz")]
            if name in ("random_prune", "retrain"):
                needed.append(os.path.join(ctx.folder, "rewind_point.npz"))
            if name == "lr_rewind_oneshot":
                needed.append(os.path.join(level_dir(ctx.folder, level - 1, MAIN), "final_weights.npz"))
            if name == "lr_rewind":
                needed = [os.path.join(level_dir(ctx.folder, 1, MAIN), "masks.npz"),
                          os.path.join(level_dir(ctx.folder, 0, MAIN), "final_weights.npz")]
            for path in needed:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"--branch_levels: branch {name} at level {level} needs {path}, which the main line has not written")


def run_branches(ctx: Context) -> bool:
    """Every requested branch at every requested level. Returns whether any trained."""
    b = ctx.config.branches
    trained = False
    for name in b.names:
        if name == "lr_rewind":
            trained |= run_lr_rewind_lineage(ctx, max(b.levels))
            continue
        for level in b.levels:
            trained |= run_branch(ctx, name, level)
    return trained


def replicates(config: ExperimentConfig) -> list[int]:
    return [config.run.replicate] if config.run.replicate >= 0 else list(range(config.run.replicates))


def run(config: ExperimentConfig) -> list[dict]:
    """Runs (or continues) the experiment and writes its summary files.

    Returns:
        The summary entries (mean and spread over replicates per level and branch).
    """
    split_cpu(config.run.cpu_devices)
    if config.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.run.strategy, config.run.tpu)
    check_batch_sizes(config, strategy)
    if config.run.strategy != "default":
        devices = ", ".join(getattr(strategy.extended, "worker_devices", ()) or ())
        print(f"strategy: {config.run.strategy}, {strategy.num_replicas_in_sync} replica(s): {devices}", flush=True)
    chief = is_chief(strategy)
    if worker_label(strategy):
        role = "the chief: writes the run's files" if chief else "not the chief: reads the run's files, writes none"
        print(f"{worker_label(strategy)}: {role}", flush=True)
    try:
        with atomic.discarding_writes(not chief):
            trained = _run_replicates(config, strategy)
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as error:
        if not is_multi_worker(strategy):
            raise
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise StrategyError(
            f"--strategy=multi_worker_mirrored: a worker stopped ({first.strip()}); restart every worker "
            "with the same command: the run resumes from the chief's last checkpoint"
        ) from None
    if not chief:
        print("done; the chief writes the results", flush=True)
        return []
    folder = run_dir.experiment_dir(config)
    entries = report.aggregate([folder])
    report.write_tables(folder, entries, prefix="summary")
    print(report.format_markdown(entries), flush=True)
    if not trained:
        print(f"nothing to do: every requested level is done. Results: {folder}", flush=True)
    else:
        print(f"results: {folder}", flush=True)
    return entries


def check_model(config: ExperimentConfig, splits) -> None:
    """Settings that need the model (layers to exclude, per-layer fractions), checked before anything is written.

    Raises:
        ConfigError: Naming the flag and the valid names.
    """
    from lottery_tf.models import build_model
    from lottery_tf.masking import wrap_model

    try:
        model = wrap_model(build_model(config.model, splits.input_shape, splits.num_classes),
                           exclude=config.pruning.exclude_layers)
    except ValueError as error:
        raise ConfigError("exclude_layers", str(error).rstrip(".")) from None
    try:
        mask_names(model)
    except ValueError:
        raise ConfigError("exclude_layers", f"{','.join(config.pruning.exclude_layers)} leaves nothing to prune in "
                          f"{config.model.name}; exclude fewer layers") from None
    check_layer_names(config, model)


def check_data(config: ExperimentConfig, record: dict) -> bool:
    """The data (``record``: source, fingerprint, sizes) must be what the run was trained on.

    Returns:
        Whether the run has no data record yet (``data.json`` is to be written).

    Raises:
        ConfigError: Naming both sources, if the run's data fingerprint differs.
    """
    path = os.path.join(run_dir.experiment_dir(config), "data.json")
    if not os.path.exists(path):
        return True
    previous = run_dir.read_json(path, "data record")
    if previous.get("fingerprint") != record["fingerprint"]:
        raise ConfigError(
            "data_dir",
            f"this run was trained on {previous.get('source')} (data fingerprint {previous.get('fingerprint')}), "
            f"but the data found now is {record['source']} (fingerprint {record['fingerprint']}); point "
            "--data_dir or --tfds_data_dir at the run's data, or use another --output_dir",
        )
    return False


def _run_replicates(config: ExperimentConfig, strategy) -> bool:
    splits = get_splits(config.data)
    check_model(config, splits)
    record = {"source": splits.source, "fingerprint": splits_fingerprint(splits), "sizes": list(splits.sizes())}
    new_data_record = check_data(config, record)
    run_dir.prepare(config)  # only now: a command whose data fails writes nothing
    if new_data_record:
        atomic.write_json(os.path.join(run_dir.experiment_dir(config), "data.json"), record)
    train, val, test = splits.sizes()
    print(f"data: {splits.source}  train {train}  val {val}  test {test}  fingerprint {record['fingerprint']}", flush=True)
    trained = False
    for r in replicates(config):
        ctx = Context(config, splits, r, replicate_seed(config.seed, r), run_dir.replicate_dir(config, r), strategy)
        trained |= run_main_line(ctx)
        check_branch_inputs(ctx)
        trained |= run_branches(ctx)
    return trained


def check_batch_sizes(config: ExperimentConfig, strategy) -> None:
    """Every global batch size must split evenly across the replicas.

    Raises:
        ConfigError: Naming the flag.
    """
    replicas = strategy.num_replicas_in_sync
    for flag, size in (("batch_size", config.training.batch_size), ("branch_batch_size", config.branches.batch_size)):
        if size and size % replicas:
            raise ConfigError(flag, f"{size} does not split evenly across the {replicas} replicas of --strategy={config.run.strategy}")


def describe(config: ExperimentConfig) -> str:
    """One line naming the experiment, for logs."""
    return (
        f"{config.model.name} on {config.data.name}, levels 0-{config.pruning.levels}, "
        f"replicates {replicates(config)}, seed {config.seed}"
    )
