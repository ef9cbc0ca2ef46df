"""The one place lottery_tf imports Keras.

Every other module takes Keras from here, so the supported version is checked
once and a legacy Keras 2 (``tf_keras``) environment fails with a clear message
instead of obscure errors later.
"""

import contextlib
import os
import sys

from lottery_tf.core.requested_backend import requested_backend

if os.environ.get("TF_USE_LEGACY_KERAS", "0").lower() in ("1", "true"):
    raise ImportError(
        "lottery_tf needs Keras 3, but TF_USE_LEGACY_KERAS is set, which makes tf.keras the legacy Keras 2; unset it."
    )


_TORCH_REFUSED = (
    "lottery_tf's Keras library is tested on the TensorFlow and JAX backends, not on PyTorch (no CPU build of "
    "torch is reachable where it is tested); set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax."
)


if requested_backend() == "torch":  # before Keras imports torch (which fails first where torch is missing)
    raise ImportError(_TORCH_REFUSED)


@contextlib.contextmanager
def quiet_native_output():
    """Sends file descriptor 2 to /dev/null inside the block (C++ start-up lines;
    Python exceptions are raised after it is restored, so they still show)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if "tensorflow" not in sys.modules:
    # TensorFlow's native start-up lines (oneDNN and CUDA notices, cuInit on a machine
    # without a GPU) are not the user's concern. TF 2.21 prints the import-time ones
    # whatever TF_CPP_MIN_LOG_LEVEL says; TF_CPP_MIN_LOG_LEVEL=0 shows them all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":
        with quiet_native_output():
            import tensorflow  # noqa: F401

import keras  # noqa: E402

if int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"lottery_tf needs Keras 3; found keras {keras.__version__}.")

BACKENDS = ("tensorflow", "jax")  # the Keras backends lottery_tf's library is tested on
BACKEND = keras.backend.backend()

if BACKEND == "torch":
    raise ImportError(_TORCH_REFUSED)
if BACKEND not in BACKENDS:
    raise ImportError(
        f"lottery_tf runs on the TensorFlow or JAX backend of Keras 3; KERAS_BACKEND is {BACKEND!r}. "
        "Set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax."
    )

ops = keras.ops

# -- Keras internals with no public equivalent -------------------------------------------
# Each private name lottery_tf needs is read here and nowhere else; tests/test_keras_compat.py
# checks every one against the installed Keras, so an upgrade that removes or changes one
# fails there, by name, instead of somewhere inside pruning or rewinding.

from keras.src.models.functional import Functional  # noqa: E402  (the class of functional models: no public alias)


def sublayers(layer) -> list:
    """The layers ``layer`` holds directly, in tracking order (Keras's ``_flatten_layers``, one level).

    ``keras.Model.layers`` is public but exists on models only; a plain layer
    (a user's block, attention, ``Bidirectional``) has no public list.
    """
    return list(layer._flatten_layers(include_self=False, recursive=False))


def all_sublayers(layer) -> list:
    """Every layer under ``layer`` at any depth (Keras's ``_flatten_layers``, recursive), itself excluded."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


def batch_counter(optimizer):
    """The optimizer's variable that counts batches (``_iterations``).

    The public ``optimizer.iterations`` counts updates: under gradient
    accumulation it is ``_iterations // gradient_accumulation_steps``, a
    tensor, not the variable a rewind assigns.
    """
    return optimizer._iterations


def steps_per_execution(model) -> int:
    """How many training steps ``fit`` runs between two calls of the callbacks (``model.steps_per_execution``)."""
    value = getattr(model, "steps_per_execution", 1)
    value = value.numpy() if hasattr(value, "numpy") else value
    return int(value or 1)


def execution_problem(model, params, start: int, acted, at_batch_begin: bool = False) -> str | None:
    """Why a callback acting at given optimizer steps would miss some under ``steps_per_execution`` (None: it won't).

    With ``steps_per_execution`` = s > 1, ``fit`` calls ``on_train_batch_end`` only after each execution of s
    steps, and each epoch ends with a shorter one when its step count is not a multiple of s, which shifts
    every later call; ``on_train_batch_begin`` sees the steps before each execution. The steps seen are worked
    out from ``params`` and compared with the steps the callback must act at.

    Args:
        model: The compiled model.
        params: The callback's ``params`` (``steps``: an epoch's steps, None when unknown; ``epochs``).
        start: The optimizer's step when ``fit`` starts.
        acted: The optimizer steps at which the callback must see the model.
        at_batch_begin: Whether it acts in ``on_train_batch_begin`` (it sees ``start`` and not the last step).
    """
    s = steps_per_execution(model)
    if s == 1:
        return None
    per_epoch, epochs = (params or {}).get("steps"), int((params or {}).get("epochs") or 1)
    if not per_epoch:
        return (
            f"steps_per_execution={s} with an epoch of unknown length: fit calls callbacks only between "
            f"executions of {s} steps, shifted by a shorter last execution of each epoch, so the steps the "
            "callback acts at may be skipped; give fit steps_per_epoch, or use steps_per_execution=1"
        )
    seen = {start} if at_batch_begin else set()
    for epoch in range(epochs):
        base = start + epoch * per_epoch
        seen.update(base + min(j * s, per_epoch) for j in range(1, -(-per_epoch // s) + 1))
    end = start + per_epoch * epochs
    if at_batch_begin:
        seen.discard(end)
        window = range(start, end)
    else:
        window = range(start + 1, end + 1)
    missed = [step for step in acted if step in window and step not in seen]
    if not missed:
        return None
    calls = ", ".join(str(step) for step in sorted(seen)[:5])
    return (
        f"steps_per_execution={s}: fit calls the callbacks only at steps {calls}, ... (executions of {s} steps, "
        f"the last of each {per_epoch}-step epoch shorter), so it would not see step {missed[0]}; use a "
        "steps_per_execution that divides the steps of an epoch and the steps the callback acts at, or 1"
    )


def learning_rate_object(optimizer):
    """The learning rate as the optimizer holds it: a variable, a schedule or a callable (``_learning_rate``).

    The public ``optimizer.learning_rate`` gives the schedule's current value,
    not the schedule; assigning a schedule goes through the public setter.
    """
    return getattr(optimizer, "_learning_rate", None)


def moving_averages(optimizer) -> list:
    """``(weight, moving average)`` pairs of an optimizer built with ``use_ema=True`` (empty otherwise).

    Keras keeps them in ``_model_variables_moving_average``, in the order of
    ``_trainable_variables``; neither has a public name.
    """
    if not getattr(optimizer, "use_ema", False) or not getattr(optimizer, "built", False):
        return []
    averages = getattr(optimizer, "_model_variables_moving_average", None) or []
    return [(w, a) for w, a in zip(optimizer._trainable_variables, averages) if a is not None]


def variable_strategy(variable):
    """The ``tf.distribute`` strategy a TensorFlow variable was created under (None elsewhere)."""
    return getattr(getattr(variable, "_value", None), "_distribute_strategy", None)


def _kept_value(variable):
    return variable.__dict__.get("_value")


def _keep_value(variable, value):
    if value is None and variable.__dict__.get("_value") is not None:
        return  # JAX's fit taking the value out for an epoch: kept
    variable.__dict__["_value"] = value


_KEPT_CLASSES = {}


def keep_through_fit(variable) -> None:
    """On JAX, keeps ``variable``'s value in place while ``fit``, ``evaluate`` and ``predict`` run.

    JAX's trainer sets the value (``_value``) of every model variable to None for
    the length of an epoch, to save memory: the values travel as the compiled
    step's state. A mask is also read outside that state, by its weight's
    constraint inside the optimizer's update, which would then find nothing.
    The variable becomes an instance of a subclass of its own class whose
    ``_value`` ignores being set to None; its value is still the state's at the
    end of an epoch (Keras assigns it back). Nothing changes on TensorFlow.
    """
    if BACKEND != "jax":
        return
    base = type(variable)
    if getattr(base, "_lottery_tf_kept", False):
        return
    if "_value" not in variable.__dict__:
        raise RuntimeError(
            f"keras {keras.__version__}: a JAX variable no longer keeps its value in _value; lottery_tf's masks "
            "need an update of lottery_tf.core.keras_compat.keep_through_fit."
        )
    kept = _KEPT_CLASSES.get(base)
    if kept is None:
        kept = type(base.__name__, (base,), {"_lottery_tf_kept": True, "_value": property(_kept_value, _keep_value)})
        _KEPT_CLASSES[base] = kept
    variable.__class__ = kept


__all__ = [
    "BACKEND",
    "BACKENDS",
    "Functional",
    "all_sublayers",
    "batch_counter",
    "keep_through_fit",
    "keras",
    "learning_rate_object",
    "moving_averages",
    "ops",
    "quiet_native_output",
    "sublayers",
    "variable_strategy",
]
