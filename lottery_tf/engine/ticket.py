"""Loading a ticket a run found: its model, masks and weights, from a run folder, into Keras.

A run keeps a ticket as files keyed by the weights' unique names: the masks a
level trained with (``masks.npz``), its trained weights (``final_weights.npz``)
and the state it started from (the rewind point). :func:`load_ticket` rebuilds
the model from the run's ``settings.json`` and puts them back, so a ticket can
be evaluated, retrained elsewhere, stripped and exported
(:mod:`lottery_tf.export`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from lottery_tf.core import rewind
from lottery_tf.core.masking import get_masks, set_masks
from lottery_tf.core.pruning import fingerprint
from lottery_tf.engine import run_dir
from lottery_tf.engine.config import ExperimentConfig, experiment_hash_of, replicate_seed
from lottery_tf.store import atomic, states
from lottery_tf.store import reader as store

WEIGHTS = ("final", "rewind")


class TicketError(ValueError):
    """A ticket cannot be loaded from a folder; the message names what is missing."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model is built for: the input shape and the number of classes (no data loaded)."""

    input_shape: tuple
    num_classes: int


def input_spec(experiment_folder: str, config: ExperimentConfig) -> InputSpec:
    """The run's input shape and classes, from its ``data.json`` (or, for older runs, the dataset's known shape)."""
    path = os.path.join(experiment_folder, "data.json")
    if store.json_problem(path) is None:
        record = store.read_json(path)
        if "input_shape" in record and "num_classes" in record:
            return InputSpec(tuple(record["input_shape"]), int(record["num_classes"]))
    data = config.data
    known = {
        "mnist": ((28, 28, 1), 10),
        "fashion_mnist": ((28, 28, 1), 10),
        "cifar10": ((32, 32, 3), 10),
        "imagenet2012": ((data.image_size, data.image_size, 3), 1000),
        "synthetic": (tuple(data.synthetic_shape), data.synthetic_classes),
    }
    if data.name not in known:
        raise TicketError(f"{path}: no input shape recorded for dataset {data.name!r}")
    return InputSpec(*known[data.name])


def settings_of(experiment_folder: str) -> ExperimentConfig:
    """The run's settings (``settings.json``).

    Raises:
        TicketError: If the folder is not a lottery_tf experiment or its settings cannot be read.
    """
    path = os.path.join(experiment_folder, "settings.json")
    if not os.path.isfile(os.path.join(experiment_folder, "identity.json")):
        raise TicketError(
            f"{experiment_folder} is not a lottery_tf experiment folder (no identity.json); pass a "
            "lottery_<hash> folder"
        )
    try:
        with open(path) as handle:
            return ExperimentConfig.from_dict(json.load(handle))
    except (OSError, ValueError) as error:
        raise TicketError(f"{path} cannot be read as the run's settings ({error})") from None


def level_folder(experiment_folder: str, replicate: int, level: int, branch: str) -> str:
    """The folder of a finished level of a branch.

    Raises:
        TicketError: Naming what is missing (replicate, branch, level) and what the run has.
    """
    replicate_folder = os.path.join(experiment_folder, f"replicate_{replicate}")
    if not os.path.isdir(replicate_folder):
        have = [os.path.basename(r).split("_", 1)[1] for r in run_dir.replicates_of(experiment_folder)]
        raise TicketError(
            f"{experiment_folder} has no replicate {replicate}; it has replicates {', '.join(have) or 'none'}"
        )
    # The store's verdict, the one the runner and the health check give: a ticket is never read from a folder
    # a run would refuse, nor from a level whose files no longer hold what the level recorded.
    experiment = store.inspect_experiment(experiment_folder, folder_hash=experiment_hash_of)
    report = experiment.replicates[os.path.basename(replicate_folder)]
    inside = os.path.join(run_dir.level_dir(replicate_folder, level, branch), "")
    for problem in experiment.problems + report.problems:
        if problem.action == store.REFUSE or (problem.action != store.NOTE and problem.path.startswith(inside)):
            raise TicketError(f"{problem.line()} (python -m lottery_tf.runs {experiment_folder} shows every problem)")
    if branch not in report.done:
        have = ", ".join(sorted(report.done)) or "none"
        raise TicketError(f"{replicate_folder} has no finished level of branch {branch!r}; its branches are {have}")
    if level not in report.done[branch]:
        raise TicketError(
            f"level {level} of branch {branch!r} is not finished in {replicate_folder}; finished levels "
            f"are {store.format_levels(report.done[branch])}"
        )
    return run_dir.level_dir(replicate_folder, level, branch)


def load_ticket(
    experiment_folder: str, replicate: int = 0, level: int = 1, branch: str = "main", weights: str = "final"
):
    """The wrapped Keras model of a ticket a run found: its masks and the chosen weights.

    Args:
        experiment_folder: A run folder ``<output_dir>/lottery_<hash>``.
        replicate: The replicate.
        level: The level (its masks: level 0 is dense).
        branch: The branch folder (``main``, ``reinit``, ``random_prune_layerwise``, ``lr_rewind_0``, ...).
        weights: ``final``: the weights the level ended with (what was evaluated); ``rewind``:
            the winning ticket itself, the masks on the weights the level started training
            from (the rewind point; for the main line's level 0, the initialization), ready
            to be trained again elsewhere.

    Returns:
        The model as the run built it (compiled with the run's optimizer), with the masks
        set and the weights restored.

    Raises:
        TicketError: One line naming what is missing: the folder is not a run, the replicate,
            branch or level is not there or not finished, or the files belong to another model.

    Example:

    >>> model = lottery_tf.load_ticket("runs/quickstart/lottery_3f1c2a9b7e", level=7)  # doctest: +SKIP
    >>> lottery_tf.overall_density(model)  # doctest: +SKIP
    0.2106
    """
    if weights not in WEIGHTS:
        raise TicketError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    config = settings_of(experiment_folder)
    folder = level_folder(experiment_folder, replicate, level, branch)
    masks_path = os.path.join(folder, "masks.npz")
    if store.npz_problem(masks_path):
        raise TicketError(
            f"{masks_path}: {store.npz_problem(masks_path)}; python -m lottery_tf.runs says how a run rebuilds it"
        )
    masks = atomic.read_npz(masks_path)
    from lottery_tf.engine.recipe import build_masked_model

    state_path, seed = _start(experiment_folder, replicate, level, branch, folder, weights, config)
    model = build_masked_model(config, input_spec(experiment_folder, config), seed)
    try:
        set_masks(model, masks)
    except ValueError as error:
        raise TicketError(
            f"{masks_path} does not fit {config.model.name} as settings.json builds it ({error})"
        ) from None
    metrics = store.read_json(os.path.join(folder, "metrics.json"))
    if metrics.get("masks_sha256") and fingerprint(get_masks(model)) != metrics["masks_sha256"]:
        raise TicketError(
            f"{masks_path} is not the mask level {level} [{branch}] trained with (metrics.json records "
            f"{metrics['masks_sha256']}); python -m lottery_tf.runs says how a run rebuilds it"
        )
    if state_path is not None:
        if store.npz_problem(state_path):
            raise TicketError(
                f"{state_path}: {store.npz_problem(state_path)}; the {weights} weights of level {level} "
                f"[{branch}] are not in the run (python -m lottery_tf.runs says how a run rebuilds it)"
            )
        try:
            rewind.restore(model, states.load(state_path))
        except ValueError as error:
            raise TicketError(
                f"{state_path} does not fit {config.model.name} as settings.json builds it ({error})"
            ) from None
    return model


def _start(experiment_folder, replicate, level, branch, folder, weights, config) -> tuple:
    """(the file holding the chosen weights, or None for an initialization; the seed the model is built with)."""
    replicate_folder = os.path.join(experiment_folder, f"replicate_{replicate}")
    seed = replicate_seed(config.seed, replicate)
    if weights == "final":
        return os.path.join(folder, "final_weights.npz"), seed
    if branch == run_dir.MAIN:
        return (os.path.join(replicate_folder, "rewind_point.npz") if level > 0 else None), seed
    if branch.startswith("lr_rewind_") and not branch.startswith("lr_rewind_oneshot"):
        source = run_dir.level_dir(replicate_folder, level - 1, run_dir.MAIN if level == 1 else branch)
        return os.path.join(source, "final_weights.npz"), seed
    info_path = os.path.join(folder, "branch.json")
    start = (store.read_json(info_path) if store.json_problem(info_path) is None else {}).get("start_state")
    if not start:
        raise TicketError(
            f"{info_path} does not record the state the branch started from (runs made before lottery_tf "
            "recorded it): only weights='final' can be loaded"
        )
    if "init_seed" in start:
        return None, int(start["init_seed"])
    return os.path.join(replicate_folder, start["file"]), seed
