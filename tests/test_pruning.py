"""The pruning decision on literal arrays (no Keras)."""

import numpy as np
import pytest

from lottery_tf.core.pruning import PruningSpec, count_to_prune, density, prune_by_magnitude, random_masks_like


def test_count_is_ceil_of_fraction_of_remaining():
    assert count_to_prune(0.2, 235200) == 47040  # exact despite float round-off
    assert count_to_prune(0.2, 7) == 2  # ceil(1.4)
    assert count_to_prune(0.1, 10) == 1
    assert count_to_prune(0.5, 1) == 1
    assert count_to_prune(0.2, 0) == 0


@pytest.mark.parametrize(
    "fraction, remaining, expected",
    [
        (1e-10, 5, 1),  # any positive fraction removes at least one weight: ceil(5e-10) = 1
        (1e-320, 7, 1),  # a subnormal double too
        (0.3, 10, 3),  # 0.3 * 10 is 3.0000000000000004 in floating point
        (0.1, 30, 3),  # 0.1 * 30 is 3.0000000000000004
        (0.7, 10, 7),  # 0.7 * 10 is 7.000000000000001
        (0.29, 100, 29),  # 0.29 * 100 is 28.999999999999996: still exactly 29
        (0.2, 235200, 47040),
        (0.2, 235201, 47041),  # 47040.2 -> 47041
        (0.999999, 10, 10),
        (0.5, 3, 2),
        (1.0, 4, 4),
    ],
)
def test_count_is_exact_near_integers_and_for_tiny_fractions(fraction, remaining, expected):
    assert count_to_prune(fraction, remaining) == expected


def test_output_fraction_without_output_name_applies_to_the_last_weight():
    # The LTH rates on a 30-weight output layer: 10% of 30 is 3 pruned, 27 kept (not 20%: 24 kept).
    weights = {"fc1": np.arange(1.0, 101.0), "out": np.arange(1.0, 31.0)}
    masks = {name: np.ones_like(w) for name, w in weights.items()}
    out = prune_by_magnitude(weights, masks, PruningSpec("layerwise", fraction=0.2, output_fraction=0.1))
    assert int(out["out"].sum()) == 27
    assert int(out["fc1"].sum()) == 80
    # The global pool leaves the output layer out when it has its own fraction.
    out = prune_by_magnitude(weights, masks, PruningSpec("global", fraction=0.5, output_fraction=0.1))
    assert int(out["out"].sum()) == 27 and int(out["fc1"].sum()) == 50


def test_unknown_output_name_is_refused():
    weights = {"fc1": np.ones(4), "out": np.ones(4)}
    with pytest.raises(ValueError, match=r"output_name 'output/kernel' is not one of the weights \(fc1, out\)"):
        prune_by_magnitude(weights, {k: np.ones(4) for k in weights}, PruningSpec(output_fraction=0.1), "output/kernel")


def test_layerwise_prunes_smallest_in_each_layer():
    weights = {"a": np.array([[0.5, -0.1], [0.3, -0.9]]), "b": np.array([0.01, 2.0, -3.0, 0.2, 0.05])}
    masks = {"a": np.ones((2, 2)), "b": np.ones(5)}
    out = prune_by_magnitude(weights, masks, PruningSpec("layerwise", 0.5))
    np.testing.assert_array_equal(out["a"], [[1, 0], [0, 1]])  # ceil(2.0)=2 smallest: 0.1, 0.3
    np.testing.assert_array_equal(out["b"], [0, 1, 1, 0, 0])  # ceil(2.5)=3: 0.01, 0.05, 0.2
    assert out["a"].dtype == np.float32


def test_fraction_is_of_remaining_weights_and_pruned_stay_pruned():
    weights = {"a": np.array([9.0, 0.0, 8.0, 1.0, 2.0])}  # position 1 already pruned
    masks = {"a": np.array([1.0, 0.0, 1.0, 1.0, 1.0])}
    out = prune_by_magnitude(weights, masks, PruningSpec("layerwise", 0.5))
    np.testing.assert_array_equal(out["a"], [1, 0, 1, 0, 0])  # ceil(0.5*4)=2 of the 4 alive


def test_output_fraction_applies_to_output_layer_only():
    weights = {"h": np.arange(1.0, 11.0), "out": np.arange(1.0, 11.0)}
    masks = {"h": np.ones(10), "out": np.ones(10)}
    out = prune_by_magnitude(weights, masks, PruningSpec("layerwise", 0.2, output_fraction=0.1), "out")
    np.testing.assert_array_equal(out["h"], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(out["out"], [0, 1, 1, 1, 1, 1, 1, 1, 1, 1])


def test_global_pools_by_raw_magnitude():
    weights = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([0.5, 10.0])}
    masks = {"a": np.ones(4), "b": np.ones(2)}
    out = prune_by_magnitude(weights, masks, PruningSpec("global", 0.5))
    np.testing.assert_array_equal(out["a"], [0, 0, 1, 1])
    np.testing.assert_array_equal(out["b"], [0, 1])


def test_global_with_layer_override_prunes_that_layer_separately():
    weights = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "out": np.array([0.1, 0.2, 0.3, 0.4])}
    masks = {"a": np.ones(4), "out": np.ones(4)}
    spec = PruningSpec("global", 0.5, layer_fractions={"out": 0.25})
    out = prune_by_magnitude(weights, masks, spec)
    np.testing.assert_array_equal(out["a"], [0, 0, 1, 1])  # pool is "a" alone
    np.testing.assert_array_equal(out["out"], [0, 1, 1, 1])


def test_ties_broken_by_position_and_count_exact():
    weights = {"a": np.full((2, 3), 0.5), "b": np.full(4, -0.5)}
    masks = {"a": np.ones((2, 3)), "b": np.ones(4)}
    out = prune_by_magnitude(weights, masks, PruningSpec("global", 0.3))
    # ceil(0.3 * 10) = 3: the first three positions in layer order.
    np.testing.assert_array_equal(out["a"], [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(out["b"], [1, 1, 1, 1])
    again = prune_by_magnitude(weights, masks, PruningSpec("global", 0.3))
    for name in out:
        np.testing.assert_array_equal(out[name], again[name])


def test_ten_levels_exact_counts():
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(size=1000)}
    masks = {"w": np.ones(1000)}
    alive = 1000
    for _ in range(10):
        masks = prune_by_magnitude(weights, masks, PruningSpec("layerwise", 0.2))
        alive -= count_to_prune(0.2, alive)
        assert int(masks["w"].sum()) == alive
    assert alive == 105  # 1000,800,640,512,409,327,261,208,166,132,105


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "random"}, "Unknown pruning method"),
        ({"fraction": 0.0}, "fraction must be"),
        ({"fraction": 1.0}, "fraction must be"),
        ({"output_fraction": 1.5}, "output_fraction"),
        ({"layer_fractions": {"x": -0.1}}, "layer_fractions"),
    ],
)
def test_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningSpec(**kwargs)


def test_mismatched_inputs_rejected():
    with pytest.raises(ValueError, match="same names"):
        prune_by_magnitude({"a": np.ones(2)}, {"b": np.ones(2)}, PruningSpec())
    with pytest.raises(ValueError, match="Shape mismatch"):
        prune_by_magnitude({"a": np.ones(2)}, {"a": np.ones(3)}, PruningSpec())


def test_random_masks_keep_density_per_layer_or_globally():
    masks = {"a": np.array([1, 1, 0, 0, 0, 0, 0, 0.0]), "b": np.array([1, 1, 1, 1.0])}
    per_layer = random_masks_like(masks, seed=3, per_layer=True)
    assert [int(per_layer[n].sum()) for n in masks] == [2, 4]
    pooled = random_masks_like(masks, seed=3, per_layer=False)
    assert sum(int(pooled[n].sum()) for n in masks) == 6
    assert density(masks) == 0.5


# -- structured sparsity: blocks and N:M, in the runtime's layout (outputs x inputs) ----------------------

from lottery_tf.core.pruning import (  # noqa: E402
    block_ids,
    check_block,
    check_n_m,
    from_runtime_view,
    prune_to_density,
    runtime_view,
    satisfies_n_m,
)


def test_runtime_view_is_outputs_by_inputs():
    dense = np.arange(6).reshape(3, 2)  # Keras Dense kernel: 3 inputs, 2 units
    np.testing.assert_array_equal(runtime_view(dense), [[0, 2, 4], [1, 3, 5]])  # TFLite: (units, inputs) = k.T
    conv = np.arange(2 * 2 * 3 * 4).reshape(2, 2, 3, 4)  # (kh, kw, in, out)
    view = runtime_view(conv)
    assert view.shape == (4, 12)  # TFLite's OHWI filter, flattened: (out, kh * kw * in)
    np.testing.assert_array_equal(view[1], conv[..., 1].ravel())
    np.testing.assert_array_equal(from_runtime_view(view, conv.shape), conv)


def test_one_by_four_blocks_are_four_consecutive_inputs_of_one_unit():
    # Keras kernel (inputs=8, units=2): unit 0's inputs 0..3 form block 0, inputs 4..7 block 1.
    ids, count = block_ids((8, 2), (1, 4))
    assert count == 4
    np.testing.assert_array_equal(ids.T, [[0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 3, 3, 3, 3]])
    # So a 1x4 block is four consecutive *rows* of one column of the Keras kernel.
    assert set(ids[0:4, 0]) == {0} and set(ids[4:8, 0]) == {1}


def test_blocks_pruned_as_units_by_their_norm():
    kernel = np.array(
        [
            [0.1, 3.0],
            [0.1, 3.0],
            [0.1, 3.0],
            [0.1, 3.0],  # inputs 0-3: unit 0 small, unit 1 big
            [2.0, 0.2],
            [-2.0, 0.2],
            [2.0, 0.2],
            [2.0, 0.2],
        ]
    )  # inputs 4-7: unit 0 big, unit 1 small
    out = prune_by_magnitude({"k": kernel}, {"k": np.ones((8, 2))}, PruningSpec("layerwise", 0.5, block=(1, 4)))
    np.testing.assert_array_equal(out["k"].T, [[0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]])


def test_edge_blocks_are_the_weights_that_are_there_and_ties_go_by_position():
    # 6 inputs, 1 unit, blocks of 4: block 0 = inputs 0-3, block 1 = inputs 4-5 (the edge block).
    kernel = np.array([[1.0], [1.0], [1.0], [1.0], [1.0], [1.0]])  # norms 2.0 and 1.414: the edge block goes
    out = prune_by_magnitude({"k": kernel}, {"k": np.ones((6, 1))}, PruningSpec("layerwise", 0.5, block=(1, 4)))
    np.testing.assert_array_equal(out["k"].ravel(), [1, 1, 1, 1, 0, 0])
    tied = np.array([[1.0], [1.0], [0.0], [0.0], [1.0], [1.0], [0.0], [0.0]])  # two blocks of equal norm
    out = prune_by_magnitude({"k": tied}, {"k": np.ones((8, 1))}, PruningSpec("layerwise", 0.5, block=(1, 4)))
    np.testing.assert_array_equal(out["k"].ravel(), [0, 0, 0, 0, 1, 1, 1, 1])  # the first in position goes


def test_two_by_two_blocks_and_global_pooling_of_blocks():
    a = np.array([[1.0, 1.0], [1.0, 1.0]])  # one 2x2 block, norm 2
    b = np.array([[0.5, 0.5, 3.0, 3.0], [0.5, 0.5, 3.0, 3.0]])  # (inputs=2, units=4): blocks of units 0-1 and 2-3
    masks = {"a": np.ones((2, 2)), "b": np.ones((2, 4))}
    out = prune_by_magnitude({"a": a, "b": b}, masks, PruningSpec("global", 0.5, block=(2, 2)))
    # Three blocks pooled (norms 2, 1, 6): ceil(1.5) = 2 go, the two smallest: b's units 0-1 and a.
    np.testing.assert_array_equal(out["a"], [[0, 0], [0, 0]])
    np.testing.assert_array_equal(out["b"], [[0, 0, 1, 1], [0, 0, 1, 1]])


def test_a_pruned_block_stays_pruned_and_the_fraction_counts_blocks():
    kernel = np.arange(1.0, 17.0).reshape(16, 1)  # one unit, four 1x4 blocks with norms rising
    masks = {"k": np.ones((16, 1))}
    spec = PruningSpec("layerwise", 0.3, block=(1, 4))
    first = prune_by_magnitude({"k": kernel}, masks, spec)  # ceil(0.3 * 4) = 2 blocks
    np.testing.assert_array_equal(first["k"].ravel(), [0] * 8 + [1] * 8)
    second = prune_by_magnitude({"k": kernel * first["k"]}, first, spec)  # ceil(0.3 * 2) = 1 of the 2 left
    np.testing.assert_array_equal(second["k"].ravel(), [0] * 12 + [1] * 4)


def test_n_m_applies_once_the_kept_count_fits():
    # One unit, 8 inputs = two groups of 4. Magnitudes chosen so plain magnitude pruning would break 2:4.
    kernel = np.array([[8.0], [7.0], [6.0], [0.1], [5.0], [0.2], [0.3], [0.4]])
    masks = {"k": np.ones((8, 1))}
    spec = PruningSpec("layerwise", 0.5, n_m=(2, 4))
    out = prune_by_magnitude({"k": kernel}, masks, spec)  # keep 4 = the 2:4 capacity: the top 2 of each group
    np.testing.assert_array_equal(out["k"].ravel(), [1, 1, 0, 0, 1, 0, 0, 1])
    assert satisfies_n_m(out["k"], (2, 4))
    # Denser than N/M (keep 6 of 8): no group can hold 2 of 4, so this level is plain magnitude pruning.
    dense = prune_by_magnitude({"k": kernel}, masks, PruningSpec("layerwise", 0.25, n_m=(2, 4)))
    np.testing.assert_array_equal(dense["k"].ravel(), [1, 1, 1, 0, 1, 0, 1, 1])
    # Below N/M the kept weights are the largest among each group's top two: 3 of 8.
    sparse = prune_by_magnitude({"k": kernel}, masks, PruningSpec("layerwise", 0.6, n_m=(2, 4)))
    np.testing.assert_array_equal(sparse["k"].ravel(), [1, 1, 0, 0, 1, 0, 0, 0])


def test_n_m_groups_are_consecutive_inputs_and_the_edge_group_is_shorter():
    ids = block_ids((6, 2), (1, 4))[0]  # 6 inputs: groups {0-3} and {4, 5} for each unit
    np.testing.assert_array_equal(ids.T, [[0, 0, 0, 0, 1, 1], [2, 2, 2, 2, 3, 3]])
    assert satisfies_n_m(np.array([[1, 1], [1, 0], [0, 1], [0, 0], [1, 1], [1, 1]]), (2, 4))
    assert not satisfies_n_m(np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 0]]), (2, 4))


def test_structure_checks():
    assert check_block("1x4") == (1, 4) and check_n_m("2:4") == (2, 4)
    for bad in ("0x4", "1x", (1, -2), (1.5, 4)):
        with pytest.raises(ValueError, match="block must be"):
            check_block(bad)
    with pytest.raises(ValueError, match="N must be below M"):
        check_n_m("4:4")
    with pytest.raises(ValueError, match="two structures"):
        PruningSpec(block=(1, 4), n_m=(2, 4))


def test_random_controls_keep_the_structure():
    mask = np.zeros((16, 3))
    mask[0:4, 0] = mask[8:12, 2] = 1  # two 1x4 blocks alive
    out = random_masks_like({"k": mask}, seed=3, block=(1, 4))["k"]
    ids, _ = block_ids(mask.shape, (1, 4))
    alive_blocks = np.unique(ids[out != 0])
    assert alive_blocks.size == 2 and out.sum() == 8  # two whole blocks, drawn at random
    assert all(np.all(out[ids == b] == 1) for b in alive_blocks)
    nm = np.zeros((8, 4))
    nm[[0, 1, 4, 5], :] = 1  # 2:4, 16 of 32 kept
    random_nm = random_masks_like({"k": nm}, seed=5, n_m=(2, 4))["k"]
    assert random_nm.sum() == 16 and satisfies_n_m(random_nm, (2, 4)) and not np.array_equal(random_nm, nm)


def test_prune_to_density_with_structure():
    scores = {"k": np.array([[9.0], [9.0], [9.0], [9.0], [1.0], [1.0], [1.0], [1.0]])}
    out = prune_to_density(scores, {"k": np.ones((8, 1))}, 0.5, block=(1, 4))
    np.testing.assert_array_equal(out["k"].ravel(), [1, 1, 1, 1, 0, 0, 0, 0])
    out = prune_to_density(scores, {"k": np.ones((8, 1))}, 0.5, n_m=(2, 4))
    np.testing.assert_array_equal(out["k"].ravel(), [0, 0, 1, 1, 0, 0, 1, 1])  # equal scores: the later kept


def test_one_tie_rule_unstructured_and_n_m_before_it_starts_prune_the_same_weights():
    # A 4 x 2 kernel (4 inputs, 2 units) of 1s and 2s, 25% pruned: 2:4 has not started (6 kept > 4 allowed),
    # so its decision must be the unstructured one: of equal magnitudes the earlier is pruned first.
    kernel = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 1.0]])
    masks = {"k": np.ones((4, 2))}
    plain = prune_by_magnitude({"k": kernel}, masks, PruningSpec("layerwise", 0.25))["k"]
    n_m = prune_by_magnitude({"k": kernel}, masks, PruningSpec("layerwise", 0.25, n_m=(2, 4)))["k"]
    np.testing.assert_array_equal(plain, [[0, 1], [0, 1], [1, 1], [1, 1]])  # the 1s of inputs 0 and 1 go first
    np.testing.assert_array_equal(n_m, plain)
    blocks = prune_by_magnitude({"k": kernel}, masks, PruningSpec("layerwise", 0.5, block=(1, 2)))["k"]
    np.testing.assert_array_equal(blocks, [[0, 1], [0, 1], [1, 0], [1, 0]])  # equal block norms: the earlier goes


def test_edge_blocks_random_control_keeps_the_weight_count_per_layer_or_overall():
    # 13 x 7 (Keras layout): 7 outputs x 13 inputs at runtime, 1x4 blocks of 4, 4, 4 and 1 inputs per row.
    ticket = np.zeros((13, 7), np.float32)
    ticket[:8, :4] = 1.0  # units 0-3 keep two whole blocks (inputs 0-7) ...
    ticket[12, :4] = 1.0  # ... and their edge block of one input: 12 blocks, 36 weights
    for seed in range(20):
        random = random_masks_like({"k": ticket}, seed, block=(1, 4))["k"]
        assert random.sum() == 36, seed  # not any 12 blocks (from 12 to 48 weights)
        ids, _ = block_ids((13, 7), (1, 4))
        kept_ids = np.unique(ids[random != 0])
        assert all(np.all(random[ids == i] == 1) for i in kept_ids)  # whole blocks
    # With a structure, per_layer=False keeps the total (it was ignored): 36 + 8 over two layers.
    two = {"a": ticket, "b": np.pad(np.ones((8, 1), np.float32), ((0, 0), (0, 3)))}
    pooled = random_masks_like(two, 3, per_layer=False, block=(1, 4))
    assert sum(m.sum() for m in pooled.values()) == 44
    layered = random_masks_like(two, 3, per_layer=True, n_m=(2, 4))
    assert layered["a"].sum() == 36 and layered["b"].sum() == 8
    pooled_n_m = random_masks_like(two, 3, per_layer=False, n_m=(2, 4))
    assert sum(m.sum() for m in pooled_n_m.values()) == 44 and all(
        satisfies_n_m(m, (2, 4)) for m in pooled_n_m.values()
    )


def test_prune_to_density_with_blocks_keeps_the_count_and_never_empties_a_layer():
    rng = np.random.default_rng(0)
    scores = {"k": rng.random((13, 7))}
    out = prune_to_density(scores, {"k": np.ones((13, 7))}, 0.036, scope="layerwise", block=(1, 4))
    assert out["k"].sum() == round(0.036 * 91) == 3  # the edge blocks of one input fill it (was 0 of 3)
    out = prune_to_density({"k": rng.random((12, 4))}, {"k": np.ones((12, 4))}, 0.05, scope="layerwise", block=(1, 4))
    assert out["k"].sum() == 4  # round(2.4) = 2 fits no block of 4: the best block, never nothing
    # round(0.05 x 8) = 0: still one weight (or block) per layer at a density above 0 (a new user's case).
    eight = {"a": np.ones((8, 1)), "b": np.ones((8, 1))}
    for block, kept in ((None, 1), ((1, 4), 4)):
        out = prune_to_density(eight, {n: np.ones((8, 1)) for n in eight}, 0.05, scope="layerwise", block=block)
        assert {n: int(m.sum()) for n, m in out.items()} == {"a": kept, "b": kept}
