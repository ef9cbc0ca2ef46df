"""The IMP experiment: the level loop and the random-reinit control.

Files go where :mod:`lottery_tf.run_dir` says. A level whose ``metrics.json``
exists is done and is not trained again, so re-running the same command
continues where an interrupted run stopped.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf

from lottery_tf import atomic, report, rewind, run_dir
from lottery_tf.callbacks import PruneRewindCallback
from lottery_tf.config import ExperimentConfig
from lottery_tf.data import Splits, get_splits
from lottery_tf.keras_compat import keras
from lottery_tf.masking import get_masks, layer_densities, overall_density, set_masks, wrap_model
from lottery_tf.models import build_model
from lottery_tf.monitor import PeriodicEvaluation, summarize_curves
from lottery_tf.pruning import PruningSpec
from lottery_tf.run_dir import is_done, level_dir

MAIN, REINIT = "main", "reinit"


def pruning_spec(config: ExperimentConfig) -> PruningSpec:
    p = config.pruning
    return PruningSpec(
        method=p.method,
        fraction=p.fraction,
        output_fraction=p.output_fraction or None,
        layer_fractions=dict(p.layer_fractions),
    )


def make_optimizer(config: ExperimentConfig):
    t = config.training
    if t.optimizer == "adam":
        return keras.optimizers.Adam(t.learning_rate, weight_decay=t.weight_decay or None)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(t.learning_rate, weight_decay=t.weight_decay)
    return keras.optimizers.SGD(t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay or None)


def train_pipeline(splits: Splits, batch_size: int, seed: int, skip_steps: int = 0) -> tf.data.Dataset:
    """Endless shuffled batches; the same order for the same seed.

    Shuffles indices rather than examples, so the shuffle buffer stays small.
    ``skip_steps`` skips the first batches (data order rewound to step k).
    """
    x = tf.constant(splits.x_train)
    y = tf.constant(splits.y_train)
    n = len(splits.x_train)
    indices = (
        tf.data.Dataset.range(n)
        .shuffle(n, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(batch_size, drop_remainder=True)
    )
    if skip_steps:
        indices = indices.skip(skip_steps)
    return indices.map(
        lambda i: (tf.gather(x, i), tf.gather(y, i)), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)


def build_masked_model(config: ExperimentConfig, splits: Splits, seed: int):
    """A freshly initialized, wrapped and compiled model."""
    keras.utils.set_random_seed(seed)
    model = wrap_model(
        build_model(config.model, splits.input_shape, splits.num_classes),
        exclude=config.pruning.exclude_layers,
    )
    model.compile(
        optimizer=make_optimizer(config),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=config.training.resolved_steps_per_execution(config.pruning.rewind_step),
        jit_compile=config.training.jit_compile,
    )
    return model


def _train_level(config, model, splits, level, branch, steps, skip_steps, extra_callbacks=()):
    t = config.training
    label = f"level {level:2d} [{branch}] density {100 * overall_density(model):6.2f}%"
    monitor = PeriodicEvaluation(
        {"val": (splits.x_val, splits.y_val), "test": (splits.x_test, splits.y_test)},
        every=t.eval_every,
        total_steps=steps,
        log_dir=os.path.join(config.output_dir, "tensorboard", f"level_{level:02d}_{branch}")
        if config.tensorboard else None,
        label=label,
        print_every=max(1, (steps // t.eval_every) // 5),
        jit_compile=t.jit_compile,
    )
    densities = layer_densities(model)
    density = overall_density(model)
    start = time.time()
    model.fit(
        train_pipeline(splits, t.batch_size, config.seed, skip_steps),
        epochs=1,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,  # the pipeline shuffles
        callbacks=[monitor, *extra_callbacks],
    )
    metrics = {
        "level": level,
        "branch": branch,
        "density": density,
        "layer_densities": densities,
        "steps": steps,
        "wall_seconds": time.time() - start,
        **summarize_curves(monitor.iterations, monitor.curves),
        "iterations": monitor.iterations,
        "curves": monitor.curves,
    }
    return metrics


def _finish_level(config, level, branch, metrics):
    folder = level_dir(config.output_dir, level, branch)
    atomic.write_json(os.path.join(folder, "metrics.json"), metrics)
    print(
        f"level {level:2d} [{branch}] done: density {100 * metrics['density']:.2f}%  "
        f"final test acc {metrics['final_test_accuracy']:.4f}  early stop at "
        f"{metrics['early_stop_iteration']} (test acc {metrics['early_stop_test_accuracy']:.4f})  "
        f"{metrics['wall_seconds']:.0f}s",
        flush=True,
    )


def run_main_line(config: ExperimentConfig, splits: Splits) -> None:
    """Trains levels 0..config.pruning.levels, skipping finished ones."""
    p, t = config.pruning, config.training
    out = config.output_dir
    todo = [lvl for lvl in range(p.levels + 1) if not is_done(out, lvl, MAIN)]
    if not todo:
        return
    first = todo[0]
    model = build_masked_model(config, splits, config.seed)
    imp = PruneRewindCallback(pruning_spec(config), rewind_step=p.rewind_step, levels=p.levels + 1)
    rewind_path = os.path.join(out, "rewind_point.npz")
    if first > 0:
        # Resume: masks of the first unfinished level and the rewind point were
        # saved before that level started.
        with np.load(os.path.join(level_dir(out, first, MAIN), "masks.npz")) as data:
            set_masks(model, {k: data[k] for k in data.files})
        imp.rewind_point = rewind.load(rewind_path)
        imp.level = first
        imp.set_model(model)
        model.optimizer.build(model.trainable_variables)
        imp.rewind()
    for level in range(first, p.levels + 1):
        atomic.write_npz(os.path.join(level_dir(out, level, MAIN), "masks.npz"), get_masks(model))
        skip = p.rewind_step if level > 0 else 0
        metrics = _train_level(config, model, splits, level, MAIN, t.iterations - skip, skip, [imp])
        if level == 0:
            rewind.save(imp.rewind_point, rewind_path)
        if level < p.levels:
            # The callback pruned and rewound at the end of fit: save the next
            # level's masks before declaring this level done.
            atomic.write_npz(os.path.join(level_dir(out, level + 1, MAIN), "masks.npz"), get_masks(model))
        _finish_level(config, level, MAIN, metrics)


def run_reinit_control(config: ExperimentConfig, splits: Splits, level: int) -> None:
    """Random reinitialization: the level's mask, a fresh init, trained from step 0."""
    if is_done(config.output_dir, level, REINIT):
        return
    with np.load(os.path.join(level_dir(config.output_dir, level, MAIN), "masks.npz")) as data:
        masks = {k: data[k] for k in data.files}
    model = build_masked_model(config, splits, reinit_seed(config.seed, level))
    set_masks(model, masks)
    atomic.write_npz(os.path.join(level_dir(config.output_dir, level, REINIT), "masks.npz"), masks)
    metrics = _train_level(config, model, splits, level, REINIT, config.training.iterations, 0)
    _finish_level(config, level, REINIT, metrics)


def reinit_seed(seed: int, level: int) -> int:
    """A seed for the reinitialization control, distinct from every main seed."""
    return 1_000_003 * (seed + 1) + level


def run(config: ExperimentConfig) -> list[dict]:
    """Runs (or continues) the experiment and writes its summary files.

    Returns:
        One summary row per finished level and branch.
    """
    run_dir.prepare(config)
    splits = get_splits(config.data)
    print(
        f"data: {splits.source}  train {len(splits.x_train)}  val {len(splits.x_val)}  "
        f"test {len(splits.x_test)}",
        flush=True,
    )
    run_main_line(config, splits)
    for level in config.reinit_levels:
        run_reinit_control(config, splits, level)
    rows = report.collect_rows(config.output_dir)
    report.write_summary(config.output_dir, rows)
    print(report.format_table(rows), flush=True)
    return rows


def describe(config: ExperimentConfig) -> str:
    """One line naming the experiment, for logs."""
    d = dataclasses.asdict(config)
    return f"{d['model']['name']} on {d['data']['name']}, {config.pruning.levels + 1} levels, seed {config.seed}"
