"""Each branch type starts from the right mask, weights and step (in-process, synthetic data)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from lottery_tf.core import rewind
from lottery_tf.core.masking import get_masks, get_prunable_weights
from lottery_tf.engine import experiment, recipe
from lottery_tf.engine.config import (
    BranchConfig,
    DataConfig,
    ExperimentConfig,
    PruningConfig,
    RunConfig,
    TrainingConfig,
    derived_seed,
    replicate_seed,
)
from lottery_tf.engine.data import get_splits
from lottery_tf.engine.run_dir import level_dir
from lottery_tf.store import atomic, states


def _config(tmp, **branch):
    return ExperimentConfig(
        data=DataConfig(
            name="synthetic", synthetic_train_examples=1024, synthetic_test_examples=256, validation_examples=256
        ),
        training=TrainingConfig(iterations=100, eval_every=50),
        pruning=PruningConfig(levels=2),
        branches=BranchConfig(**branch),
        run=RunConfig(output_dir=str(tmp), checkpoint_every=0, tensorboard=False),
    )


@pytest.fixture(scope="module")
def main_line(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("branches")
    config = _config(tmp)
    splits = get_splits(config.data)
    ctx = experiment.Context(config, splits, 0, replicate_seed(0, 0), str(tmp / "rep0"))
    assert experiment.run_main_line(ctx)
    return ctx


def _ctx(main_line, **branch):
    return dataclasses.replace(main_line, config=dataclasses.replace(main_line.config, branches=BranchConfig(**branch)))


def _main_masks(ctx, level):
    return atomic.read_npz(os.path.join(level_dir(ctx.folder, level, "main"), "masks.npz"))


def _kernels(state):
    return {k: v for k, v in state.items() if k.endswith("kernel")}


def _assert_weights_are(model, state, masks):
    """The model's masked weights equal ``state``'s kernels times the masks."""
    weights = get_prunable_weights(model)
    kernels = _kernels(state)
    for name, value in weights.items():  # states and masks share the weights' unique names
        np.testing.assert_array_equal(value, kernels[name] * masks[name])


def test_reinit_same_mask_fresh_init_same_distribution(main_line):
    start = experiment.prepare_branch(main_line, "reinit", 2)
    masks = _main_masks(main_line, 2)
    for name, mask in get_masks(start.model).items():
        np.testing.assert_array_equal(mask, masks[name])
    assert start.origin == 0 and int(start.model.optimizer.iterations.numpy()) == 0
    assert start.info["seed"] == derived_seed(main_line.seed, "reinit", 2) != main_line.seed
    weights = get_prunable_weights(start.model)
    original = states.load(os.path.join(main_line.folder, "rewind_point.npz"))
    fc1_original = [v for k, v in original.items() if k.endswith("fc1/kernel")][0]
    alive = masks["fc1/kernel"] == 1
    assert not np.allclose(weights["fc1/kernel"][alive], fc1_original[alive])
    assert np.all(weights["fc1/kernel"][~alive] == 0)
    # Same distribution as the original initialization: Glorot normal, std
    # sqrt(2 / (784 + 300)) = 0.0430 (the mask was chosen without looking at these values).
    assert np.std(weights["fc1/kernel"][alive]) == pytest.approx(np.sqrt(2 / (784 + 300)), rel=0.03)
    assert np.std(fc1_original) == pytest.approx(np.sqrt(2 / (784 + 300)), rel=0.03)


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_random_prune_same_density_random_mask_original_weights(main_line, scope):
    ctx = _ctx(main_line, names=("random_prune",), levels=(2,), random_prune_scope=scope)
    start = experiment.prepare_branch(ctx, "random_prune", 2)
    assert start.name == f"random_prune_{scope}"
    main_masks, masks = _main_masks(ctx, 2), get_masks(start.model)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    main_counts = {n: int(m.sum()) for n, m in main_masks.items()}
    if scope == "layerwise":
        assert counts == main_counts
    else:
        assert sum(counts.values()) == sum(main_counts.values()) and counts != main_counts
    overlap = (masks["fc1/kernel"] * main_masks["fc1/kernel"]).sum() / main_masks["fc1/kernel"].sum()
    assert 0.5 < overlap < 0.8  # independent random choice: about the density (0.64), not 1
    _assert_weights_are(start.model, states.load(os.path.join(ctx.folder, "rewind_point.npz")), masks)
    assert start.origin == 0


def test_rewind_branch_replays_the_dense_run_to_step_k(main_line):
    ctx = _ctx(main_line, names=("rewind",), levels=(1,), rewind_step=50)
    start = experiment.prepare_branch(ctx, "rewind", 1)
    assert start.name == "rewind_50" and start.origin == 50
    assert rewind.global_step(start.model.optimizer) == 50  # fresh optimizer, schedule and data at step 50
    replayed = states.load(os.path.join(ctx.folder, "rewind_points", "step_50.npz"))
    _assert_weights_are(start.model, replayed, _main_masks(ctx, 1))
    # An independent dense run to step 50 with the same seed and data reaches the same state.
    model = experiment.build_masked_model(ctx.config, ctx.splits, ctx.seed)
    model.fit(recipe.train_pipeline(ctx.splits, 60, ctx.seed), epochs=1, steps_per_epoch=50, verbose=0, shuffle=False)
    independent = rewind.capture(model)
    for key, value in replayed.items():
        np.testing.assert_allclose(value, independent[key], atol=1e-6)
    # Rewinding to 0 is the reset to initialization: the main line's rewind point.
    ctx0 = _ctx(main_line, names=("rewind",), levels=(1,), rewind_step=0)
    start0 = experiment.prepare_branch(ctx0, "rewind", 1)
    _assert_weights_are(start0.model, states.load(os.path.join(ctx.folder, "rewind_point.npz")), _main_masks(ctx, 1))


def test_lr_rewind_oneshot_starts_from_previous_main_level_trained_weights(main_line):
    ctx = _ctx(main_line, names=("lr_rewind_oneshot",), levels=(2,))
    start = experiment.prepare_branch(ctx, "lr_rewind_oneshot", 2)
    assert start.name == "lr_rewind_oneshot_0" and start.origin == 0
    trained = states.load(os.path.join(level_dir(ctx.folder, 1, "main"), "final_weights.npz"))
    masks = _main_masks(ctx, 2)
    _assert_weights_are(start.model, trained, masks)
    # The mask of level 2 was computed from exactly these trained weights: survivors are the largest.
    fc1 = [v for k, v in trained.items() if k.endswith("fc1/kernel")][0]
    previous = _main_masks(ctx, 1)["fc1/kernel"] == 1
    kept = masks["fc1/kernel"] == 1
    assert np.abs(fc1[kept]).min() >= np.abs(fc1[previous & ~kept]).max()
    for variable in start.model.optimizer.variables:
        if variable is not start.model.optimizer.iterations and "learning_rate" not in variable.path:
            assert not np.any(variable.numpy())


def test_retrain_overrides_training_settings(main_line):
    ctx = _ctx(main_line, names=("retrain",), levels=(1,), optimizer="sgd", learning_rate=0.05, iterations=150)
    start = experiment.prepare_branch(ctx, "retrain", 1)
    assert start.name.startswith("retrain_")
    assert type(start.model.optimizer).__name__ == "SGD"
    assert float(start.model.optimizer.learning_rate) == pytest.approx(0.05)
    assert start.training.iterations == 150 and start.training.batch_size == 60
    _assert_weights_are(start.model, states.load(os.path.join(ctx.folder, "rewind_point.npz")), _main_masks(ctx, 1))


def test_run_branch_writes_metrics_and_never_touches_main(main_line):
    ctx = _ctx(main_line, names=("reinit",), levels=(1,))
    main_metrics = os.path.join(level_dir(ctx.folder, 1, "main"), "metrics.json")
    stamp = os.path.getmtime(main_metrics)
    assert experiment.run_branch(ctx, "reinit", 1)
    assert not experiment.run_branch(ctx, "reinit", 1)  # done: no work
    metrics = json.load(open(os.path.join(level_dir(ctx.folder, 1, "reinit"), "metrics.json")))
    assert metrics["branch"] == "reinit" and metrics["iterations"] == [0, 50, 100]
    assert metrics["density"] == json.load(open(main_metrics))["density"]
    assert os.path.getmtime(main_metrics) == stamp


def test_branch_needing_missing_main_files_is_refused(main_line, tmp_path):
    ctx = dataclasses.replace(_ctx(main_line, names=("reinit",), levels=(2,)), folder=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="branch reinit at level 2 needs .*level_02/main/masks.npz"):
        experiment.check_branch_inputs(ctx)


# -- rewinding to step k > 0: every branch starts where the ticket starts ----------------

K = 50


@pytest.fixture(scope="module")
def main_line_k(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("branches_k")
    config = dataclasses.replace(_config(tmp), pruning=PruningConfig(levels=2, rewind_step=K))
    splits = get_splits(config.data)
    ctx = experiment.Context(config, splits, 0, replicate_seed(0, 0), str(tmp / "rep0"))
    assert experiment.run_main_line(ctx)
    return ctx


def _starts_fresh_at_k(start):
    optimizer = start.model.optimizer
    assert start.origin == K
    assert int(optimizer.iterations.numpy()) == 0 and rewind.global_step(optimizer) == K  # fresh, schedule at k
    assert start.training.iterations - start.origin == 100 - K  # the ticket's length
    for variable in optimizer.variables:
        if variable is not optimizer.iterations and "learning_rate" not in variable.path:
            assert not np.any(variable.numpy()), variable.path


@pytest.mark.parametrize("name", ["reinit", "random_prune", "retrain", "lr_rewind_oneshot"])
def test_branches_start_at_the_tickets_rewind_step(main_line_k, name):
    ctx = _ctx(main_line_k, names=(name,), levels=(2,))
    start = experiment.prepare_branch(ctx, name, 2)
    _starts_fresh_at_k(start)
    assert start.info["start_step"] == K and start.info["rewind_optimizer"] == "fresh"
    masks = get_masks(start.model)
    rewound = states.load(os.path.join(ctx.folder, "rewind_point.npz"))  # the dense run at step k
    if name in ("random_prune", "retrain"):
        _assert_weights_are(start.model, rewound, masks)
    elif name == "lr_rewind_oneshot":
        _assert_weights_are(
            start.model, states.load(os.path.join(level_dir(ctx.folder, 1, "main"), "final_weights.npz")), masks
        )
    else:  # reinit: a fresh initialization, not the state at k
        fc1 = [v for k, v in rewound.items() if k.endswith("fc1/kernel")][0]
        alive = masks["fc1/kernel"] == 1
        assert not np.allclose(get_prunable_weights(start.model)["fc1/kernel"][alive], fc1[alive])


def test_reinit_at_k_trains_the_tickets_steps(main_line_k):
    ctx = _ctx(main_line_k, names=("reinit",), levels=(1,))
    assert experiment.run_branch(ctx, "reinit", 1)
    metrics = json.load(open(os.path.join(level_dir(ctx.folder, 1, "reinit"), "metrics.json")))
    main = json.load(open(os.path.join(level_dir(ctx.folder, 1, "main"), "metrics.json")))
    assert metrics["iterations"] == main["iterations"] == [K, 100]
    assert metrics["start_step"] == main["start_step"] == K and metrics["steps"] == main["steps"] == 100 - K


def test_lr_rewind_is_its_own_lineage(main_line_k):
    """Level 2 of learning-rate rewinding prunes lr_rewind level 1's trained weights, not the main line's."""
    ctx = _ctx(main_line_k, names=("lr_rewind",), levels=(2,))
    assert experiment.run_lr_rewind_lineage(ctx, 2)
    name = f"lr_rewind_{K}"
    level1 = level_dir(ctx.folder, 1, name)
    level2 = level_dir(ctx.folder, 2, name)
    # Level 1: main level 1's mask (the same pruning of the dense trained weights).
    masks1 = atomic.read_npz(os.path.join(level1, "masks.npz"))
    for key, mask in _main_masks(ctx, 1).items():
        np.testing.assert_array_equal(masks1[key], mask)
    # Level 2's mask is the pruning of lr_rewind level 1's trained weights.
    from lottery_tf.core.pruning import prune_by_magnitude

    trained1 = states.load(os.path.join(level1, "final_weights.npz"))
    weights1 = {k: trained1[k] for k in masks1}
    expected = prune_by_magnitude(weights1, masks1, experiment.pruning_spec(ctx.config), "output/kernel")
    masks2 = atomic.read_npz(os.path.join(level2, "masks.npz"))
    for key in masks1:
        np.testing.assert_array_equal(masks2[key], expected[key])
    assert any(not np.array_equal(masks2[k], _main_masks(ctx, 2)[k]) for k in masks2)  # its own sparsity path
    m1 = json.load(open(os.path.join(level1, "metrics.json")))
    m2 = json.load(open(os.path.join(level2, "metrics.json")))
    assert m1["iterations"][0] == m2["iterations"][0] == K and m2["density"] < m1["density"]
    assert json.load(open(os.path.join(level2, "branch.json")))["type"] == "lr_rewind"
    assert not experiment.run_lr_rewind_lineage(ctx, 2)  # done: nothing to train


def test_the_registry_holds_every_branch_the_flags_accept():
    from lottery_tf.engine.branches import registry as branches
    from lottery_tf.engine.config import BRANCHES

    assert sorted(branches.BRANCH_TYPES.names()) == sorted(BRANCHES)
    with pytest.raises(ValueError, match="unknown branch .shuffle.; expected one of: gmp, instability, lr_rewind"):
        branches.branch_type("shuffle")
    # One-level branches have a start; lineages and analyses organise their own levels.
    assert {n for n in BRANCHES if branches.branch_type(n).start is None} == {
        "lr_rewind",
        "instability",
        "stability",
        "pai_magnitude",
        "pai_random",
        "pai_snip",
        "pai_grasp",
        "pai_synflow",
        "set",  # dynamic sparse training: a random mask at the level's count, drawn by the branch itself
        "rigl",
    }
    with pytest.raises(ValueError, match="organises its own levels"):
        branches.prepare_branch(None, "instability", 1)


def test_missing_inputs_are_named_from_the_registry(main_line):
    ctx = _ctx(main_line, names=("stability",), levels=(1,))
    os.rename(os.path.join(ctx.folder, "level_00", "main", "final_weights.npz"), os.path.join(ctx.folder, "moved.npz"))
    try:
        with pytest.raises(
            FileNotFoundError, match=r"branch stability at level 1 needs .*level_00/main/final_weights.npz"
        ):
            experiment.check_branch_inputs(ctx)
    finally:
        os.rename(
            os.path.join(ctx.folder, "moved.npz"), os.path.join(ctx.folder, "level_00", "main", "final_weights.npz")
        )
