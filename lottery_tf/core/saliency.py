"""Pruning-at-initialization scores: magnitude, random, SNIP, GraSP, SynFlow.

Scores are functions of a (masked) model and data, separate from how many
weights each layer keeps (:func:`lottery_tf.core.pruning.prune_to_density`) and
from when pruning happens: the "scores vs distribution vs schedule" split of
Frankle et al., "Pruning Neural Networks at Initialization: Why are We
Missing the Mark?" (ICLR 2021). Every function returns *importance*: mask
name -> array, **higher = keep**; weights already pruned are never revived
whatever their score.

* ``magnitude``: |w|.
* ``random``: uniform noise from a seed.
* ``snip`` (Lee et al. 2019): |w ⊙ ∂L/∂w|, the gradient of the mean loss over
  all scoring examples (the average of equal-size batches' gradients).
* ``grasp`` (Wang et al. 2020): the paper's score is S = −w ⊙ (H g), with g the
  gradient of the loss on logits divided by a temperature (200) and H g the
  Hessian-vector product (double backward); the paper removes the weights of
  *highest* S. The importance returned is therefore −S = w ⊙ (H g), so that,
  as for every method here, the lowest importance is pruned.
* ``synflow`` (Tanaka et al. 2020): data-free. On a float64 copy of the model
  with every variable replaced by its absolute value, BatchNorm in inference
  mode and an all-ones input, the score is |w ⊙ ∂R/∂w| with R the sum of the
  outputs; :func:`synflow_masks` iterates it for ``rounds`` rounds, pruning to
  density^(r/rounds) after round r (the exponential schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import attach_masks, get_masks, masked_weights, set_masks

METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
GRASP_TEMPERATURE = 200.0


def _loss(logits, labels):
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32)))


def magnitude_scores(model) -> dict:
    """|w| for every masked weight."""
    return {name: np.abs(np.asarray(weight.numpy(), np.float64)) for name, _, weight in masked_weights(model)}


def random_scores(model, seed: int) -> dict:
    """Uniform noise in [0, 1), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return {name: rng.random(tuple(weight.shape)) for name, _, weight in masked_weights(model)}


def _mean_gradients(model, batches, transform=lambda logits: logits) -> list:
    pairs = masked_weights(model)
    weights = [weight for _, _, weight in pairs]
    total, count = [tf.zeros_like(w, tf.float64) for w in weights], 0
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = _loss(transform(model(x, training=False)), y)
        n = int(np.shape(y)[0])
        total = [t + n * tf.cast(g, tf.float64) for t, g in zip(total, tape.gradient(loss, weights))]
        count += n
    if not count:
        raise ValueError("scoring needs at least one example")
    return [t / count for t in total]


def snip_scores(model, batches: Sequence) -> dict:
    """|w ⊙ ∂L/∂w| with L the mean cross-entropy over every example of ``batches`` ((x, y) pairs).

    BatchNorm and dropout run in inference mode, so the scores do not depend on
    how the examples are split into batches.
    """
    gradients = _mean_gradients(model, batches)
    return {
        name: np.abs(np.asarray(weight.numpy(), np.float64) * g.numpy())
        for (name, _, weight), g in zip(masked_weights(model), gradients)
    }


def grasp_scores(model, batches: Sequence, temperature: float = GRASP_TEMPERATURE) -> dict:
    """GraSP importance w ⊙ (H g) = −S (the paper prunes the highest S = −w ⊙ H g; see the module docstring).

    g is the gradient of the mean loss on ``logits / temperature`` over all
    examples; H g is the Hessian of that loss times g, by double backward,
    averaged over the examples.
    """
    scale = lambda logits: tf.cast(logits, tf.float32) / temperature  # noqa: E731
    g = _mean_gradients(model, batches, scale)
    pairs = masked_weights(model)
    weights = [weight for _, _, weight in pairs]
    hg, count = [tf.zeros_like(w, tf.float64) for w in weights], 0
    for x, y in batches:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = _loss(scale(model(x, training=False)), y)
            grads = inner.gradient(loss, weights)
            z = tf.add_n([tf.reduce_sum(gr * tf.cast(tf.stop_gradient(gi), gr.dtype)) for gr, gi in zip(grads, g)])
        n = int(np.shape(y)[0])
        hg = [t + n * tf.cast(h, tf.float64) for t, h in zip(hg, outer.gradient(z, weights))]
        count += n
    return {
        name: np.asarray(weight.numpy(), np.float64) * (h / count).numpy() for (name, _, weight), h in zip(pairs, hg)
    }


def _float64_config(value):
    if isinstance(value, dict):
        return {k: ("float64" if k == "dtype" and v is not None else _float64_config(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_float64_config(v) for v in value]
    return value


def float64_copy(model):
    """A copy of ``model`` computing in float64 (same architecture, masks and values)."""

    def clone_layer(layer):
        return layer.__class__.from_config(_float64_config(layer.get_config()))

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    masks = get_masks(model)
    attach_masks(copy, list(masks), masks)
    return copy


def synflow_scores(model64, input_shape: Sequence[int]) -> dict:
    """One round of SynFlow on a float64 model whose variables are already absolute values.

    R = sum of the outputs for one all-ones input; the score is |w ⊙ ∂R/∂w|.
    """
    pairs = masked_weights(model64)
    weights = [weight for _, _, weight in pairs]
    ones = tf.ones((1, *input_shape), tf.float64)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(tf.cast(model64(ones, training=False), tf.float64))
    grads = tape.gradient(total, weights)
    return {
        name: np.abs(np.asarray(weight.numpy(), np.float64) * g.numpy()) for (name, _, weight), g in zip(pairs, grads)
    }


def synflow_masks(
    model, input_shape: Sequence[int], density: float, rounds: int = 100, prune: Callable | None = None
) -> dict:
    """Iterative SynFlow: ``rounds`` rounds, pruning to ``density``^(r/rounds) after round r.

    Args:
        model: The masked model at its start point (not modified).
        input_shape: One example's shape (no batch dimension).
        density: The final fraction of prunable weights kept (of all, pruned included).
        rounds: >= 1.
        prune: ``prune(scores, masks, density)`` -> masks; default global
            (:func:`lottery_tf.core.pruning.prune_to_density`).

    Returns:
        The masks (name -> float32 0/1).
    """
    from lottery_tf.core.pruning import prune_to_density

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"synflow rounds must be an integer >= 1, got {rounds!r}")
    prune = prune or (lambda scores, masks, d: prune_to_density(scores, masks, d, scope="global"))
    copy = float64_copy(model)
    for variable in copy.variables:  # linearize: every value becomes its absolute value
        variable.assign(tf.abs(variable))
    masks = get_masks(model)
    for r in range(1, rounds + 1):
        scores = synflow_scores(copy, input_shape)
        masks = prune(scores, masks, density ** (r / rounds))
        set_masks(copy, masks)  # zeroes the pruned weights of the copy
    return masks


def balanced_batches(x: np.ndarray, y: np.ndarray, per_class: int, seed: int, batch_size: int = 256) -> list:
    """``per_class`` examples of every class, drawn without replacement with ``seed``, in batches.

    Raises:
        ValueError: If ``per_class`` < 1 or a class has fewer examples.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"scoring examples per class must be an integer >= 1, got {per_class!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(y).reshape(-1)
    chosen = []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        if where.size < per_class:
            raise ValueError(f"class {label} has {where.size} training examples, fewer than {per_class} per class")
        chosen.extend(rng.choice(where, per_class, replace=False))
    chosen = np.sort(np.asarray(chosen))
    return [(x[chosen[i : i + batch_size]], y[chosen[i : i + batch_size]]) for i in range(0, chosen.size, batch_size)]


def scores(method: str, model, batches: Sequence = (), seed: int = 0) -> dict:
    """Importance of every masked weight by ``method`` (one of :data:`METHODS` but ``synflow``).

    Raises:
        ValueError: For an unknown method (SynFlow prunes iteratively: :func:`synflow_masks`).
    """
    if method == "magnitude":
        return magnitude_scores(model)
    if method == "random":
        return random_scores(model, seed)
    if method == "snip":
        return snip_scores(model, batches)
    if method == "grasp":
        return grasp_scores(model, batches)
    if method == "synflow":
        raise ValueError("synflow prunes in rounds: use synflow_masks")
    raise ValueError(f"unknown scoring method {method!r}; expected one of {', '.join(METHODS)}")


def invert(importance: Mapping[str, np.ndarray]) -> dict:
    """The "invert the scores" ablation: prune the most important weights instead of the least."""
    return {name: -np.asarray(value, np.float64) for name, value in importance.items()}
