"""The analysis branches: instability (linear mode connectivity) and stability (distances).

Both reuse the main line's masks and the dense run's states at step k (the
replay cache of :func:`lottery_tf.engine.levels.replayed_state`), never retrain the
main line, and train their copies with :func:`lottery_tf.engine.levels.train_level`
(checkpoints, resume). The maths is :mod:`lottery_tf.core.analysis`. Layout, per
replicate and level::

    level_LL/instability/<network>_k<k>/pair_<p>/copy_{a,b}/   two copies (metrics.json, final_weights.npz)
    level_LL/instability/<network>_k<k>/pair_<p>/instability.json
    level_LL/stability/<network>_k<k>/{same_order,other_order}/
    level_LL/stability/<network>_k<k>/stability.json

``<network>`` is ``dense`` at level 0, else ``ticket`` (the level's mask on
the dense run's weights at k), ``random_prune`` (a random mask with the
level's per-layer density, the same one the ``random_prune`` branch uses) or
``reinit`` (the mask on a fresh initialization). A result file that exists is
never computed again.

*Instability* (Frankle et al. 2020): two copies of the network at step k
trained to the end of the schedule with different data orders (and
augmentation randomness), then the error along the straight line between
them on the test set and on a fixed training subset.

*Stability* (Frankle et al. 2019): to pruning, the distance between m ⊙ W of
the dense network trained from the start (main level 0) and of the
subnetwork trained from m ⊙ W_k with the *same* data order; to data order,
the distance between that subnetwork and one trained with another order.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types

import numpy as np
import tensorflow as tf

from lottery_tf.core import rewind
from lottery_tf.core.analysis import batchnorm, compare_weights
from lottery_tf.core.analysis.evaluation import ModelEvaluator, linear_path
from lottery_tf.core.masking import get_masks, get_prunable_weights, set_masks
from lottery_tf.core.pruning import density, random_masks_like
from lottery_tf.engine.branches.registry import (
    Unit,
    files_damaged,
    level_masks,
    rebuild_start_files,
    register_branch,
    structure,
)
from lottery_tf.engine.config import ExperimentConfig, derived_seed
from lottery_tf.engine.levels import (
    Context,
    SaveTrainedState,
    dense_optimizer_at,
    finish_level,
    replayed_state,
    train_level,
)
from lottery_tf.engine.recipe import build_masked_model, training_batches
from lottery_tf.engine.run_dir import MAIN, is_done, level_dir
from lottery_tf.store import atomic, locks, records, states
from lottery_tf.store import reader as store

STABLE_THRESHOLD = 0.02  # the LMC paper: stable when instability < 2 percentage points


def analysis_steps(config: ExperimentConfig) -> tuple:
    """The steps k analysed (default: the main line's rewind step)."""
    return tuple(config.branches.analysis_rewind_steps) or (config.pruning.rewind_step,)


def networks(config: ExperimentConfig, level: int, branch: str) -> list[str]:
    """The networks analysed at ``level``: the dense one at 0, else the ticket and the controls."""
    if level == 0:
        return ["dense"]
    controls = [c for c in config.branches.analysis_controls if branch == "instability" or c == "random_prune"]
    return ["ticket", *controls]


def _stability_needs(config: ExperimentConfig, level: int) -> list:
    """The level's mask and the dense network's trained weights (main level 0)."""
    return level_masks(config, level) + [os.path.join("level_00", MAIN, "final_weights.npz")]


@dataclasses.dataclass
class _Network:
    masks: dict
    state: dict | None  # None = fresh initialization from seed
    seed: int
    mode: str  # optimizer rewind


def _network(ctx: Context, level: int, name: str, k: int) -> _Network:
    """The mask and start state of one analysed network at step k."""
    masks = atomic.read_npz(os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz"))
    mode = ctx.config.pruning.rewind_optimizer
    if name == "reinit":
        return _Network(masks, None, derived_seed(ctx.seed, "reinit", level), "fresh" if mode == "restore" else mode)
    if name == "random_prune":
        masks = random_masks_like(
            masks,
            derived_seed(ctx.seed, "random_prune", level),
            per_layer=ctx.config.branches.random_prune_scope == "layerwise",
            **structure(ctx.config),
        )
    return _Network(masks, replayed_state(ctx, k), ctx.seed, mode)


def _build(ctx: Context, network: _Network, k: int):
    model = build_masked_model(ctx.config, ctx.splits, network.seed, strategy=ctx.strategy)
    set_masks(model, network.masks)
    if network.state is not None:
        rewind.restore(model, network.state)
    rewind.reset_optimizer(
        model.optimizer, k, network.mode, dense_optimizer_at(ctx, k) if network.mode == "restore" else None
    )
    return model


def train_copy(ctx: Context, level: int, folder: str, network: _Network, k: int, data_seed: int) -> dict:
    """Trains one copy from step k to the end with data order ``data_seed`` (resumable); returns its final state.

    ``folder`` is relative to ``level_LL/``. A finished copy is read back, not retrained. Training takes the
    copy's own lock, whichever executor asks (the local one also holds the analysis's), so two processes
    never train one copy.
    """
    if is_done(ctx.folder, level, folder):
        return _train_copy(ctx, level, folder, network, k, data_seed)
    with locks.hold(ctx.folder, _lock_name(level, folder), ctx.config.run.wait_for_lock):
        return _train_copy(ctx, level, folder, network, k, data_seed)


def _train_copy(ctx: Context, level: int, folder: str, network: _Network, k: int, data_seed: int) -> dict:
    path = os.path.join(level_dir(ctx.folder, level, folder), "final_weights.npz")
    info = {"start_step": k, "data_seed": data_seed, "init_seed": network.seed, "rewind_optimizer": network.mode}
    if is_done(ctx.folder, level, folder) and store.npz_problem(path) is None:
        if files_damaged(level_dir(ctx.folder, level, folder)):
            rebuild_start_files(
                level_dir(ctx.folder, level, folder), _build(ctx, network, k), lambda: types.SimpleNamespace(info=info)
            )
        return states.load(path)
    copy_ctx = dataclasses.replace(ctx, seed=data_seed)  # the data order (and augmentation) of this copy
    model = _build(ctx, network, k)
    atomic.write_json(os.path.join(level_dir(ctx.folder, level, folder), "branch.json"), info)
    atomic.write_npz(os.path.join(level_dir(ctx.folder, level, folder), "masks.npz"), get_masks(model))
    total = ctx.config.training.iterations - k
    # The copies are endpoints: evaluated where they start and end only.
    training = dataclasses.replace(ctx.config.training, eval_every=total)
    metrics = train_level(copy_ctx, model, level, folder, k, total, training, extra_callbacks=[SaveTrainedState(path)])
    finish_level(copy_ctx, level, folder, metrics)
    return states.load(path)


class PathEvaluator(ModelEvaluator):
    """A :class:`~lottery_tf.core.analysis.evaluation.ModelEvaluator` for one network of a run.

    The model is built from the run's recipe with ``masks``; it evaluates on
    the test set and a fixed training subset; BatchNorm statistics are
    re-estimated from ``--batchnorm_batches`` fixed training batches (a seed
    derived from the replicate's) or interpolated, as ``--batchnorm_statistics`` says.
    """

    def __init__(self, ctx: Context, masks: dict):
        config, b = ctx.config, ctx.config.branches
        model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
        set_masks(model, masks)
        batches = []
        if b.batchnorm_statistics == "reestimate" and batchnorm.batchnorm_layers(model):
            stream = training_batches(ctx.splits, config.training.batch_size, derived_seed(ctx.seed, "batchnorm"), 0)
            batches = [x for x, _ in stream.take(b.batchnorm_batches)]
        super().__init__(model, _evaluation_sets(ctx), batches, b.batchnorm_statistics)
        train = self.datasets["train"]
        self.train_examples = len(train[0]) if isinstance(train, tuple) else None  # streamed: batches of 256


def _evaluation_sets(ctx: Context) -> dict:
    splits = ctx.splits
    n = ctx.config.branches.analysis_train_examples
    if hasattr(splits, "x_test"):
        return {"test": (splits.x_test, splits.y_test), "train": (splits.x_train[:n], splits.y_train[:n])}
    sets = {name: make(256) for name, make in splits.eval_batches.items() if name == "test"}
    sets["train"] = training_batches(splits, 256, derived_seed(ctx.seed, "analysis_train"), 0).take(max(1, n // 256))
    return sets


def _tensorboard(ctx: Context, level: int, run: str, scalars: dict, steps) -> None:
    if not (ctx.config.run.tensorboard and atomic.writes_enabled()):
        return
    writer = tf.summary.create_file_writer(store.tensorboard_dir(ctx.folder, level, run))
    with writer.as_default():
        for tag, values in scalars.items():
            for step, value in zip(steps, values):
                tf.summary.scalar(tag, float(value), step=int(step))
    writer.close()


def _instability_base(name: str, k: int, pair: int) -> str:
    return os.path.join("instability", f"{name}_k{k}", f"pair_{pair}")


def _instability_seed(ctx: Context, level: int, name: str, k: int, pair: int, copy: str) -> int:
    return derived_seed(ctx.seed, "instability", level, name, k, pair, copy)


def _stability_seeds(ctx: Context, level: int, name: str, k: int) -> dict:
    return {"same_order": ctx.seed, "other_order": derived_seed(ctx.seed, "stability", level, name, k)}


def _reuses_main(config: ExperimentConfig, name: str, k: int) -> bool:
    """The main line trained exactly this network with this data order (its same-order copy is the main line)."""
    return (name == "ticket" and k == config.pruning.rewind_step) or (name == "dense" and k == 0)


def _lock_name(level: int, folder: str) -> str:
    return f"level_{level:02d}_" + folder.replace(os.sep, "_")


def _train_copy_unit(level: int, folder: str, name: str, k: int, seed_of, ctx: Context) -> bool:
    """One copy of an analysis as its own unit (``--executor=ray``); :func:`train_copy` takes its lock."""
    if is_done(ctx.folder, level, folder):
        return False
    train_copy(ctx, level, folder, _network(ctx, level, name, k), k, seed_of(ctx))
    return True


def _measure_unit(level: int, folder: str, one, ctx: Context) -> bool:
    """An analysis's measurement after its copies (units of their own) are trained."""
    with locks.hold(ctx.folder, _lock_name(level, folder), ctx.config.run.wait_for_lock):
        return one(ctx)


def _instability_units(config: ExperimentConfig, levels) -> list:
    """Per level, network, step k and pair: the two copies, then the measurement along the path between them."""
    units = []
    for level in levels:
        for name in networks(config, level, "instability"):
            for k in analysis_steps(config):
                for pair in range(config.branches.instability_pairs):
                    base = _instability_base(name, k, pair)
                    needs = tuple(level_masks(config, level))
                    copies = []
                    for copy in ("a", "b"):
                        folder = os.path.join(base, f"copy_{copy}")
                        seed_of = functools.partial(_seed_of_copy, level, name, k, pair, copy)
                        run = functools.partial(_train_copy_unit, level, folder, name, k, seed_of)
                        copies.append(f"level_{level:02d}/{folder}")
                        units.append(Unit(copies[-1], level, config.training.iterations - k, needs, run=run))
                    one = functools.partial(_instability_at, level, name, k, pair)
                    run = functools.partial(_measure_unit, level, base, one)
                    units.append(Unit(f"level_{level:02d}/{base}", level, 0, needs, tuple(copies), run=run))
    return units


def _seed_of_copy(level, name, k, pair, copy, ctx):
    return _instability_seed(ctx, level, name, k, pair, copy)


def _instability_at(level, name, k, pair, ctx):
    return _instability_one(ctx, level, name, k, pair)


def _stability_units(config: ExperimentConfig, levels) -> list:
    """Per level, network and step k: the copies it trains (the same-order one unless the main line is it), then the distances."""
    units = []
    for level in levels:
        for name in networks(config, level, "stability"):
            for k in analysis_steps(config):
                base = os.path.join("stability", f"{name}_k{k}")
                needs = tuple(_stability_needs(config, level))
                copies = []
                orders = ("other_order",) if _reuses_main(config, name, k) else ("same_order", "other_order")
                for order in orders:
                    folder = os.path.join(base, order)
                    seed_of = functools.partial(_stability_seed_of, level, name, k, order)
                    run = functools.partial(_train_copy_unit, level, folder, name, k, seed_of)
                    copies.append(f"level_{level:02d}/{folder}")
                    units.append(Unit(copies[-1], level, config.training.iterations - k, needs, run=run))
                measure_needs = needs
                if _reuses_main(config, name, k):
                    measure_needs += (os.path.join(f"level_{level:02d}", MAIN, "final_weights.npz"),)
                one = functools.partial(_stability_at, level, name, k)
                run = functools.partial(_measure_unit, level, base, one)
                units.append(Unit(f"level_{level:02d}/{base}", level, 0, measure_needs, tuple(copies), run=run))
    return units


def _stability_seed_of(level, name, k, order, ctx):
    return _stability_seeds(ctx, level, name, k)[order]


def _stability_at(level, name, k, ctx):
    return _stability_one(ctx, level, name, k)


def _instability_one(ctx: Context, level: int, name: str, k: int, pair: int) -> bool:
    b = ctx.config.branches
    base = _instability_base(name, k, pair)
    result_path = os.path.join(level_dir(ctx.folder, level, base), "instability.json")
    network = _network(ctx, level, name, k)
    seeds = [_instability_seed(ctx, level, name, k, pair, copy) for copy in ("a", "b")]
    if store.analysis_done(result_path):
        for copy, seed in zip(("a", "b"), seeds):  # finished copies: only their damaged files are written again
            train_copy(ctx, level, os.path.join(base, f"copy_{copy}"), network, k, seed)
        return False
    states = [
        train_copy(ctx, level, os.path.join(base, f"copy_{copy}"), network, k, seed)
        for copy, seed in zip(("a", "b"), seeds)
    ]
    evaluator = PathEvaluator(ctx, network.masks)
    path = linear_path(evaluator, states[0], states[1], b.interpolation_points)
    weights = []
    for state in states:
        rewind.restore(evaluator.model, state)
        weights.append(get_prunable_weights(evaluator.model))
    record = {
        "analysis": "instability",
        "network": name,
        "level": level,
        "replicate": ctx.replicate,
        "rewind_step": k,
        "pair": pair,
        "density": density(network.masks),
        "data_seeds": seeds,
        "interpolation_points": b.interpolation_points,
        "alphas": path["alphas"],
        "batchnorm_statistics": path["batchnorm_statistics"],
        "test": path["test"],
        "train": path["train"],
        "train_examples": evaluator.train_examples,
        # Distances between the two copies: stability to data order of this network.
        "copies": compare_weights(weights[0], weights[1], network.masks),
    }
    record["instability"] = record["test"]["instability"]
    record["stable"] = record["instability"] < STABLE_THRESHOLD
    atomic.write_json(result_path, records.seal({**record, records.BELONGS: ctx.belongs_to(level, base)}))
    _tensorboard(
        ctx,
        level,
        f"instability/{name}_k{k}_pair{pair}",
        {"error_along_path/test": path["test"]["error"], "error_along_path/train": path["train"]["error"]},
        range(len(path["alphas"])),
    )
    _tensorboard(
        ctx,
        level,
        f"instability/{name}_pair{pair}",
        {"instability/test": [record["test"]["instability"]], "instability/train": [record["train"]["instability"]]},
        [k],
    )
    print(
        f"replicate {ctx.replicate} level {level:2d} [instability {name} k={k} pair {pair}] "
        f"instability test {100 * record['test']['instability']:.2f}% train {100 * record['train']['instability']:.2f}% "
        f"({'stable' if record['stable'] else 'unstable'}; BatchNorm statistics: {evaluator.batchnorm})",
        flush=True,
    )
    return True


@register_branch("instability", needs=level_masks, lineage=True, units=_instability_units)
def run_instability(ctx: Context, levels) -> bool:
    """Instability analysis at every requested level, network, step k and pair. Returns whether it trained any."""
    b = ctx.config.branches
    todo = [
        (level, name, k, pair)
        for level in levels
        for name in networks(ctx.config, level, "instability")
        for k in analysis_steps(ctx.config)
        for pair in range(b.instability_pairs)
    ]
    if all(
        store.analysis_complete(
            os.path.join(
                level_dir(ctx.folder, level, os.path.join("instability", f"{name}_k{k}", f"pair_{pair}")),
                "instability.json",
            )
        )
        for level, name, k, pair in todo
    ):
        return False
    trained = False
    with locks.hold(ctx.folder, "instability", ctx.config.run.wait_for_lock):
        for level, name, k, pair in todo:
            trained |= _instability_one(ctx, level, name, k, pair)
    return trained


def _stability_one(ctx: Context, level: int, name: str, k: int) -> bool:
    config = ctx.config
    base = os.path.join("stability", f"{name}_k{k}")
    result_path = os.path.join(level_dir(ctx.folder, level, base), "stability.json")
    network = _network(ctx, level, name, k)
    seeds = _stability_seeds(ctx, level, name, k)
    if store.analysis_done(result_path):
        for copy, seed in seeds.items():
            if os.path.isdir(level_dir(ctx.folder, level, os.path.join(base, copy))):  # same_order may be the main line
                train_copy(ctx, level, os.path.join(base, copy), network, k, seed)
        return False
    main_final = os.path.join(level_dir(ctx.folder, level, MAIN), "final_weights.npz")
    # The main line trained exactly this network with this data order: the ticket at the main rewind step
    # (rewound there with the same optimizer reset), and the dense network at k = 0 (nothing to reset).
    if _reuses_main(config, name, k) and is_done(ctx.folder, level, MAIN) and os.path.exists(main_final):
        same = states.load(main_final)
        same_source = "main"
    else:
        same = train_copy(ctx, level, os.path.join(base, "same_order"), network, k, ctx.seed)
        same_source = "same_order"
    other_seed = seeds["other_order"]
    other = train_copy(ctx, level, os.path.join(base, "other_order"), network, k, other_seed)
    dense = states.load(os.path.join(level_dir(ctx.folder, 0, MAIN), "final_weights.npz"))
    model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
    weights = {}
    for key, state in (("dense", dense), ("same", same), ("other", other)):
        set_masks(model, {n: np.ones_like(m) for n, m in network.masks.items()})
        rewind.restore(model, state)
        weights[key] = get_prunable_weights(model)
    record = {
        "analysis": "stability",
        "network": name,
        "level": level,
        "replicate": ctx.replicate,
        "rewind_step": k,
        "density": density(network.masks),
        "data_seeds": {"same_order": ctx.seed, "other_order": other_seed},
        "same_order_from": same_source,
        # m ⊙ W of the dense network trained from the start vs the subnetwork trained from m ⊙ W_k (same data
        # order); at level 0 the "subnetwork" is the dense network restarted at k (0 apart from the optimizer reset).
        "to_pruning": compare_weights(weights["dense"], weights["same"], network.masks),
        # The same subnetwork under two data orders.
        "to_data_order": compare_weights(weights["same"], weights["other"], network.masks),
    }
    atomic.write_json(result_path, records.seal({**record, records.BELONGS: ctx.belongs_to(level, base)}))
    _tensorboard(
        ctx,
        level,
        f"stability/{name}",
        {
            "stability/pruning_l2_distance": [record["to_pruning"]["l2_distance"]],
            "stability/pruning_angle_degrees": [record["to_pruning"]["angle_degrees"]],
            "stability/data_order_l2_distance": [record["to_data_order"]["l2_distance"]],
            "stability/data_order_angle_degrees": [record["to_data_order"]["angle_degrees"]],
        },
        [k],
    )
    print(
        f"replicate {ctx.replicate} level {level:2d} [stability {name} k={k}] to pruning: L2 "
        f"{record['to_pruning']['l2_distance']:.4g} (normalized {record['to_pruning']['normalized_l2_distance']:.3f}), "
        f"angle {record['to_pruning']['angle_degrees']:.1f} deg; to data order: L2 {record['to_data_order']['l2_distance']:.4g}, "
        f"angle {record['to_data_order']['angle_degrees']:.1f} deg",
        flush=True,
    )
    return True


@register_branch("stability", needs=_stability_needs, lineage=True, units=_stability_units)
def run_stability(ctx: Context, levels) -> bool:
    """Stability to pruning and to data order at every requested level, network and step k."""
    todo = [
        (level, name, k)
        for level in levels
        for name in networks(ctx.config, level, "stability")
        for k in analysis_steps(ctx.config)
    ]
    if all(
        store.analysis_complete(
            os.path.join(level_dir(ctx.folder, level, os.path.join("stability", f"{name}_k{k}")), "stability.json")
        )
        for level, name, k in todo
    ):
        return False
    trained = False
    with locks.hold(ctx.folder, "stability", ctx.config.run.wait_for_lock):
        for level, name, k in todo:
            trained |= _stability_one(ctx, level, name, k)
    return trained
