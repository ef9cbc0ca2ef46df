"""Frozen experiment settings, their validation, and their JSON form.

Library code takes these objects and never reads absl flags. ``validate()``
checks everything that can be checked without TensorFlow, and raises
:class:`ConfigError` whose message names the *flag* at fault, so the CLI can
print one line and exit before any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
PRUNING_METHODS = ("layerwise", "global")


class StrategyError(RuntimeError):
    """A tf.distribute strategy cannot be set up (raised by :mod:`lottery_tf.distribute`);
    the message names the flag or variable and what was expected."""


class ConfigError(ValueError):
    """Bad setting. ``flag`` names the flag; str() is a one-line message."""

    def __init__(self, flag: str, message: str):
        self.flag = flag
        super().__init__(f"--{flag}: {message}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset and where to find it.

    Args:
        name: Registered dataset name (``mnist``, ``fashion_mnist``, ``synthetic``).
        data_dir: Folder of MNIST-format IDX files; empty = search TFDS, then the
            known local folders (Debian's ``dataset-fashion-mnist``).
        tfds_data_dir: TFDS data folder; empty = TFDS's default.
        tfds_download: Whether to try a TFDS download (bounded) when no local
            copy is found.
        validation_examples: Training examples held out for validation.
        synthetic_train_examples: Training-set size of ``synthetic``.
        synthetic_test_examples: Test-set size of ``synthetic``.
        tfds_manual_dir: For ``imagenet2012``: the folder holding
            ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar``, which
            TFDS prepares once into ``tfds_data_dir``.
        image_size: For ``imagenet2012``: the side of the square crops (224).
    """

    name: str = "fashion_mnist"
    data_dir: str = ""
    tfds_data_dir: str = ""
    tfds_download: bool = True
    validation_examples: int = 5000
    synthetic_train_examples: int = 2048
    synthetic_test_examples: int = 512
    synthetic_shape: tuple = (28, 28, 1)
    synthetic_classes: int = 10
    tfds_manual_dir: str = ""
    image_size: int = 224


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model and how to initialize it."""

    name: str = "lenet_300_100"
    initializer: str = "glorot_normal"


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How each level is trained.

    ``iterations`` is the length of a level trained from step 0; a level that
    rewinds to step k trains ``iterations - k`` steps so all levels end at the
    same step of the schedule.
    """

    optimizer: str = "adam"
    learning_rate: float = 1.2e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    weight_decay_mode: str = "decoupled"  # decoupled (Keras) or l2 (added to the gradient, as PyTorch)
    batch_size: int = 60
    iterations: int = 50000
    eval_every: int = 100
    steps_per_execution: int = 0  # 0 = the largest that divides every boundary
    jit_compile: bool = True
    nesterov: bool = False
    lr_schedule: str = "constant"  # constant, step, cosine
    lr_milestones: tuple = ()  # steps at which "step" multiplies the rate by lr_gamma
    lr_gamma: float = 0.1
    warmup_iterations: int = 0  # linear warmup from 0
    label_smoothing: float = 0.0
    mixed_precision: str = ""  # "", mixed_float16, mixed_bfloat16

    def resolved_steps_per_execution(self, *start_steps: int) -> int:
        """The steps per execution, or (0 = auto) the largest that divides every length and start step."""
        if self.steps_per_execution:
            return self.steps_per_execution
        steps = math.gcd(self.eval_every, self.iterations)
        for start in start_steps:
            if start and start > 0:
                steps = math.gcd(steps, start)
        return steps


@dataclasses.dataclass(frozen=True)
class PruningConfig:
    """How much is pruned per level and where the survivors are rewound to."""

    method: str = "layerwise"
    fraction: float = 0.2
    output_fraction: float = 0.1  # 0 = same rule as the other layers
    layer_fractions: tuple = ()  # (("fc1/kernel", 0.2), ...)
    exclude_layers: tuple = ()
    levels: int = 12  # levels 0 (dense) .. levels are trained
    rewind_step: int = 0
    rewind_optimizer: str = "fresh"  # fresh, reset or restore (lottery_tf.rewind.reset_optimizer)


PAI_METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
BRANCHES = ("reinit", "random_prune", "rewind", "lr_rewind", "lr_rewind_oneshot", "retrain", "instability", "stability",
            *(f"pai_{m}" for m in PAI_METHODS), "gmp")
PAI_ABLATIONS = ("shuffle", "reinit", "invert")
PAI_SCOPES = ("global", "layerwise")
GMP_SCHEDULES = ("lottery_tf", "tfmot")
ANALYSIS_BRANCHES = ("instability", "stability")
ANALYSIS_CONTROLS = ("random_prune", "reinit")
BATCHNORM_STATISTICS = ("reestimate", "interpolate")
REWIND_OPTIMIZER = ("fresh", "reset", "restore")
RANDOM_PRUNE_SCOPES = ("layerwise", "global")


@dataclasses.dataclass(frozen=True)
class BranchConfig:
    """Controls run as branches of the main line at chosen levels.

    Args:
        names: Branch types: ``reinit`` (same mask, fresh init, same start
            step and length as the ticket), ``random_prune`` (random mask of
            the same density, the main line's rewind weights), ``rewind`` (the
            mask rewound to ``rewind_step``), ``lr_rewind`` (Renda et al.
            2020: its own lineage of levels, each pruning the previous
            lr_rewind level's trained weights and rewinding only the
            learning-rate schedule), ``lr_rewind_oneshot`` (the main line's
            level L-1 trained weights under its level-L mask, schedule
            rewound), ``retrain`` (the ticket trained with other settings).
        levels: Levels the branches run at.
        random_prune_scope: ``layerwise`` keeps each layer's density,
            ``global`` only the overall density.
        rewind_step: Step for ``rewind`` (required) and ``lr_rewind`` (-1 = the
            main line's rewind step).
        optimizer, learning_rate, iterations, batch_size: ``retrain``'s
            overrides; empty / 0 = the main line's value.
        analysis_rewind_steps: ``instability`` and ``stability``: the steps k
            the analysed networks start from (empty = the main line's
            ``rewind_step``).
        interpolation_points: Points on the linear path (>= 2, both ends).
        instability_pairs: Pairs of copies per network and step (>= 1).
        analysis_controls: Controls analysed beside the ticket at levels >= 1:
            ``random_prune`` (random mask, same per-layer density) and/or
            ``reinit`` (the mask, a fresh initialization started at k).
        batchnorm_statistics: ``reestimate`` (default) recomputes BatchNorm's
            running statistics at every point of a path from fixed training
            batches; ``interpolate`` interpolates them like the weights.
        batchnorm_batches: Training batches used to re-estimate them.
        analysis_train_examples: Size of the fixed training subset the path's
            train error is measured on (the first examples of the training split).
        pai_scope: ``pai_*`` branches: ``global`` (one threshold over every
            prunable weight, the output layer included) or ``layerwise``.
        pai_ablations: ``pai_*`` branches also run these ablations, each in
            its own folder: ``shuffle`` (each layer's mask shuffled),
            ``reinit`` (fresh initialization after pruning), ``invert``
            (prune the highest scores).
        scoring_examples_per_class: Class-balanced scoring examples (SNIP, GraSP).
        synflow_rounds: SynFlow's pruning rounds.
        gmp_begin_step, gmp_end_step, gmp_frequency: ``gmp``: the (1-based)
            steps pruning begins and ends and its period; -1 = 10% and 50% of
            ``iterations``, and ``eval_every``.
        gmp_schedule: ``lottery_tf`` or ``tfmot`` (TFMOT's own
            ``PolynomialDecay``, needs the ``tfmot`` extra).
    """

    names: tuple = ()
    levels: tuple = ()
    random_prune_scope: str = "layerwise"
    rewind_step: int = -1
    optimizer: str = ""
    learning_rate: float = 0.0
    iterations: int = 0
    batch_size: int = 0
    analysis_rewind_steps: tuple = ()
    interpolation_points: int = 30
    instability_pairs: int = 2
    analysis_controls: tuple = ("random_prune",)
    batchnorm_statistics: str = "reestimate"
    batchnorm_batches: int = 20
    analysis_train_examples: int = 10000
    pai_scope: str = "global"
    pai_ablations: tuple = ()
    scoring_examples_per_class: int = 10
    synflow_rounds: int = 100
    gmp_begin_step: int = -1
    gmp_end_step: int = -1
    gmp_frequency: int = -1
    gmp_schedule: str = "lottery_tf"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where and how to run; none of this changes what is computed."""

    output_dir: str = "runs"
    replicates: int = 1
    replicate: int = -1  # >= 0: run only this replicate
    checkpoint_every: int = 5000  # steps; 0 = no checkpoints within a level
    deterministic: bool = False
    tensorboard: bool = True
    strategy: str = "default"  # one of STRATEGIES
    tpu: str = ""  # --strategy=tpu: name, grpc:// address or "local"
    cpu_devices: int = 0  # > 0: split the CPU into this many logical devices
    wait_for_lock: bool = False  # wait for another process's lock instead of exiting


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One lottery-ticket experiment: an IMP main line, its branches, replicates."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    pruning: PruningConfig = PruningConfig()
    seed: int = 0
    branches: BranchConfig = BranchConfig()
    run: RunConfig = RunConfig()

    def to_json(self) -> str:
        """Readable JSON of every setting (what is written to the run folder)."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        """Inverse of ``dataclasses.asdict`` (lists become tuples).

        Raises:
            ValueError: If a section or field is unknown or missing.
        """

        def tuples(value):
            if isinstance(value, list):
                return tuple(tuples(v) for v in value)
            return value

        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        try:
            for name, value in data.items():
                if isinstance(value, dict):
                    section_cls = {
                        "data": DataConfig, "model": ModelConfig, "training": TrainingConfig,
                        "pruning": PruningConfig, "branches": BranchConfig, "run": RunConfig,
                    }[name]
                    kwargs[name] = section_cls(**{k: tuples(v) for k, v in value.items()})
                elif name in sections:
                    kwargs[name] = tuples(value)
                else:
                    raise KeyError(name)
            return cls(**kwargs)
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a lottery_tf settings file: {error}") from None


# Fields that do not change what is computed: left out of the experiment's hash.
NOT_IDENTITY = {
    "data": ("data_dir", "tfds_data_dir", "tfds_download", "tfds_manual_dir"),
    "training": ("steps_per_execution", "jit_compile"),
    "pruning": ("levels",),
    "branches": "*",
    "run": "*",
}


def identity(config: ExperimentConfig) -> dict[str, Any]:
    """The settings that define the experiment, flattened ``section.field``."""
    flat = {}
    for section, value in dataclasses.asdict(config).items():
        skip = NOT_IDENTITY.get(section, ())
        if skip == "*":
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in skip:
                    flat[f"{section}.{key}"] = item
        else:
            flat[section] = value
    return flat


def non_default_identity(config: ExperimentConfig) -> dict[str, Any]:
    """The identity settings that differ from the defaults (what is hashed).

    Adding a new setting with a default therefore never changes an old hash.
    One exception on purpose: with ``rewind_step > 0`` the optimizer rewind
    (``pruning.rewind_optimizer``) is always recorded, because its default
    changed (runs made before it existed used ``reset``); at step 0 all three
    choices compute the same thing and it is left out.
    """
    defaults = identity(ExperimentConfig())
    flat = identity(config)
    out = {k: v for k, v in flat.items() if defaults.get(k, object()) != v}
    if config.pruning.rewind_step > 0:
        out["pruning.rewind_optimizer"] = config.pruning.rewind_optimizer
    else:
        out.pop("pruning.rewind_optimizer", None)
    return out


def experiment_hash(config: ExperimentConfig) -> str:
    """A short stable hash of the non-default identity settings."""
    canonical = json.dumps(non_default_identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def parse_levels(text: str) -> tuple:
    """``"0-3,7,11"`` -> ``(0, 1, 2, 3, 7, 11)``.

    Raises:
        ValueError: If an item is not an integer or a range ``a-b`` with a <= b.
    """
    levels = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        first, sep, last = item.partition("-")
        if sep:
            a, b = int(first), int(last)
            if a > b:
                raise ValueError(f"range {item!r} is empty")
            levels.extend(range(a, b + 1))
        else:
            levels.append(int(item))
    return tuple(sorted(set(levels)))


def _integer(flag: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(flag, f"expected an integer >= {minimum}, got {value!r}")


def _fraction(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(flag, f"expected a fraction in (0, 1), got {value!r}")


def _number(flag: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False,
            what: str = "a number") -> None:
    """A finite number in [low, high] (open ends where asked); NaN, infinity and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(flag, f"expected {what} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}, got {value!r}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        raise ConfigError(flag, f"expected {what} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}, got {value!r}")


# Upper bounds that no recipe needs and a typo easily gives (1e3 for 1e-3).
MAX_LEARNING_RATE = 100.0
MAX_WEIGHT_DECAY = 1.0


def validate(config: ExperimentConfig, dataset_names=None, model_names=None) -> None:
    """Checks every setting that can be checked before training.

    Args:
        config: The settings.
        dataset_names: Valid dataset names (from the registry), if known.
        model_names: Valid model names (from the registry), if known.

    Raises:
        ConfigError: Naming the flag and what was expected.
    """
    data, training, pruning = config.data, config.training, config.pruning
    if dataset_names is not None and data.name not in dataset_names:
        raise ConfigError("dataset", f"unknown dataset {data.name!r}; expected one of {', '.join(dataset_names)}")
    if model_names is not None and config.model.name not in model_names:
        # model_names may be a Registry (name families such as cifar_resnet_<depth>).
        listed = model_names.names() if hasattr(model_names, "names") else model_names
        raise ConfigError("model", f"unknown model {config.model.name!r}; expected one of {', '.join(listed)}")
    if data.data_dir and not os.path.isdir(data.data_dir):
        raise ConfigError("data_dir", f"{data.data_dir!r} is not a readable folder of MNIST-format IDX files")
    if data.data_dir and not os.access(data.data_dir, os.R_OK | os.X_OK):
        raise ConfigError("data_dir", f"{data.data_dir!r} is not readable")
    if data.validation_examples == 0:
        raise ConfigError("validation_examples", "must be >= 1: early stopping picks the step of lowest validation loss, which needs a validation set")
    _integer("validation_examples", data.validation_examples, 1)
    _integer("image_size", data.image_size, 8)
    if data.tfds_manual_dir and not os.path.isdir(data.tfds_manual_dir):
        raise ConfigError("tfds_manual_dir", f"{data.tfds_manual_dir!r} is not a folder (expected one holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar)")
    _integer("synthetic_train_examples", data.synthetic_train_examples, 1)
    _integer("synthetic_test_examples", data.synthetic_test_examples, 1)
    if not data.synthetic_shape or not all(isinstance(d, int) and d > 0 for d in data.synthetic_shape):
        raise ConfigError("synthetic_shape", f"expected positive integers like 32,32,3, got {data.synthetic_shape!r}")
    _integer("synthetic_classes", data.synthetic_classes, 2)

    if training.optimizer not in OPTIMIZERS:
        raise ConfigError("optimizer", f"unknown optimizer {training.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    _number("learning_rate", training.learning_rate, 0, MAX_LEARNING_RATE, low_open=True)
    _number("momentum", training.momentum, 0, 1, high_open=True)
    if training.weight_decay_mode not in ("decoupled", "l2"):
        raise ConfigError("weight_decay_mode", f"expected decoupled or l2, got {training.weight_decay_mode!r}")
    _number("weight_decay", training.weight_decay, 0, MAX_WEIGHT_DECAY, high_open=True)
    if training.optimizer == "adamw" and training.weight_decay_mode == "l2":
        raise ConfigError("weight_decay_mode", "l2 cannot be combined with --optimizer=adamw, whose weight decay is decoupled by definition; use --optimizer=adam --weight_decay_mode=l2 for Adam with L2")
    _integer("batch_size", training.batch_size, 1)
    _integer("iterations", training.iterations, 1)
    _integer("eval_every", training.eval_every, 1)
    _integer("steps_per_execution", training.steps_per_execution, 0)
    if training.lr_schedule not in SCHEDULES:
        raise ConfigError("lr_schedule", f"unknown schedule {training.lr_schedule!r}; expected one of {', '.join(SCHEDULES)}")
    for milestone in training.lr_milestones:
        if isinstance(milestone, bool) or not isinstance(milestone, int) or not 0 < milestone < training.iterations:
            raise ConfigError("lr_milestones", f"expected steps in (0, --iterations={training.iterations}), got {milestone!r}")
    _number("lr_gamma", training.lr_gamma, 0, 1, low_open=True, what="a factor")
    _integer("warmup_iterations", training.warmup_iterations, 0)
    if training.warmup_iterations >= training.iterations:
        raise ConfigError("warmup_iterations", f"must be below --iterations={training.iterations}; got {training.warmup_iterations}")
    _number("label_smoothing", training.label_smoothing, 0, 1, high_open=True)
    if training.mixed_precision not in PRECISIONS:
        raise ConfigError("mixed_precision", f"expected one of mixed_float16, mixed_bfloat16 (or empty), got {training.mixed_precision!r}")
    if training.iterations % training.eval_every:
        raise ConfigError("eval_every", f"must divide --iterations={training.iterations}; got {training.eval_every}")

    if pruning.method not in PRUNING_METHODS:
        raise ConfigError("pruning_method", f"unknown method {pruning.method!r}; expected one of {', '.join(PRUNING_METHODS)}")
    _fraction("pruning_fraction", pruning.fraction)
    if pruning.output_fraction != 0:
        _fraction("output_pruning_fraction", pruning.output_fraction)
    for name, value in pruning.layer_fractions:
        try:
            _fraction("layer_pruning_fractions", value)
        except ConfigError:
            raise ConfigError("layer_pruning_fractions", f"{name}={value!r}: expected a fraction in (0, 1)") from None
    _integer("levels", pruning.levels, 0)
    _integer("rewind_step", pruning.rewind_step, 0)
    if pruning.rewind_optimizer not in REWIND_OPTIMIZER:
        raise ConfigError("rewind_optimizer", f"expected one of {', '.join(REWIND_OPTIMIZER)}, got {pruning.rewind_optimizer!r}")
    if pruning.rewind_step >= training.iterations:
        raise ConfigError("rewind_step", f"must be below --iterations={training.iterations}; got {pruning.rewind_step}")
    steps = training.resolved_steps_per_execution(*start_steps(config))
    for flag, value in (("eval_every", training.eval_every), ("iterations", training.iterations), ("rewind_step", pruning.rewind_step)):
        if value % steps:
            raise ConfigError(flag, f"must be a multiple of --steps_per_execution={steps}; got {value}")

    _integer("seed", config.seed, 0)

    b = config.branches
    for name in b.names:
        if name not in BRANCHES:
            raise ConfigError("branch", f"unknown branch {name!r}; expected one of {', '.join(BRANCHES)}")
    if b.names and not b.levels:
        raise ConfigError("branch_levels", "expected the levels to run the branches at, e.g. 0-3,7,11")
    for level in b.levels if b.names else ():
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= pruning.levels:
            raise ConfigError("branch_levels", f"level {level!r} does not exist: the main line has levels 0-{pruning.levels} (--levels)")
    for name in ("lr_rewind", "lr_rewind_oneshot"):
        if name in b.names and 0 in b.levels:
            raise ConfigError("branch_levels", f"{name} starts from the previous level's trained weights, so it needs levels >= 1")
    if b.random_prune_scope not in RANDOM_PRUNE_SCOPES:
        raise ConfigError("random_prune_scope", f"expected one of {', '.join(RANDOM_PRUNE_SCOPES)}, got {b.random_prune_scope!r}")
    if "rewind" in b.names and b.rewind_step < 0:
        raise ConfigError("branch_rewind_step", "the rewind branch needs the step to rewind to (an integer >= 0)")
    if b.rewind_step >= training.iterations:
        raise ConfigError("branch_rewind_step", f"must be below --iterations={training.iterations}; got {b.rewind_step}")
    if b.rewind_step > 0 and b.rewind_step % steps:
        raise ConfigError("branch_rewind_step", f"must be a multiple of --steps_per_execution={steps}; got {b.rewind_step}")
    if b.optimizer and b.optimizer not in OPTIMIZERS:
        raise ConfigError("branch_optimizer", f"unknown optimizer {b.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    _number("branch_learning_rate", b.learning_rate, 0, MAX_LEARNING_RATE, what="a number (0 = the main line's)")
    _integer("branch_iterations", b.iterations, 0)
    _integer("branch_batch_size", b.batch_size, 0)
    if b.iterations and (b.iterations % training.eval_every or b.iterations % steps or b.iterations <= pruning.rewind_step):
        raise ConfigError("branch_iterations", f"must be a multiple of --eval_every and above --rewind_step; got {b.iterations}")

    if any(name in ANALYSIS_BRANCHES for name in b.names):
        for k in b.analysis_rewind_steps:
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < training.iterations:
                raise ConfigError("analysis_rewind_steps", f"step {k!r} is beyond the training: expected steps in [0, --iterations={training.iterations})")
            if k % steps:
                raise ConfigError("analysis_rewind_steps", f"must be multiples of --steps_per_execution={steps}; got {k}")
        _integer("interpolation_points", b.interpolation_points, 2)
        _integer("instability_pairs", b.instability_pairs, 1)
        for control in b.analysis_controls:
            if control not in ANALYSIS_CONTROLS:
                raise ConfigError("analysis_controls", f"unknown control {control!r}; expected some of {', '.join(ANALYSIS_CONTROLS)}")
        if b.batchnorm_statistics not in BATCHNORM_STATISTICS:
            raise ConfigError("batchnorm_statistics", f"expected one of {', '.join(BATCHNORM_STATISTICS)}, got {b.batchnorm_statistics!r}")
        _integer("batchnorm_batches", b.batchnorm_batches, 1)
        _integer("analysis_train_examples", b.analysis_train_examples, 1)

    if any(name.startswith("pai_") for name in b.names):
        if b.pai_scope not in PAI_SCOPES:
            raise ConfigError("pai_scope", f"expected one of {', '.join(PAI_SCOPES)}, got {b.pai_scope!r}")
        for ablation in b.pai_ablations:
            if ablation not in PAI_ABLATIONS:
                raise ConfigError("pai_ablations", f"unknown ablation {ablation!r}; expected some of {', '.join(PAI_ABLATIONS)}")
        _integer("scoring_examples_per_class", b.scoring_examples_per_class, 1)
        _integer("synflow_rounds", b.synflow_rounds, 1)
    if "gmp" in b.names:
        for flag in ("gmp_begin_step", "gmp_end_step", "gmp_frequency"):
            value = getattr(b, flag)
            if isinstance(value, bool) or not isinstance(value, int) or (value != -1 and value < 1):
                raise ConfigError(flag, f"expected an integer >= 1 (or -1 for the default), got {value!r}")
        begin, end, frequency = gmp_steps(config)
        if not 1 <= begin <= end <= training.iterations:
            raise ConfigError("gmp_end_step", f"pruning must begin and end within the training: expected "
                              f"1 <= --gmp_begin_step ({begin}) <= --gmp_end_step ({end}) <= --iterations={training.iterations}")
        if (end - begin) % frequency:
            raise ConfigError("gmp_end_step", f"{end} - --gmp_begin_step {begin} is not a multiple of --gmp_frequency "
                              f"{frequency}: the schedule would never reach its final sparsity (TFMOT prunes only at "
                              "begin + n * frequency)")
        if b.gmp_schedule not in GMP_SCHEDULES:
            raise ConfigError("gmp_schedule", f"expected one of {', '.join(GMP_SCHEDULES)}, got {b.gmp_schedule!r}")

    r = config.run
    if not r.output_dir:
        raise ConfigError("output_dir", "expected a folder path, got an empty string")
    if os.path.exists(r.output_dir) and not os.path.isdir(r.output_dir):
        raise ConfigError("output_dir", f"{r.output_dir!r} exists and is not a folder")
    _integer("replicates", r.replicates, 1)
    _integer("replicate", r.replicate, -1)
    if r.replicate >= r.replicates:
        raise ConfigError("replicate", f"replicate {r.replicate} does not exist with --replicates={r.replicates}; "
                          f"replicates are numbered 0..{r.replicates - 1} (pass --replicates={r.replicate + 1} or more)")
    _integer("checkpoint_every", r.checkpoint_every, 0)
    if r.strategy not in STRATEGIES:
        raise ConfigError("strategy", f"unknown strategy {r.strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if r.strategy == "tpu" and not r.tpu:
        raise ConfigError("tpu", "--strategy=tpu needs --tpu: the TPU's name, grpc://host:port address, or 'local' on a TPU VM")
    if r.tpu and r.strategy != "tpu":
        raise ConfigError("tpu", f"--tpu={r.tpu!r} is only used with --strategy=tpu; got --strategy={r.strategy}")
    _integer("cpu_devices", r.cpu_devices, 0)
    if r.checkpoint_every and r.checkpoint_every % steps:
        raise ConfigError("checkpoint_every", f"must be a multiple of --steps_per_execution={steps}; got {r.checkpoint_every}")


def gmp_steps(config: ExperimentConfig) -> tuple:
    """(begin, end, frequency) of gradual magnitude pruning, defaults resolved (10% and 50% of the training)."""
    b, iterations = config.branches, config.training.iterations
    frequency = b.gmp_frequency if b.gmp_frequency > 0 else config.training.eval_every
    begin = b.gmp_begin_step if b.gmp_begin_step > 0 else max(1, iterations // 10)
    # The default end: the last pruning step at or before half the training, so the final sparsity is reached.
    end = b.gmp_end_step if b.gmp_end_step > 0 else begin + frequency * max(0, (iterations // 2 - begin) // frequency)
    return begin, end, frequency


def start_steps(config: ExperimentConfig) -> tuple:
    """Every step a level or branch of this invocation starts training at (for the steps per execution)."""
    b = config.branches
    steps = [config.pruning.rewind_step, b.rewind_step]
    if any(name in ANALYSIS_BRANCHES for name in b.names):
        steps.extend(b.analysis_rewind_steps)
    return tuple(s for s in steps if isinstance(s, int) and not isinstance(s, bool) and s > 0)


def replicate_seed(seed: int, replicate: int) -> int:
    """Seed of one replicate: distinct per replicate, reproducible, < 2**31."""
    digest = hashlib.sha256(f"lottery_tf/{seed}/{replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def derived_seed(seed: int, *parts) -> int:
    """A seed for a branch's own randomness (fresh init, random mask)."""
    digest = hashlib.sha256("/".join(["lottery_tf", str(seed), *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1
