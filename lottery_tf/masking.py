"""Where the mask is applied: the mask wrapper, and whole-model wrap/strip/query.

A :class:`MaskedLayer` wraps a Keras layer and owns one non-trainable 0/1 mask
variable per prunable weight (kernels, recurrent kernels and embeddings; never
biases or normalisation weights), including the weights of the layers a
composite layer holds: the query/key/value/output projections of
``MultiHeadAttention``, the cell of ``LSTM``/``GRU``/``SimpleRNN``, both
directions of ``Bidirectional``, the layer inside ``TimeDistributed``. The mask is enforced as a variable *constraint*: Keras 3
optimizers apply ``variable.constraint`` right after every update, for every
optimizer, weight decay included, so pruned weights are exactly 0.0 after each
step and the forward pass pays nothing for the mask. Because the stored weight
itself is zero, saving, stripping and exporting need no extra step either.
"""

from __future__ import annotations

import collections
import warnings
from typing import Iterable, Mapping

import numpy as np

from lottery_tf.keras_compat import Functional, keras, ops

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
# Layers whose prunable weights live in the layers they hold (found after build).
_COMPOSITE = tuple(
    t for t in (keras.layers.RNN, keras.layers.Bidirectional, keras.layers.MultiHeadAttention,
                getattr(keras.layers, "GroupQueryAttention", None)) if t is not None
)
# Variable names that look prunable: used to name weights wrap_model leaves dense.
_PRUNABLE_LOOKING = ("kernel", "recurrent_kernel", "embeddings", "depthwise_kernel", "pointwise_kernel")


def prunable_attributes(layer) -> tuple[str, ...]:
    """Names of the prunable weights of ``layer`` (empty if it has none)."""
    for layer_type, attributes in _PRUNABLE:
        if isinstance(layer, layer_type):
            return attributes
    return ()


def can_be_masked(layer) -> bool:
    """Whether ``layer`` has, or holds layers with, prunable weights."""
    if prunable_attributes(layer) or isinstance(layer, _COMPOSITE):
        return True
    if isinstance(layer, keras.layers.TimeDistributed):
        return can_be_masked(layer.layer)
    return False


def prunable_variables(layer, prefix: str = "") -> "collections.OrderedDict[str, keras.Variable]":
    """Relative name -> variable of every prunable weight of a *built* layer.

    A plain layer gives its attributes (``{"kernel": ...}``); a composite layer
    gives its inner layers' weights under their names
    (``{"query/kernel": ..., "lstm_cell/recurrent_kernel": ...}``).
    """
    attributes = prunable_attributes(layer)
    if attributes:
        return collections.OrderedDict((prefix + a, _weight_variable(layer, a)) for a in attributes)
    found = collections.OrderedDict()
    for inner in layer._flatten_layers(include_self=False, recursive=False):
        found.update(prunable_variables(inner, f"{prefix}{inner.name}/"))
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


@keras.saving.register_keras_serializable(package="lottery_tf")
class MaskedLayer(keras.layers.Wrapper):
    """Wraps a layer with fixed 0/1 masks on its prunable weights.

    The masks are non-trainable variables created in ``build()`` with value 1
    (dense). Pruned weights are held at exactly 0.0 after every optimizer step
    through the weight's constraint. Masks change only when set explicitly
    (:func:`set_masks`), which is what lottery-ticket experiments need: a fixed
    mask within a level.

    Args:
        layer: The Keras layer to wrap. Must have prunable weights (see
            :func:`prunable_attributes`).
        **kwargs: Base ``Layer`` arguments. ``name`` defaults to the wrapped
            layer's name.

    Raises:
        ValueError: If ``layer`` is not a Keras layer or has nothing to prune.

    Example:

    >>> from lottery_tf.keras_compat import keras
    >>> layer = MaskedLayer(keras.layers.Dense(4))
    >>> y = layer(np.ones((2, 3), "float32"))
    >>> sorted(layer.masks)
    ['kernel']
    """

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                f"MaskedLayer wraps a keras.layers.Layer; got {type(layer).__name__}: "
                f"{layer!r}."
            )
        if not can_be_masked(layer):
            raise ValueError(
                f"Layer {layer.name!r} of type {type(layer).__name__} has no prunable "
                "weights; prunable types are "
                + ", ".join(t.__name__ for t, _ in _PRUNABLE)
                + ", and the layers they are held by ("
                + ", ".join(t.__name__ for t in _COMPOSITE)
                + ", TimeDistributed)."
            )
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.supports_masking = getattr(layer, "supports_masking", False)
        self.masks = {}

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
        for attribute, weight in prunable_variables(self.layer).items():
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
        weights = prunable_variables(self.layer)
        return {a: weights[a] for a in self.masks}

    def call(self, inputs, *args, training=None, **kwargs):
        if getattr(self.layer, "_call_has_training_arg", False):
            kwargs["training"] = training
        return self.layer(inputs, *args, **kwargs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, *args, training=None, **kwargs):
        if getattr(self.layer, "_call_has_training_arg", False):
            kwargs["training"] = training
        return self.layer.compute_output_spec(inputs, *args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)


def masked_layers(model) -> list[MaskedLayer]:
    """All :class:`MaskedLayer` instances in ``model``, nested ones included."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, MaskedLayer):
            found.append(layer)
    return found


def _named_pairs(model):
    """(name, mask variable, weight variable) for every masked weight, in order."""
    layers = masked_layers(model)
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no MaskedLayer; wrap it with "
            "lottery_tf.wrap_model(model) or build it from MaskedLayer."
        )
    pairs, seen = [], set()
    for layer in layers:
        if not layer.built:
            raise ValueError(
                f"MaskedLayer {layer.name!r} is not built; call the model on data "
                "(or build it) before reading or setting masks."
            )
        for attribute, weight in layer.prunable_weights().items():
            name = f"{layer.name}/{attribute}"
            if name in seen:
                raise ValueError(
                    f"Two masked layers are named {layer.name!r}; give layers "
                    "unique names so masks can be addressed."
                )
            seen.add(name)
            pairs.append((name, layer.masks[attribute], weight))
    return pairs


def mask_names(model) -> list[str]:
    """Names (``"<layer>/<attribute>"``) of all masked weights, in model order."""
    return [name for name, _, _ in _named_pairs(model)]


def get_masks(model) -> "collections.OrderedDict[str, np.ndarray]":
    """Current masks as name -> numpy array."""
    return collections.OrderedDict(
        (name, np.asarray(mask.numpy())) for name, mask, _ in _named_pairs(model)
    )


def get_prunable_weights(model) -> "collections.OrderedDict[str, np.ndarray]":
    """Current values of the masked weights as name -> numpy array."""
    return collections.OrderedDict(
        (name, np.asarray(weight.numpy())) for name, _, weight in _named_pairs(model)
    )


def set_masks(model, masks: Mapping[str, np.ndarray]) -> None:
    """Assigns masks and zeroes the newly pruned weights.

    Args:
        model: A model containing MaskedLayers.
        masks: Name -> 0/1 array for *every* masked weight of the model.

    Raises:
        ValueError: If names or shapes do not match the model's masked weights.
    """
    pairs = _named_pairs(model)
    expected = [name for name, _, _ in pairs]
    if sorted(masks) != sorted(expected):
        raise ValueError(
            f"Masks must name exactly the model's masked weights {expected}; "
            f"got {sorted(masks)}."
        )
    for name, mask_var, weight in pairs:
        value = np.asarray(masks[name], dtype=np.float32)
        if value.shape != tuple(mask_var.shape):
            raise ValueError(
                f"Mask {name!r} has shape {value.shape}; expected {tuple(mask_var.shape)}."
            )
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
    for _, mask_var, weight in _named_pairs(model):
        weight.assign(weight * ops.cast(mask_var, weight.dtype))
        if id(weight) in averages:
            average = averages[id(weight)]
            average.assign(average * ops.cast(mask_var, average.dtype))


def layer_densities(model) -> "collections.OrderedDict[str, float]":
    """Name -> fraction of that weight's entries that are unpruned."""
    return collections.OrderedDict(
        (name, float(np.count_nonzero(m)) / m.size) for name, m in get_masks(model).items()
    )


def overall_density(model) -> float:
    """Fraction of all prunable weights that are unpruned."""
    masks = get_masks(model).values()
    total = sum(m.size for m in masks)
    return float(sum(np.count_nonzero(m) for m in masks)) / total


def _clone_layer(layer):
    return layer.__class__.from_config(layer.get_config())


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
    functional models are wrapped recursively.

    Args:
        model: A built Sequential or functional Keras 3 model.
        exclude: Names of layers to leave unwrapped (never pruned).

    Returns:
        The wrapped model (not compiled).

    Raises:
        ValueError: For subclassed models, or names in ``exclude`` that match no
            layer.

    Example:

    >>> from lottery_tf.keras_compat import keras
    >>> dense = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="fc")])
    >>> masked = wrap_model(dense)
    >>> mask_names(masked)
    ['fc/kernel']
    """
    exclude = set(exclude)
    all_names = {
        layer.name for layer in model._flatten_layers(include_self=False, recursive=True)
    }
    unknown = exclude - all_names
    if unknown:
        raise ValueError(
            f"exclude names layers that are not in the model: {sorted(unknown)}; "
            f"layers are {sorted(all_names)}."
        )

    def make_layer(layer):
        new = _clone_layer(layer)
        if isinstance(layer, keras.layers.Layer) and layer.built and not isinstance(layer, MaskedLayer):
            build_config = layer.get_build_config() or {}
            if "shapes_dict" in build_config:
                # A layer of several inputs (attention): MaskedLayer cannot build it from
                # one shape, so it is built here with the original's shapes. Layers of one
                # input are built inside the model, which keeps their variable paths.
                new.build_from_config(build_config)
        if (
            not isinstance(layer, keras.layers.Layer)
            or isinstance(layer, MaskedLayer)
            or layer.name in exclude
            or not can_be_masked(layer)
        ):
            return new, layer, new
        return MaskedLayer(new), layer, new

    wrapped = _clone_with(model, make_layer, "wrap_model")
    _warn_dense_kernels(wrapped, exclude)
    return wrapped


def _warn_dense_kernels(model, exclude) -> None:
    """Warns, by name, about kernel-like weights no mask covers (layers that cannot be masked)."""
    covered = {id(w) for layer in masked_layers(model) if layer.built for w in layer.prunable_weights().values()}
    excluded = {
        id(w)
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if layer.name in exclude
        for w in layer.weights
    }
    dense = [
        v.path for v in model.weights
        if v.path.rsplit("/", 1)[-1] in _PRUNABLE_LOOKING and id(v) not in covered and id(v) not in excluded
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
        new = _clone_layer(source)
        return new, source, new  # an operation (not a Layer) has no weights to copy

    return _clone_with(model, make_layer, "strip_masks")
