"""The pruning decision on literal arrays (no Keras)."""

import numpy as np
import pytest

from lottery_tf.pruning import PruningSpec, count_to_prune, density, prune_by_magnitude, random_masks_like


def test_count_is_ceil_of_fraction_of_remaining():
    assert count_to_prune(0.2, 235200) == 47040  # exact despite float round-off
    assert count_to_prune(0.2, 7) == 2  # ceil(1.4)
    assert count_to_prune(0.1, 10) == 1
    assert count_to_prune(0.5, 1) == 1
    assert count_to_prune(0.2, 0) == 0


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
