"""Where names come from: one unique, stable name for every variable of a model.

Keras's ``variable.path`` is not unique: a functional model that nests two
copies of one block (``block_a`` and ``block_b``, each with a layer ``fc``)
gives both kernels the path ``fc/kernel``, and wrapping a layer changes its
variables' paths (``fc1/fc1/kernel``). lottery_tf therefore names a variable by
the chain of layer names from the model down to the layer that owns it, then
the variable's own name: ``block_a/fc/kernel``, ``transformer_layer_0/
self_attention_layer/query/kernel``. Layer names are unique within the layer
(or model) that holds them, so the chain is unique, and it does not depend on
the order models were built in a process (unlike Keras's numbered
``seed_generator_3``). A :class:`~lottery_tf.core.masking.MaskedLayer` and the
layer it wraps count as one level (the wrapper's name, which defaults to the
wrapped layer's), so wrapping a model does not change its names.

Masks, rewind points, trained states and checkpoints are all keyed by these
names. Files written before names were unique are keyed by Keras's
``variable.path`` (states) or ``<layer>/<attribute>`` (masks); readers accept
those through :func:`legacy_variable_paths` when they are unambiguous.
"""

from __future__ import annotations

import collections


def _children(layer) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _is_wrapper(layer) -> bool:
    # MaskedLayer is defined in lottery_tf.core.masking, which imports this module.
    return getattr(layer, "_lottery_tf_masked_layer", False)


def walk(model, prefix: str = ""):
    """Yields ``(layer, name)`` for every layer under ``model``, parents before children.

    A MaskedLayer is yielded with its name; the layer it wraps is not yielded
    separately (it shares that name), but its sub-layers are, under it.
    """
    for layer in _children(model):
        name = f"{prefix}{layer.name}"
        yield layer, name
        inner = layer.layer if _is_wrapper(layer) else layer
        yield from walk(inner, name + "/")


def variable_names(model) -> collections.OrderedDict[str, object]:
    """Unique name -> variable for every variable of ``model``, in ``model.variables`` order.

    Raises:
        ValueError: If two variables of one layer share a name (the message names them).
    """
    owner = {}  # id(variable) -> name of the deepest layer holding it
    for layer, name in walk(model):
        for variable in layer.variables:
            owner[id(variable)] = name
    names = collections.OrderedDict()
    for variable in model.variables:
        prefix = owner.get(id(variable))
        name = f"{prefix}/{variable.name}" if prefix else variable.name
        if name in names:
            raise ValueError(
                f"Two variables of one layer are both named {name!r} (Keras paths {names[name].path!r} and "
                f"{variable.path!r}); give the variables distinct names."
            )
        names[name] = variable
    return names


def legacy_variable_paths(variables: collections.OrderedDict[str, object]) -> dict | None:
    """Keras path -> unique name, for reading files keyed by ``variable.path``; None if paths repeat."""
    paths = {}
    for name, variable in variables.items():
        if variable.path in paths:
            return None
        paths[variable.path] = name
    return paths


def rename_keys(stored: dict, expected: collections.OrderedDict[str, object], what: str) -> dict:
    """``stored`` keyed by unique names: as it is, or translated from Keras paths (older files).

    Raises:
        ValueError: If the keys are neither the unique names nor the Keras paths
            of ``expected``; the message names what is missing and what is extra.
    """
    if set(stored) == set(expected):
        return dict(stored)
    legacy = legacy_variable_paths(expected)
    if legacy is not None and set(stored) == set(legacy):
        return {legacy[path]: value for path, value in stored.items()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    raise ValueError(f"{what} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}.")
