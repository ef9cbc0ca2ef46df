"""Where the mask is applied: the mask wrapper, and whole-model wrap/strip/query.

A :class:`MaskedLayer` wraps a Keras layer and owns one non-trainable 0/1 mask
variable per prunable weight (kernels, recurrent kernels and embeddings; never
biases or normalisation weights), including the weights of every layer it
holds, at any depth: the query/key/value/output projections of
``MultiHeadAttention``, the cell of ``LSTM``/``GRU``/``SimpleRNN``, both
directions of ``Bidirectional``, the layer inside ``TimeDistributed``, the
sub-layers of a user's residual block or of a transformer block. Masks are
named by the weights' unique names (:mod:`lottery_tf.core.naming`:
``block_a/fc/kernel``). The mask is enforced as a variable *constraint*: Keras 3
optimizers apply ``variable.constraint`` right after every update, for every
optimizer, weight decay included, so pruned weights are exactly 0.0 after each
step and the forward pass pays nothing for the mask. Because the stored weight
itself is zero, saving, stripping and exporting need no extra step either.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from lottery_tf.core import naming
from lottery_tf.core.keras_compat import Functional, keras, ops

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
# Names of weights that look prunable: a custom layer's own weights with these names cannot be
# masked (what they do is unknown), so wrap_model names them in a warning.
_PRUNABLE_LOOKING = ("kernel", "recurrent_kernel", "embeddings", "depthwise_kernel", "pointwise_kernel")


def prunable_attributes(layer) -> tuple[str, ...]:
    """Names of the prunable weights of ``layer`` itself (empty if it has none)."""
    for layer_type, attributes in _PRUNABLE:
        if isinstance(layer, layer_type):
            return attributes
    return ()


def _sublayers(layer) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


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


def _weight_variable(layer, attribute: str):
    # Keras 3 keeps some kernels behind a property (for LoRA / quantization);
    # the variable itself lives at the underscored name.
    for candidate in ("_" + attribute, attribute):
        value = getattr(layer, candidate, None)
        if isinstance(value, keras.Variable):
            return value
    raise ValueError(
        f"Layer {layer.name!r} ({type(layer).__name__}) has no variable "
        f"{attribute!r}; quantized or LoRA-enabled layers cannot be masked."
    )


class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by its mask (after any constraint it already had)."""

    def __init__(self, mask, previous=None):
        self.mask = mask
        self.previous = previous

    def __call__(self, w):
        if self.previous is not None:
            w = self.previous(w)
        return w * ops.cast(self.mask, w.dtype)


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


def masked_weights(model) -> list[tuple[str, object, object]]:
    """``(name, mask variable, weight variable)`` for every masked weight, in model order.

    Names are the weights' unique names (:mod:`lottery_tf.core.naming`): the layer
    names from the model down to the weight, ``"fc1/kernel"``,
    ``"block_a/fc/kernel"``, ``"transformer_layer_0/self_attention_layer/query/kernel"``.

    Raises:
        ValueError: If the model has no MaskedLayer or one is not built.
    """
    found = [(layer, name) for layer, name in naming.walk(model) if isinstance(layer, MaskedLayer)]
    if not found:
        raise ValueError(
            f"Model {model.name!r} has no MaskedLayer; wrap it with "
            "lottery_tf.wrap_model(model) or build it from MaskedLayer."
        )
    triples, seen = [], set()
    for layer, prefix in found:
        if not layer.built:
            raise ValueError(
                f"MaskedLayer {layer.name!r} is not built; call the model on data "
                "(or build it) before reading or setting masks."
            )
        for attribute, weight in layer.prunable_weights().items():
            name = f"{prefix}/{attribute}"
            if name in seen:  # only a layer object used at two places in one model
                raise ValueError(f"The masked weight {name!r} appears twice in model {model.name!r}.")
            seen.add(name)
            triples.append((name, layer.masks[attribute], weight))
    return triples


def legacy_mask_names(model) -> dict:
    """Mask names of files written before names were unique (``<masked layer>/<attribute>``) -> names now.

    Empty if the old names repeat (such a model could not be pruned then).
    """
    old = {}
    for layer, prefix in naming.walk(model):
        if isinstance(layer, MaskedLayer) and layer.built:
            for attribute in layer.masks:
                key = f"{layer.name}/{attribute}"
                if key in old:
                    return {}
                old[key] = f"{prefix}/{attribute}"
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
        model: A model containing MaskedLayers.
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
            raise ValueError(f"Masks must name exactly the model's masked weights {expected}; got {sorted(masks)}.")
    for name, mask_var, _ in triples:
        value = np.asarray(masks[name], dtype=np.float32)
        if value.shape != tuple(mask_var.shape):
            raise ValueError(f"Mask {name!r} has shape {value.shape}; expected {tuple(mask_var.shape)}.")
        mask_var.assign(value.astype(mask_var.dtype))
    apply_masks(model)


def _moving_averages(model) -> dict:
    """id(weight) -> the optimizer's moving average of it (``use_ema``), if any."""
    optimizer = getattr(model, "optimizer", None)
    found = {}
    while optimizer is not None:
        if getattr(optimizer, "use_ema", False) and getattr(optimizer, "built", False):
            for weight, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
                if average is not None:
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


def _clone_with(model, make_layer, what: str):
    """clone_model with ``make_layer(layer) -> (new_layer, copy_from, copy_to)``.

    Keeps the original weights: ``clone_model`` would re-initialise them.
    """
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"{what} needs a Sequential or functional keras.Model; got "
            f"{type(model).__name__}. Subclassed models cannot be cloned: build them "
            "from lottery_tf.MaskedLayer directly."
        )
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


def wrap_model(model, exclude: Iterable[str] = ()):
    """Returns a copy of ``model`` with every prunable layer in a MaskedLayer.

    Weights are copied, masks start dense (all ones). Nested Sequential or
    functional models are wrapped recursively; a layer that holds prunable
    layers (a residual block, a transformer block, attention) is wrapped as a
    whole, with a mask for every prunable weight inside it.

    Args:
        model: A built Sequential or functional Keras 3 model.
        exclude: Layers to leave unpruned: a layer name (every layer of that
            name, at any depth) or a unique path (``"block_a/fc"``,
            ``"transformer_layer_0/feedforward_output_dense"``).

    Returns:
        The wrapped model (not compiled).

    Raises:
        ValueError: For subclassed models, or names in ``exclude`` that match no
            layer.

    Example:

    >>> from lottery_tf.core.keras_compat import keras
    >>> dense = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> masked = wrap_model(dense)
    >>> mask_names(masked)
    ['fc/kernel']
    """
    exclude = set(exclude)
    paths = {}  # id(layer) -> its unique path in the original model
    for layer, path in naming.walk(model):
        paths.setdefault(id(layer), path)
    known = {layer.name for layer, _ in naming.walk(model)} | set(paths.values())
    unknown = exclude - known
    if unknown:
        raise ValueError(
            f"exclude names layers that are not in the model: {sorted(unknown)}; "
            f"layers are {sorted({layer.name for layer, _ in naming.walk(model)})}."
        )

    def excluded(layer, path) -> bool:
        return layer.name in exclude or path in exclude

    def excluded_inside(layer) -> tuple:
        """Relative paths of the sub-layers of ``layer`` that ``exclude`` names."""
        base = paths.get(id(layer), layer.name)
        return tuple(
            sorted(relative for inner, relative in naming.walk(layer) if excluded(inner, f"{base}/{relative}"))
        )

    def make_layer(layer):
        if not isinstance(layer, keras.layers.Layer):
            new = layer.__class__.from_config(layer.get_config())
            return new, layer, new
        new = clone_layer(layer)
        if layer.built and not isinstance(layer, MaskedLayer):
            build_config = layer.get_build_config() or {}
            if "shapes_dict" in build_config:
                # A layer of several inputs (attention): MaskedLayer cannot build it from
                # one shape, so it is built here with the original's shapes. Layers of one
                # input are built inside the model.
                new.build_from_config(build_config)
        inside = excluded_inside(layer)
        if (
            isinstance(layer, MaskedLayer)
            or excluded(layer, paths.get(id(layer), layer.name))
            or not can_be_masked(layer, inside)
        ):
            return new, layer, new
        return MaskedLayer(new, exclude=inside), layer, new

    wrapped = _clone_with(model, make_layer, "wrap_model")
    _warn_dense_kernels(wrapped, exclude)
    return wrapped


def _warn_dense_kernels(model, exclude) -> None:
    """Warns, by name, about kernel-like weights no mask covers (custom layers' own weights)."""
    covered = {id(w) for layer in masked_layers(model) if layer.built for w in layer.prunable_weights().values()}
    excluded = set()
    for layer, path in naming.walk(model):
        if layer.name in exclude or path in exclude:
            excluded.update(id(w) for w in layer.weights)
    dense = [
        name
        for name, v in naming.variable_names(model).items()
        if v.name in _PRUNABLE_LOOKING and id(v) not in covered and id(v) not in excluded
    ]
    if dense:
        warnings.warn(
            f"wrap_model: {len(dense)} weight(s) stay dense because their layers cannot be masked: "
            f"{', '.join(dense[:10])}{' ...' if len(dense) > 10 else ''}; pass their layers in "
            "exclude= to silence this, or build them from lottery_tf.MaskedLayer.",
            stacklevel=3,
        )


def strip_masks(model):
    """Returns a plain Keras copy of ``model`` without MaskedLayers.

    The pruned weights are already 0.0 in the wrapped layers, so the stripped
    model computes the same function and holds the zeros in place.

    Raises:
        ValueError: For subclassed models.
    """

    def make_layer(layer):
        source = layer.layer if isinstance(layer, MaskedLayer) else layer
        if not isinstance(source, keras.layers.Layer):
            new = source.__class__.from_config(source.get_config())
        else:
            new = clone_layer(source)
        return new, source, new  # an operation (not a Layer) has no weights to copy

    return _clone_with(model, make_layer, "strip_masks")
