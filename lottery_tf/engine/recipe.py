"""The training recipe: model construction and compilation, loss, input order.

Everything here is a function of the frozen config and the data; nothing knows
about run folders. :func:`train_pipeline` defines what "step i" means for the
data: batch i is a pure function of (seed, i).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf

from lottery_tf.core.keras_compat import keras
from lottery_tf.core.masking import wrap_model
from lottery_tf.core.optimizers import make_optimizer
from lottery_tf.engine.config import ExperimentConfig, start_steps
from lottery_tf.engine.data import Splits, StreamingSplits
from lottery_tf.engine.models import build_model


def make_loss(training, num_classes: int):
    """Cross-entropy on logits, with label smoothing if asked."""
    if not training.label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    smoothing = training.label_smoothing

    def smoothed_cross_entropy(y_true, logits):
        labels = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), num_classes)
        return keras.losses.categorical_crossentropy(labels, logits, from_logits=True, label_smoothing=smoothing)

    return smoothed_cross_entropy


def train_pipeline(splits: Splits, batch_size: int, seed: int, skip_steps: int = 0, augment=None) -> tf.data.Dataset:
    """Endless shuffled batches; batch i is a pure function of (seed, i).

    Each epoch is a stateless permutation of the training set keyed by (seed,
    epoch), so the order does not depend on TensorFlow's global random state or
    on how Keras distributes the dataset (a seeded ``Dataset.shuffle`` gives a
    different order under MirroredStrategy). Epochs are concatenated before
    batching, as ``shuffle().repeat().batch()`` would. ``skip_steps`` starts at
    batch ``skip_steps`` directly: this is how the data order is rewound to step
    k and how a resumed run continues its input stream. ``augment(x, seed)``,
    if given, transforms each batch with stateless randomness keyed by (seed,
    step). Indices are shuffled rather than examples, so memory stays small.
    """
    x = tf.constant(splits.x_train)
    y = tf.constant(splits.y_train)
    n = len(splits.x_train)
    first = skip_steps * batch_size
    start_epoch, offset = divmod(first, n)

    def epoch_order(epoch):
        keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

    batches = (
        tf.data.Dataset.range(start_epoch, 2**62)
        .flat_map(epoch_order)
        .skip(offset)
        .batch(batch_size, drop_remainder=True)
        .enumerate(start=skip_steps)
    )

    def load(step, indices):
        images = tf.gather(x, indices)
        if augment is not None:
            images = augment(images, tf.stack([tf.constant(seed, tf.int64), step]))
        return images, tf.gather(y, indices)

    return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def training_batches(splits, batch_size: int, seed: int, skip_steps: int = 0) -> tf.data.Dataset:
    """Endless global batches from step ``skip_steps``, in memory or streamed."""
    if isinstance(splits, StreamingSplits):
        return splits.train_batches(batch_size, seed, skip_steps)
    return train_pipeline(splits, batch_size, seed, skip_steps=skip_steps, augment=splits.augment)


def evaluation_splits(splits, batch_size: int) -> dict:
    """What :class:`lottery_tf.engine.monitor.PeriodicEvaluation` evaluates: arrays, or streamed batches."""
    if isinstance(splits, StreamingSplits):
        return {name: make(max(batch_size, 256)) for name, make in splits.eval_batches.items()}
    return {"val": (splits.x_val, splits.y_val), "test": (splits.x_test, splits.y_test)}


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets Keras's global dtype policy inside the block; restores the caller's after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_masked_model(config: ExperimentConfig, splits: Splits, seed: int, training=None, strategy=None):
    """A freshly initialized (from ``seed``), wrapped and compiled model.

    Built under ``strategy``'s scope. With mixed precision, layers compute in
    float16/bfloat16 while variables (masks included) stay float32, and the
    logits are cast to float32 for the loss. The caller's dtype policy is
    restored afterwards.
    """
    training = training or config.training
    with dtype_policy(training.mixed_precision or "float32"), (strategy or tf.distribute.get_strategy()).scope():
        keras.utils.set_random_seed(seed)
        model = wrap_model(
            build_model(config.model, splits.input_shape, splits.num_classes),
            exclude=config.pruning.exclude_layers,
        )
        if training.mixed_precision:
            to_float32 = keras.layers.Activation("linear", dtype="float32", name="logits_float32")
            if isinstance(model, keras.Sequential):
                model.add(to_float32)
            else:
                model = keras.Model(model.input, to_float32(model.output), name=model.name)
        _compile(model, config, training, strategy)
    return model


def compiled_fast_path(config, training, strategy) -> tuple[int, bool]:
    """(steps_per_execution, jit_compile) the model is compiled with.

    Keras 3.15 / TF 2.21 fail inside ``fit`` under MirroredStrategy with more
    than one step per execution or with XLA, for any model; so distributed
    runs use one step per execution without XLA. Keras cannot use XLA under op
    determinism either.
    """
    distributed = strategy is not None and strategy.num_replicas_in_sync > 1
    if distributed:
        return 1, False
    steps = training.resolved_steps_per_execution(*start_steps(config))
    return steps, training.jit_compile and not config.run.deterministic


def _compile(model, config, training, strategy):
    steps, jit = compiled_fast_path(config, training, strategy)
    model.compile(
        optimizer=make_optimizer(training),
        loss=make_loss(training, model.output_shape[-1]),
        steps_per_execution=steps,
        jit_compile=jit,
    )
    model.optimizer.build(model.trainable_variables)
