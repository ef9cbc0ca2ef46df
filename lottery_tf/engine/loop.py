"""A training loop for strategies Keras's ``fit`` cannot drive (multi-worker).

Keras 3.15 with TF 2.21 fails inside ``fit`` under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585: the symbolic build
and the metric reduction call ``strategy.reduce`` on per-replica values in a
way collective strategies reject). This loop runs the model's own
``train_step`` (forward pass, loss scaled for distribution, gradients,
``optimizer.apply`` with the mask constraints, loss scaling for float16) under
``strategy.run``, one optimizer step per call, and drives the same Keras
callbacks ``fit`` would, so pruning, rewinding, evaluation and checkpoints are
the code every other strategy uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from lottery_tf.core.keras_compat import keras


def fit(
    model,
    strategy,
    make_dataset: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    steps: int,
    callbacks: Sequence = (),
) -> dict:
    """Trains ``model`` for ``steps`` optimizer steps under ``strategy``.

    Args:
        model: A compiled Keras model built under ``strategy.scope()``.
        strategy: A ``tf.distribute`` strategy.
        make_dataset: ``input_context -> dataset`` of per-replica batches (see
            :func:`lottery_tf.engine.distribute.per_worker_batches`), given to
            ``strategy.distribute_datasets_from_function``.
        steps: Optimizer steps to run.
        callbacks: Keras callbacks; their ``on_train_begin``,
            ``on_train_batch_begin/end`` (with ``{"loss": ...}``) and
            ``on_train_end`` are called as ``fit`` calls them.

    Returns:
        The logs of the last step: ``{"loss": mean training loss since the
        call began, over replicas}``, as ``fit`` reports it.
    """
    iterator = iter(strategy.distribute_datasets_from_function(make_dataset))

    @tf.function
    def train_step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, logs["loss"], axis=None)

    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
    model.stop_training = False
    model.reset_metrics()
    logs = {}
    callback_list.on_train_begin()
    for batch in range(steps):
        callback_list.on_train_batch_begin(batch)
        logs = {"loss": float(train_step(iterator))}
        callback_list.on_train_batch_end(batch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return logs
