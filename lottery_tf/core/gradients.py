"""The one place the core maths call a Keras backend: gradients, Hessian-gradient products, inference.

Pruning-at-initialization scores (:mod:`lottery_tf.core.saliency`) and the
instability analysis (:mod:`lottery_tf.core.analysis.evaluation`) are numpy
around the few computations here. Each is written twice, once per backend
lottery_tf's library runs on (:data:`lottery_tf.core.keras_compat.BACKENDS`):

* TensorFlow: ``tf.GradientTape`` (nested for the Hessian-gradient product)
  and a ``tf.function`` for inference, the code the experiment engine has
  always run (its results do not change);
* JAX: ``jax.grad`` (grad of grad for the Hessian-gradient product) of the
  model's call under a ``keras.StatelessScope`` that maps its variables to the
  traced values, compiled with ``jax.jit``; float64 computations (SynFlow's
  model copy) run inside ``jax.enable_x64``.

Both compute the loss as the mean sparse softmax cross-entropy of the logits
cast to float32, so for the same weights and data they give the same numbers
to float32 rounding (tests/test_backend_maths.py runs both).
"""

from __future__ import annotations

import contextlib

import numpy as np

from lottery_tf.core.keras_compat import BACKEND, keras


def float64():
    """A context in which the backend computes in float64 (JAX: ``jax.enable_x64``; TensorFlow: always)."""
    if BACKEND == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _as_numpy(values) -> list:
    return [np.asarray(v) for v in values]


class Gradients:
    """Gradients of one model's outputs with respect to some of its variables.

    Args:
        model: A built Keras model.
        weights: The variables to differentiate with respect to (e.g. the
            masked weights of :func:`lottery_tf.core.masking.masked_weights`).

    Every method runs the model in inference mode (``training=False``) and
    returns numpy arrays, one per weight, in the dtype of the weight's
    gradient (float32 for a float32 variable). On JAX the compiled functions
    take every variable's current value as an argument, so one object stays
    right while the variables change (SynFlow's rounds).
    """

    def __init__(self, model, weights):
        self.model, self.weights = model, list(weights)
        ids = {id(w) for w in self.weights}
        self._others = [v for v in model.variables if id(v) not in ids]
        self._compiled = {}

    # --- TensorFlow -------------------------------------------------------------------------------------------

    def _tf_loss(self, x, y, temperature):
        import tensorflow as tf

        logits = self.model(x, training=False)
        if temperature is not None:
            logits = tf.cast(logits, tf.float32) / temperature
        labels = tf.reshape(tf.cast(y, tf.int64), [-1])
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32)))

    # --- JAX --------------------------------------------------------------------------------------------------

    def _jax_logits(self, targets, others, x):
        mapping = list(zip(self.weights, targets)) + list(zip(self._others, others))
        with keras.StatelessScope(state_mapping=mapping):
            return self.model(x, training=False)

    def _jax_loss(self, targets, others, x, y, temperature):
        import jax
        import jax.numpy as jnp

        logits = jnp.asarray(self._jax_logits(targets, others, x), jnp.float32)
        if temperature is not None:
            logits = logits / temperature
        labels = jnp.reshape(y, (-1,)).astype(jnp.int32)
        picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)

    def _jax(self, kind, temperature=None):
        import jax

        key = (kind, temperature)
        if key not in self._compiled:
            loss = lambda t, o, x, y: self._jax_loss(t, o, x, y, temperature)  # noqa: E731
            if kind == "grad":
                function = jax.grad(loss)
            elif kind == "hvp":

                def function(t, o, x, y, v):
                    def directional(t):
                        g = jax.grad(loss)(t, o, x, y)
                        return sum(jax.numpy.sum(gi * vi) for gi, vi in zip(g, v))

                    return jax.grad(directional)(t)
            else:  # "output_sum": d(sum of the float64 outputs)/dw, for SynFlow

                def function(t, o, x):
                    return jax.grad(lambda t: jax.numpy.sum(jax.numpy.asarray(self._jax_logits(t, o, x), "float64")))(t)

            self._compiled[key] = jax.jit(function)
        return self._compiled[key]

    def _values(self):
        return [w.value for w in self.weights], [v.value for v in self._others]

    # --- the computations -------------------------------------------------------------------------------------

    def loss_gradients(self, x, y, temperature: float | None = None) -> list:
        """∂L/∂w, L the mean cross-entropy of the logits (divided by ``temperature`` if given) on ``(x, y)``."""
        if BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = self._tf_loss(x, y, temperature)
            return _as_numpy(tape.gradient(loss, self.weights))
        targets, others = self._values()
        return _as_numpy(self._jax("grad", temperature)(targets, others, np.asarray(x), np.asarray(y)))

    def hessian_gradient_product(self, x, y, vectors, temperature: float | None = None) -> list:
        """H v: the Hessian of :meth:`loss_gradients`'s L times ``vectors`` (one per weight), by double backward.

        ``vectors`` are cast to each gradient's dtype and held constant.
        """
        if BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    loss = self._tf_loss(x, y, temperature)
                grads = inner.gradient(loss, self.weights)
                z = tf.add_n(
                    [tf.reduce_sum(gr * tf.cast(tf.stop_gradient(vi), gr.dtype)) for gr, vi in zip(grads, vectors)]
                )
            return _as_numpy(outer.gradient(z, self.weights))
        targets, others = self._values()
        v = [np.asarray(vi).astype(np.dtype(w.dtype)) for vi, w in zip(vectors, self.weights)]
        return _as_numpy(self._jax("hvp", temperature)(targets, others, np.asarray(x), np.asarray(y), v))

    def output_sum_gradients(self, x) -> list:
        """∂R/∂w with R the sum of the model's outputs on ``x``, cast to float64 (call inside :func:`float64`)."""
        if BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                total = tf.reduce_sum(tf.cast(self.model(x, training=False), tf.float64))
            return _as_numpy(tape.gradient(total, self.weights))
        targets, others = self._values()
        return _as_numpy(self._jax("output_sum")(targets, others, x))


def ones(shape, dtype: str):
    """An all-ones backend tensor (float64 needs :func:`float64` on JAX)."""
    return keras.ops.ones(tuple(shape), dtype)


def predictor(model):
    """``images -> logits`` of ``model`` in inference mode, compiled (``tf.function`` / ``jax.jit``).

    On JAX every variable's current value is an argument of the compiled call,
    so assigning new weights (a restored state) needs no retrace.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    import jax

    variables = list(model.variables)

    def call(values, images):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return model(images, training=False)

    compiled = jax.jit(call)
    return lambda images: compiled([v.value for v in variables], np.asarray(images))


def error_and_loss_sums(logits, labels) -> tuple[float, float, int]:
    """(misclassified examples, sum of the cross-entropy losses, examples) of one batch of logits."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        logits = tf.cast(logits, tf.float32)
        labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
        wrong = float(tf.reduce_sum(tf.cast(tf.argmax(logits, axis=-1) != labels, tf.float32)))
        loss = float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
        return wrong, loss, int(labels.shape[0])
    import jax
    import jax.numpy as jnp

    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.reshape(jnp.asarray(np.asarray(labels)), (-1,)).astype(jnp.int32)
    wrong = float(jnp.sum((jnp.argmax(logits, axis=-1) != labels).astype(jnp.float32)))
    picked = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    loss = float(jnp.sum(jax.nn.logsumexp(logits, axis=-1) - picked))
    return wrong, loss, int(labels.shape[0])
