"""Per-weight sparsity in TensorBoard, from your own ``fit``: what TFMOT's ``PruningSummaries`` gives Keras 2."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks


class SparsitySummaries(keras.callbacks.Callback):
    """Writes each masked weight's sparsity and the overall sparsity to TensorBoard.

    Scalars ``sparsity/<mask name>`` (the share of that weight's entries that
    are pruned) and ``sparsity/overall`` (of all masked entries, each weight
    counted once), at the training step, before the first batch (after every
    callback's ``on_train_begin``, so in any order beside a
    ``PruneRewindCallback``), every ``update_freq`` steps and when training
    ends, once per step (the last step, often also an ``update_freq`` step or
    an epoch's end, is written once unless the masks changed between the
    two). Sparsity is read from the masks, so it is what the ticket prunes,
    whatever the weights' values. Each IMP level starts again at step 0 (or
    at the rewind step k): give each level its own ``log_dir`` to see the
    levels side by side.

    Args:
        log_dir: The TensorBoard folder (a ``sparsity`` subfolder is used, so
            it can be the one ``keras.callbacks.TensorBoard`` writes to).
        update_freq: Steps between two writes (>= 1); ``"epoch"`` writes at
            each epoch's end.

    Raises:
        ValueError: For a bad ``update_freq``.

    Example:

    >>> model.fit(x, y, callbacks=[imp, SparsitySummaries("logs")])  # doctest: +SKIP
    """

    def __init__(self, log_dir: str, update_freq="epoch"):
        super().__init__()
        if update_freq != "epoch" and (
            isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1
        ):
            raise ValueError(f"update_freq must be 'epoch' or an integer >= 1; got {update_freq!r}.")
        if not isinstance(log_dir, str) or not log_dir:
            raise ValueError(f"log_dir must be a folder path; got {log_dir!r}.")
        self.log_dir, self.update_freq = log_dir, update_freq
        self._writer = None
        self._last = None  # (step, values) of the last write

    def _step(self) -> int:
        from lottery_tf.core.rewind import global_step

        return global_step(self.model.optimizer)

    def _values(self) -> dict:
        masks = get_masks(self.model)
        values = {f"sparsity/{name}": 1.0 - float(np.count_nonzero(m)) / m.size for name, m in masks.items()}
        total = sum(m.size for m in masks.values())
        values["sparsity/overall"] = 1.0 - float(sum(np.count_nonzero(m) for m in masks.values())) / total
        return values

    def write(self, step: int | None = None) -> dict:
        """Writes the scalars now (at ``step``, default the training step); returns them."""
        return self._write(self._step() if step is None else int(step), self._values())

    def _write(self, step: int, values: dict) -> dict:
        if self._writer is None:
            import os

            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "sparsity"))
        with self._writer.as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, value, step=step)
        self._writer.flush()
        self._last = (step, values)
        return values

    def _write_new(self) -> None:
        # The callback's own writes: one per step and values (training's last step is often both an
        # update_freq step or an epoch's end and the end of training).
        step, values = self._step(), self._values()
        if self._last != (step, values):
            self._write(step, values)

    def on_train_begin(self, logs=None):
        # Written at the first batch, once every callback's on_train_begin has run: a PruneRewindCallback
        # listed after this one prunes the new level there, and its sparsity is the one to show.
        self._begin = True

    def on_train_batch_begin(self, batch, logs=None):
        if getattr(self, "_begin", False):
            self._begin = False
            self._last = None
            self._write_new()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and self._step() % self.update_freq == 0:
            self._write_new()

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._write_new()

    def on_train_end(self, logs=None):
        self._write_new()
