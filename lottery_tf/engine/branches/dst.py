"""Dynamic sparse training as branches: ``set`` and ``rigl`` at the densities of chosen main-line levels.

SET (Mocanu et al. 2018) and RigL (Evci et al. 2020) train sparse from the
first step and move connections while training (the decision:
:mod:`lottery_tf.core.sparse_training`). Each runs, at every ``--branch_levels``
level, once per ``--dst_distribution`` (``uniform``, ``erk``), in the folder
``<method>_<distribution>`` (``rigl_erk``), with a suffix ``_<hash>`` of the
other DST settings when they differ from their defaults (so a run with other
settings never reuses a finished folder). Like ``random_prune`` it starts from
the main line's rewind point (the initialization at k = 0) at step k, with the
experiment's recipe (optimizer, iterations, batch size, evaluation schedule),
and keeps exactly the level's number of weights: a random mask whose per-layer
counts follow the distribution (:func:`~lottery_tf.core.sparse_training.layer_counts`).

Every ``--dst_update_every`` steps up to ``--dst_end_fraction`` of
``--iterations`` (steps counted from the schedule's step 0, as the learning
rate's), before the next step trains, each layer drops its smallest-magnitude
weights and regrows as many (:class:`EngineDynamicSparse`). RigL's dense
gradient is the engine's: the gradient of the compiled loss on the training
batch the next step trains on, computed under the run's ``tf.distribute``
strategy and all-reduced (summed over replicas, each replica's loss scaled by
Keras for distribution, as the optimizer's own gradient is). The generator
state and the updates made go into every checkpoint (the masks are model
variables there), so a killed run resumes to the same bits.

``metrics.json`` records the masks the branch ended with, ``connections_moved``
(per layer, summed over updates), ``dst_updates`` and the settings.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os

import numpy as np
import tensorflow as tf

from lottery_tf.core import sparse_training
from lottery_tf.core.masking import get_masks, layer_densities, masked_weights, overall_density, set_masks
from lottery_tf.core.pruning import fingerprint
from lottery_tf.engine.branches.registry import (
    BranchStart,
    Unit,
    branch_start,
    level_masks_and_rewind_point,
    level_masks_file,
    register_branch,
    train_start,
)
from lottery_tf.engine.config import DST_BRANCHES, ConfigError, ExperimentConfig, derived_seed, dst_end_step
from lottery_tf.engine.levels import Context
from lottery_tf.engine.recipe import training_batches
from lottery_tf.engine.run_dir import level_dir
from lottery_tf.store import atomic, states

# The DST settings other than the distribution, and their defaults (a folder's suffix names any other value).
_DEFAULTS = {"update_every": 100, "drop_fraction": 0.3, "drop_schedule": "cosine", "end_fraction": 0.75}


def dst_settings(config: ExperimentConfig) -> dict:
    """``update_every``, ``drop_fraction``, ``drop_schedule``, ``end_fraction`` of the run."""
    b = config.branches
    return {
        "update_every": b.dst_update_every,
        "drop_fraction": b.dst_drop_fraction,
        "drop_schedule": b.dst_drop_schedule,
        "end_fraction": b.dst_end_fraction,
    }


def dst_folder(config: ExperimentConfig, method: str, distribution: str) -> str:
    """``<method>_<distribution>``, plus ``_<hash>`` of the DST settings that differ from their defaults."""
    settings = dst_settings(config)
    changed = {k: v for k, v in settings.items() if _DEFAULTS[k] != v}
    suffix = "_" + hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8] if changed else ""
    return f"{method}_{distribution}{suffix}"


class EngineDynamicSparse(sparse_training.DynamicSparseCallback):
    """:class:`~lottery_tf.core.sparse_training.DynamicSparseCallback` as the engine runs it.

    The update after step ``s`` runs when step ``s + 1`` begins (not when step
    ``s`` ends), so a checkpoint written at ``s`` holds the masks before it and
    a resumed run makes it again from the same state. RigL's gradient is the
    strategy's all-reduced gradient on the training batch of step ``s + 1``.
    ``checkpoint_key`` makes :func:`lottery_tf.engine.levels.train_level` keep
    :meth:`get_state` in every checkpoint and give it back on resume; ``changes_masks`` tells it that a
    checkpoint's masks are the masks of its step (the start's fingerprint identifies the level).
    """

    checkpoint_key = "dynamic_sparse"
    changes_masks = True  # a checkpoint holds the masks of its step, not the level's start masks

    def __init__(self, ctx: Context, batch_size: int, **kwargs):
        if kwargs["method"] == "rigl":
            kwargs["gradient_data"] = self._batch_of_step
        super().__init__(**kwargs)
        self.ctx, self.batch_size = ctx, batch_size
        self._gradient_function = None

    def _batch_of_step(self, step: int):
        """The training batch the step after ``step`` trains on (index ``step`` of the data order)."""
        ctx = self.ctx
        return next(iter(training_batches(ctx.splits, self.batch_size, ctx.seed, step).take(1)))

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        step = sparse_training.rewind.global_step(self.model.optimizer)
        if step > self._last_step and step % self.update_every == 0 and 0 < step <= self.end_step:
            self.update(step)

    def dense_gradients(self, step: int) -> dict[str, np.ndarray]:
        """The dense gradient of every masked weight, all-reduced over the strategy's replicas (traced once)."""
        strategy = self.ctx.strategy or tf.distribute.get_strategy()
        triples = masked_weights(self.model)
        variables = [weight for _, _, weight in triples]
        model = self.model
        if self._gradient_function is None:

            def replica(x, y):
                with tf.GradientTape() as tape:
                    y_pred = model(x, training=True)
                    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)  # scaled by 1/replicas
                grads = tape.gradient(loss, variables)
                return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for v, g in zip(variables, grads)]

            @tf.function
            def all_reduced(batch):
                per_replica = strategy.run(replica, args=batch)
                return [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in per_replica]

            self._gradient_function = all_reduced
        state = {id(v): v for v in list(model.non_trainable_variables) + list(model.metrics_variables)}
        saved = {key: np.array(v.numpy(), copy=True) for key, v in state.items()}
        dataset = training_batches(self.ctx.splits, self.batch_size, self.ctx.seed, step).take(1)
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
        try:
            grads = self._gradient_function(batch)
        finally:
            for key, variable in state.items():
                variable.assign(saved[key])
        return {name: np.asarray(g, np.float64) for (name, _, _), g in zip(triples, grads)}


def check_erk(config: ExperimentConfig, shapes: dict) -> None:
    """``--dst_distribution=erk``: ERK must distribute each branch level's density over the model's weights.

    The density of level L is taken as ``(1 - --pruning_fraction) ** L`` (the main line's exact count is known
    only once it has pruned). Checked before anything is written.

    Raises:
        ConfigError: Naming ``--dst_distribution``.
    """
    b = config.branches
    if "erk" not in b.dst_distribution or not any(name in DST_BRANCHES for name in b.names):
        return
    for level in b.levels:
        density = max(1e-12, (1.0 - config.pruning.fraction) ** level)
        try:
            sparse_training.erk_densities(shapes, min(1.0, density))
        except ValueError as error:
            raise ConfigError("dst_distribution", f"erk at level {level}: {error}") from None


def start_dst(ctx: Context, method: str, distribution: str, level: int) -> BranchStart:
    """A DST branch at the level's number of kept weights, ready to train from the rewind point at step k."""
    config = ctx.config
    level_masks = atomic.read_npz(os.path.join(ctx.folder, level_masks_file(level)))
    total = int(sum(int(np.count_nonzero(m)) for m in level_masks.values()))
    size = int(sum(m.size for m in level_masks.values()))
    target = total / size
    folder = dst_folder(config, method, distribution)
    settings = dst_settings(config)
    spe = config.training.resolved_steps_per_execution()
    # The callback sees the model between executions: every update must start one.
    training = dataclasses.replace(config.training, steps_per_execution=math.gcd(settings["update_every"], spe))
    start = branch_start(
        ctx,
        method,
        level,
        config.pruning.rewind_step,
        state=states.load(os.path.join(ctx.folder, "rewind_point.npz")),
        state_file="rewind_point.npz",
        training=training,
        folder=folder,
    )
    model = start.model
    shapes = {name: tuple(weight.shape) for name, _, weight in masked_weights(model)}
    densities = sparse_training.layer_densities_for(shapes, target, distribution)
    counts = sparse_training.layer_counts(shapes, densities, total)
    mask_seed = derived_seed(ctx.seed, "dst_masks", method, distribution, level)
    set_masks(model, sparse_training.random_masks_with_counts(shapes, counts, np.random.default_rng(mask_seed)))
    callback = EngineDynamicSparse(
        ctx,
        training.batch_size,
        method=method,
        density=target,
        distribution=distribution,
        seed=derived_seed(ctx.seed, "dst_growth", method, distribution, level),
        total_steps=config.training.iterations,
        **settings,
    )
    callback.started = True  # the masks above: the level's count exactly
    callback.densities = {name: counts[name] / max(1, int(np.prod(shapes[name]))) for name in shapes}
    callback.end_step = dst_end_step(config)
    callback._last_step = config.pruning.rewind_step  # no update before the branch's first step
    record = {
        "method": method,
        "distribution": distribution,
        **settings,
        "end_step": callback.end_step,
        "mask_seed": mask_seed,
        "growth_seed": callback.seed,
        "gradient": "all-reduced dense gradient on the next step's training batch" if method == "rigl" else None,
    }
    start.info.update(target_density=target, density=overall_density(model), dst=record)

    def finish(model, metrics):
        masks = get_masks(model)
        atomic.write_npz(
            os.path.join(level_dir(ctx.folder, level, folder), "masks.npz"), masks
        )  # the masks it ended with
        return {
            **metrics,
            "density": overall_density(model),
            "layer_densities": layer_densities(model),
            "masks_sha256": fingerprint(masks),
            "target_density": target,
            "connections_moved": callback.moved(),
            "dst_updates": len(callback.updates),
            "dst": record,
        }

    return dataclasses.replace(start, callbacks=(callback,), finish=finish)


def _run_dst(method: str, ctx: Context, levels) -> bool:
    trained = False
    for level in levels:
        for distribution in ctx.config.branches.dst_distribution:
            trained |= _run_dst_one(method, level, distribution, ctx)
    return trained


def _dst_units(method: str, config: ExperimentConfig, levels) -> list:
    """One unit per level and distribution (each its own training)."""
    steps = config.training.iterations - config.pruning.rewind_step
    return [
        Unit(
            f"level_{level:02d}/{dst_folder(config, method, distribution)}",
            level,
            steps,
            tuple(level_masks_and_rewind_point(config, level)),
            run=functools.partial(_run_dst_one, method, level, distribution),
        )
        for level in levels
        for distribution in config.branches.dst_distribution
    ]


def _run_dst_one(method: str, level: int, distribution: str, ctx: Context) -> bool:
    return train_start(
        ctx,
        level,
        dst_folder(ctx.config, method, distribution),
        functools.partial(start_dst, ctx, method, distribution, level),
    )


for _method in DST_BRANCHES:
    register_branch(
        _method,
        needs=level_masks_and_rewind_point,
        lineage=True,
        units=functools.partial(_dst_units, _method),
    )(functools.partial(_run_dst, _method))
