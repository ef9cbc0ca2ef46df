"""Where the mask is applied: masks on a built model's own weights, and whole-model wrap/strip/query.

A mask is a non-trainable 0/1 variable attached to one weight variable as its
*constraint*: Keras 3 optimizers apply ``variable.constraint`` right after every
update, for every optimizer, weight decay included, so pruned weights are
exactly 0.0 after each step and the forward pass pays nothing for the mask.
:func:`wrap_model` attaches masks *in place* to the model the user built: no
layer is copied, re-created or re-called, so any model Keras can build can be
masked (blocks that make their sub-layers in ``__init__`` without ``build()``,
layers called with mixed keyword arguments, layers whose ``get_config`` is
broken, subclassed models). One weight has one mask and one name
(:mod:`lottery_tf.core.naming`: ``block_a/fc/kernel``), however many paths lead
to it (tied embeddings). Because the stored weight itself is zero, saving,
stripping and exporting need no extra step: ``model.save`` writes the user's
own model with its zeros, which loads without lottery_tf.

Which weights are prunable: every floating-point weight with two or more
dimensions longer than 1 that training updates (kernels of dense, convolutional, recurrent
and attention layers, embedding tables, the experts of a mixture-of-experts
layer, a custom layer's own matrices), and the kernels of Keras's prunable
layer types even when frozen; never biases or normalisation weights.

:class:`MaskedLayer` is the explicit form (a wrapper that owns its masks), for
models written with it and for files saved by earlier versions.
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from lottery_tf.core import naming
from lottery_tf.core.keras_compat import (
    BACKEND,
    Functional,
    keep_through_fit,
    keras,
    moving_averages,
    ops,
    sublayers,
    variable_strategy,
)

# Layer types and the attributes of their prunable weights. Subclasses inherit
# (Conv2D from BaseConv, SeparableConv from BaseSeparableConv, ...).
_PRUNABLE = (
    (keras.layers.Embedding, ("embeddings",)),
    (keras.layers.Dense, ("kernel",)),
    (keras.layers.EinsumDense, ("kernel",)),
    (keras.layers.DepthwiseConv1D, ("kernel",)),
    (keras.layers.DepthwiseConv2D, ("kernel",)),
    (keras.layers.SeparableConv1D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.SeparableConv2D, ("depthwise_kernel", "pointwise_kernel")),
    (keras.layers.Conv1D, ("kernel",)),
    (keras.layers.Conv2D, ("kernel",)),
    (keras.layers.Conv3D, ("kernel",)),
    (keras.layers.Conv1DTranspose, ("kernel",)),
    (keras.layers.Conv2DTranspose, ("kernel",)),
    (keras.layers.Conv3DTranspose, ("kernel",)),
    (keras.layers.LSTMCell, ("kernel", "recurrent_kernel")),
    (keras.layers.GRUCell, ("kernel", "recurrent_kernel")),
    (keras.layers.SimpleRNNCell, ("kernel", "recurrent_kernel")),
)
# Keras layers that create their sub-layers in build(), not __init__.
_BUILDS_SUBLAYERS = tuple(
    t for t in (keras.layers.MultiHeadAttention, getattr(keras.layers, "GroupQueryAttention", None)) if t is not None
)


def prunable_attributes(layer) -> tuple[str, ...]:
    """Names of the prunable weights of ``layer`` itself (empty if it has none)."""
    for layer_type, attributes in _PRUNABLE:
        if isinstance(layer, layer_type):
            return attributes
    return ()


def _sublayers(layer) -> list:
    return sublayers(layer)


def can_be_masked(layer, exclude: Iterable[str] = ()) -> bool:
    """Whether ``layer`` has, or holds at any depth, layers with prunable weights.

    Any layer qualifies, not a list of known composite types: attention,
    recurrent layers, a user's residual block and a transformer block are
    searched the same way, through the layers they hold. Layers that are
    already a :class:`MaskedLayer` own their masks and do not count.
    ``exclude`` lists relative paths of sub-layers (``"block/fc"``) to leave out.
    """
    return bool(_prunable_paths(layer, "", frozenset(exclude)))


def _prunable_paths(layer, prefix: str, exclude: frozenset) -> list:
    """(relative name, layer, attribute) of every prunable weight under ``layer``."""
    if isinstance(layer, MaskedLayer):
        return []
    attributes = prunable_attributes(layer)
    if attributes:
        return [(prefix + a, layer, a) for a in attributes]
    found = []
    for inner in _sublayers(layer):
        relative = f"{prefix}{inner.name}"
        if relative in exclude:
            continue
        found.extend(_prunable_paths(inner, relative + "/", exclude))
    return found


def prunable_variables(
    layer, prefix: str = "", exclude: Iterable[str] = ()
) -> collections.OrderedDict[str, keras.Variable]:
    """Relative name -> variable of every prunable weight of a *built* layer.

    A plain layer gives its attributes (``{"kernel": ...}``); a layer that
    holds others gives their weights under their names, at any depth
    (``{"query/kernel": ..., "lstm_cell/recurrent_kernel": ...,
    "self_attention_layer/query/kernel": ...}``).

    Raises:
        ValueError: If two sub-layers of one layer share a name, so their
            weights cannot be told apart.
    """
    found = collections.OrderedDict()
    for name, owner, attribute in _prunable_paths(layer, prefix, frozenset(exclude)):
        if name in found:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) holds two layers whose weights are both named "
                f"{name!r}; give its sub-layers distinct names."
            )
        found[name] = _weight_variable(owner, attribute)
    return found


def _weight_variable(layer, attribute: str, path: str | None = None):
    # Keras 3 keeps some kernels behind a property (for LoRA / quantization);
    # the variable itself lives at the underscored name.
    where = f"Layer {path or layer.name!r} ({type(layer).__name__})"
    if not layer.built:
        raise ValueError(
            f"{where} has not been built (it was never called), so its weights do not exist yet; "
            "call the model on a batch (model(x[:1])) before masking it."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"{where} is quantized ({layer.quantization_mode}); prune before quantizing, or exclude the layer."
        )
    if getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"{where} has LoRA enabled: its effective kernel is kernel + A.B, which a mask on the kernel cannot "
            "keep sparse; merge or disable LoRA first, or exclude the layer."
        )
    for candidate in ("_" + attribute, attribute):
        value = getattr(layer, candidate, None)
        if isinstance(value, keras.Variable):
            return value
    raise ValueError(f"{where} has no variable {attribute!r}.")


class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by its mask (after any constraint it already had).

    On TensorFlow a compiled step reads the mask variable whenever it runs. On
    JAX a compiled training step holds the mask's value from when it was traced
    (the mask is not part of the state Keras's stateless step carries), so
    whatever changes masks traces the step again (:func:`retrace_training`).
    """

    def __init__(self, mask, previous=None):
        self.mask = mask
        self.previous = previous
        self.traced = None  # JAX: the mask's value the last traced step was given

    def __call__(self, w):
        if self.previous is not None:
            w = self.previous(w)
        if BACKEND != "jax":
            return w * ops.cast(self.mask, w.dtype)
        value = self.mask.value
        if not _is_tracer(value):
            self.traced = value
        return w * ops.cast(value, w.dtype)

    def stale(self) -> bool:
        """JAX: whether the mask was assigned after the last traced step read it."""
        return self.traced is not None and self.traced is not self.mask.value


def _is_tracer(value) -> bool:
    import jax

    return isinstance(value, jax.core.Tracer)


def retrace_training(model, only_if_stale: bool = False) -> None:
    """On JAX, makes ``model``'s next training step trace again, so that it reads the masks as they are now.

    A no-op on TensorFlow, whose compiled steps read the mask variables when
    they run. :func:`set_masks` and the callbacks call it; call it yourself
    after assigning a mask variable directly on JAX.

    Args:
        model: A model with masks.
        only_if_stale: Retrace only if a mask was assigned after the step
            was last traced.
    """
    if BACKEND != "jax" or getattr(model, "train_function", None) is None:
        return
    if only_if_stale and not any(w.constraint.stale() for _, _, w in masked_weights(model)):
        return
    model.make_train_function(force=True)


_BASE_LAYER_ARGUMENTS = (
    "name",
    "trainable",
    "dtype",
    "autocast",
    "input_shape",
    "input_dim",
    "batch_size",
    "batch_input_shape",
    "activity_regularizer",
    "input_dtype",
)


def clone_layer(layer):
    """A new, unbuilt layer of the same configuration (``from_config(get_config())``).

    Some published layers write settings into ``get_config`` that their
    constructor does not accept (keras-hub 0.32's ``ViTPatchingAndEmbedding``
    writes ``num_patches``); for those, the unaccepted keys are left out, with
    a warning naming them. Weights are copied by the caller, so a clone that
    came out differently fails there.
    """
    config = layer.get_config()
    try:
        return layer.__class__.from_config(config)
    except TypeError as error:
        if "Unrecognized keyword arguments" not in str(error):
            raise
        return _from_config_without_unknown(layer.__class__, config, error)


def _unknown_keys(cls, config) -> list:
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) | set(_BASE_LAYER_ARGUMENTS)
    return sorted(k for k in config if k not in accepted)


def _warn_unknown(cls, unknown) -> None:
    warnings.warn(
        f"{cls.__name__}.get_config() returns {', '.join(unknown)}, which its constructor does not accept (a bug "
        "in that layer); they are left out when the layer is copied or loaded.",
        stacklevel=5,
    )


def _from_config_without_unknown(cls, config, error):
    unknown = _unknown_keys(cls, config)
    if not unknown:
        raise error
    _warn_unknown(cls, unknown)
    return cls.from_config({k: v for k, v in config.items() if k not in unknown})


def _without_unknown(serialized: dict, error) -> dict:
    """A serialized layer (``{"module", "class_name", "config"}``) without the config keys its class refuses."""
    import importlib

    try:
        cls = getattr(importlib.import_module(serialized["module"]), serialized["class_name"])
    except (KeyError, ImportError, AttributeError):
        raise error from None
    unknown = _unknown_keys(cls, serialized["config"])
    if not unknown:
        raise error
    _warn_unknown(cls, unknown)
    return {**serialized, "config": {k: v for k, v in serialized["config"].items() if k not in unknown}}


@keras.saving.register_keras_serializable(package="lottery_tf")
class MaskedLayer(keras.layers.Wrapper):
    """Wraps a layer with fixed 0/1 masks on its prunable weights, at any depth.

    The masks are non-trainable variables created in ``build()`` with value 1
    (dense). Pruned weights are held at exactly 0.0 after every optimizer step
    through the weight's constraint. Masks change only when set explicitly
    (:func:`set_masks`), which is what lottery-ticket experiments need: a fixed
    mask within a level. The wrapped layer may be a plain layer (``Dense``,
    ``Conv2D``, ...) or any layer that holds such layers (attention, recurrent
    layers, a residual block, a transformer encoder): every prunable weight it
    holds gets a mask.

    Args:
        layer: The Keras layer to wrap. Must have, or hold, prunable weights
            (see :func:`prunable_attributes`).
        exclude: Relative paths of sub-layers to leave unmasked
            (``["feedforward_output_dense"]``).
        **kwargs: Base ``Layer`` arguments. ``name`` defaults to the wrapped
            layer's name.

    Raises:
        ValueError: If ``layer`` is not a Keras layer or has nothing to prune.

    Example:

    >>> from lottery_tf.core.keras_compat import keras
    >>> layer = MaskedLayer(keras.layers.Dense(4))
    >>> y = layer(np.ones((2, 3), "float32"))
    >>> sorted(layer.masks)
    ['kernel']
    """

    _lottery_tf_masked_layer = True  # read by lottery_tf.core.naming

    def __init__(self, layer, exclude: Iterable[str] = (), **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"MaskedLayer wraps a keras.layers.Layer; got {type(layer).__name__}: {layer!r}.")
        if isinstance(layer, MaskedLayer):
            raise ValueError(f"Layer {layer.name!r} is already a MaskedLayer.")
        self.exclude = tuple(exclude)
        # An unbuilt layer may create its sub-layers in build(): then the check waits for build().
        # Keras's own layers create theirs in __init__, except the attention layers.
        may_grow = not layer.built and (
            not type(layer).__module__.startswith("keras.") or isinstance(layer, _BUILDS_SUBLAYERS)
        )
        if not may_grow and not can_be_masked(layer, self.exclude):
            raise ValueError(self._nothing_to_mask(layer))
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.supports_masking = getattr(layer, "supports_masking", False)
        self.masks = {}

    def _nothing_to_mask(self, layer) -> str:
        return (
            f"Layer {layer.name!r} of type {type(layer).__name__} has no prunable weights and holds no layer "
            "that has; prunable types are "
            + ", ".join(t.__name__ for t, _ in _PRUNABLE)
            + " (and any layer that holds them)."
        )

    def build(self, input_shape=None, *more_shapes, **named_shapes):
        if not self.layer.built:
            if more_shapes or named_shapes:
                raise ValueError(
                    f"MaskedLayer {self.name!r}: {type(self.layer).__name__} takes several inputs; "
                    "build it (call it once) before wrapping, as wrap_model does."
                )
            self.layer.build(input_shape)
        self._create_masks()

    def _create_masks(self):
        self.masks = {}
        weights = prunable_variables(self.layer, exclude=self.exclude)
        if not weights:
            raise ValueError(self._nothing_to_mask(self.layer))
        for attribute, weight in weights.items():
            mask = self.add_weight(
                name=f"{attribute.replace('/', '_')}_mask",
                shape=weight.shape,
                initializer="ones",
                trainable=False,
                dtype=weight.dtype,
            )
            self.masks[attribute] = mask
            keep_through_fit(mask)  # JAX: a model variable, which fit would otherwise take out while a step traces
            weight.constraint = MaskConstraint(mask, previous=weight.constraint)
        self.built = True

    def get_config(self):
        config = super().get_config()
        if self.exclude:
            config["exclude"] = list(self.exclude)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = config.pop("layer")
        try:
            layer = keras.saving.deserialize_keras_object(inner, custom_objects=custom_objects)
        except TypeError as error:
            if "Unrecognized keyword arguments" not in str(error):
                raise
            layer = keras.saving.deserialize_keras_object(_without_unknown(inner, error), custom_objects=custom_objects)
        return cls(layer, **config)

    def get_build_config(self):
        return {"inner": self.layer.get_build_config()} if self.layer.built else None

    def build_from_config(self, config):
        if config and "inner" in config:
            if not self.layer.built and config["inner"]:
                self.layer.build_from_config(config["inner"])
            self._create_masks()
        elif config:
            super().build_from_config(config)

    def prunable_weights(self) -> dict:
        """Mask name (relative to this layer) -> the wrapped layer's weight variable."""
        weights = prunable_variables(self.layer, exclude=self.exclude)
        return {a: weights[a] for a in self.masks}

    def call(self, inputs, *args, training=None, **kwargs):
        if getattr(self.layer, "_call_has_training_arg", False):
            kwargs["training"] = training
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_output_spec(self, inputs, *args, training=None, **kwargs):
        if getattr(self.layer, "_call_has_training_arg", False):
            kwargs["training"] = training
        return self.layer.compute_output_spec(inputs, *args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)


def masked_layers(model) -> list[MaskedLayer]:
    """All :class:`MaskedLayer` instances in ``model``, nested ones included."""
    return [layer for layer, _ in naming.walk(model) if isinstance(layer, MaskedLayer)]


def mask_of(variable):
    """The mask variable attached to ``variable`` (None if it has none)."""
    constraint = getattr(variable, "constraint", None)
    return constraint.mask if isinstance(constraint, MaskConstraint) else None


def masked_weights(model) -> list[tuple[str, object, object]]:
    """``(name, mask variable, weight variable)`` for every masked weight, in ``model.variables`` order.

    Names are the weights' unique names (:mod:`lottery_tf.core.naming`): the layer
    names from the model down to the weight, ``"fc1/kernel"``,
    ``"block_a/fc/kernel"``, ``"transformer_layer_0/self_attention_layer/query/kernel"``.
    A weight reached through several paths (tied embeddings) is listed once.

    Raises:
        ValueError: If the model has no masks, or a MaskedLayer in it is not built.
    """
    for layer, path in naming.walk(model):
        if isinstance(layer, MaskedLayer) and not layer.built:
            raise ValueError(
                f"MaskedLayer {path!r} is not built; call the model on data "
                "(or build it) before reading or setting masks."
            )
    triples = [(name, mask_of(v), v) for name, v in naming.variable_names(model).items() if mask_of(v) is not None]
    if not triples:
        raise ValueError(
            f"Model {model.name!r} has no masks; mask it with lottery_tf.wrap_model(model) "
            "(in place) or build it from lottery_tf.MaskedLayer."
        )
    return triples


def _wrap_roots(model) -> dict:
    """Weight name -> (path of the layer earlier versions wrapped, that layer's name, the rest of the name).

    Earlier versions wrapped every layer directly under a Sequential or functional
    model (nested models were entered) in a MaskedLayer; their files name masks and
    mask variables after that layer.
    """
    layers = dict((path, layer) for layer, path in naming.walk(model))
    roots = {}
    for name, _, _ in masked_weights(model):
        parts = name.split("/")
        for i in range(1, len(parts)):
            path = "/".join(parts[:i])
            layer = layers.get(path)
            if layer is None or not isinstance(layer, (keras.Sequential, Functional)):
                break
        roots[name] = (path, layer.name if layer is not None else parts[i - 1], "/".join(parts[i:]))
    return roots


def mask_variables(model) -> collections.OrderedDict[str, object]:
    """Name -> mask variable, for the masks a checkpoint stores beside the model's variables.

    Masks attached in place are not Keras variables of the model; they are named
    as earlier versions named the mask variables of their wrappers
    (``fc1/kernel_mask``, ``block/fc_kernel_mask``), so their checkpoints still read.
    Masks of a :class:`MaskedLayer` are model variables already and are left out.
    """
    owned = {id(v) for v in model.variables}
    found = collections.OrderedDict()
    by_name = {name: mask for name, mask, _ in masked_weights(model)}
    for name, (root, _, rest) in _wrap_roots(model).items():
        mask = by_name[name]
        if id(mask) not in owned:
            found[f"{root}/{rest.replace('/', '_')}_mask"] = mask
    return found


def legacy_keras_paths(model) -> dict:
    """Unique name -> the Keras ``variable.path`` earlier versions gave it, where it differs.

    Earlier versions wrapped layers in MaskedLayers, which repeated the wrapped
    layer's name in its variables' paths (``lenet/fc1/fc1/kernel``) and kept the
    mask beside it (``lenet/fc1/kernel_mask``); files keyed by those paths (written
    before names were unique) are read through this table. Covers the weights
    and other variables under each wrapped layer and, by their checkpoint names
    (:func:`mask_variables`), the masks attached in place.
    """
    try:
        roots = _wrap_roots(model)
    except ValueError:
        return {}
    owned = {id(x) for x in model.variables}  # a MaskedLayer's masks are model variables; in-place ones are not
    masked_in_place = {id(v) for _, m, v in masked_weights(model) if id(m) not in owned}
    root_names = {}
    for root, layer_name, _ in roots.values():
        root_names[root] = layer_name
    old = {}
    variables = naming.variable_names(model)
    for name, variable in variables.items():
        for root, layer_name in root_names.items():
            if not name.startswith(root + "/"):
                continue
            parts = variable.path.split("/")
            if layer_name not in parts:
                break
            i = parts.index(layer_name)
            old[name] = "/".join(parts[: i + 1] + parts[i:])
            if id(variable) in masked_in_place:
                rest = name[len(root) + 1 :]
                old[f"{root}/{rest.replace('/', '_')}_mask"] = "/".join(
                    parts[: i + 1] + [f"{rest.replace('/', '_')}_mask"]
                )
            break
    return old


def legacy_mask_names(model) -> dict:
    """Mask names of files written before names were unique (``<wrapped layer>/<attribute>``) -> names now.

    Empty if the old names repeat (such a model could not be pruned then).
    """
    old = {}
    for name, (_, layer_name, rest) in _wrap_roots(model).items():
        key = f"{layer_name}/{rest}"
        if key in old:
            return {}
        old[key] = name
    return old


def mask_names(model) -> list[str]:
    """Unique names of all masked weights, in model order (see :func:`masked_weights`)."""
    return [name for name, _, _ in masked_weights(model)]


def get_masks(model) -> collections.OrderedDict[str, np.ndarray]:
    """Current masks as name -> numpy array."""
    return collections.OrderedDict((name, np.asarray(mask.numpy())) for name, mask, _ in masked_weights(model))


def get_prunable_weights(model) -> collections.OrderedDict[str, np.ndarray]:
    """Current values of the masked weights as name -> numpy array."""
    return collections.OrderedDict((name, np.asarray(weight.numpy())) for name, _, weight in masked_weights(model))


def set_masks(model, masks: Mapping[str, np.ndarray]) -> None:
    """Assigns masks and zeroes the newly pruned weights.

    Args:
        model: A model with masks (:func:`wrap_model`, or built from MaskedLayer).
        masks: Name -> 0/1 array for *every* masked weight of the model. Files
            written before mask names were unique (``<masked layer>/<attribute>``)
            are read too.

    Raises:
        ValueError: If names or shapes do not match the model's masked weights.
    """
    triples = masked_weights(model)
    expected = [name for name, _, _ in triples]
    if sorted(masks) != sorted(expected):
        legacy = legacy_mask_names(model)
        if legacy and sorted(masks) == sorted(legacy):
            masks = {legacy[name]: value for name, value in masks.items()}
        else:
            missing = sorted(set(expected) - set(masks))
            extra = sorted(set(masks) - set(expected))
            raise ValueError(
                f"Masks must name exactly the model's masked weights {expected}; got {sorted(masks)} "
                f"(missing {missing[:5]}, unexpected {extra[:5]})."
            )
    for name, mask_var, _ in triples:
        value = np.asarray(masks[name], dtype=np.float32)
        if value.shape != tuple(mask_var.shape):
            raise ValueError(f"Mask {name!r} has shape {value.shape}; expected {tuple(mask_var.shape)}.")
        mask_var.assign(value.astype(mask_var.dtype))
    apply_masks(model)
    retrace_training(model)


def _moving_averages(model) -> dict:
    """id(weight) -> the optimizer's moving average of it (``use_ema``), if any."""
    optimizer = getattr(model, "optimizer", None)
    found = {}
    while optimizer is not None:
        for weight, average in moving_averages(optimizer):
            found[id(weight)] = average
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return found


def apply_masks(model) -> None:
    """Sets every masked weight to weight * mask (exact zeros where pruned).

    The optimizer's moving averages of masked weights (``use_ema=True``) are
    masked too: Keras updates them before it applies constraints and copies
    them into the weights at the end of ``fit``.
    """
    averages = _moving_averages(model)
    for _, mask_var, weight in masked_weights(model):
        weight.assign(weight * ops.cast(mask_var, weight.dtype))
        if id(weight) in averages:
            average = averages[id(weight)]
            average.assign(average * ops.cast(mask_var, average.dtype))


def layer_densities(model) -> collections.OrderedDict[str, float]:
    """Name -> fraction of that weight's entries that are unpruned."""
    return collections.OrderedDict((name, float(np.count_nonzero(m)) / m.size) for name, m in get_masks(model).items())


def overall_density(model) -> float:
    """Fraction of all prunable weights that are unpruned."""
    masks = get_masks(model).values()
    total = sum(m.size for m in masks)
    return float(sum(np.count_nonzero(m) for m in masks)) / total


# -- masks attached in place ------------------------------------------------------

# Weights that are never pruned, whatever their shape (EinsumDense biases are 2-D).
_NEVER_PRUNED = ("bias", "gamma", "beta", "moving_mean", "moving_variance", "mean", "variance", "count")


def _is_matrix(variable) -> bool:
    """A floating-point weight that training updates, with two or more dimensions longer than 1.

    A vector stored with extra unit dimensions (a ViT class token of shape
    ``(1, 1, d)``, a per-channel scale) is not a matrix.
    """
    return (
        variable.trainable
        and sum(1 for n in variable.shape if n is not None and n > 1) >= 2
        and "float" in str(variable.dtype)
        and variable.name not in _NEVER_PRUNED
    )


def _creation_scope(weight):
    # A mask lives where its weight lives: a distributed weight gets a mask of the same strategy.
    strategy = variable_strategy(weight)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def _attach(weight, name: str, value=None) -> None:
    with _creation_scope(weight):
        mask = keras.Variable(
            np.ones(tuple(weight.shape), "float32") if value is None else np.asarray(value, "float32"),
            dtype=weight.dtype,
            trainable=False,
            name=f"{name.replace('/', '_')}_mask",
        )
    weight.constraint = MaskConstraint(mask, previous=weight.constraint)
    weight.assign(weight * ops.cast(mask, weight.dtype))


def _excluded_ids(model, walked, exclude: set) -> set:
    ids = set()
    for layer, path in walked:
        if layer.name in exclude or path in exclude:
            ids.update(id(v) for v in layer.variables)
    for name, variable in naming.variable_names(model).items():
        if name in exclude:
            ids.add(id(variable))
    return ids


def prunable_weight_names(model, exclude: Iterable[str] = ()) -> list[str]:
    """Unique names of the weights :func:`wrap_model` would mask (those already masked included).

    Args:
        model: A built Keras model.
        exclude: Layer names (at any depth), layer paths or weight names to leave dense.

    Raises:
        ValueError: For a model that is not built, names in ``exclude`` that
            match nothing, or a prunable layer that cannot be masked (never
            built, quantized, LoRA-enabled), named by its path.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"wrap_model takes a keras.Model; got {type(model).__name__}.")
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so its weights do not exist yet; call it on a batch "
            "(model(x[:1])) or model.build(input_shape) before wrap_model."
        )
    exclude = set(exclude)
    walked = list(naming.walk(model))
    variables = naming.variable_names(model)
    known = {layer.name for layer, _ in walked} | {path for _, path in walked} | set(variables)
    unknown = exclude - known
    if unknown:
        # The layers worth excluding are those with weights to prune (not every ReLU, Add or padding layer).
        prunable = sorted(prunable_weight_names(model))
        owners = sorted({name.rsplit("/", 1)[0] for name in prunable})
        raise ValueError(
            f"exclude names layers that are not in the model: {sorted(unknown)}; the layers with weights to "
            f"prune are {owners} (as mask names spell them; a weight's name, e.g. {prunable[0]}, works too)."
            if owners
            else f"exclude names layers that are not in the model: {sorted(unknown)}; it has no weights to prune."
        )
    excluded = _excluded_ids(model, walked, exclude)
    # Below an excluded layer nothing is masked; a MaskedLayer decides for everything it holds.
    closed = [
        path for layer, path in walked if isinstance(layer, MaskedLayer) or layer.name in exclude or path in exclude
    ]
    for layer, _ in walked:
        if isinstance(layer, MaskedLayer):
            excluded.update(id(v) for v in layer.variables if mask_of(v) is None)
    typed = set()
    for layer, path in walked:
        if any(path == c or path.startswith(c + "/") for c in closed):
            continue
        for attribute in prunable_attributes(layer):
            typed.add(id(_weight_variable(layer, attribute, path)))
    return [
        name
        for name, v in variables.items()
        if id(v) not in excluded and (mask_of(v) is not None or id(v) in typed or _is_matrix(v))
    ]


def wrap_model(model, exclude: Iterable[str] = ()):
    """Masks every prunable weight of a built model, in place, and returns the model.

    Each prunable weight gets a 0/1 mask (all ones: dense) attached as its
    constraint, so the optimizer keeps pruned weights at exactly 0.0 after
    every step. No layer is copied or re-created: any model Keras can build
    (Sequential, functional, subclassed; custom blocks, shared and tied layers,
    keras_hub models) is masked as it is, and keeps its layers, weights,
    ``get_config`` and compiled state. Prunable weights are every
    floating-point weight with two or more dimensions longer than 1 that training updates
    (kernels, embedding tables, recurrent kernels, experts of a
    mixture-of-experts layer) and the kernels of Keras's prunable layer types;
    biases and normalisation weights never. Weights that already have a mask
    (a :class:`MaskedLayer` inside the model, an earlier ``wrap_model``) keep it.

    Args:
        model: A built Keras 3 model (call it on a batch first if it is not).
        exclude: Weights to leave dense: a layer name (every layer of that
            name, at any depth), a layer path (``"block_a/fc"``) or a weight
            name (``"transformer_layer_0/mlp/experts/gate"``).

    Returns:
        ``model`` itself, masked (compiled or not, as it was).

    Raises:
        ValueError: For a model that is not built, names in ``exclude`` that
            match nothing, a prunable layer that cannot be masked (named by
            its path), or a model with nothing to prune.

    Example:

    >>> from lottery_tf.core.keras_compat import keras
    >>> dense = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> masked = wrap_model(dense)
    >>> masked is dense, mask_names(masked)
    (True, ['fc/kernel'])
    """
    names = prunable_weight_names(model, exclude)
    if not names:
        raise ValueError(
            f"Model {model.name!r} has no prunable weights (floating-point weights of two or more dimensions) "
            "outside exclude; nothing to prune."
        )
    attach_masks(model, names)
    return model


def attach_masks(model, names: Iterable[str], masks: Mapping[str, np.ndarray] | None = None) -> None:
    """Attaches masks (ones, or ``masks[name]``) to the named weights of ``model`` that have none.

    Raises:
        ValueError: If a name is not a weight of the model.
    """
    variables = naming.variable_names(model)
    missing = sorted(set(names) - set(variables))
    if missing:
        raise ValueError(f"Model {model.name!r} has no weights named {missing[:5]}.")
    for name in names:
        if mask_of(variables[name]) is None:
            _attach(variables[name], name, None if masks is None else masks[name])


# -- stripping ----------------------------------------------------------------------


def _clone_with(model, make_layer):
    """clone_model with ``make_layer(layer) -> (new_layer, copy_from, copy_to)``, keeping the weights."""
    copies = []

    def clone_function(layer):
        new_layer, source, target = make_layer(layer)
        copies.append((source, target))
        return new_layer

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    for source, target in copies:
        if not isinstance(source, keras.layers.Layer):  # an operation (``x + y``, keras.ops): no weights
            continue
        values = source.get_weights()
        if values:
            target.set_weights(values)
    return clone


def _unwrap_masked_layers(model):
    def make_layer(layer):
        source = layer.layer if isinstance(layer, MaskedLayer) else layer
        if not isinstance(source, keras.layers.Layer):
            new = source.__class__.from_config(source.get_config())
        else:
            new = clone_layer(source)
        return new, source, new  # an operation (not a Layer) has no weights to copy

    return _clone_with(model, make_layer)


def _keras_copy(model):
    """A copy of ``model`` made the way ``model.save`` and ``keras.models.load_model`` make one."""
    import os
    import tempfile

    classes = {type(model).__name__: type(model)}
    for layer, _ in naming.walk(model):
        classes.setdefault(type(layer).__name__, type(layer))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(path)
            return keras.models.load_model(path, custom_objects=classes, compile=False, safe_mode=False)


def strip_masks(model):
    """Returns a plain copy of ``model``: the same layers and weights, no masks.

    The pruned weights are already 0.0, so the copy computes the same function
    and holds the zeros; nothing keeps them at zero when it trains. A model
    masked in place is copied the way ``model.save`` and
    ``keras.models.load_model`` copy it (so it works for every model Keras can
    save and load, subclassed ones included); MaskedLayers in a Sequential or
    functional model are replaced by the layers they wrap. The model itself
    is not changed.

    Raises:
        ValueError: If Keras cannot copy the model (the message says why and
            what to do instead), or a subclassed model creates MaskedLayers in
            its own code (a copy of it would too).
    """
    if masked_layers(model):
        if isinstance(model, (keras.Sequential, Functional)):
            return _unwrap_masked_layers(model)
        raise ValueError(
            f"Model {model.name!r} ({type(model).__name__}) creates lottery_tf.MaskedLayer in its own code, so any "
            "copy of it has them too. Its pruned weights are exact zeros already: save or export it as it is, or "
            "build it from plain layers and mask it in place with lottery_tf.wrap_model(model), which "
            "strip_masks removes."
        )
    try:
        copy = _keras_copy(model)
    except Exception as error:  # whatever Keras raises: the copy is impossible, the reason is Keras's
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"strip_masks copies model {model.name!r} the way model.save and keras.models.load_model do, and Keras "
            f"cannot ({type(error).__name__}: {first[:300]}). Its pruned weights are exact zeros already: use the "
            "model as it is (export it, or save its weights)."
        ) from error
    expected, got = model.get_weights(), copy.get_weights()
    if len(expected) != len(got) or any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(expected, got)):
        raise ValueError(
            f"strip_masks: Keras's copy of model {model.name!r} does not hold the model's weights "
            "(its save and load do not round-trip); use the model as it is."
        )
    return copy
