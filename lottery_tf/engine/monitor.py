"""Watching a level train: periodic evaluation, TensorBoard scalars, progress lines."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import get_masks, get_prunable_weights, layer_densities, overall_density
from lottery_tf.core.rewind import global_step


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the message names the level, the step and the likely cause."""


def make_evaluator(model, jit_compile: bool = True, chunk: int = 0, strategy=None):
    """A function ``split -> (mean loss, accuracy)`` for a logits model.

    A split is either ``(x, y)`` tensors, evaluated in chunks of ``chunk``
    examples, one compiled call each (default: 10,000 MNIST-sized images, fewer
    for larger images, to bound activation memory), or a finite
    ``tf.data.Dataset`` of ``(x, y)`` batches (streamed datasets).

    Under a ``strategy`` with several replicas, every chunk or batch is split
    across the replicas (and workers) and the sums are all-reduced, so
    evaluation uses every device; every worker must then evaluate together.
    """

    def _sums(x, y):
        logits = tf.cast(model(x, training=False), tf.float32)
        losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), y), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(correct), tf.cast(tf.shape(y)[0], tf.float32)

    distributed = strategy is not None and strategy.num_replicas_in_sync > 1
    if distributed:

        @tf.function(reduce_retracing=True)
        def _step(batch):
            per_replica = strategy.run(_sums, args=batch)
            return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica)

        def batches(split):
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            return strategy.experimental_distribute_dataset(split.with_options(options))
    else:
        _step = tf.function(lambda batch: _sums(*batch), jit_compile=jit_compile, reduce_retracing=True)

        def batches(split):
            return split

    def evaluate(split):
        if not isinstance(split, tf.data.Dataset):
            x, y = split
            size = chunk or min(10000, max(256, 8_000_000 // int(np.prod(x.shape[1:]))))
            if distributed:
                split = tf.data.Dataset.from_tensor_slices((x, y)).batch(size)
            else:  # slices of the tensors: no input pipeline needed
                split = [
                    (x[start : start + size], y[start : start + size]) for start in range(0, int(x.shape[0]), size)
                ]
        loss = correct = n = 0.0
        for batch in batches(split):
            batch_loss, c, k = _step(batch)
            loss += float(batch_loss)
            correct += float(c)
            n += float(k)
        return loss / max(n, 1.0), correct / max(n, 1.0)

    return evaluate


class PeriodicEvaluation(keras.callbacks.Callback):
    """Evaluates named splits every ``every`` steps; logs curves and sparsity.

    Records ``self.curves[split]["loss"|"accuracy"]`` and ``self.iterations``,
    writes TensorBoard scalars (``<split>/loss``, ``<split>/accuracy``,
    ``sparsity/overall``, ``sparsity/<layer>``) when ``log_dir`` is set, and
    prints a progress line every ``print_every`` evaluations.

    Args:
        splits: Name -> (x, y) tensors or a finite dataset of (x, y) batches,
            e.g. ``{"val": ..., "test": ...}``.
        every: Evaluate every this many optimizer steps (a multiple of the
            model's ``steps_per_execution``), counted from ``origin``; the first
            step is evaluated too.
        total_steps: Steps of the whole level (for progress and ETA).
        origin: The optimizer step the level started at (a resumed ``fit``
            starts later but evaluates at the same points).
        log_dir: TensorBoard folder, or None.
        label: Prefix of progress lines.
        print_every: Evaluations between progress lines (0 = never).
        jit_compile: Compile the evaluation with XLA.
        strategy: If it has several replicas, evaluation is split across them.

    Evaluation happens at ``origin`` and every ``every`` steps after it, and
    at the end: a run resumed from a checkpoint at any step evaluates at
    exactly the steps an uninterrupted run does. A non-finite loss on any
    split raises :class:`DivergedError`, so a diverged level is never written
    as a result.
    """

    def __init__(
        self,
        splits: Mapping,
        every: int,
        total_steps: int,
        log_dir=None,
        label: str = "",
        print_every: int = 0,
        jit_compile: bool = True,
        origin: int = 0,
        hparams: Mapping | None = None,
        batch_size: int = 0,
        strategy=None,
    ):
        super().__init__()
        self.splits = {
            k: v if isinstance(v, tf.data.Dataset) else tuple(map(tf.convert_to_tensor, v)) for k, v in splits.items()
        }
        self.every = every
        self.total_steps = total_steps
        self.log_dir = log_dir
        self.label = label
        self.print_every = print_every
        self.jit_compile = jit_compile
        self.origin = origin
        self.hparams = dict(hparams or {})
        self.batch_size = batch_size
        self.strategy = strategy
        self.iterations: list[int] = []
        self.curves = {k: {"loss": [], "accuracy": []} for k in self.splits}

    def state(self) -> dict:
        """What a checkpoint must keep to resume the curves."""
        return {"iterations": list(self.iterations), "curves": self.curves}

    def restore(self, state: Mapping) -> None:
        self.iterations = list(state["iterations"])
        self.curves = {k: {m: list(v) for m, v in c.items()} for k, c in state["curves"].items()}

    def _step(self) -> int:
        return global_step(self.model.optimizer)

    def on_train_begin(self, logs=None):
        self._evaluate = make_evaluator(self.model, self.jit_compile, strategy=self.strategy)
        self._writer = tf.summary.create_file_writer(self.log_dir) if self.log_dir else None
        self._resumed_at = self._step()
        self._start_time = time.time()
        self._count = 0
        self._last = (self._resumed_at, time.time())
        if self._writer and self.hparams and not self.iterations:
            from tensorboard.plugins.hparams import api as hp

            with self._writer.as_default():
                hp.hparams(self.hparams)
        self._log_sparsity()
        at_point = (self._resumed_at - self.origin) % self.every == 0
        if at_point and (not self.iterations or self.iterations[-1] != self._resumed_at):
            self._record()

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if (step - self.origin) % self.every == 0 and (not self.iterations or step != self.iterations[-1]):
            self._record()

    def on_train_end(self, logs=None):
        if not self.iterations or self.iterations[-1] != self._step():
            self._record()
        self._log_sparsity(histograms=True)
        if self._writer:
            self._writer.flush()
            self._writer.close()

    def _log_sparsity(self, histograms: bool = False):
        if not self._writer:
            return
        step = self._step()
        with self._writer.as_default(step=step):
            tf.summary.scalar("sparsity/overall", 1.0 - overall_density(self.model))
            for name, value in layer_densities(self.model).items():
                tf.summary.scalar(f"sparsity/{name}", 1.0 - value)
            if histograms:
                masks = get_masks(self.model)
                for name, weights in get_prunable_weights(self.model).items():
                    tf.summary.histogram(f"surviving_weights/{name}", weights[masks[name] != 0])

    def _record(self):
        self._evaluation_started = time.time()
        step = self._step()
        self.iterations.append(step)
        results = {}
        for split, data in self.splits.items():
            loss, accuracy = self._evaluate(data)
            self.curves[split]["loss"].append(loss)
            self.curves[split]["accuracy"].append(accuracy)
            results[split] = (loss, accuracy)
        bad = [split for split, (loss, _) in results.items() if not np.isfinite(loss)]
        if bad:
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            policy = self.model.dtype_policy.name
            cause = (
                f"float16 overflow under {policy}, or a learning rate ({rate:g}) too high"
                if "float16" in policy
                else f"a learning rate ({rate:g}) too high for this model and recipe"
            )
            raise DivergedError(
                f"{self.label} diverged at step {step}: {bad[0]} loss is {results[bad[0]][0]}; likely cause: "
                f"{cause}. Nothing was written as done; the level restarts from its last checkpoint when run again"
            )
        if self._writer:
            with self._writer.as_default(step=step):
                for split, (loss, accuracy) in results.items():
                    tf.summary.scalar(f"{split}/loss", loss)
                    tf.summary.scalar(f"{split}/accuracy", accuracy)
                tf.summary.scalar(
                    "train/learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                )
                last_step, last_time = self._last
                if step > last_step and self.batch_size:
                    # Training throughput since the previous evaluation (evaluation excluded).
                    seconds = max(1e-9, self._evaluation_started - last_time)
                    tf.summary.scalar("train/examples_per_second", (step - last_step) * self.batch_size / seconds)
        self._last = (step, time.time())
        self._count += 1
        done = step - self.origin
        if self.print_every and (self._count % self.print_every == 0 or done >= self.total_steps):
            # Wall time per step so far, evaluations included, so the ETA counts them too.
            elapsed = time.time() - self._start_time
            trained = step - self._resumed_at
            rate = trained / elapsed if elapsed > 0 else 0.0
            eta = f"eta {(self.total_steps - done) * elapsed / trained:.0f}s" if trained > 0 else "eta -"
            metrics = "  ".join(f"{s}_acc {a:.4f}" for s, (_, a) in results.items())
            print(
                f"{self.label} step {done}/{self.total_steps}  {metrics}  "
                f"{rate:.0f} steps/s (evaluation included)  {eta}",
                flush=True,
            )


def summarize_curves(iterations, curves, early_stop_split: str = "val", report_split: str = "test") -> dict:
    """Final and early-stopping (minimum ``early_stop_split`` loss) metrics.

    The early-stopping point is never a non-finite loss.

    Raises:
        ValueError: If every ``early_stop_split`` loss is non-finite.
    """
    val_loss = np.asarray(curves[early_stop_split]["loss"], dtype=np.float64)
    finite = np.isfinite(val_loss)
    if not finite.any():
        raise ValueError(f"every {early_stop_split} loss is non-finite: the level diverged")
    best = int(np.argmin(np.where(finite, val_loss, np.inf)))  # first minimum: earliest iteration wins ties
    out = {
        "early_stop_iteration": int(iterations[best]),
        f"early_stop_{early_stop_split}_loss": float(val_loss[best]),
    }
    for split in curves:
        out[f"early_stop_{split}_accuracy"] = float(curves[split]["accuracy"][best])
        out[f"final_{split}_accuracy"] = float(curves[split]["accuracy"][-1])
        out[f"final_{split}_loss"] = float(curves[split]["loss"][-1])
    return out
