"""The papers' controls for a ticket found in your own code: random reinitialization and random pruning.

A ticket is a mask *and* its initialization; each control changes one of them
(Frankle & Carbin 2019, section 2):

* :func:`reinit_control`: the ticket's masks on a fresh initialization of the
  same architecture (the same distribution, another seed);
* :func:`random_prune_control`: random masks with the ticket's structure (the
  same count of survivors per weight, or in total; random blocks or N:M when
  the ticket has them), to train from the ticket's own rewind point.

The command line runs the same controls as the ``reinit`` and ``random_prune``
branches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import set_masks, wrap_model
from lottery_tf.core.pruning import random_masks_like

SCOPES = ("layerwise", "global")


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}.")
    return int(seed)


def reinit_control(build: Callable[[], object], masks: Mapping[str, np.ndarray], seed: int, exclude=()):
    """The ticket's masks on a freshly initialized model: the random-reinitialization control.

    Args:
        build: A function that builds the (unmasked, built) model the ticket
            came from, with its own initializers: the same function that
            built the ticket's model.
        masks: The ticket's masks (``lottery_tf.get_masks(ticket)``).
        seed: Seed of the new initialization; use another seed than the
            ticket's. It is set with ``keras.utils.set_random_seed``, which
            seeds Python's, NumPy's and TensorFlow's global generators too
            (what draws from them afterwards, a shuffle of yours included,
            follows from ``seed``).
        exclude: What the ticket's ``wrap_model`` excluded.

    Returns:
        The new model, masked in place with ``masks`` (pruned weights 0.0),
        not compiled.

    Raises:
        ValueError: For a bad seed, or masks that do not name exactly the new
            model's masked weights.

    Example:

    >>> control = reinit_control(build, lottery_tf.get_masks(ticket), seed=1)  # doctest: +SKIP
    """
    keras.utils.set_random_seed(_seed(seed))
    model = wrap_model(build(), exclude=exclude)
    set_masks(model, masks)
    return model


def random_prune_control(
    masks: Mapping[str, np.ndarray],
    seed: int,
    scope: str = "layerwise",
    block: tuple | None = None,
    n_m: tuple | None = None,
) -> dict[str, np.ndarray]:
    """Random masks with the ticket's structure: the random-pruning control.

    Set them on the ticket's model at its rewind point (``set_masks`` then
    ``lottery_tf.core.rewind.restore``) and train it as the ticket trained: only
    the mask differs.

    Args:
        masks: The ticket's masks.
        seed: Seed of the random choice.
        scope: ``"layerwise"`` keeps each weight's count of survivors (the
            control for layer-wise pruning); ``"global"`` keeps only the total.
        block: ``(R, C)`` for a ticket pruned in blocks: random blocks.
        n_m: ``(N, M)`` for an N:M ticket: random N:M.

    Returns:
        Name -> float32 0/1 mask, the same names and shapes as ``masks``.

    Raises:
        ValueError: For a bad seed or scope.

    Example:

    >>> random = random_prune_control(lottery_tf.get_masks(ticket), seed=1)  # doctest: +SKIP
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}.")
    return random_masks_like(dict(masks), _seed(seed), per_layer=scope == "layerwise", block=block, n_m=n_m)
