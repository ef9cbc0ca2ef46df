"""lottery_tf: lottery tickets (iterative magnitude pruning with rewinding) for Keras 3.

Importing the package registers its Keras classes (the mask wrapper, the
learning-rate schedules, the optimizers), so ``keras.models.load_model`` reads
a saved ticket after a plain ``import lottery_tf``.
"""

__version__ = "0.1.0"

from lottery_tf.callbacks import PruneRewindCallback  # noqa: E402
from lottery_tf.masking import (  # noqa: E402
    MaskedLayer, apply_masks, get_masks, layer_densities, mask_names, overall_density, set_masks, strip_masks,
    wrap_model,
)
from lottery_tf import data  # noqa: E402,F401  (lottery_tf.data.load: a dataset's arrays)
from lottery_tf import optimizers as _optimizers  # noqa: E402,F401  (registers the recipe's optimizers)
from lottery_tf.pruning import PruningSpec, prune_by_magnitude  # noqa: E402
from lottery_tf.ticket import TicketError, load_ticket  # noqa: E402

__all__ = sorted([
    "MaskedLayer", "PruneRewindCallback", "PruningSpec", "apply_masks", "get_masks", "layer_densities",
    "TicketError", "load_ticket", "mask_names", "overall_density", "prune_by_magnitude", "set_masks", "strip_masks",
    "wrap_model",
])
