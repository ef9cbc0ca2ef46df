"""The experiment: IMP main line per replicate, then branches (controls) at chosen levels.

Files go where :mod:`lottery_tf.run_dir` says. Every level of every branch is
trained by :func:`train_level`, which checkpoints every ``checkpoint_every``
steps and resumes from the newest good checkpoint, so a killed run continues
where it stopped; a level whose ``metrics.json`` exists is never trained again.

Branches reuse the main line's files and never retrain it:

* ``reinit``: the level's mask, a fresh initialization (same distribution, a
  derived seed), trained from step 0.
* ``random_prune``: a random mask with the level's per-layer density
  (``layerwise``) or overall density (``global``), started from the main line's
  rewind point: only the mask differs from the ticket.
* ``rewind``: the level's mask, rewound to step k of the dense run (weights,
  learning-rate schedule and data order at k); k = 0 is reset to
  initialization. States at k are replayed deterministically from the
  initialization and cached.
* ``lr_rewind`` (Renda et al. 2020): the previous level's trained weights under
  this level's mask, optimizer reset, learning-rate schedule (and data order)
  rewound to k.
* ``retrain``: the ticket (mask + rewind point) trained with other settings.

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
import time

import tensorflow as tf

from lottery_tf import atomic, checkpoint, faults, loop, report, rewind, run_dir
from lottery_tf.callbacks import PruneRewindCallback
from lottery_tf.config import ConfigError, StrategyError, ExperimentConfig, derived_seed, non_default_identity, replicate_seed
from lottery_tf.data import Splits, StreamingSplits, get_splits
from lottery_tf.distribute import (barrier, broadcast_from_chief, is_chief, is_multi_worker, make_strategy,
                                   per_worker_batches, split_cpu, split_per_replica, worker_label)
from lottery_tf.keras_compat import keras
from lottery_tf.masking import get_masks, layer_densities, mask_names, overall_density, set_masks, wrap_model
from lottery_tf.models import build_model
from lottery_tf.monitor import PeriodicEvaluation, summarize_curves
from lottery_tf.pruning import PruningSpec, fingerprint, random_masks_like
from lottery_tf.schedules import make_schedule
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


def _with_l2(optimizer_class):
    """``optimizer_class`` with L2 weight decay added to every gradient (PyTorch's
    ``weight_decay``), which momentum and Adam's scaling then act on."""

    class WithL2(optimizer_class):
        def __init__(self, *args, l2=0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.l2 = l2

        def update_step(self, gradient, variable, learning_rate):
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
            return super().update_step(gradient, variable, learning_rate)

    WithL2.__name__ = f"{optimizer_class.__name__}WithL2"
    return WithL2


SGDWithL2 = _with_l2(keras.optimizers.SGD)
AdamWithL2 = _with_l2(keras.optimizers.Adam)


def make_optimizer(training):
    rate = make_schedule(training)
    l2 = training.weight_decay if training.weight_decay_mode == "l2" else 0.0
    decoupled = None if l2 else (training.weight_decay or None)
    if training.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=training.weight_decay)
    if training.optimizer == "adam":
        return AdamWithL2(rate, l2=l2, weight_decay=decoupled) if l2 else keras.optimizers.Adam(rate, weight_decay=decoupled)
    sgd = dict(momentum=training.momentum, nesterov=training.nesterov, weight_decay=decoupled)
    return SGDWithL2(rate, l2=l2, **sgd) if l2 else keras.optimizers.SGD(rate, **sgd)


def make_loss(training, num_classes: int):
    """Cross-entropy on logits, with label smoothing if asked."""
    if not training.label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    smoothing = training.label_smoothing

    def smoothed_cross_entropy(y_true, logits):
        labels = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), num_classes)
        return keras.losses.categorical_crossentropy(labels, logits, from_logits=True, label_smoothing=smoothing)

    return smoothed_cross_entropy


def train_pipeline(splits: Splits, batch_size: int, seed: int, skip_steps: int = 0, augment=None) -> tf.data.Dataset:
    """Endless shuffled batches; batch i is a pure function of (seed, i).

    Each epoch is a stateless permutation of the training set keyed by (seed,
    epoch), so the order does not depend on TensorFlow's global random state or
    on how Keras distributes the dataset (a seeded ``Dataset.shuffle`` gives a
    different order under MirroredStrategy). Epochs are concatenated before
    batching, as ``shuffle().repeat().batch()`` would. ``skip_steps`` starts at
    batch ``skip_steps`` directly: this is how the data order is rewound to step
    k and how a resumed run continues its input stream. ``augment(x, seed)``,
    if given, transforms each batch with stateless randomness keyed by (seed,
    step). Indices are shuffled rather than examples, so memory stays small.
    """
    x = tf.constant(splits.x_train)
    y = tf.constant(splits.y_train)
    n = len(splits.x_train)
    first = skip_steps * batch_size
    start_epoch, offset = divmod(first, n)

    def epoch_order(epoch):
        keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

    batches = (
        tf.data.Dataset.range(start_epoch, 2**62)
        .flat_map(epoch_order)
        .skip(offset)
        .batch(batch_size, drop_remainder=True)
        .enumerate(start=skip_steps)
    )

    def load(step, indices):
        images = tf.gather(x, indices)
        if augment is not None:
            images = augment(images, tf.stack([tf.constant(seed, tf.int64), step]))
        return images, tf.gather(y, indices)

    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def build_masked_model(config: ExperimentConfig, splits: Splits, seed: int, training=None, strategy=None):
    """A freshly initialized (from ``seed``), wrapped and compiled model.

    Built under ``strategy``'s scope. With mixed precision, layers compute in
    float16/bfloat16 while variables (masks included) stay float32, and the
    logits are cast to float32 for the loss.
    """
    training = training or config.training
    keras.config.set_dtype_policy(training.mixed_precision or "float32")
    with (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(seed)
        model = wrap_model(
            build_model(config.model, splits.input_shape, splits.num_classes),
            exclude=config.pruning.exclude_layers,
        )
        if training.mixed_precision:
            to_float32 = keras.layers.Activation("linear", dtype="float32", name="logits_float32")
            if isinstance(model, keras.Sequential):
                model.add(to_float32)
            else:
                model = keras.Model(model.input, to_float32(model.output), name=model.name)
        _compile(model, config, training, splits.num_classes, strategy)
    keras.config.set_dtype_policy("float32")
    return model


def compiled_fast_path(config, training, strategy) -> tuple[int, bool]:
    """(steps_per_execution, jit_compile) the model is compiled with.

    Keras 3.15 / TF 2.21 fail inside ``fit`` under MirroredStrategy with more
    than one step per execution or with XLA, for any model; so distributed
    runs use one step per execution without XLA. Keras cannot use XLA under op
    determinism either.
    """
    distributed = strategy is not None and strategy.num_replicas_in_sync > 1
    if distributed:
        return 1, False
    steps = training.resolved_steps_per_execution(config.pruning.rewind_step)
    return steps, training.jit_compile and not config.run.deterministic


def _compile(model, config, training, num_classes, strategy):
    steps, jit = compiled_fast_path(config, training, strategy)
    model.compile(
        optimizer=make_optimizer(training),
        loss=make_loss(training, num_classes),
        steps_per_execution=steps,
        jit_compile=jit,
    )
    model.optimizer.build(model.trainable_variables)


def _step(model) -> int:
    return int(model.optimizer.iterations.numpy())


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


def training_batches(splits, batch_size: int, seed: int, skip_steps: int = 0) -> tf.data.Dataset:
    """Endless global batches from step ``skip_steps``, in memory or streamed."""
    if isinstance(splits, StreamingSplits):
        return splits.train_batches(batch_size, seed, skip_steps)
    return train_pipeline(splits, batch_size, seed, skip_steps=skip_steps, augment=splits.augment)


def evaluation_splits(splits, batch_size: int) -> dict:
    """What :class:`PeriodicEvaluation` evaluates: arrays, or streamed batches."""
    if isinstance(splits, StreamingSplits):
        return {name: make(max(batch_size, 256)) for name, make in splits.eval_batches.items()}
    return {"val": (splits.x_val, splits.y_val), "test": (splits.x_test, splits.y_test)}


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


def run_main_line(ctx: Context) -> bool:
    """Trains main levels 0..levels not yet done. Returns whether it trained any."""
    config, p = ctx.config, ctx.config.pruning
    todo = [lvl for lvl in range(p.levels + 1) if not is_done(ctx.folder, lvl, MAIN)]
    if not todo:
        return False
    first = todo[0]
    rewind_path = os.path.join(ctx.folder, "rewind_point.npz")
    model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    check_layer_names(config, model)
    imp = PruneRewindCallback(
        pruning_spec(config), rewind_step=p.rewind_step, on_capture=lambda state: rewind.save(state, rewind_path),
        agree_on_masks=functools.partial(broadcast_from_chief, ctx.strategy) if is_multi_worker(ctx.strategy) else None,
    )
    imp.set_model(model)
    if os.path.exists(rewind_path):
        imp.rewind_point = rewind.load(rewind_path)
    if first > 0:
        if imp.rewind_point is None:
            raise FileNotFoundError(f"{rewind_path} is missing; the run cannot continue at level {first}")
        # Masks of this level were written when the previous level ended.
        set_masks(model, atomic.read_npz(os.path.join(level_dir(ctx.folder, first, MAIN), "masks.npz")))
        imp.level = first
        imp.rewind()
    for level in range(first, p.levels + 1):
        folder = level_dir(ctx.folder, level, MAIN)
        atomic.write_npz(os.path.join(folder, "masks.npz"), get_masks(model))
        origin = p.rewind_step if level > 0 else 0
        metrics = train_level(
            ctx, model, level, MAIN, origin, config.training.iterations - origin,
            extra_callbacks=[_SaveTrainedState(os.path.join(folder, "final_weights.npz")), imp],
        )
        # The callback pruned and rewound: the next level's masks exist before
        # this level is declared done, so a crash in between loses nothing.
        atomic.write_npz(os.path.join(level_dir(ctx.folder, level + 1, MAIN), "masks.npz"), get_masks(model))
        _finish_level(ctx, level, MAIN, metrics)
    return True


def check_layer_names(config: ExperimentConfig, model) -> None:
    """Per-layer fractions must name masked weights of the model.

    Raises:
        ConfigError: Naming the flag and the valid names.
    """
    names = mask_names(model)
    unknown = [name for name, _ in config.pruning.layer_fractions if name not in names]
    if unknown:
        raise ConfigError("layer_pruning_fractions", f"{', '.join(unknown)} match no masked weight; the model has {', '.join(names)}")


# -- branches ---------------------------------------------------------------------


def branch_folder_name(config: ExperimentConfig, name: str) -> str:
    """The folder name of a branch: its type plus what distinguishes it."""
    b = config.branches
    if name == "random_prune":
        return f"random_prune_{b.random_prune_scope}"
    if name == "rewind":
        return f"rewind_{b.rewind_step}"
    if name == "lr_rewind":
        return f"lr_rewind_{b.rewind_step if b.rewind_step >= 0 else config.pruning.rewind_step}"
    if name == "retrain":
        overrides = json.dumps(_retrain_overrides(config), sort_keys=True)
        return "retrain_" + hashlib.sha256(overrides.encode()).hexdigest()[:8]
    return name


def _retrain_overrides(config: ExperimentConfig) -> dict:
    b = config.branches
    return {k: v for k, v in (("optimizer", b.optimizer), ("learning_rate", b.learning_rate),
                              ("iterations", b.iterations), ("batch_size", b.batch_size)) if v}


def _replayed_state(ctx: Context, step: int) -> dict:
    """The dense run's non-mask state at ``step``, replayed from the initialization."""
    main_path = os.path.join(ctx.folder, "rewind_point.npz")
    if step == ctx.config.pruning.rewind_step and os.path.exists(main_path):
        return rewind.load(main_path)
    path = os.path.join(ctx.folder, "rewind_points", f"step_{step}.npz")
    if os.path.exists(path):
        return rewind.load(path)
    model = build_masked_model(ctx.config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    if step:
        _fit(ctx, model, ctx.config.training.batch_size, 0, step)
    state = rewind.capture(model)
    rewind.save(state, path)
    return state


@dataclasses.dataclass
class BranchStart:
    """A branch's model at its first step, and how it trains from there."""

    name: str  # folder name
    model: object
    origin: int  # the optimizer step it starts at (learning-rate schedule, data order)
    training: object  # TrainingConfig
    info: dict  # written to branch.json


def prepare_branch(ctx: Context, name: str, level: int) -> BranchStart:
    """Builds the model a branch starts from (mask, weights, optimizer step).

    Raises:
        ValueError: For an unknown branch type.
    """
    config = ctx.config
    masks = atomic.read_npz(os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz"))
    k = config.pruning.rewind_step
    training = config.training
    seed = ctx.seed
    state = None  # None = keep the fresh initialization
    if name == REINIT:
        seed, origin = derived_seed(ctx.seed, "reinit", level), 0
    elif name == "random_prune":
        masks = random_masks_like(masks, derived_seed(ctx.seed, "random_prune", level),
                                  per_layer=config.branches.random_prune_scope == "layerwise")
        state, origin = rewind.load(os.path.join(ctx.folder, "rewind_point.npz")), k
    elif name == "rewind":
        origin = config.branches.rewind_step
        state = _replayed_state(ctx, origin)
    elif name == "lr_rewind":
        origin = config.branches.rewind_step if config.branches.rewind_step >= 0 else k
        state = rewind.load(os.path.join(level_dir(ctx.folder, level - 1, MAIN), "final_weights.npz"))
    elif name == "retrain":
        training = dataclasses.replace(training, **_retrain_overrides(config))
        state, origin = rewind.load(os.path.join(ctx.folder, "rewind_point.npz")), k
    else:
        raise ValueError(f"unknown branch {name!r}")
    model = build_masked_model(config, ctx.splits, seed, training, ctx.strategy)
    set_masks(model, masks)
    if state is not None:
        rewind.restore(model, state)
    rewind.reset_optimizer(model.optimizer, origin)
    info = {"type": name, "level": level, "start_step": origin, "seed": seed,
            "training": dataclasses.asdict(training), "random_prune_scope": config.branches.random_prune_scope}
    return BranchStart(branch_folder_name(config, name), model, origin, training, info)


def run_branch(ctx: Context, name: str, level: int) -> bool:
    """Runs one branch at one level unless done. Returns whether it trained."""
    if is_done(ctx.folder, level, branch_folder_name(ctx.config, name)):
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
            if name == "lr_rewind":
                needed.append(os.path.join(level_dir(ctx.folder, level - 1, MAIN), "final_weights.npz"))
            for path in needed:
                if not os.path.exists(path):
                    raise FileNotFoundError(f"--branch_levels: branch {name} at level {level} needs {path}, which the main line has not written")


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


def _run_replicates(config: ExperimentConfig, strategy) -> bool:
    run_dir.prepare(config)
    splits = get_splits(config.data)
    train, val, test = splits.sizes()
    print(f"data: {splits.source}  train {train}  val {val}  test {test}", flush=True)
    trained = False
    for r in replicates(config):
        ctx = Context(config, splits, r, replicate_seed(config.seed, r), run_dir.replicate_dir(config, r), strategy)
        trained |= run_main_line(ctx)
        check_branch_inputs(ctx)
        for name in config.branches.names:
            for level in config.branches.levels:
                trained |= run_branch(ctx, name, level)
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
