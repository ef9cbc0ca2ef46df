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

Every score runs on TensorFlow and on JAX (the gradients are computed by
:mod:`lottery_tf.core.gradients`), with the same numbers to float32 rounding.
On JAX, Keras computes BatchNormalization in float32 even in SynFlow's float64
copy (its type promotion maps float64 to float32 there), so SynFlow scores of
models with BatchNorm agree with TensorFlow's to float32 rounding, not float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lottery_tf.core.gradients import Gradients, float64, ones
from lottery_tf.core.keras_compat import BACKEND, keras
from lottery_tf.core.masking import attach_masks, get_masks, masked_weights, set_masks

METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
GRASP_TEMPERATURE = 200.0


def magnitude_scores(model) -> dict:
    """|w| for every masked weight."""
    return {name: np.abs(np.asarray(weight.numpy(), np.float64)) for name, _, weight in masked_weights(model)}


def random_scores(model, seed: int) -> dict:
    """Uniform noise in [0, 1), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return {name: rng.random(tuple(weight.shape)) for name, _, weight in masked_weights(model)}


def _mean_gradients(model, batches, temperature=None) -> list:
    gradients = Gradients(model, [weight for _, _, weight in masked_weights(model)])
    total, count = [np.zeros(tuple(w.shape), np.float64) for w in gradients.weights], 0
    for x, y in batches:
        n = int(np.shape(y)[0])
        total = [t + n * g.astype(np.float64) for t, g in zip(total, gradients.loss_gradients(x, y, temperature))]
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
        name: np.abs(np.asarray(weight.numpy(), np.float64) * g)
        for (name, _, weight), g in zip(masked_weights(model), gradients)
    }


def grasp_scores(model, batches: Sequence, temperature: float = GRASP_TEMPERATURE) -> dict:
    """GraSP importance w ⊙ (H g) = −S (the paper prunes the highest S = −w ⊙ H g; see the module docstring).

    g is the gradient of the mean loss on ``logits / temperature`` over all
    examples; H g is the Hessian of that loss times g, by double backward,
    averaged over the examples.
    """
    g = _mean_gradients(model, batches, temperature)
    pairs = masked_weights(model)
    gradients = Gradients(model, [weight for _, _, weight in pairs])
    hg, count = [np.zeros(tuple(w.shape), np.float64) for w in gradients.weights], 0
    for x, y in batches:
        n = int(np.shape(y)[0])
        products = gradients.hessian_gradient_product(x, y, g, temperature)
        hg = [t + n * h.astype(np.float64) for t, h in zip(hg, products)]
        count += n
    return {name: np.asarray(weight.numpy(), np.float64) * (h / count) for (name, _, weight), h in zip(pairs, hg)}


def _float64_config(value):
    if isinstance(value, dict):
        return {k: ("float64" if k == "dtype" and v is not None else _float64_config(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_float64_config(v) for v in value]
    return value


def float64_copy(model):
    """A copy of ``model`` computing in float64 (same architecture, masks and values).

    On JAX the copy is built, and must be run, inside :func:`lottery_tf.core.gradients.float64`
    (``jax.enable_x64``): outside it JAX computes in float32.
    """

    def clone_layer(layer):
        return layer.__class__.from_config(_float64_config(layer.get_config()))

    with float64():
        copy = keras.models.clone_model(model, clone_function=clone_layer)
        copy.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
        masks = get_masks(model)
        attach_masks(copy, list(masks), masks)
    return copy


def _synflow_scores(gradients: Gradients, input_shape: Sequence[int]) -> dict:
    with float64():
        grads = gradients.output_sum_gradients(ones((1, *input_shape), "float64"))
        found = {
            name: np.abs(np.asarray(weight.numpy(), np.float64) * g)
            for (name, _, weight), g in zip(masked_weights(gradients.model), grads)
        }
    if BACKEND == "jax" and not all(np.isfinite(score).all() for score in found.values()):
        raise ValueError(
            "SynFlow's scores overflowed on the jax backend: Keras computes BatchNormalization (and other layers "
            "that follow its type promotion) in float32 there, even in SynFlow's float64 copy; score on TensorFlow."
        )
    return found


def synflow_scores(model64, input_shape: Sequence[int]) -> dict:
    """One round of SynFlow on a float64 model whose variables are already absolute values.

    R = sum of the outputs for one all-ones input; the score is |w ⊙ ∂R/∂w|.
    """
    return _synflow_scores(Gradients(model64, [weight for _, _, weight in masked_weights(model64)]), input_shape)


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

    Raises:
        ValueError: If ``rounds`` is not an integer >= 1.
    """
    from lottery_tf.core.pruning import prune_to_density

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"synflow rounds must be an integer >= 1, got {rounds!r}")
    prune = prune or (lambda scores, masks, d: prune_to_density(scores, masks, d, scope="global"))
    copy = float64_copy(model)
    masks = get_masks(model)
    with float64():
        for variable in copy.variables:  # linearize: every value becomes its absolute value
            variable.assign(np.abs(np.asarray(variable.numpy())))
        gradients = Gradients(copy, [weight for _, _, weight in masked_weights(copy)])
        for r in range(1, rounds + 1):
            scores = _synflow_scores(gradients, input_shape)
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
