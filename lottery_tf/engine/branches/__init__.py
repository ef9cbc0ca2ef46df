"""Branches of the main line: the registry and its three families, registered on import.

:mod:`~lottery_tf.engine.branches.registry` (what a branch type is, how one
trains), :mod:`~lottery_tf.engine.branches.controls` (reinit, random pruning,
rewinding, learning-rate rewinding, retraining),
:mod:`~lottery_tf.engine.branches.analyses` (instability, stability) and
:mod:`~lottery_tf.engine.branches.baselines` (pruning at initialization,
gradual magnitude pruning), :mod:`~lottery_tf.engine.branches.dst` (dynamic
sparse training: SET, RigL).
"""

from lottery_tf.engine.branches import analyses, baselines, controls, dst  # noqa: F401  (register the families)
from lottery_tf.engine.branches.controls import run_lr_rewind_lineage  # noqa: F401
from lottery_tf.engine.branches.registry import (  # noqa: F401
    BRANCH_TYPES,
    BranchStart,
    BranchType,
    branch_folder_name,
    branch_type,
    check_branch_inputs,
    prepare_branch,
    register_branch,
    run_branch,
    run_branches,
    train_start,
)
