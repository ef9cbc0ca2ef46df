"""lottery_tf: lottery tickets (iterative magnitude pruning with rewinding) for Keras 3.

Three parts, one package: the Keras library (:mod:`lottery_tf.core`: masks,
the pruning decision, IMP with rewinding inside ``fit``), the experiment
engine (:mod:`lottery_tf.engine` with the run store :mod:`lottery_tf.store`:
``python -m lottery_tf.main``) and the reports (:mod:`lottery_tf.reports`:
``python -m lottery_tf.report``, ``python -m lottery_tf.runs``); tickets leave
through ``python -m lottery_tf.export``. The Keras library runs on Keras's
TensorFlow and JAX backends (``KERAS_BACKEND``); the engine and the commands
run on TensorFlow.

Importing the package registers its Keras classes (the mask wrapper, the
learning-rate schedules, the optimizers), so ``keras.models.load_model`` reads
a saved ticket after a plain ``import lottery_tf``. Only ``python -m
lottery_tf.main`` starts without Keras: it imports it where it trains.
"""

__version__ = "0.2.0"

import sys as _sys

# The commands whose start needs no Keras: `python -m lottery_tf.main` checks its flags and drives a Ray study
# without TensorFlow (about 6 s of CPU, and on a small machine CPU the Ray workers need); it imports TensorFlow
# and Keras itself where it trains here (and for a --dry_run, which checks --initializer with Keras).
_LAZY_COMMANDS = ("lottery_tf.main",)


def _starting_a_command() -> bool:
    """Whether Python imports this package to run one of :data:`_LAZY_COMMANDS` with ``-m``.

    While ``-m`` locates its module, ``sys.argv[0]`` is ``"-m"`` (as Python documents), and its parent
    packages are imported: this one, for ``python -m lottery_tf.main``. A user's own code imports the
    package later, or under another module (``python -m mypackage.train``): it gets the whole library, as
    documented.
    """
    if _sys.argv[:1] != ["-m"]:
        return False
    return _module_run(getattr(_sys, "orig_argv", ())) in _LAZY_COMMANDS


def _module_run(argv) -> str | None:
    """The module ``python [options] -m MODULE ...`` runs (None for a script, ``-c`` or another form)."""
    tokens = iter(argv[1:])
    for token in tokens:
        if not token.startswith("-") or token == "-" or token.startswith("--"):
            if token == "--check-hash-based-pycs":  # the one long option that takes a value
                next(tokens, None)
                continue
            return None  # a script (or stdin, or the end of the options)
        letters = token[1:]
        for at, letter in enumerate(letters):
            rest = letters[at + 1 :]
            if letter == "m":
                return rest or next(tokens, None)
            if letter == "c":
                return None
            if letter in "XW":  # the value is the rest of this token, or the next one
                if not rest:
                    next(tokens, None)
                break
    return None


# Where each public name is defined, for a command's lazy start (tests/test_public_api.py checks it against the
# imports below).
_HOMES = {
    "ExportError": "lottery_tf.engine.export_files.ExportError",
    "GradualPruningCallback": "lottery_tf.core.gradual.GradualPruningCallback",
    "MaskedLayer": "lottery_tf.core.masking.MaskedLayer",
    "PruneRewindCallback": "lottery_tf.core.callbacks.PruneRewindCallback",
    "PruningSpec": "lottery_tf.core.pruning.PruningSpec",
    "SparsitySummaries": "lottery_tf.core.summaries.SparsitySummaries",
    "TicketError": "lottery_tf.engine.ticket.TicketError",
    "apply_masks": "lottery_tf.core.masking.apply_masks",
    "export_model": "lottery_tf.engine.export_files.export_model",
    "get_masks": "lottery_tf.core.masking.get_masks",
    "get_prunable_weights": "lottery_tf.core.masking.get_prunable_weights",
    "layer_densities": "lottery_tf.core.masking.layer_densities",
    "load_data": "lottery_tf.engine.data.load",
    "load_ticket": "lottery_tf.engine.ticket.load_ticket",
    "mask_names": "lottery_tf.core.masking.mask_names",
    "overall_density": "lottery_tf.core.masking.overall_density",
    "prune_by_magnitude": "lottery_tf.core.pruning.prune_by_magnitude",
    "random_prune_control": "lottery_tf.core.controls.random_prune_control",
    "reinit_control": "lottery_tf.core.controls.reinit_control",
    "set_masks": "lottery_tf.core.masking.set_masks",
    "strip_masks": "lottery_tf.core.masking.strip_masks",
    "wrap_model": "lottery_tf.core.masking.wrap_model",
}

if not _starting_a_command():
    from lottery_tf.core import optimizers as _optimizers  # noqa: E402,F401  (registers the recipe's optimizers)
    from lottery_tf.core.callbacks import PruneRewindCallback  # noqa: E402
    from lottery_tf.core.controls import random_prune_control, reinit_control  # noqa: E402
    from lottery_tf.core.gradual import GradualPruningCallback  # noqa: E402
    from lottery_tf.core.masking import (  # noqa: E402
        MaskedLayer,
        apply_masks,
        get_masks,
        get_prunable_weights,
        layer_densities,
        mask_names,
        overall_density,
        set_masks,
        strip_masks,
        wrap_model,
    )
    from lottery_tf.core.pruning import PruningSpec, prune_by_magnitude  # noqa: E402
    from lottery_tf.core.summaries import SparsitySummaries  # noqa: E402
    from lottery_tf.engine.data import load as load_data  # noqa: E402
    from lottery_tf.engine.export_files import ExportError, export_model  # noqa: E402
    from lottery_tf.engine.ticket import TicketError, load_ticket  # noqa: E402
else:

    def __getattr__(name: str):
        """A command started lazily: a public name asked for imports the library (TensorFlow quietly first)."""
        if name not in _HOMES:
            raise AttributeError(f"module 'lottery_tf' has no attribute {name!r}")
        import importlib

        importlib.import_module("lottery_tf.core.keras_compat")
        importlib.import_module("lottery_tf.core.optimizers")  # registers the recipe's optimizers
        module, attribute = _HOMES[name].rsplit(".", 1)
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value


__all__ = [
    "ExportError",
    "GradualPruningCallback",
    "MaskedLayer",
    "PruneRewindCallback",
    "PruningSpec",
    "SparsitySummaries",
    "TicketError",
    "apply_masks",
    "export_model",
    "get_masks",
    "get_prunable_weights",
    "layer_densities",
    "load_data",
    "load_ticket",
    "mask_names",
    "overall_density",
    "prune_by_magnitude",
    "random_prune_control",
    "reinit_control",
    "set_masks",
    "strip_masks",
    "wrap_model",
]
