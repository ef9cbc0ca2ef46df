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
a saved ticket after a plain ``import lottery_tf``.
"""

__version__ = "0.2.0"

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
