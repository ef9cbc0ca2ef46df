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
import hashlib
import math
from typing import Mapping, Sequence

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

    Raises:
        ValueError: If the method is unknown or a fraction is outside (0, 1).

    Example:

    >>> spec = PruningSpec("layerwise", fraction=0.2, output_fraction=0.1)
    >>> spec.fraction_for("dense_2/kernel", is_output=True)
    0.1
    """

    method: str = "layerwise"
    fraction: float = 0.2
    output_fraction: float | None = None
    layer_fractions: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"Unknown pruning method {self.method!r}; expected one of {METHODS}."
            )
        _check_fraction("fraction", self.fraction)
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
    """Number of weights removed from ``remaining`` at ``fraction``: ceil(f*r).

    A tiny epsilon keeps float round-off (0.2 * 235200 = 47040.000000000004)
    from adding a weight.
    """
    return min(remaining, int(math.ceil(fraction * remaining - 1e-9)))


def _prune_group(
    names: Sequence[str],
    weights: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    fraction: float,
) -> dict[str, np.ndarray]:
    """Removes ``ceil(fraction * remaining)`` smallest surviving weights of a group."""
    magnitudes = np.concatenate(
        [np.abs(np.asarray(weights[n], dtype=np.float64)).ravel() for n in names]
    )
    alive = np.concatenate([np.asarray(masks[n]).ravel() != 0 for n in names])
    candidates = np.flatnonzero(alive)
    n_prune = count_to_prune(fraction, candidates.size)
    # Stable sort on magnitude: equal magnitudes keep positional order.
    order = np.argsort(magnitudes[candidates], kind="stable")
    keep = alive.copy()
    keep[candidates[order[:n_prune]]] = False

    new_masks, offset = {}, 0
    for n in names:
        size = np.asarray(masks[n]).size
        new_masks[n] = (
            keep[offset : offset + size].reshape(np.shape(masks[n])).astype(np.float32)
        )
        offset += size
    return new_masks


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
        output_name: The name of the output layer's weight, if any, for
            ``spec.output_fraction``.

    Returns:
        A new dict name -> float32 mask. Pruned weights stay pruned.

    Raises:
        ValueError: If names or shapes of ``weights`` and ``masks`` differ.
    """
    _check_matching(weights, masks)
    own, pooled = {}, []
    for name in weights:
        fraction = spec.fraction_for(name, is_output=(name == output_name))
        if fraction is None:
            pooled.append(name)
        else:
            own[name] = fraction
    new_masks = {}
    for name, fraction in own.items():
        new_masks.update(_prune_group([name], weights, masks, fraction))
    if pooled:
        new_masks.update(_prune_group(pooled, weights, masks, spec.fraction))
    return {name: new_masks[name] for name in weights}


SCOPES = ("global", "layerwise")


def prune_to_density(
    scores: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    density: float,
    scope: str = "global",
) -> dict[str, np.ndarray]:
    """One-shot pruning to a density by importance scores (higher = keep).

    Args:
        scores: Name -> importance, the shapes of ``masks``.
        masks: Name -> current masks; pruned weights stay pruned.
        density: Fraction of the weights (pruned ones included) to keep, in (0, 1].
        scope: ``global``: one ranking over all named weights (the output layer
            included); ``layerwise``: every layer keeps ``density`` of its own.

    Returns:
        Name -> float32 mask keeping round(density · size) weights (fewer where
        fewer are alive). Equal scores keep positional order (first kept).

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
        keep_count = min(int(round(density * values.size)), int(alive.sum()))
        candidates = np.flatnonzero(alive)
        order = np.argsort(-values[candidates], kind="stable")
        keep = np.zeros(values.size, bool)
        keep[candidates[order[:keep_count]]] = True
        offset = 0
        for n in names:
            size = np.asarray(masks[n]).size
            out[n] = keep[offset:offset + size].reshape(np.shape(masks[n])).astype(np.float32)
            offset += size
    return {name: out[name] for name in masks}


def random_masks_like(
    masks: Mapping[str, np.ndarray], seed: int, per_layer: bool = True
) -> dict[str, np.ndarray]:
    """Random masks with the same density as ``masks``.

    Args:
        masks: Reference masks.
        seed: Seed for the permutation.
        per_layer: If True each layer keeps its own count of survivors
            (layer-wise control); otherwise only the total count is kept
            (global control).

    Returns:
        A dict name -> float32 mask with exactly the same number of ones
        (per layer, or in total).
    """
    rng = np.random.default_rng(seed)
    names = list(masks)
    if per_layer:
        out = {}
        for name in names:
            m = np.asarray(masks[name])
            flat = np.zeros(m.size, np.float32)
            flat[rng.permutation(m.size)[: int(np.count_nonzero(m))]] = 1.0
            out[name] = flat.reshape(m.shape)
        return out
    sizes = [np.asarray(masks[n]).size for n in names]
    total_alive = sum(int(np.count_nonzero(masks[n])) for n in names)
    flat = np.zeros(sum(sizes), np.float32)
    flat[rng.permutation(flat.size)[:total_alive]] = 1.0
    out, offset = {}, 0
    for name, size in zip(names, sizes):
        out[name] = flat[offset : offset + size].reshape(np.shape(masks[name]))
        offset += size
    return out


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
            f"weights and masks must have the same names in the same order; "
            f"got {list(weights)} and {list(masks)}."
        )
    for name in weights:
        if np.shape(weights[name]) != np.shape(masks[name]):
            raise ValueError(
                f"Shape mismatch for {name!r}: weights {np.shape(weights[name])}, "
                f"mask {np.shape(masks[name])}."
            )
