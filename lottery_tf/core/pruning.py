"""The pruning decision: pure functions from weights and masks to new masks.

Nothing here imports Keras or TensorFlow. Weights and masks are mappings from a
stable name (for example ``"dense_1/kernel"``) to numpy arrays of equal shape; a
mask holds 1.0 where a weight survives and 0.0 where it was pruned.

Two distributions are supported, following Frankle & Carbin (2019) and the
open_lth reference code:

* ``"layerwise"``: every layer removes its own fraction of the weights it still
  has.
* ``"global"``: all layers are pooled and the fraction is removed from the pool
  by raw magnitude (no per-layer normalisation). Layers given their own fraction
  in ``layer_fractions`` are pruned layer-wise at that fraction instead and are
  left out of the pool.

The count removed from a group of ``r`` remaining weights at fraction ``f`` is
``n = ceil(f * r)``, and exactly that many are removed: ties in magnitude are
broken by position (layer order, then row-major index), so the same inputs
always give the same mask. open_lth computes the same ``n`` but removes every
weight with ``|w| <= sorted(|w|)[n]``: one weight more than ``n`` (and every
weight tied with that one).
"""

from __future__ import annotations

import dataclasses
import fractions
import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

METHODS = ("layerwise", "global")


@dataclasses.dataclass(frozen=True)
class PruningSpec:
    """How much to prune per level, and how to distribute it over layers.

    Args:
        method: ``"layerwise"`` or ``"global"``.
        fraction: Fraction of the *remaining* weights removed per level, in (0, 1).
        output_fraction: Fraction for the output (last prunable) layer; ``None``
            means the same as ``fraction`` (layer-wise) or pooled (global).
        layer_fractions: Per-layer overrides, name -> fraction. Takes precedence
            over ``output_fraction``.
        block: ``(R, C)``: prune blocks of R outputs × C inputs as units, scored
            by their L2 norm, in the runtime's weight layout (see
            :func:`runtime_view`): ``(1, 4)`` is four consecutive input weights
            of one unit, the block TFLite's sparse FULLY_CONNECTED kernel runs
            for float weights (``(1, 16)`` for int8). The fraction counts blocks.
        n_m: ``(N, M)``: at most N nonzeros in every M consecutive input
            weights of a unit (2:4 is what sparse tensor cores run). Levels
            prune by the fraction as usual; from the first level whose kept
            count fits in N of every M (density <= N/M), the kept weights are
            the largest among the N largest of each group.

    Raises:
        ValueError: If the method is unknown, a fraction is outside (0, 1), a
            block or N:M is not positive (or N >= M), or both are given.

    Example:

    >>> spec = PruningSpec("layerwise", fraction=0.2, output_fraction=0.1)
    >>> spec.fraction_for("dense_2/kernel", is_output=True)
    0.1
    """

    method: str = "layerwise"
    fraction: float = 0.2
    output_fraction: float | None = None
    layer_fractions: Mapping[str, float] = dataclasses.field(default_factory=dict)
    block: tuple | None = None
    n_m: tuple | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Unknown pruning method {self.method!r}; expected one of {METHODS}.")
        _check_fraction("fraction", self.fraction)
        if self.block is not None:
            object.__setattr__(self, "block", check_block(self.block))
        if self.n_m is not None:
            object.__setattr__(self, "n_m", check_n_m(self.n_m))
        if self.block is not None and self.n_m is not None:
            raise ValueError("block and n_m are two structures; give one of them.")
        if self.output_fraction is not None:
            _check_fraction("output_fraction", self.output_fraction)
        for name, value in self.layer_fractions.items():
            _check_fraction(f"layer_fractions[{name!r}]", value)
        # Freeze the mapping so the spec is hashable in spirit and never mutated.
        object.__setattr__(self, "layer_fractions", dict(self.layer_fractions))

    def fraction_for(self, name: str, is_output: bool) -> float | None:
        """The layer's own fraction, or ``None`` if it joins the global pool."""
        if name in self.layer_fractions:
            return self.layer_fractions[name]
        if is_output and self.output_fraction is not None:
            return self.output_fraction
        return self.fraction if self.method == "layerwise" else None


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1); got {value!r}.")


def count_to_prune(fraction: float, remaining: int) -> int:
    """Number of weights removed from ``remaining`` at ``fraction``: exactly ceil(f·r).

    The fraction is taken as the decimal it prints as (``0.2`` is 1/5, not the
    binary double just above it), and the product is computed in exact
    rational arithmetic, so ``0.2 · 235200`` is 47040, ``0.3 · 10`` is 3, and a
    tiny fraction such as ``1e-10`` of 5 weights still removes one.
    """
    if remaining <= 0:
        return 0
    exact = fractions.Fraction(repr(float(fraction))) * int(remaining)
    return min(int(remaining), math.ceil(exact))


def check_block(block) -> tuple:
    """``(R, C)`` as two positive integers (``"1x4"`` is read too).

    Raises:
        ValueError: If it is not two positive integers.
    """
    if isinstance(block, str):
        try:
            block = tuple(int(v) for v in block.lower().split("x"))
        except ValueError:
            raise ValueError(f"block must be RxC with positive integers, e.g. 1x4; got {block!r}.") from None
    block = tuple(block)
    if len(block) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in block
    ):
        raise ValueError(f"block must be two positive integers (rows x columns), e.g. (1, 4); got {block!r}.")
    return int(block[0]), int(block[1])


def check_n_m(n_m) -> tuple:
    """``(N, M)`` with 1 <= N < M (``"2:4"`` is read too).

    Raises:
        ValueError: If N or M is not a positive integer, or N >= M.
    """
    if isinstance(n_m, str):
        try:
            n_m = tuple(int(v) for v in n_m.split(":"))
        except ValueError:
            raise ValueError(f"n_m must be N:M with integers, e.g. 2:4; got {n_m!r}.") from None
    n_m = tuple(n_m)
    if len(n_m) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in n_m):
        raise ValueError(f"n_m must be two positive integers N:M, e.g. 2:4; got {n_m!r}.")
    if n_m[0] >= n_m[1]:
        raise ValueError(f"n_m: N must be below M (N of every M weights kept); got {n_m[0]}:{n_m[1]}.")
    return int(n_m[0]), int(n_m[1])


def runtime_view(array) -> np.ndarray:
    """A weight in the runtime's layout: (outputs, inputs), the last Keras axis first.

    Keras keeps a Dense kernel as (inputs, units) and a convolution's as
    (kh, kw, in, out); TFLite (and cuSPARSELt) keep (units, inputs) and
    (out, kh, kw, in). The view moves the last axis (the outputs) to the front
    and flattens the others in order, so a block ``(R, C)`` is R outputs by C
    consecutive inputs. For a Dense kernel ``k``: ``runtime_view(k) == k.T``.
    """
    array = np.asarray(array)
    if array.ndim < 2:
        return array.reshape(1, -1)
    return np.moveaxis(array, -1, 0).reshape(array.shape[-1], -1)


def from_runtime_view(view: np.ndarray, shape: tuple) -> np.ndarray:
    """The inverse of :func:`runtime_view`: an array of the Keras weight's ``shape``."""
    shape = tuple(shape)
    if len(shape) < 2:
        return np.asarray(view).reshape(shape)
    return np.moveaxis(np.asarray(view).reshape((shape[-1],) + shape[:-1]), 0, -1)


def block_ids(shape: tuple, block: tuple) -> tuple[np.ndarray, int]:
    """Per entry of a weight of ``shape`` (Keras layout), the index of its block; and the number of blocks.

    Blocks tile the runtime view (outputs × inputs) from its top-left corner in
    row-major order; where a dimension is not a multiple of the block, the last
    blocks are smaller (the weights that are there).
    """
    view_shape = runtime_view(np.empty(shape, np.int8)).shape
    rows, cols = view_shape
    r, c = block
    per_row = -(-cols // c)
    ids = (np.arange(rows)[:, None] // r) * per_row + (np.arange(cols)[None, :] // c)
    return from_runtime_view(ids, shape), (-(-rows // r)) * per_row


def group_ids(shape: tuple, m: int) -> np.ndarray:
    """Per entry, the index of its group of M consecutive inputs of one output (the N:M groups)."""
    return block_ids(shape, (1, m))[0]


def _units(names, masks, block) -> tuple[np.ndarray, np.ndarray, list]:
    """Unit (block, or single weight) of every entry of the group, numbered in order; per-name offsets."""
    ids, offsets, total = [], [], 0
    for n in names:
        shape = np.shape(masks[n])
        if block is None:
            local, count = np.arange(int(np.prod(shape))), int(np.prod(shape))
        else:
            local, count = block_ids(shape, block)
            local = local.ravel()
        ids.append(local + total)
        offsets.append(total)
        total += count
    return np.concatenate(ids), np.arange(total), offsets


def _prune_group(
    names: Sequence[str],
    weights: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    fraction: float,
    block: tuple | None = None,
) -> dict[str, np.ndarray]:
    """Removes the ``ceil(fraction * remaining)`` smallest surviving units (weights or blocks) of a group.

    A block's score is the L2 norm of its weights; it is alive while any of its
    weights is. Equal scores are broken by position (layer order, then
    row-major position of the weight or block).
    """
    magnitudes = np.concatenate([np.abs(np.asarray(weights[n], dtype=np.float64)).ravel() for n in names])
    alive = np.concatenate([np.asarray(masks[n]).ravel() != 0 for n in names])
    if block is None:
        scores, unit_alive, unit_of = magnitudes, alive, None
    else:
        unit_of, units, _ = _units(names, masks, block)
        scores = np.sqrt(np.bincount(unit_of, weights=magnitudes**2, minlength=units.size))
        unit_alive = np.bincount(unit_of, weights=alive.astype(np.float64), minlength=units.size) > 0
    candidates = np.flatnonzero(unit_alive)
    n_prune = count_to_prune(fraction, candidates.size)
    # Stable sort on the score: equal scores keep positional order.
    order = np.argsort(scores[candidates], kind="stable")
    keep_unit = unit_alive.copy()
    keep_unit[candidates[order[:n_prune]]] = False
    keep = alive & (keep_unit if unit_of is None else keep_unit[unit_of])
    return _split(keep, names, masks)


def _split(keep: np.ndarray, names, masks) -> dict[str, np.ndarray]:
    new_masks, offset = {}, 0
    for n in names:
        size = np.asarray(masks[n]).size
        new_masks[n] = keep[offset : offset + size].reshape(np.shape(masks[n])).astype(np.float32)
        offset += size
    return new_masks


def _eligible_n_m(scores: np.ndarray, alive: np.ndarray, shape: tuple, n_m: tuple) -> np.ndarray:
    """The entries among the N highest-scoring alive ones of their group of M (:data:`TIES`: the later one)."""
    n, m = n_m
    groups = group_ids(shape, m).ravel()
    flat_alive = np.flatnonzero(alive)
    # Alive entries by group, then by score ascending (stable: the earlier of equal scores first); the last
    # N of each group are its N best.
    order = flat_alive[np.lexsort((scores[flat_alive], groups[flat_alive]))]
    sorted_groups = groups[order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_groups)) + 1, order.size]
    starts = np.r_[0, ends[:-1]]
    from_end = np.repeat(ends, ends - starts) - 1 - np.arange(order.size)
    eligible = np.zeros(alive.size, bool)
    eligible[order[from_end < n]] = True
    return eligible


def _best(scores: np.ndarray, pool: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` entries of ``pool`` with the highest scores (:data:`TIES`: of equal ones, the later)."""
    if count <= 0:
        return pool[:0]
    order = np.argsort(scores[pool], kind="stable")
    return pool[order[-count:]]


def _prune_group_n_m(names, weights, masks, fraction, n_m) -> dict[str, np.ndarray]:
    """Prunes ``ceil(fraction * remaining)`` weights; where the kept count fits N of every M, the kept ones do."""
    magnitudes = [np.abs(np.asarray(weights[n], np.float64)).ravel() for n in names]
    alive = [np.asarray(masks[n]).ravel() != 0 for n in names]
    eligible = np.concatenate(
        [_eligible_n_m(s, a, np.shape(masks[n]), n_m) for n, s, a in zip(names, magnitudes, alive)]
    )
    magnitudes, alive = np.concatenate(magnitudes), np.concatenate(alive)
    remaining = int(alive.sum())
    keep_count = remaining - count_to_prune(fraction, remaining)
    pool = np.flatnonzero(eligible) if keep_count <= int(eligible.sum()) else np.flatnonzero(alive)
    keep = np.zeros(alive.size, bool)
    keep[_best(magnitudes, pool, keep_count)] = True
    return _split(keep, names, masks)


def satisfies_n_m(mask: np.ndarray, n_m: tuple) -> bool:
    """Whether at most N of every M consecutive inputs of each output are kept."""
    n, m = n_m
    counts = np.bincount(group_ids(np.shape(mask), m).ravel(), weights=(np.asarray(mask).ravel() != 0).astype(float))
    return bool(np.all(counts <= n))


def prune_by_magnitude(
    weights: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    spec: PruningSpec,
    output_name: str | None = None,
) -> dict[str, np.ndarray]:
    """Returns the masks after one level of magnitude pruning.

    Args:
        weights: Name -> current (trained) weights. Order defines tie-breaking.
        masks: Name -> current masks (1.0 alive, 0.0 pruned); same keys/shapes.
        spec: The pruning spec.
        output_name: The output layer's weight, which gets
            ``spec.output_fraction``; ``None`` = the last entry of ``weights``
            (model order, as :func:`lottery_tf.get_prunable_weights` gives).

    Returns:
        A new dict name -> float32 mask. Pruned weights stay pruned.

    Raises:
        ValueError: If names or shapes of ``weights`` and ``masks`` differ, or
            ``output_name`` is not one of them.
    """
    _check_matching(weights, masks)
    output_name = resolve_output_name(spec, list(weights), output_name)
    own, pooled = {}, []
    for name in weights:
        fraction = spec.fraction_for(name, is_output=(name == output_name))
        if fraction is None:
            pooled.append(name)
        else:
            own[name] = fraction
    new_masks = {}

    def prune(group, fraction):
        if spec.n_m is not None:
            return _prune_group_n_m(group, weights, masks, fraction, spec.n_m)
        return _prune_group(group, weights, masks, fraction, spec.block)

    for name, fraction in own.items():
        new_masks.update(prune([name], fraction))
    if pooled:
        new_masks.update(prune(pooled, spec.fraction))
    return {name: new_masks[name] for name in weights}


def resolve_output_name(spec: PruningSpec, names: Sequence[str], output_name: str | None) -> str | None:
    """The weight ``spec.output_fraction`` applies to: ``output_name``, or the last of ``names``.

    Raises:
        ValueError: If ``output_name`` is given and is not one of ``names``.
    """
    if output_name is not None:
        if output_name not in names:
            raise ValueError(f"output_name {output_name!r} is not one of the weights ({', '.join(names)}).")
        return output_name
    if spec.output_fraction is None or not names:
        return None
    return names[-1]


SCOPES = ("global", "layerwise")
TIES = (
    "equal scores are decided by position (layer order, then the row-major position of the weight or block): the "
    "earlier one is pruned first, and kept last"
)


def prune_to_density(
    scores: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    density: float,
    scope: str = "global",
    block: tuple | None = None,
    n_m: tuple | None = None,
) -> dict[str, np.ndarray]:
    """One-shot pruning to a density by importance scores (higher = keep).

    Args:
        scores: Name -> importance, the shapes of ``masks``.
        masks: Name -> current masks; pruned weights stay pruned.
        density: Fraction of the weights (pruned ones included) to keep, in (0, 1].
        scope: ``global``: one ranking over all named weights (the output layer
            included); ``layerwise``: every layer keeps ``density`` of its own.
        block: ``(R, C)``: keep whole blocks, ranked by the sum of their scores.
        n_m: ``(N, M)``: keep only among the N highest-scoring of every M.

    Returns:
        Name -> float32 mask keeping round(density · size) weights (fewer where
        fewer are alive), and at least one: with ``scope="layerwise"`` no
        layer is emptied at a density above 0 (with ``"global"`` one ranking
        decides, and it may empty a layer: the layer collapse SynFlow
        studies). With ``block``: whole blocks, best first, each that fits in
        the count left (so edge blocks, which are smaller, fill it exactly
        where they can), and at least one block. Equal scores: :data:`TIES`.

    Raises:
        ValueError: For a density outside (0, 1], an unknown scope, or
            mismatched names or shapes.
    """
    _check_matching(scores, masks)
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    groups = [list(masks)] if scope == "global" else [[name] for name in masks]
    out = {}
    for names in groups:
        values = np.concatenate([np.asarray(scores[n], np.float64).ravel() for n in names])
        alive = np.concatenate([np.asarray(masks[n]).ravel() != 0 for n in names])
        # At least one weight of a group with any alive: a density above 0 never empties a layer (layerwise) or
        # the model (global; a global ranking may still empty one layer, the "layer collapse" SynFlow studies).
        keep_count = min(max(int(round(density * values.size)), 1), int(alive.sum()))
        if block is not None:
            unit_of, units, _ = _units(names, masks, block)
            unit_scores = np.bincount(unit_of, weights=np.where(alive, values, 0.0), minlength=units.size)
            unit_sizes = np.bincount(unit_of, minlength=units.size)
            unit_alive = np.bincount(unit_of, weights=alive.astype(float), minlength=units.size) > 0
            candidates = np.flatnonzero(unit_alive)
            order = _best(unit_scores, candidates, candidates.size)[::-1]  # best first
            keep = alive & np.isin(unit_of, _fill(order, unit_sizes, keep_count))
        else:
            pool = np.flatnonzero(alive)
            if n_m is not None:
                offset, eligible = 0, []
                for n in names:
                    size = np.asarray(masks[n]).size
                    eligible.append(
                        _eligible_n_m(
                            values[offset : offset + size], alive[offset : offset + size], np.shape(masks[n]), n_m
                        )
                    )
                    offset += size
                eligible = np.concatenate(eligible)
                if keep_count <= eligible.sum():
                    pool = np.flatnonzero(eligible)
            keep = np.zeros(values.size, bool)
            keep[_best(values, pool, keep_count)] = True
        out.update(_split(keep, names, masks))
    return {name: out[name] for name in masks}


def random_masks_like(
    masks: Mapping[str, np.ndarray],
    seed: int,
    per_layer: bool = True,
    block: tuple | None = None,
    n_m: tuple | None = None,
) -> dict[str, np.ndarray]:
    """Random masks with the same density as ``masks`` (and the same structure).

    Args:
        masks: Reference masks.
        seed: Seed for the permutation.
        per_layer: If True each layer keeps its own count of survivors
            (layer-wise control); otherwise only the total count is kept
            (global control).
        block: ``(R, C)``: random whole *blocks*, as many of each size as
            ``masks`` keeps (edge blocks are smaller), so the number of
            weights is the same.
        n_m: ``(N, M)``: the count placed at random, at most N of every M.

    Returns:
        A dict name -> float32 mask with the same number of ones as ``masks``,
        per layer (``per_layer``) or in total, with or without a structure.
    """
    rng = np.random.default_rng(seed)
    names = list(masks)
    groups = [[name] for name in names] if per_layer else [names]
    out = {}
    for group in groups:
        shapes = [np.shape(masks[n]) for n in group]
        sizes = [int(np.prod(shape)) for shape in shapes]
        count = sum(int(np.count_nonzero(masks[n])) for n in group)
        if block is not None:
            # As many random blocks of each size as the ticket keeps of that size: edge blocks are smaller, so
            # this keeps the ticket's count of weights (and of blocks) exactly.
            unit_of, units, _ = _units(group, masks, block)
            unit_sizes = np.bincount(unit_of, minlength=units.size)
            alive = np.concatenate([np.asarray(masks[n]).ravel() != 0 for n in group])
            unit_alive = np.bincount(unit_of, weights=alive.astype(np.float64), minlength=units.size) > 0
            chosen = [
                rng.permutation(np.flatnonzero(unit_sizes == size))[: int(np.sum(unit_alive & (unit_sizes == size)))]
                for size in np.unique(unit_sizes)
            ]
            keep = np.isin(unit_of, np.concatenate(chosen))
        elif n_m is not None:
            eligible = np.concatenate(
                [_eligible_n_m(rng.random(size), np.ones(size, bool), shape, n_m) for size, shape in zip(sizes, shapes)]
            )
            if count > eligible.sum():  # denser than N:M allows: no structure to keep
                eligible[:] = True
            keep = np.zeros(eligible.size, bool)
            keep[rng.permutation(np.flatnonzero(eligible))[:count]] = True
        else:
            keep = np.zeros(sum(sizes), bool)
            keep[rng.permutation(keep.size)[:count]] = True
        out.update(_split(keep, group, masks))
    return {name: out[name] for name in names}


def _fill(order: np.ndarray, unit_sizes: np.ndarray, count: int) -> np.ndarray:
    """Units taken in ``order``, each that fits in what is left of ``count`` weights (a larger one is skipped).

    A positive ``count`` smaller than every unit still takes the first unit: a layer pruned to a density
    above 0 keeps something.
    """
    taken, left = [], int(count)
    for unit in order:
        if left <= 0:
            break
        if unit_sizes[unit] <= left:
            taken.append(unit)
            left -= int(unit_sizes[unit])
    if not taken and count > 0 and len(order):
        taken.append(order[0])
    return np.asarray(taken, np.int64)


def density(masks: Mapping[str, np.ndarray]) -> float:
    """Fraction of weights alive over all masks."""
    total = sum(np.asarray(m).size for m in masks.values())
    alive = sum(int(np.count_nonzero(m)) for m in masks.values())
    return alive / total if total else 1.0


def fingerprint(masks: Mapping[str, np.ndarray]) -> str:
    """A short hash of which weights survive (names, shapes and 0/1 pattern).

    Two runs, or two workers, used the same masks iff their fingerprints match.
    """
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = np.asarray(masks[name])
        digest.update(f"{name}{mask.shape}".encode())
        digest.update(np.packbits(mask.ravel() != 0).tobytes())
    return digest.hexdigest()[:16]


def resolve_mask_name(name: str, mask_names: Sequence[str], what: str = "name") -> str:
    """A mask name (``"fc1/kernel"``) for ``name``, which may also be a layer with one mask (``"fc1"``).

    Raises:
        ValueError: If ``name`` matches no mask, or a layer with several masks;
            the message lists the valid names.
    """
    if name in mask_names:
        return name
    matches = [m for m in mask_names if m.rsplit("/", 1)[0] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{what}: layer {name!r} has several masks ({', '.join(matches)}); name one of them.")
    raise ValueError(f"{what}: {name!r} matches no masked weight; the model has {', '.join(mask_names)}.")


def _check_matching(weights, masks) -> None:
    if list(weights) != list(masks):
        raise ValueError(
            f"weights and masks must have the same names in the same order; got {list(weights)} and {list(masks)}."
        )
    for name in weights:
        if np.shape(weights[name]) != np.shape(masks[name]):
            raise ValueError(
                f"Shape mismatch for {name!r}: weights {np.shape(weights[name])}, mask {np.shape(masks[name])}."
            )
