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
``seed_generator_3``). Layers Keras named automatically (``dense_3``: the class
name and a counter global to the process) are numbered again within the layer
that holds them, in the order it holds them (``dense``, ``dense_1``, ...), so a
model built second in a process, or a block whose unnamed sub-layers are made in
``build()``, gets the same names as in a fresh process. A variable reached
through two paths (a layer used inside a nested model and again outside it, as
tied embeddings are) has one name: the first path, parents before children. A
:class:`~lottery_tf.core.masking.MaskedLayer` and the layer it wraps count as
one level (the wrapper's name, which defaults to the wrapped layer's).

Masks, rewind points, trained states and checkpoints are all keyed by these
names. Files written before names were unique are keyed by Keras's
``variable.path`` (states) or ``<layer>/<attribute>`` (masks); readers accept
those through :func:`legacy_variable_paths` when they are unambiguous.
"""

from __future__ import annotations

import collections
import re

from lottery_tf.core.keras_compat import sublayers


def _children(layer) -> list:
    return sublayers(layer)


def snake_case(class_name: str) -> str:
    """The prefix Keras gives automatic layer names (``Conv2D`` -> ``conv2d``, ``MyBlock`` -> ``my_block``)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def child_names(layer) -> list[tuple[object, str]]:
    """``(child, name)`` for the layers ``layer`` holds directly, automatic names renumbered.

    A child whose name is what Keras generates for its class (``dense``,
    ``dense_7``; ``forward_gru_3`` inside ``Bidirectional``) is named by its
    place among such siblings instead (the first ``dense``, the next
    ``dense_1``), which is the name a fresh process gives.
    If that would make two siblings' names equal, the names are kept as they are.
    """
    children = _children(layer)
    counts = collections.Counter()
    named = []
    for child in children:
        cls = type(child.layer if _is_wrapper(child) else child)
        base = snake_case(cls.__name__)
        name = child.name
        # Bidirectional names its copies forward_<name> and backward_<name>.
        automatic = re.fullmatch(r"((?:forward|backward)_)?(" + re.escape(base) + r")(_\d+)?", name)
        if automatic:
            key = (automatic.group(1) or "") + base
            name = key if counts[key] == 0 else f"{key}_{counts[key]}"
            counts[key] += 1
        named.append((child, name))
    names = [name for _, name in named]
    if len(set(names)) != len(names):
        return [(child, child.name) for child in children]
    return named


def _is_wrapper(layer) -> bool:
    # MaskedLayer is defined in lottery_tf.core.masking, which imports this module.
    return getattr(layer, "_lottery_tf_masked_layer", False)


def walk(model, prefix: str = ""):
    """Yields ``(layer, name)`` for every layer under ``model``, parents before children.

    A MaskedLayer is yielded with its name; the layer it wraps is not yielded
    separately (it shares that name), but its sub-layers are, under it.
    """
    for layer, own in child_names(model):
        name = f"{prefix}{own}"
        yield layer, name
        inner = layer.layer if _is_wrapper(layer) else layer
        yield from walk(inner, name + "/")


def variable_names(model) -> collections.OrderedDict[str, object]:
    """Unique name -> variable for every variable of ``model``, in ``model.variables`` order.

    Raises:
        ValueError: If two variables of one layer share a name (the message names them).
    """
    owner = {}  # id(variable) -> the deepest layer holding it, along the first path that reaches it
    for layer, name in walk(model):
        for variable in layer.variables:
            held = owner.get(id(variable))
            if held is None or name.startswith(held + "/"):
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


def legacy_variable_paths(variables: collections.OrderedDict[str, object], old_paths=None) -> dict | None:
    """Keras path -> unique name, for reading files keyed by ``variable.path``; None if paths repeat.

    ``old_paths`` (unique name -> path) gives the paths a variable had in
    earlier versions where they differ from its ``variable.path`` now.
    """
    old_paths = old_paths or {}
    paths = {}
    for name, variable in variables.items():
        path = old_paths.get(name, getattr(variable, "path", None))
        if path is None or path in paths:
            return None
        paths[path] = name
    return paths


def rename_keys(stored: dict, expected: collections.OrderedDict[str, object], what: str, old_paths=None) -> dict:
    """``stored`` keyed by unique names: as it is, or translated from Keras paths (older files).

    Raises:
        ValueError: If the keys are neither the unique names nor the Keras paths
            of ``expected``; the message names what is missing and what is extra.
    """
    if set(stored) == set(expected):
        return dict(stored)
    for aliases in (None, old_paths) if old_paths else (None,):
        legacy = legacy_variable_paths(expected, aliases)
        if legacy is not None and set(stored) == set(legacy):
            return {legacy[path]: value for path, value in stored.items()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    raise ValueError(f"{what} does not match the model: missing {missing[:5]}, unexpected {extra[:5]}.")
