"""Dynamic sparse training: SET and RigL, sparse from the first step, connections moved while training.

SET (Mocanu et al., Nature Communications 2018) and RigL (Evci et al.,
"Rigging the Lottery", ICML 2020) train a network at a fixed density from its
initialization: every ``update_every`` steps, until ``end_fraction`` of
training, each layer drops its smallest-magnitude surviving weights and
regrows as many connections, at random (SET) or where the dense gradient of
the loss is largest (RigL). The count of active weights of each layer never
changes.

The top of this module is the decision, pure numpy (nothing imports Keras or
TensorFlow): :func:`drop_and_grow` for one layer, :func:`update_masks` for a
model's masks, :func:`drop_fraction_at` (the drop fraction's schedule),
:func:`erk_densities` (Erdős–Rényi-Kernel per-layer densities) and
:func:`random_masks` (the start). Below it, :class:`DynamicSparseCallback`
runs it inside ``model.fit``.

The rules, as RigL's paper (Algorithm 1) and its code
(``google-research/rigl``, ``sparse_optimizers.py``, ``sparse_utils.py``) have
them:

* A layer with ``a`` active weights drops ``k = floor(a * f)`` at drop
  fraction ``f`` (RigL casts the product to an integer), computed exactly
  (``0.3`` is 3/10).
* The grow candidates are the positions inactive *after* the drop, the
  just-dropped ones included (RigL: ``i ∉ θ \\ I_drop``). There are always at
  least ``k`` of them, so a layer with fewer zeros than ``k`` still regrows
  ``k``: the just-dropped ones fill the rest. A weight dropped and regrown in
  the same update was never disconnected: it keeps its value and its
  optimizer moments (RigL's default, ``reinit_when_same=False``). Every other
  regrown weight (a *new connection*) starts at exactly 0.0 with its optimizer
  moments at 0.
* A layer with no inactive position (density 1) is left as it is: nothing to
  regrow into, so nothing is dropped.
* Drop fraction: ``"constant"`` ``f``, or ``"cosine"``
  ``f * (1 + cos(pi * t / T_end)) / 2`` at step ``t`` (RigL's
  ``cosine_decay`` from step 0 to ``T_end``).
* Ties (:data:`TIES`): RigL breaks ties in the drop scores with noise of
  standard deviation 1e-5; here they are broken by position, so the same
  inputs always give the same masks.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Mapping

import numpy as np

METHODS = ("set", "rigl")
DISTRIBUTIONS = ("uniform", "erk")
DROP_SCHEDULES = ("cosine", "constant")
TIES = (
    "equal scores are decided by the row-major position of the weight: of equal magnitudes the earlier is dropped "
    "first; of equal grow scores the later is grown first (the earlier one counts as the lower score in both)"
)


def _exact(value: float) -> fractions.Fraction:
    """The number as it prints (``0.1`` is 1/10, not the double just above it)."""
    return fractions.Fraction(repr(float(value)))


def active_count(size: int, density: float) -> int:
    """Weights kept in a layer of ``size`` at ``density``: ``ceil(density * size)``, computed exactly.

    RigL's ``size - floor(sparsity * size)`` with ``sparsity = 1 - density``.
    """
    return min(int(size), math.ceil(_exact(density) * int(size)))


def drop_count(active: int, fraction: float) -> int:
    """Connections a layer with ``active`` weights drops at ``fraction``: ``floor(active * fraction)``, exactly."""
    return int(math.floor(_exact(fraction) * int(active)))


def drop_fraction_at(step: int, drop_fraction: float, end_step: int, schedule: str = "cosine") -> float:
    """The drop fraction at (1-based) training step ``step``.

    Args:
        step: The step the update runs after.
        drop_fraction: The initial fraction ``f``.
        end_step: ``T_end``, the last step that may update masks.
        schedule: ``"cosine"`` (``f * (1 + cos(pi * min(t, T_end) / T_end)) / 2``)
            or ``"constant"`` (``f``).

    Returns:
        The fraction, a float in [0, f].

    Raises:
        ValueError: For an unknown schedule or ``end_step`` < 1.
    """
    if schedule not in DROP_SCHEDULES:
        raise ValueError(f"drop_schedule must be one of {', '.join(DROP_SCHEDULES)}; got {schedule!r}")
    if end_step < 1:
        raise ValueError(f"end_step must be >= 1; got {end_step!r}")
    if schedule == "constant":
        return float(drop_fraction)
    t = min(max(int(step), 0), int(end_step))
    return float(drop_fraction) * 0.5 * (1.0 + math.cos(math.pi * t / int(end_step)))


def erk_densities(shapes: Mapping[str, tuple], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities per weight, scaled so the model keeps ``density`` of its weights.

    As RigL's ``get_sparsities_erdos_renyi`` (``include_kernel=True``): a
    weight of shape ``(d_1, ..., d_n)`` (a convolution's kernel dimensions
    included; a Dense kernel is ``(n_in, n_out)``) gets density
    ``eps * sum(d) / prod(d)``, with ``eps`` chosen so that ``sum(d_i * n_i)``
    equals the uniform target ``sum(active_count(n_i, density))`` exactly (each
    ``active_count(n_i, d_i)`` rounded up on its own can exceed it by a few:
    :func:`layer_counts` gives counts that add up to it). A weight whose
    density would exceed 1 is made dense (all weights with the largest raw
    ratio at once), its pruned count taken from the others, and ``eps`` solved
    again, until no density exceeds 1.

    Args:
        shapes: Name -> shape of every masked weight.
        density: The overall density, in (0, 1].

    Returns:
        Name -> density, in the order of ``shapes``.

    Raises:
        ValueError: For a density outside (0, 1], no shapes, an empty weight,
            or a model ERK cannot distribute ``density`` over.
    """
    _check_density("density", density)
    if not shapes:
        raise ValueError("erk_densities needs at least one weight shape")
    sizes, raw = {}, {}
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        size = int(np.prod(shape)) if shape else 1
        if size < 1:
            raise ValueError(f"weight {name!r} has shape {shape}: ERK needs non-empty weights")
        sizes[name] = size
        raw[name] = fractions.Fraction(sum(shape), size)
    if density == 1:
        return {name: 1.0 for name in shapes}
    dense: set = set()
    while True:
        # eps * sum_i raw_i * n_i = (ones of the ERK layers) - (zeros of the dense layers)
        rhs = sum(active_count(sizes[n], density) for n in shapes if n not in dense)
        rhs -= sum(sizes[n] - active_count(sizes[n], density) for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        if divisor == 0 or rhs <= 0:
            raise ValueError(
                f"ERK cannot distribute density {density} over these weights: the layers it must make dense "
                f"({', '.join(sorted(dense))}) hold more weights than the target allows"
            )
        eps = fractions.Fraction(rhs) / divisor
        largest = max(raw[n] for n in shapes if n not in dense)
        if eps * largest <= 1:
            break
        dense |= {n for n in shapes if n not in dense and raw[n] == largest}
        if len(dense) == len(shapes):
            raise ValueError(f"ERK cannot distribute density {density} over these weights: every layer would be dense")
    return {name: 1.0 if name in dense else float(eps * raw[name]) for name in shapes}


def layer_densities_for(shapes: Mapping[str, tuple], density: float, distribution: str = "uniform") -> dict:
    """Per-weight densities: ``density`` everywhere (``"uniform"``) or :func:`erk_densities` (``"erk"``).

    Raises:
        ValueError: For an unknown distribution or a density outside (0, 1].
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
    _check_density("density", density)
    if distribution == "erk":
        return erk_densities(shapes, density)
    return {name: float(density) for name in shapes}


def random_masks(shapes: Mapping[str, tuple], densities: Mapping[str, float], rng: np.random.Generator) -> dict:
    """Masks with exactly ``active_count(size, density)`` ones per weight, at random positions.

    Weights are drawn in the order of ``shapes`` (one permutation each), so the
    same generator state gives the same masks.
    """
    masks = {}
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        mask = np.zeros(size, np.float32)
        mask[rng.permutation(size)[: active_count(size, densities[name])]] = 1.0
        masks[name] = mask.reshape(tuple(shape))
    return masks


def layer_counts(shapes: Mapping[str, tuple], densities: Mapping[str, float], total: int) -> dict[str, int]:
    """Per-weight kept counts in proportion to ``densities`` that add up to exactly ``total``.

    Each weight's share is ``total * d_i * n_i / sum_j d_j * n_j`` (exact
    fractions); the counts are the shares rounded down (at most ``n_i``), and
    what is left goes one by one to the largest remainders (the earlier weight
    of equal remainders first) among the weights with room. This is how a
    model is started at a density given as a count (a pruning level's kept
    weights), whatever the distribution.

    Args:
        shapes: Name -> shape of every masked weight.
        densities: Name -> density (:func:`layer_densities_for`).
        total: Weights to keep in all, in [1, sum of sizes].

    Returns:
        Name -> count, in the order of ``shapes``.

    Raises:
        ValueError: If ``total`` is outside [1, sum of sizes] or every density is 0.
    """
    sizes = {name: int(np.prod(tuple(shape))) if tuple(shape) else 1 for name, shape in shapes.items()}
    if isinstance(total, bool) or int(total) != total or not 1 <= total <= sum(sizes.values()):
        raise ValueError(f"total must be an integer in [1, {sum(sizes.values())}]; got {total!r}")
    weights = {name: _exact(densities[name]) * sizes[name] for name in shapes}
    whole = sum(weights.values())
    if whole <= 0:
        raise ValueError("every density is 0: nothing to keep")
    shares = {name: weights[name] * int(total) / whole for name in shapes}
    counts = {name: min(sizes[name], math.floor(shares[name])) for name in shapes}
    left = int(total) - sum(counts.values())
    while left > 0:
        room = [name for name in shapes if counts[name] < sizes[name]]
        order = sorted(room, key=lambda n: shares[n] - counts[n], reverse=True)  # stable: earlier first
        for name in order[:left]:
            counts[name] += 1
        left = int(total) - sum(counts.values())
    return counts


def random_masks_with_counts(shapes: Mapping[str, tuple], counts: Mapping[str, int], rng: np.random.Generator) -> dict:
    """Masks with exactly ``counts[name]`` ones per weight at random positions (one permutation each, in order)."""
    masks = {}
    for name, shape in shapes.items():
        size = int(np.prod(tuple(shape))) if tuple(shape) else 1
        mask = np.zeros(size, np.float32)
        mask[rng.permutation(size)[: int(counts[name])]] = 1.0
        masks[name] = mask.reshape(tuple(shape))
    return masks


@dataclasses.dataclass(frozen=True)
class LayerUpdate:
    """What one drop/grow did to one weight.

    Attributes:
        mask: The new 0/1 mask (float32, the weight's shape).
        new: Boolean, the weight's shape: connections grown that were inactive
            before the update (they start at 0.0, moments 0).
        removed: Boolean: connections active before and inactive after.
        dropped: How many the drop step took out (``k``); ``k - new.sum()`` of
            them were grown back in the same update.
    """

    mask: np.ndarray
    new: np.ndarray
    removed: np.ndarray
    dropped: int

    @property
    def moved(self) -> int:
        """Connections that moved: ``new.sum() == removed.sum()``."""
        return int(self.new.sum())


def drop_and_grow(weight, mask, count: int, grow_scores) -> LayerUpdate:
    """Drops the ``count`` smallest-magnitude active weights and grows ``count`` by the highest ``grow_scores``.

    Args:
        weight: The weight's values (any float array).
        mask: Its 0/1 mask, same shape.
        count: Connections to drop and grow (``k``); at most the active count.
        grow_scores: Same shape; higher grows first (SET: uniform random;
            RigL: |dense gradient|). Only positions inactive after the drop
            (the just-dropped included) are candidates.

    Returns:
        A :class:`LayerUpdate`. Ties: :data:`TIES`. A mask without an
        inactive position is returned unchanged.

    Raises:
        ValueError: If the shapes differ or ``count`` is negative.
    """
    weight, mask, grow_scores = np.asarray(weight), np.asarray(mask), np.asarray(grow_scores)
    if weight.shape != mask.shape or grow_scores.shape != mask.shape:
        raise ValueError(
            f"weight {weight.shape}, mask {mask.shape} and grow scores {grow_scores.shape} must have one shape"
        )
    if isinstance(count, bool) or int(count) != count or count < 0:
        raise ValueError(f"count must be an integer >= 0; got {count!r}")
    active = mask.ravel() != 0
    alive = np.flatnonzero(active)
    count = int(min(count, alive.size))
    if alive.size == active.size:  # density 1: no zero to grow into
        count = 0
    magnitudes = np.abs(np.asarray(weight, np.float64)).ravel()
    # Stable sort of the active positions (in increasing order) by magnitude: the earlier of equal ones first.
    drop = alive[np.argsort(magnitudes[alive], kind="stable")[:count]]
    after_drop = active.copy()
    after_drop[drop] = False
    candidates = np.flatnonzero(~after_drop)
    scores = np.asarray(grow_scores, np.float64).ravel()
    # Stable ascending sort: of equal scores the later comes last, so it is grown first.
    grow = candidates[np.argsort(scores[candidates], kind="stable")[candidates.size - count :]] if count else drop[:0]
    new_active = after_drop.copy()
    new_active[grow] = True
    shape = mask.shape
    return LayerUpdate(
        mask=new_active.reshape(shape).astype(np.float32),
        new=(new_active & ~active).reshape(shape),
        removed=(active & ~new_active).reshape(shape),
        dropped=count,
    )


def grow_scores(method: str, shape: tuple, rng: np.random.Generator | None = None, gradient=None) -> np.ndarray:
    """The grow scores of one weight: SET uniform random in [0, 1) from ``rng``; RigL ``|gradient|``.

    Raises:
        ValueError: For an unknown method, SET without a generator, RigL
            without a gradient of the weight's shape.
    """
    if method == "set":
        if rng is None:
            raise ValueError("SET grows at random: pass rng (a numpy Generator)")
        return rng.random(tuple(shape))
    if method == "rigl":
        if gradient is None or np.shape(gradient) != tuple(shape):
            raise ValueError(f"RigL grows by |dense gradient|: pass a gradient of shape {tuple(shape)}")
        return np.abs(np.asarray(gradient, np.float64))
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def update_masks(
    weights: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    fraction: float,
    method: str,
    rng: np.random.Generator | None = None,
    gradients: Mapping[str, np.ndarray] | None = None,
) -> dict[str, LayerUpdate]:
    """One SET or RigL update of every weight: each drops ``floor(active * fraction)`` and grows as many.

    Args:
        weights: Name -> values.
        masks: Name -> 0/1 mask, same names and shapes.
        fraction: This update's drop fraction, in [0, 1].
        method: ``"set"`` (random growth, from ``rng``, one draw of the
            weight's shape per weight in the order of ``masks``) or ``"rigl"``
            (growth by ``|gradients[name]|``, the dense gradient).
        rng: SET's generator.
        gradients: RigL's dense gradients, name -> array.

    Returns:
        Name -> :class:`LayerUpdate`, in the order of ``masks``.

    Raises:
        ValueError: For mismatched names or shapes, a fraction outside [0, 1],
            or what :func:`grow_scores` refuses.
    """
    if sorted(weights) != sorted(masks):
        raise ValueError(f"weights and masks must name the same weights; got {sorted(weights)} and {sorted(masks)}")
    if isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1]; got {fraction!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "rigl" and (gradients is None or sorted(gradients) != sorted(masks)):
        raise ValueError("RigL needs the dense gradient of every masked weight (gradients, by name)")
    updates = {}
    for name, mask in masks.items():
        mask = np.asarray(mask)
        scores = grow_scores(method, mask.shape, rng, None if gradients is None else gradients[name])
        count = drop_count(int(np.count_nonzero(mask)), fraction)
        updates[name] = drop_and_grow(weights[name], mask, count, scores)
    return updates


def _check_density(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1]; got {value!r}")


# -- the Keras callback -------------------------------------------------------------------

from lottery_tf.core import rewind  # noqa: E402
from lottery_tf.core.keras_compat import BACKEND, execution_problem, keras  # noqa: E402
from lottery_tf.core.masking import get_masks, masked_weights, set_masks  # noqa: E402


def _check_fraction(name: str, value, low_open: bool, high_closed: bool) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and (0 < value if low_open else 0 <= value)
        and (value <= 1 if high_closed else value < 1)
    )
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{']' if high_closed else ')'}"
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}")


def optimizer_slots(optimizer, model) -> dict[int, list]:
    """id(weight variable) -> the optimizer variables kept per entry of that weight (moments, velocities, ...).

    Keras 3 names a slot ``<weight path with "/" as "_">_<slot>`` and gives it
    the weight's shape (``add_variable_from_reference``); a slot belongs to the
    trainable variable with the longest such prefix. Weights whose paths read
    the same are paired with their slots in order (the order the optimizer
    was built in). Wrapped optimizers (loss scaling) are searched too.
    """
    variables, seen = [], set()
    for opt in rewind.optimizer_chain(optimizer):
        for v in opt.variables:
            if id(v) not in seen:
                seen.add(id(v))
                variables.append(v)
    by_prefix: dict[str, list] = {}
    for weight in model.trainable_variables:
        by_prefix.setdefault(weight.path.replace("/", "_") + "_", []).append(weight)
    prefixes = sorted(by_prefix, key=len, reverse=True)
    slots: dict[int, list] = {}
    taken: dict[tuple, int] = {}
    for v in variables:
        name = v.name.split("/")[-1]
        for prefix in prefixes:
            if not name.startswith(prefix):
                continue
            owners = [w for w in by_prefix[prefix] if tuple(w.shape) == tuple(v.shape)]
            if owners:
                i = taken.get((prefix, name), 0)
                taken[(prefix, name)] = i + 1
                slots.setdefault(id(owners[min(i, len(owners) - 1)]), []).append(v)
            break
    return slots


class DynamicSparseCallback(keras.callbacks.Callback):
    """SET or RigL inside ``model.fit``: sparse from the first step, connections moved while training.

    At the start of training (the first ``fit`` only) every masked weight gets
    a random mask at its density (``"uniform"``: ``density`` everywhere;
    ``"erk"``: :func:`erk_densities`), drawn from ``seed``; the weights at
    pruned positions become 0.0. Then after every ``update_every``-th step,
    up to ``end_fraction`` of the training steps, each weight drops
    ``floor(active * f)`` of its smallest-magnitude active weights and grows as
    many (:func:`drop_and_grow`): at random (``"set"``) or by the largest
    |dense gradient| of the loss (``"rigl"``). New connections start at 0.0
    with their optimizer moments (Adam's m and v, SGD's momentum) reset to 0.
    Pruned weights stay exactly 0.0 between updates (the masks of
    :func:`lottery_tf.wrap_model`).

    The model must be masked (:func:`lottery_tf.wrap_model`) and compiled.
    Steps are the optimizer's training steps (:func:`lottery_tf.core.rewind.global_step`).

    RigL's dense gradient is the gradient of the compiled loss with respect to
    each masked weight as stored (its pruned entries are 0.0, so this is the
    gradient with the mask taken as all ones), in training mode, on a batch
    from ``gradient_data``; the forward pass leaves the model's other state
    (batch-norm statistics, dropout seeds, metrics) as it found it. RigL itself
    uses the batch of the step it updates at, before the step's weight update,
    and skips that step's weight update; here the update follows the step's
    weight update and the batch comes from ``gradient_data``. Both Keras
    backends lottery_tf supports run it (:meth:`dense_gradients`); on JAX each
    update traces the training step again (the masks are constants of a traced
    JAX step: :func:`lottery_tf.core.masking.retrace_training`).

    Args:
        method: ``"set"`` or ``"rigl"``.
        density: Fraction of the model's masked weights kept (overall, with ``"erk"``), in (0, 1].
        distribution: ``"uniform"`` or ``"erk"``.
        update_every: Steps between mask updates, >= 1.
        drop_fraction: The drop fraction at step 0, in (0, 1).
        drop_schedule: ``"cosine"`` or ``"constant"`` (:func:`drop_fraction_at`).
        end_fraction: Masks are updated up to step ``floor(end_fraction * total_steps)``, in (0, 1].
        seed: Seeds the generator of the initial masks and SET's growth.
        total_steps: The training's steps; by default ``params["steps"] * params["epochs"]`` of the ``fit``.
        gradient_data: RigL only (required there): a batch ``(x, y)`` or
            ``(x, y, sample_weight)`` used at every update; a callable
            ``step -> batch`` (deterministic: a resumed run gets the same
            batches); or an iterable of batches (a ``tf.data.Dataset``), the
            next batch at each update, started again when it ends.

    Raises:
        ValueError: One line naming the argument, for a method, distribution or
            schedule not known, a density outside (0, 1], a drop fraction
            outside (0, 1), ``update_every`` < 1, ``end_fraction`` outside
            (0, 1], ``total_steps`` < 1, RigL without ``gradient_data``.

    Attributes:
        updates: One entry per update made: ``{"step", "drop_fraction",
            "dropped": {name: k}, "moved": {name: connections moved}}``.
        last_new: Name -> flat indices of the connections the last update grew.
        densities: Name -> the density each weight was started at.

    Example:

    >>> model = lottery_tf.wrap_model(build())  # doctest: +SKIP
    >>> dst = DynamicSparseCallback("set", density=0.1, update_every=100)  # doctest: +SKIP
    >>> model.fit(x, y, epochs=3, callbacks=[dst])  # doctest: +SKIP
    """

    def __init__(
        self,
        method: str,
        density: float,
        distribution: str = "uniform",
        update_every: int = 100,
        drop_fraction: float = 0.3,
        drop_schedule: str = "cosine",
        end_fraction: float = 0.75,
        seed: int = 0,
        total_steps: int | None = None,
        gradient_data=None,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        _check_density("density", density)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)) or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1; got {update_every!r}")
        _check_fraction("drop_fraction", drop_fraction, low_open=True, high_closed=False)
        if drop_schedule not in DROP_SCHEDULES:
            raise ValueError(f"drop_schedule must be one of {', '.join(DROP_SCHEDULES)}; got {drop_schedule!r}")
        _check_fraction("end_fraction", end_fraction, low_open=True, high_closed=True)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < 1
        ):
            raise ValueError(f"total_steps must be an integer >= 1; got {total_steps!r}")
        if method == "rigl" and gradient_data is None:
            raise ValueError(
                "gradient_data is required for method='rigl' (a batch, a step -> batch callable or a dataset)"
            )
        self.method, self.density, self.distribution = method, float(density), distribution
        self.update_every, self.drop_fraction = int(update_every), float(drop_fraction)
        self.drop_schedule, self.end_fraction, self.seed = drop_schedule, float(end_fraction), int(seed)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.gradient_data = gradient_data
        self.rng = np.random.default_rng(self.seed)
        self.started = False
        self.end_step = None
        self.densities: dict[str, float] = {}
        self.updates: list[dict] = []
        self.last_new: dict[str, np.ndarray] = {}
        self._last_step = 0
        self._iterator = None
        self._jax_gradient = None

    # -- configuration and state ----------------------------------------------------------

    def get_config(self) -> dict:
        """The constructor's arguments (``gradient_data`` left out)."""
        return {
            "method": self.method,
            "density": self.density,
            "distribution": self.distribution,
            "update_every": self.update_every,
            "drop_fraction": self.drop_fraction,
            "drop_schedule": self.drop_schedule,
            "end_fraction": self.end_fraction,
            "seed": self.seed,
            "total_steps": self.total_steps,
        }

    def get_state(self) -> dict:
        """What a resumed run needs to make the same future decisions (JSON-serialisable).

        The generator's ``bit_generator.state``, whether the masks were
        started, the per-weight densities, the last update's step and the
        updates made. Masks, weights and the optimizer are the model's state,
        checkpointed with it.
        """
        return {
            "config": self.get_config(),
            "rng": self.rng.bit_generator.state,
            "started": self.started,
            "densities": dict(self.densities),
            "last_step": self._last_step,
            "updates": [dict(u) for u in self.updates],
        }

    def set_state(self, state: Mapping) -> None:
        """Restores :meth:`get_state`'s dict (the generator included); the masks are not started again.

        Raises:
            ValueError: If the state was saved by a callback with another configuration.
        """
        mine = self.get_config()
        theirs = dict(state["config"])
        differing = sorted(k for k in mine if k != "total_steps" and theirs.get(k) != mine[k])
        if differing:
            raise ValueError(
                "The state was saved by a DynamicSparseCallback with other settings: "
                + ", ".join(f"{k} {theirs.get(k)!r} (now {mine[k]!r})" for k in differing)
            )
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.started = bool(state["started"])
        self.densities = dict(state["densities"])
        self._last_step = int(state["last_step"])
        self.updates = [dict(u) for u in state["updates"]]

    # -- training -------------------------------------------------------------------------

    def _total_steps(self) -> int:
        if self.total_steps is not None:
            return self.total_steps
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        if not steps or not epochs:
            raise ValueError(
                "DynamicSparseCallback cannot tell the training's length (params['steps'] is unknown, as with a "
                "dataset of unknown size): pass total_steps="
            )
        return int(steps) * int(epochs)

    def on_train_begin(self, logs=None):
        triples = masked_weights(self.model)  # a clear error now if nothing is masked
        total = self._total_steps()
        self.end_step = int(math.floor(_exact(self.end_fraction) * total))
        if self.end_step < self.update_every:
            raise ValueError(
                f"update_every ({self.update_every}) is larger than the steps masks may change in "
                f"(end_fraction {self.end_fraction} of {total} steps = {self.end_step}): no update would happen"
            )
        start = rewind.global_step(self.model.optimizer)
        updates = range(self.update_every, self.end_step + 1, self.update_every)
        if problem := execution_problem(self.model, self.params, start, updates):
            raise ValueError(f"DynamicSparseCallback (update_every={self.update_every}): {problem}")
        if self.started:
            return
        shapes = {name: tuple(weight.shape) for name, _, weight in triples}
        self.densities = layer_densities_for(shapes, self.density, self.distribution)
        if self.distribution == "erk":  # counts adding up to the uniform target exactly (rounding each could not)
            total = sum(active_count(int(np.prod(shape)), self.density) for shape in shapes.values())
            masks = random_masks_with_counts(shapes, layer_counts(shapes, self.densities, total), self.rng)
        else:
            masks = random_masks(shapes, self.densities, self.rng)
        set_masks(self.model, masks)
        self.started = True

    def on_train_batch_end(self, batch, logs=None):
        step = rewind.global_step(self.model.optimizer)
        if step > self._last_step and step % self.update_every == 0 and step <= self.end_step:
            self.update(step)

    def _batch(self, step: int):
        data = self.gradient_data
        if isinstance(data, (tuple, list)):
            return tuple(data)
        if callable(data):
            return tuple(data(step))
        if self._iterator is None:
            self._iterator = iter(data)
        try:
            return tuple(next(self._iterator))
        except StopIteration:
            self._iterator = iter(data)
            return tuple(next(self._iterator))

    def dense_gradients(self, step: int) -> dict[str, np.ndarray]:
        """Name -> gradient of the compiled loss w.r.t. each masked weight, on ``gradient_data``'s batch for ``step``.

        The pruned entries get their gradient too (the stored weight is 0.0
        there and the mask is not in the forward pass). TensorFlow: a
        ``GradientTape``; JAX: ``jax.grad`` of ``stateless_call`` and
        ``stateless_compute_loss``, compiled once per callback.
        """
        batch = self._batch(step)
        x, y = batch[0], batch[1] if len(batch) > 1 else None
        sample_weight = batch[2] if len(batch) > 2 else None
        triples = masked_weights(self.model)  # on JAX, reading self.model inside fit syncs the variables
        if BACKEND == "jax":
            return self._jax_dense_gradients(triples, x, y, sample_weight)
        import tensorflow as tf

        state = {id(v): v for v in list(self.model.non_trainable_variables) + list(self.model.metrics_variables)}
        saved = {key: np.array(v.numpy(), copy=True) for key, v in state.items()}
        try:
            with tf.GradientTape() as tape:
                y_pred = self.model(x, training=True)
                loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            grads = tape.gradient(loss, [weight for _, _, weight in triples])
        finally:
            for key, variable in state.items():
                variable.assign(saved[key])
        return {
            name: (np.zeros(tuple(weight.shape), np.float64) if g is None else np.asarray(g, np.float64))
            for (name, _, weight), g in zip(triples, grads)
        }

    def _jax_dense_gradients(self, triples, x, y, sample_weight) -> dict[str, np.ndarray]:
        import jax

        model = self.model
        trainable = list(model.trainable_variables)
        if self._jax_gradient is None:

            def loss_of(values, non_trainable, metrics, x, y, sample_weight):
                y_pred, updated = model.stateless_call(values, non_trainable, x, training=True)
                loss, _ = model.stateless_compute_loss(
                    values, updated, metrics, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                )
                return loss

            self._jax_gradient = jax.jit(jax.grad(loss_of))
        grads = self._jax_gradient(
            [v.value for v in trainable],
            [v.value for v in model.non_trainable_variables],  # not written back: the state stays as it was
            [v.value for v in model.metrics_variables],
            x,
            y,
            sample_weight,
        )
        position = {id(v): i for i, v in enumerate(trainable)}
        return {name: np.asarray(grads[position[id(weight)]], np.float64) for name, _, weight in triples}

    def update(self, step: int) -> dict[str, LayerUpdate]:
        """Drops and grows every masked weight now, as at training step ``step``.

        Returns:
            Name -> :class:`LayerUpdate`.
        """
        if self.end_step is None:
            self.end_step = int(math.floor(_exact(self.end_fraction) * self._total_steps()))
        fraction = drop_fraction_at(step, self.drop_fraction, self.end_step, self.drop_schedule)
        triples = masked_weights(self.model)
        weights = {name: np.asarray(weight.numpy()) for name, _, weight in triples}
        masks = get_masks(self.model)
        gradients = self.dense_gradients(step) if self.method == "rigl" else None
        updates = update_masks(weights, masks, fraction, self.method, rng=self.rng, gradients=gradients)
        slots = optimizer_slots(self.model.optimizer, self.model) if self.model.optimizer is not None else {}
        for name, _, weight in triples:
            new = updates[name].new
            if not new.any():
                continue
            value = weights[name]
            if np.any(value[new] != 0):
                weight.assign(np.where(new, np.zeros_like(value), value))
            for slot in slots.get(id(weight), []):
                slot_value = np.asarray(slot.numpy())
                slot.assign(np.where(new, np.zeros_like(slot_value), slot_value))
        set_masks(self.model, {name: update.mask for name, update in updates.items()})
        self._last_step = int(step)
        self.last_new = {name: np.flatnonzero(update.new) for name, update in updates.items()}
        self.updates.append(
            {
                "step": int(step),
                "drop_fraction": fraction,
                "dropped": {name: update.dropped for name, update in updates.items()},
                "moved": {name: update.moved for name, update in updates.items()},
            }
        )
        return updates

    def moved(self) -> dict[str, int]:
        """Name -> connections moved over every update so far."""
        total: dict[str, int] = {}
        for entry in self.updates:
            for name, count in entry["moved"].items():
                total[name] = total.get(name, 0) + count
        return total


__all__ = [
    "DISTRIBUTIONS",
    "DROP_SCHEDULES",
    "METHODS",
    "TIES",
    "DynamicSparseCallback",
    "LayerUpdate",
    "active_count",
    "drop_and_grow",
    "drop_count",
    "drop_fraction_at",
    "erk_densities",
    "grow_scores",
    "layer_counts",
    "layer_densities_for",
    "optimizer_slots",
    "random_masks",
    "random_masks_with_counts",
    "update_masks",
]
