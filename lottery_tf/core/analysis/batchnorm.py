"""BatchNorm statistics of an interpolated network, re-estimated from fixed training batches.

Interpolating two networks' running means and variances does not give the
statistics of the interpolated network (the LMC paper's ResNets re-estimate
them), so :func:`reestimate` recomputes them: the exact average of the batch
statistics over the given batches, computed in training mode.
"""

from __future__ import annotations

from lottery_tf.core import naming
from lottery_tf.core.keras_compat import keras, sublayers


def _layers_under(layer, seen: set):
    """Every layer under ``layer``, parents before children, each once (depth first, in tracking order)."""
    for sub in sublayers(layer):
        if id(sub) not in seen:
            seen.add(id(sub))
            yield sub
            yield from _layers_under(sub, seen)


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested ones included."""
    return [layer for layer in _layers_under(model, set()) if isinstance(layer, keras.layers.BatchNormalization)]


def statistic_paths(model) -> set:
    """Unique names (:mod:`lottery_tf.core.naming`) of the running statistics (moving mean and variance)."""
    ids = {id(v) for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)}
    return {name for name, v in naming.variable_names(model).items() if id(v) in ids}


def reestimate(model, batches) -> int:
    """Replaces every BatchNorm layer's running statistics by their average over ``batches``.

    With momentum (i − 1)/i at the i-th batch, Keras's update
    ``moving = momentum·moving + (1 − momentum)·batch`` gives the running
    average of the batch statistics. The batches run eagerly in training mode
    (so the momentum change is seen); the layers' momentum is restored after.

    Args:
        model: A built Keras model.
        batches: An iterable of input batches (images only).

    Returns:
        The number of batches used (0 leaves the statistics untouched).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, images in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = (count - 1) / count
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return count
