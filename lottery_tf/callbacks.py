"""Keras callbacks: iterative magnitude pruning with rewinding inside ``fit``."""

from __future__ import annotations

import collections
from typing import Mapping

import numpy as np

from lottery_tf import rewind
from lottery_tf.keras_compat import keras
from lottery_tf.masking import get_masks, get_prunable_weights, mask_names, set_masks
from lottery_tf.pruning import PruningSpec, prune_by_magnitude


class PruneRewindCallback(keras.callbacks.Callback):
    """Iterative magnitude pruning (IMP) with reset or rewinding, one level per ``fit``.

    During the first ``fit`` the callback records the *rewind point*: every
    non-mask variable at optimizer step ``rewind_step`` (0 = the original
    initialization, Frankle & Carbin 2019; k > 0 = rewinding, Frankle et al.
    2019/2020). At the end of each ``fit`` it prunes ``spec`` of the remaining
    weights by magnitude, sets the survivors back to their values at the rewind
    point, zeroes the optimizer's slots and sets its step counter to
    ``rewind_step`` so the learning-rate schedule restarts from there. The next
    ``fit`` trains the next level.

    Train each level for the same number of steps minus ``rewind_step`` after the
    first, so every level ends at the same point of the schedule.

    Args:
        spec: A :class:`PruningSpec` (method, fraction, output and per-layer
            fractions).
        rewind_step: Optimizer step to rewind to; must be reached in the first
            ``fit``, at an execution boundary (a multiple of the model's
            ``steps_per_execution``).
        levels: If set, the total number of levels to train; after the last one
            the trained weights are kept instead of pruned. ``None`` prunes after
            every ``fit``.
        output_layer: Name of the mask (``"<layer>/<attribute>"``) that gets
            ``spec.output_fraction``; defaults to the last masked weight.
        verbose: If true, prints one line per pruning step.
        on_capture: Optional function called with the rewind point when it is
            recorded (for example to save it to disk at once).
        optimizer_state: ``"reset"`` (default) zeroes the optimizer's slots at
            each rewind and sets its step counter to ``rewind_step``.
            ``"rewind"`` restores the slots as they were at ``rewind_step``
            instead, which keeps Adam's bias correction consistent with its
            moments when ``rewind_step > 0`` (with ``"reset"``, Adam restarts
            from zero moments but its step counter says k).
        agree_on_masks: Optional function applied to each new set of masks
            before they are set, so that all workers of a multi-worker run
            keep one decision (e.g.
            :func:`lottery_tf.distribute.broadcast_from_chief`).

    Raises:
        ValueError: If ``rewind_step`` or ``levels`` is not a non-negative
            (positive) integer.

    Example:

    >>> model = lottery_tf.wrap_model(dense_model)
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    >>> imp = PruneRewindCallback(PruningSpec("layerwise", 0.2, output_fraction=0.1))
    >>> for level in range(5):
    ...     model.fit(x, y, epochs=2, callbacks=[imp])
    """

    def __init__(
        self,
        spec: PruningSpec | None = None,
        rewind_step: int = 0,
        levels: int | None = None,
        output_layer: str | None = None,
        verbose: bool = False,
        on_capture=None,
        optimizer_state: str = "reset",
        agree_on_masks=None,
    ):
        super().__init__()
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, (int, np.integer)) or rewind_step < 0:
            raise ValueError(f"rewind_step must be an integer >= 0; got {rewind_step!r}.")
        if levels is not None and (
            isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1
        ):
            raise ValueError(f"levels must be a positive integer or None; got {levels!r}.")
        if optimizer_state not in ("reset", "rewind"):
            raise ValueError(f"optimizer_state must be 'reset' or 'rewind'; got {optimizer_state!r}.")
        self.optimizer_state = optimizer_state
        self.optimizer_point = None
        self.spec = spec if spec is not None else PruningSpec()
        self.rewind_step = int(rewind_step)
        self.levels = levels
        self.output_layer = output_layer
        self.verbose = verbose
        self.on_capture = on_capture
        self.agree_on_masks = agree_on_masks
        self.level = 0
        self.rewind_point: "collections.OrderedDict[str, np.ndarray] | None" = None
        self.history: list[dict] = []

    # -- recording the rewind point -------------------------------------------------
    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        if self.rewind_point is not None:
            return
        step = self._step()
        per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if self.rewind_step % per_execution:
            raise ValueError(
                f"rewind_step={self.rewind_step} is not a multiple of the model's "
                f"steps_per_execution={per_execution}; the step cannot be observed."
            )
        if step > self.rewind_step:
            raise ValueError(
                f"The optimizer is already at step {step}, past rewind_step="
                f"{self.rewind_step}; create the callback before the first fit."
            )
        if step == self.rewind_step:
            self._capture()

    def on_train_batch_end(self, batch, logs=None):
        if self.rewind_point is None and self._step() == self.rewind_step:
            self._capture()

    def _capture(self):
        self.rewind_point = rewind.capture(self.model)
        optimizer = getattr(self.model, "optimizer", None)
        if self.optimizer_state == "rewind" and optimizer is not None and optimizer.built:
            self.optimizer_point = [np.array(v.numpy(), copy=True) for v in optimizer.variables]
        if self.on_capture is not None:
            self.on_capture(self.rewind_point)

    # -- pruning and rewinding -------------------------------------------------------
    def on_train_end(self, logs=None):
        if self.rewind_point is None:
            raise ValueError(
                f"Training ended at step {self._step()} before rewind_step="
                f"{self.rewind_step} was reached; train the first level longer."
            )
        if self.levels is not None and self.level + 1 >= self.levels:
            return
        self.prune_and_rewind()

    def prune_and_rewind(self) -> Mapping[str, np.ndarray]:
        """Prunes the current weights, rewinds survivors, resets the optimizer.

        Returns:
            The new masks (name -> array).
        """
        names = mask_names(self.model)
        output = self.output_layer or names[-1]
        masks = prune_by_magnitude(
            get_prunable_weights(self.model), get_masks(self.model), self.spec, output
        )
        if self.agree_on_masks is not None:
            masks = self.agree_on_masks(masks)
        set_masks(self.model, masks)
        self.rewind()
        self.level += 1
        alive = sum(int(np.count_nonzero(m)) for m in masks.values())
        total = sum(m.size for m in masks.values())
        self.history.append({"level": self.level, "density": alive / total})
        if self.verbose:
            print(f"PruneRewindCallback: level {self.level}, density {alive / total:.4f}")
        return masks

    def rewind(self) -> None:
        """Restores the rewind point under the current masks; resets the optimizer.

        Raises:
            ValueError: If no rewind point has been recorded or set.
        """
        if self.rewind_point is None:
            raise ValueError("No rewind point: train a first level, or set callback.rewind_point.")
        rewind.restore(self.model, self.rewind_point)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or not optimizer.built:
            return
        if self.optimizer_point is not None:
            # Not built at capture (step 0) means all-zero slots: reset is the same.
            for variable, value in zip(optimizer.variables, self.optimizer_point):
                variable.assign(value)
        else:
            rewind.reset_optimizer(optimizer, self.rewind_step)
