"""lottery_tf: lottery tickets (iterative magnitude pruning with rewinding) for Keras 3."""

__version__ = "0.1.0"

_PUBLIC = {
    "MaskedLayer": "lottery_tf.masking",
    "wrap_model": "lottery_tf.masking",
    "strip_masks": "lottery_tf.masking",
    "get_masks": "lottery_tf.masking",
    "set_masks": "lottery_tf.masking",
    "mask_names": "lottery_tf.masking",
    "layer_densities": "lottery_tf.masking",
    "overall_density": "lottery_tf.masking",
    "PruningSpec": "lottery_tf.pruning",
    "prune_by_magnitude": "lottery_tf.pruning",
    "PruneRewindCallback": "lottery_tf.callbacks",
}


def __getattr__(name):
    # Lazy so that `import lottery_tf.config` (used to validate flags) does not
    # pay for importing TensorFlow.
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lottery_tf' has no attribute {name!r}")


__all__ = sorted(_PUBLIC)
