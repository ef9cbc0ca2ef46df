"""Deprecated: ``lottery_tf.pruning`` moved to :mod:`lottery_tf.core.pruning` in 0.2.0; this alias goes in 0.4.0.

Importing it warns (FutureWarning, shown to users by default) and gives the
moved module itself, so every name it had still resolves. See CHANGELOG.md.
"""

import sys
import warnings

from lottery_tf.core import pruning as _moved

warnings.warn(
    "lottery_tf.pruning moved to lottery_tf.core.pruning in lottery_tf 0.2.0 (the public names are also on "
    "lottery_tf itself); this alias will be removed in 0.4.0. See CHANGELOG.md.",
    FutureWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
