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
from collections.abc import Callable
from typing import Any

from lottery_tf.store import output_folders

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("", "mixed_float16", "mixed_bfloat16")
DETERMINISTIC_THREADS = 1  # TensorFlow intra-op threads of every --deterministic training, on any executor
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
EXECUTORS = ("local", "ray")
PRUNING_METHODS = ("layerwise", "global")


class StrategyError(RuntimeError):
    """A tf.distribute strategy cannot be set up (raised by :mod:`lottery_tf.engine.distribute`);
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
    rewind_optimizer: str = "fresh"  # fresh, reset or restore (lottery_tf.core.rewind.reset_optimizer)
    block: tuple = ()  # (R, C): blocks of R outputs x C inputs pruned as units (lottery_tf.core.pruning)
    n_m: tuple = ()  # (N, M): at most N of every M consecutive inputs kept


PAI_METHODS = ("magnitude", "random", "snip", "grasp", "synflow")
BRANCHES = (
    "reinit",
    "random_prune",
    "rewind",
    "lr_rewind",
    "lr_rewind_oneshot",
    "retrain",
    "instability",
    "stability",
    *(f"pai_{m}" for m in PAI_METHODS),
    "gmp",
    "set",
    "rigl",
)
DST_BRANCHES = ("set", "rigl")  # dynamic sparse training (lottery_tf.engine.branches.dst)
DST_DISTRIBUTIONS = ("uniform", "erk")
DST_DROP_SCHEDULES = ("cosine", "constant")
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
        dst_distribution: ``set`` and ``rigl``: the per-layer distributions
            each runs with, each in its own folder (``uniform``, ``erk``).
        dst_update_every, dst_drop_fraction, dst_drop_schedule,
            dst_end_fraction: ``set`` and ``rigl``: steps between mask
            updates, the drop fraction at step 0, its schedule (``cosine``,
            ``constant``) and the fraction of ``iterations`` masks change in.
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
    dst_distribution: tuple = ("uniform",)
    dst_update_every: int = 100
    dst_drop_fraction: float = 0.3
    dst_drop_schedule: str = "cosine"
    dst_end_fraction: float = 0.75


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
    executor: str = "local"  # one of EXECUTORS: who runs the study's trainings
    ray_address: str = ""  # --executor=ray: "" = start a local Ray instance; "auto" or HOST:PORT = join a cluster
    cpus_per_training: float = 1.0  # --executor=ray: CPUs Ray reserves for each training (its TF threads)
    gpus_per_training: float = 0.0  # --executor=ray: the fraction of a GPU each training gets (0 = none)


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
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
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
                    kwargs[name] = SECTIONS[name](**{k: tuples(v) for k, v in value.items()})
                elif name in sections:
                    kwargs[name] = tuples(value)
                else:
                    raise KeyError(name)
            return cls(**kwargs)
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a lottery_tf settings file: {error}") from None


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "pruning": PruningConfig,
    "branches": BranchConfig,
    "run": RunConfig,
}


# -- every setting, declared once ------------------------------------------------------------------------
#
# Each setting says its flag, its type and range, which component reads it, and whether it is part of
# the run's identity (the hash that names the run folder). Range checks, "set but not used" and the
# identity all come from these declarations; :func:`validate` adds only the rules that relate settings
# to each other (a length that must divide another, a level the main line must have).


@dataclasses.dataclass(frozen=True)
class Reader:
    """Which component reads a setting: ``reads(config, study)`` says whether this run does.

    ``study`` holds what a whole invocation adds to one config: ``{"start_steps": ...}`` (the sweep's
    rewind steps).
    """

    description: str
    reads: Callable[[Any, dict], bool]
    now: Callable[[Any], str] = lambda config: ""


ALWAYS = Reader("every run", lambda config, study: True)


def _optimizer_is(name: str) -> Reader:
    return Reader(
        f"--optimizer={name}",
        lambda c, s: c.training.optimizer == name,
        lambda c: f"--optimizer={c.training.optimizer}",
    )


def _datasets(*names: str) -> Reader:
    return Reader(
        f"--dataset={' or '.join(names)}", lambda c, s: c.data.name in names, lambda c: f"--dataset={c.data.name}"
    )


def _branch_matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _branches(*patterns: str, description: str = "") -> Reader:
    return Reader(
        description or f"--branch={' or '.join(patterns)}",
        lambda c, s: any(_branch_matches(n, p) for n in c.branches.names for p in patterns),
        lambda c: f"--branch={','.join(c.branches.names) or '(none)'}",
    )


def _analysis_controls_read(config, study) -> bool:
    b = config.branches
    return any(n in ANALYSIS_BRANCHES for n in b.names) and any(level >= 1 for level in b.levels)


def _random_prune_scope_read(config, study) -> bool:
    b = config.branches
    return "random_prune" in b.names or (
        "random_prune" in b.analysis_controls and _analysis_controls_read(config, study)
    )


def _rewinds_somewhere(config, study) -> bool:
    return bool(start_steps(config)) or any(k > 0 for k in study.get("start_steps", ()))


def _branch_names(config) -> str:
    return f"--branch={','.join(config.branches.names) or '(none)'}"


SGD = _optimizer_is("sgd")
READERS = {
    "sgd_momentum": Reader(
        "--optimizer=sgd with --momentum above 0",
        lambda c, s: c.training.optimizer == "sgd" and c.training.momentum > 0,
        lambda c: f"--optimizer={c.training.optimizer} --momentum={c.training.momentum:g}",
    ),
    "weight_decay": Reader(
        "a --weight_decay above 0", lambda c, s: c.training.weight_decay > 0, lambda c: "--weight_decay=0"
    ),
    "step_schedule": Reader(
        "--lr_schedule=step",
        lambda c, s: c.training.lr_schedule == "step",
        lambda c: f"--lr_schedule={c.training.lr_schedule}",
    ),
    "rewind": Reader(
        "a rewind step above 0 (--rewind_step, --branch_rewind_step, --analysis_rewind_steps or --sweep_rewind_steps)",
        _rewinds_somewhere,
        lambda c: "every rewind step is 0",
    ),
    "tpu": Reader("--strategy=tpu", lambda c, s: c.run.strategy == "tpu", lambda c: f"--strategy={c.run.strategy}"),
    "ray": Reader("--executor=ray", lambda c, s: c.run.executor == "ray", lambda c: f"--executor={c.run.executor}"),
    "any_branch": Reader("a --branch", lambda c, s: bool(c.branches.names), lambda c: "no --branch"),
    "analysis_controls": Reader(
        "--branch=instability or stability at a level >= 1",
        _analysis_controls_read,
        lambda c: f"{_branch_names(c)} --branch_levels={','.join(map(str, c.branches.levels))}",
    ),
    "random_prune_scope": Reader(
        "--branch=random_prune, or an analysis with --analysis_controls=random_prune",
        _random_prune_scope_read,
        _branch_names,
    ),
    "batchnorm_batches": Reader(
        "--branch=instability with --batchnorm_statistics=reestimate",
        lambda c, s: "instability" in c.branches.names and c.branches.batchnorm_statistics == "reestimate",
        _branch_names,
    ),
}
MNIST_FAMILY = ("mnist", "fashion_mnist")


def _tfds_reader(*names: str) -> Reader:
    """TFDS settings: read by ``names``, except the MNIST family with ``--data_dir`` (its IDX files are all it reads)."""
    others = [n for n in names if n not in MNIST_FAMILY]
    return Reader(
        f"--dataset={' or '.join(others)}, or --dataset=mnist or fashion_mnist without --data_dir (whose IDX files "
        "are all they read)",
        lambda c, s: c.data.name in names and not (c.data.name in MNIST_FAMILY and c.data.data_dir),
        lambda c: f"--dataset={c.data.name}" + (f" --data_dir={c.data.data_dir}" if c.data.data_dir else ""),
    )


MIRRORED = Reader(
    "--strategy=mirrored (without GPUs)",
    lambda c, s: c.run.strategy == "mirrored",
    lambda c: f"--strategy={c.run.strategy}",
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its flag, where it lives in :class:`ExperimentConfig`, its type and range, who reads it.

    Args:
        flag: The command-line flag (without ``--``).
        field: ``"section.name"`` in :class:`ExperimentConfig` (``"seed"`` for the top-level field).
        kind: ``int``, ``float``, ``bool``, ``str``, ``length`` (steps, or epochs as ``2ep``),
            ``lengths`` (a list of those), ``names`` (a list of words), ``levels`` (``0-3,7``),
            ``fractions`` (``NAME=F`` items) or ``shape`` (``32,32,3``).
        help: The flag's help.
        low, high: The range of a number (of each item of a list); ``None`` = unbounded.
        low_open, high_open: Whether the range excludes its ends.
        choices: The allowed values (of each item of a list).
        default_means: A special value that means "the default" and skips the range (``-1``, ``0``).
        reader: Which component reads the setting; a value other than the default is refused where
            nothing reads it.
        identity: Whether it is part of the run's identity (changes what is computed).
    """

    flag: str
    field: str
    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    default_means: Any = None
    reader: Reader = ALWAYS
    identity: bool = False

    def value(self, config) -> Any:
        section, _, name = self.field.partition(".")
        return getattr(getattr(config, section), name) if name else getattr(config, section)

    def default(self) -> Any:
        return self.value(ExperimentConfig())

    def check(self, config) -> None:
        """Type, range and choices of this setting's value in ``config``.

        Raises:
            ConfigError: Naming the flag and what was expected.
        """
        value = self.value(config)
        if self.kind in ("block", "n_m"):
            if value == ():
                return
            from lottery_tf.core import pruning

            try:
                (pruning.check_block if self.kind == "block" else pruning.check_n_m)(value)
            except ValueError as error:
                if self.kind == "block":
                    raise ConfigError(
                        self.flag, f"expected positive integers RxC like 1x4, got {value[0]}x{value[1]}"
                    ) from None
                raise ConfigError(self.flag, str(error).split(": ", 1)[-1].rstrip(".")) from None
            return
        if self.kind in ("lengths", "names", "shape", "levels"):
            items = value
            if not isinstance(items, tuple):
                raise ConfigError(self.flag, f"expected a comma-separated list, got {value!r}")
            if self.kind == "names" and any(isinstance(v, str) and not v.strip() for v in items):
                raise ConfigError(
                    self.flag, f"{','.join(items)!r} holds an empty name (a stray comma?); expected names like a,b"
                )
            if self.kind == "shape" and not 1 <= len(items) <= 3:
                raise ConfigError(
                    self.flag,
                    f"expected 1 to 3 sizes (height,width,channels) like 32,32,3, got {self.shown(config)} "
                    f"({'an image needs at least one size' if not items else 'an image has at most three'})",
                )
            if self.kind != "shape" and len(set(items)) != len(items):
                repeated = sorted({str(v) for v in items if items.count(v) > 1})
                raise ConfigError(self.flag, f"{', '.join(repeated)} given twice; give each once")
        elif self.kind == "fractions":
            items = tuple(v for _, v in value)
            names = [n for n, _ in value]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ConfigError(self.flag, f"{', '.join(repeated)} given twice; give each weight one fraction")
        else:
            items = (value,)
        for item in items:
            if self.default_means is not None and item == self.default_means and not isinstance(item, bool):
                continue
            self._check_item(item)

    def _check_item(self, item) -> None:
        kind = {
            "length": "int",
            "lengths": "int",
            "levels": "int",
            "shape": "int",
            "fractions": "float",
            "names": "str",
        }.get(self.kind, self.kind)
        if kind == "bool":
            if not isinstance(item, bool):
                raise ConfigError(self.flag, f"expected true or false, got {item!r}")
            return
        if kind == "str":
            if not isinstance(item, str):
                raise ConfigError(self.flag, f"expected a word, got {item!r}")
            if self.choices is not None and item not in self.choices:
                shown = ", ".join(c or "(empty)" for c in self.choices)
                raise ConfigError(
                    self.flag,
                    f"unknown value {item!r}; expected {'one or more' if self.kind == 'names' else 'one'} of {shown}",
                )
            return
        is_int = isinstance(item, int) and not isinstance(item, bool)
        if kind == "int" and not is_int:
            raise ConfigError(self.flag, f"expected an integer{self._range()}, got {item!r}")
        if kind == "float" and (
            isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item)
        ):
            raise ConfigError(self.flag, f"expected a number{self._range()}, got {item!r}")
        if kind == "float" and item != 0 and abs(item) < TINY:
            raise ConfigError(self.flag, f"{item!r} is below {TINY:g}: too small to mean anything (a typo?)")
        below = self.low is not None and (item < self.low or (self.low_open and item == self.low))
        above = self.high is not None and (item > self.high or (self.high_open and item == self.high))
        if below or above:
            what = "an integer" if kind == "int" else "a number"
            raise ConfigError(self.flag, f"expected {what}{self._range()}, got {item!r}")

    def _range(self) -> str:
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f" {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f" {'<' if self.high_open else '<='} {self.high:g}"
        return f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def is_set(self, config) -> bool:
        """Whether the value differs from the default."""
        return self.value(config) != self.default()

    def shown(self, config) -> str:
        value = self.value(config)
        if self.kind in ("block", "n_m") and value:
            return f"{value[0]}{'x' if self.kind == 'block' else ':'}{value[1]}"
        if self.kind == "fractions":
            return ",".join(f"{n}={v:g}" for n, v in value)
        if isinstance(value, tuple):
            return ",".join(map(str, value)) or "(empty)"
        return (
            str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)
        )


# A non-zero float below this is a typo or an overflow of a unit, never a setting (1e-320).
TINY = 1e-30
# Upper bounds that no recipe needs and a typo easily gives (1e3 for 1e-3, 100000000 points).
MAX_LEARNING_RATE = 100.0
MAX_WEIGHT_DECAY = 1.0
# The smallest per-level pruning fraction: below it a study needs thousands of levels to prune anything.
MIN_PRUNING_FRACTION = 1e-3
_LENGTH = "steps (500 or 500it) or epochs (2ep)"

S = Setting  # short, for the table
SETTINGS: tuple[Setting, ...] = (
    # Data
    S(
        "dataset",
        "data.name",
        "str",
        "Dataset: mnist, fashion_mnist, cifar10, imagenet2012 or synthetic.",
        identity=True,
    ),
    S(
        "data_dir",
        "data.data_dir",
        "str",
        "Folder of MNIST-format IDX files (.gz or not). Empty: use TFDS, then known local folders.",
        reader=_datasets("mnist", "fashion_mnist"),
    ),
    S(
        "tfds_data_dir",
        "data.tfds_data_dir",
        "str",
        "TFDS data folder. Empty: TFDS's default (~/tensorflow_datasets). Not read with --data_dir.",
        reader=_tfds_reader("mnist", "fashion_mnist", "cifar10", "imagenet2012"),
    ),
    S(
        "tfds_download",
        "data.tfds_download",
        "bool",
        "Try a TFDS download (only if the network answers within seconds) when no local copy exists. Not read "
        "with --data_dir.",
        reader=_tfds_reader("mnist", "fashion_mnist", "cifar10"),
    ),
    S(
        "tfds_manual_dir",
        "data.tfds_manual_dir",
        "str",
        "imagenet2012: folder with ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar (TFDS prepares them once into --tfds_data_dir).",
        reader=_datasets("imagenet2012"),
    ),
    S(
        "image_size",
        "data.image_size",
        "int",
        "imagenet2012: side of the square training and evaluation crops.",
        low=8,
        high=1024,
        reader=_datasets("imagenet2012"),
        identity=True,
    ),
    S(
        "validation_examples",
        "data.validation_examples",
        "int",
        "Training examples held out for validation (early stopping).",
        low=1,
        identity=True,
    ),
    S(
        "synthetic_train_examples",
        "data.synthetic_train_examples",
        "int",
        "Training examples of the synthetic dataset.",
        low=1,
        high=10_000_000,
        reader=_datasets("synthetic"),
        identity=True,
    ),
    S(
        "synthetic_test_examples",
        "data.synthetic_test_examples",
        "int",
        "Test examples of the synthetic dataset.",
        low=1,
        high=10_000_000,
        reader=_datasets("synthetic"),
        identity=True,
    ),
    S(
        "synthetic_shape",
        "data.synthetic_shape",
        "shape",
        "Image shape of the synthetic dataset: 1 to 3 sizes (height,width,channels), e.g. 32,32,3.",
        low=1,
        high=4096,
        reader=_datasets("synthetic"),
        identity=True,
    ),
    S(
        "synthetic_classes",
        "data.synthetic_classes",
        "int",
        "Classes of the synthetic dataset.",
        low=2,
        high=100_000,
        reader=_datasets("synthetic"),
        identity=True,
    ),
    # Model
    S("model", "model.name", "str", "Model name from the registry.", identity=True),
    S("initializer", "model.initializer", "str", "Keras initializer of the prunable weights.", identity=True),
    # Training
    S("optimizer", "training.optimizer", "str", "Optimizer: adam, adamw or sgd.", choices=OPTIMIZERS, identity=True),
    S(
        "learning_rate",
        "training.learning_rate",
        "float",
        "Learning rate.",
        low=0,
        high=MAX_LEARNING_RATE,
        low_open=True,
        identity=True,
    ),
    S(
        "momentum",
        "training.momentum",
        "float",
        "SGD momentum.",
        low=0,
        high=1,
        high_open=True,
        reader=SGD,
        identity=True,
    ),
    S(
        "nesterov",
        "training.nesterov",
        "bool",
        "SGD: Nesterov momentum.",
        reader=READERS["sgd_momentum"],
        identity=True,
    ),
    S(
        "weight_decay",
        "training.weight_decay",
        "float",
        "Weight decay coefficient (see --weight_decay_mode).",
        low=0,
        high=MAX_WEIGHT_DECAY,
        high_open=True,
        identity=True,
    ),
    S(
        "weight_decay_mode",
        "training.weight_decay_mode",
        "str",
        "decoupled (Keras: w -= lr * wd * w) or l2 (wd * w "
        "added to the gradient, as PyTorch's SGD/Adam weight_decay and the papers).",
        choices=("decoupled", "l2"),
        reader=READERS["weight_decay"],
        identity=True,
    ),
    S(
        "lr_schedule",
        "training.lr_schedule",
        "str",
        "Learning-rate schedule: constant, step (x lr_gamma at each milestone) or cosine (to 0).",
        choices=SCHEDULES,
        identity=True,
    ),
    S(
        "lr_milestones",
        "training.lr_milestones",
        "lengths",
        "step schedule: lengths at which the rate is multiplied by --lr_gamma, e.g. 80ep,120ep.",
        low=1,
        reader=READERS["step_schedule"],
        identity=True,
    ),
    S(
        "lr_gamma",
        "training.lr_gamma",
        "float",
        "step schedule: factor at each milestone, in (0, 1) (1 would never decay).",
        low=0,
        high=1,
        low_open=True,
        reader=READERS["step_schedule"],
        identity=True,
    ),
    S(
        "warmup",
        "training.warmup_iterations",
        "length",
        "Linear learning-rate warmup length (steps, or e.g. 5ep).",
        low=0,
        identity=True,
    ),
    S(
        "label_smoothing",
        "training.label_smoothing",
        "float",
        "Label smoothing of the cross-entropy loss, in [0, 1).",
        low=0,
        high=1,
        high_open=True,
        identity=True,
    ),
    S(
        "mixed_precision",
        "training.mixed_precision",
        "str",
        "Empty, mixed_float16 or mixed_bfloat16 (masks and weights stay float32).",
        choices=PRECISIONS,
        identity=True,
    ),
    S("batch_size", "training.batch_size", "int", "Global batch size (split across replicas).", low=1, identity=True),
    S(
        "iterations",
        "training.iterations",
        "length",
        "Training length per level: steps (50000 or 50000it) or epochs "
        "(160ep). Rewound levels train iterations - rewind_step.",
        low=1,
        identity=True,
    ),
    S(
        "eval_every",
        "training.eval_every",
        "length",
        "Evaluate validation and test sets every this many steps (or e.g. 1ep).",
        low=1,
        identity=True,
    ),
    S(
        "steps_per_execution",
        "training.steps_per_execution",
        "int",
        "Steps per compiled call. 0: the largest that divides eval_every, iterations and rewind_step. The gmp, "
        "set and rigl branches use its greatest common divisor with --gmp_frequency and --gmp_begin_step - 1, "
        "or --dst_update_every (their callbacks act between calls); branch.json records the value they ran with.",
        low=0,
    ),
    S("jit_compile", "training.jit_compile", "bool", "Compile training and evaluation with XLA."),
    # Pruning
    S(
        "pruning_method",
        "pruning.method",
        "str",
        "layerwise (each layer prunes its fraction) or global (one pool by raw magnitude).",
        choices=PRUNING_METHODS,
        identity=True,
    ),
    S(
        "pruning_fraction",
        "pruning.fraction",
        "float",
        "Fraction of the remaining weights pruned per level, in [0.001, 1).",
        low=MIN_PRUNING_FRACTION,
        high=1,
        high_open=True,
        identity=True,
    ),
    S(
        "output_pruning_fraction",
        "pruning.output_fraction",
        "float",
        "Fraction for the output layer, in [0.001, 1); 0 = same rule as other layers. With the output layer "
        "excluded (--exclude_layers) it must be 0: another layer would get it.",
        low=MIN_PRUNING_FRACTION,
        high=1,
        high_open=True,
        default_means=0.0,
        identity=True,
    ),
    S(
        "layer_pruning_fractions",
        "pruning.layer_fractions",
        "fractions",
        "Per-weight overrides, e.g. fc1/kernel=0.2,fc2/kernel=0.2.",
        low=MIN_PRUNING_FRACTION,
        high=1,
        high_open=True,
        identity=True,
    ),
    S(
        "exclude_layers",
        "pruning.exclude_layers",
        "names",
        "Layers never pruned (a layer name, or a path such as block_a/fc).",
        identity=True,
    ),
    S("levels", "pruning.levels", "int", "Pruning levels: levels 0 (dense) to --levels are trained.", low=0, high=200),
    S(
        "rewind_step",
        "pruning.rewind_step",
        "length",
        "Step the survivors are rewound to (0 = reset to initialization), or e.g. 5ep.",
        low=0,
        identity=True,
    ),
    S(
        "rewind_optimizer",
        "pruning.rewind_optimizer",
        "str",
        "How the optimizer is rewound with the weights: fresh (a "
        "new optimizer state with its own step counter at 0, the learning-rate schedule offset to the rewind step, as "
        "open_lth), reset (the same state with its step counter at the rewind step) or restore (the optimizer state "
        "saved at the rewind step).",
        choices=REWIND_OPTIMIZER,
        reader=READERS["rewind"],
        identity=True,
    ),
    S(
        "pruning_block",
        "pruning.block",
        "block",
        "Prune blocks of R outputs x C inputs as units, RxC in the runtime's "
        "weight layout (rows = units, columns = inputs): 1x4 = four consecutive input weights of one unit, the block "
        "TFLite's sparse FULLY_CONNECTED kernel runs for float weights (1x16 for int8). Empty = single weights.",
        identity=True,
    ),
    S(
        "pruning_n_m",
        "pruning.n_m",
        "n_m",
        "N:M: keep at most N of every M consecutive input weights of a unit (2:4 "
        "is what sparse tensor cores run), from the first level whose kept fraction is at most N/M (earlier levels "
        "prune single weights). Empty = no N:M.",
        identity=True,
    ),
    S(
        "seed",
        "seed",
        "int",
        "Base seed; each replicate derives its own seed for initialization and data order.",
        low=0,
        high=2**31 - 1,
        identity=True,
    ),
    # Branches (controls, analyses, baselines) at chosen levels of the main line
    S(
        "branch",
        "branches.names",
        "names",
        "Branches to run: reinit, random_prune, rewind, lr_rewind (its own "
        "lineage), lr_rewind_oneshot, retrain; the analyses instability (linear mode connectivity), stability "
        "(distances); the baselines pai_magnitude, pai_random, pai_snip, pai_grasp, pai_synflow (pruning at "
        "initialization), gmp (gradual magnitude pruning), set and rigl (dynamic sparse training) (comma-separated).",
        choices=BRANCHES,
    ),
    S(
        "branch_levels",
        "branches.levels",
        "levels",
        "Levels to run the branches at, e.g. 0-3,7,11 (must be within 0..--levels).",
        low=0,
        reader=READERS["any_branch"],
    ),
    S(
        "random_prune_scope",
        "branches.random_prune_scope",
        "str",
        "random_prune: keep each layer's density (layerwise) or only the overall density (global).",
        choices=RANDOM_PRUNE_SCOPES,
        reader=READERS["random_prune_scope"],
    ),
    S(
        "branch_rewind_step",
        "branches.rewind_step",
        "length",
        "rewind: the step k to rewind to (0 = reset to init; "
        "steps or e.g. 2ep); lr_rewind, lr_rewind_oneshot: -1 = the main line's --rewind_step.",
        low=0,
        default_means=-1,
        reader=_branches("rewind", "lr_rewind", "lr_rewind_oneshot"),
    ),
    S(
        "branch_optimizer",
        "branches.optimizer",
        "str",
        "retrain: optimizer (empty = the main line's).",
        choices=("", *OPTIMIZERS),
        reader=_branches("retrain"),
    ),
    S(
        "branch_learning_rate",
        "branches.learning_rate",
        "float",
        "retrain: learning rate (0 = the main line's).",
        low=0,
        high=MAX_LEARNING_RATE,
        low_open=True,
        default_means=0.0,
        reader=_branches("retrain"),
    ),
    S(
        "branch_iterations",
        "branches.iterations",
        "length",
        "retrain: training length, steps or epochs (0 = the main line's).",
        low=1,
        default_means=0,
        reader=_branches("retrain"),
    ),
    S(
        "branch_batch_size",
        "branches.batch_size",
        "int",
        "retrain: batch size (0 = the main line's).",
        low=1,
        default_means=0,
        reader=_branches("retrain"),
    ),
    S(
        "analysis_rewind_steps",
        "branches.analysis_rewind_steps",
        "lengths",
        "instability, stability: the steps k the "
        "analysed networks start from, steps or epochs, e.g. 0,25,100,500,2000 (empty = --rewind_step).",
        low=0,
        reader=_branches(*ANALYSIS_BRANCHES),
    ),
    S(
        "interpolation_points",
        "branches.interpolation_points",
        "int",
        "instability: points on the linear path between two copies (2..1000, both ends).",
        low=2,
        high=1000,
        reader=_branches("instability"),
    ),
    S(
        "instability_pairs",
        "branches.instability_pairs",
        "int",
        "instability: pairs of copies per network and step k (1..100).",
        low=1,
        high=100,
        reader=_branches("instability"),
    ),
    S(
        "analysis_controls",
        "branches.analysis_controls",
        "names",
        "instability, stability: controls beside the "
        "ticket at levels >= 1: random_prune, reinit (instability only); empty = none.",
        choices=ANALYSIS_CONTROLS,
        reader=READERS["analysis_controls"],
    ),
    S(
        "batchnorm_statistics",
        "branches.batchnorm_statistics",
        "str",
        "instability: reestimate BatchNorm statistics "
        "at every point of a path from --batchnorm_batches training batches, or interpolate them like the weights.",
        choices=BATCHNORM_STATISTICS,
        reader=_branches("instability"),
    ),
    S(
        "batchnorm_batches",
        "branches.batchnorm_batches",
        "int",
        "instability: training batches used to re-estimate BatchNorm statistics (1..10000); only for a model "
        "with BatchNorm.",
        low=1,
        high=10_000,
        reader=READERS["batchnorm_batches"],
    ),
    S(
        "analysis_train_examples",
        "branches.analysis_train_examples",
        "int",
        "instability: size of the fixed training subset the path's train error uses.",
        low=1,
        reader=_branches("instability"),
    ),
    S(
        "pai_scope",
        "branches.pai_scope",
        "str",
        "pai_*: prune with one global threshold over every prunable weight "
        "(the output layer included, as Frankle et al. 2021) or layerwise.",
        choices=PAI_SCOPES,
        reader=_branches("pai_*", description="a --branch=pai_*"),
    ),
    S(
        "pai_ablations",
        "branches.pai_ablations",
        "names",
        "pai_*: also run these ablations, each in its own folder: "
        "shuffle (each layer's mask shuffled), reinit (fresh initialization after pruning), invert (prune the highest "
        "scores). Refused with pai_random alone: each would train pai_random again.",
        choices=PAI_ABLATIONS,
        reader=_branches("pai_*", description="a --branch=pai_*"),
    ),
    S(
        "scoring_examples_per_class",
        "branches.scoring_examples_per_class",
        "int",
        "pai_snip, pai_grasp: class-balanced scoring examples per class.",
        low=1,
        reader=_branches("pai_snip", "pai_grasp"),
    ),
    S(
        "synflow_rounds",
        "branches.synflow_rounds",
        "int",
        "pai_synflow: pruning rounds (exponential schedule, 1..10000).",
        low=1,
        high=10_000,
        reader=_branches("pai_synflow"),
    ),
    S(
        "gmp_begin_step",
        "branches.gmp_begin_step",
        "length",
        "gmp: first (1-based) pruning step, steps or epochs (-1 = 10% of --iterations).",
        low=1,
        default_means=-1,
        reader=_branches("gmp"),
    ),
    S(
        "gmp_end_step",
        "branches.gmp_end_step",
        "length",
        "gmp: last pruning step, steps or epochs (-1 = 50% of --iterations).",
        low=1,
        default_means=-1,
        reader=_branches("gmp"),
    ),
    S(
        "gmp_frequency",
        "branches.gmp_frequency",
        "length",
        "gmp: prune every this many steps (-1 = --eval_every).",
        low=1,
        default_means=-1,
        reader=_branches("gmp"),
    ),
    S(
        "gmp_schedule",
        "branches.gmp_schedule",
        "str",
        "gmp: sparsity values from lottery_tf's polynomial schedule or "
        "TFMOT's own PolynomialDecay (tfmot; needs pip install 'lottery_tf[tfmot]').",
        choices=GMP_SCHEDULES,
        reader=_branches("gmp"),
    ),
    S(
        "dst_distribution",
        "branches.dst_distribution",
        "names",
        "set, rigl: per-layer densities, each run in its own folder <method>_<distribution>: uniform (every layer "
        "at the level's density) and/or erk (Erdos-Renyi-Kernel), e.g. uniform,erk.",
        choices=DST_DISTRIBUTIONS,
        reader=_branches(*DST_BRANCHES),
    ),
    S(
        "dst_update_every",
        "branches.dst_update_every",
        "int",
        "set, rigl: training steps between mask updates (>= 1, at most the steps masks change in).",
        low=1,
        reader=_branches(*DST_BRANCHES),
    ),
    S(
        "dst_drop_fraction",
        "branches.dst_drop_fraction",
        "float",
        "set, rigl: fraction of each layer's active weights dropped (and regrown) at step 0, in (0, 1).",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
        reader=_branches(*DST_BRANCHES),
    ),
    S(
        "dst_drop_schedule",
        "branches.dst_drop_schedule",
        "str",
        "set, rigl: the drop fraction decays to 0 by the last update (cosine, as RigL) or stays (constant).",
        choices=DST_DROP_SCHEDULES,
        reader=_branches(*DST_BRANCHES),
    ),
    S(
        "dst_end_fraction",
        "branches.dst_end_fraction",
        "float",
        "set, rigl: masks change up to this fraction of --iterations, in (0, 1].",
        low=0,
        high=1,
        low_open=True,
        reader=_branches(*DST_BRANCHES),
    ),
    # Run
    S(
        "output_dir",
        "run.output_dir",
        "str",
        "Root folder; the run goes to <output_dir>/lottery_<hash of non-default settings>/ (~ is expanded).",
    ),
    S(
        "replicates",
        "run.replicates",
        "int",
        "Number of replicates (independent seeds) to run: 0..N-1.",
        low=1,
        high=10_000,
    ),
    S(
        "replicate",
        "run.replicate",
        "int",
        "Run only this replicate index (>= 0), e.g. one per machine.",
        low=0,
        default_means=-1,
    ),
    S(
        "checkpoint_every",
        "run.checkpoint_every",
        "length",
        "Checkpoint every this many steps (or e.g. 1ep) within a level (0 = only between levels); at most "
        "--iterations (a longer period never checkpoints).",
        low=0,
    ),
    S(
        "deterministic",
        "run.deterministic",
        "bool",
        "TensorFlow op determinism (XLA off) and one intra-op thread per training, so a resumed run, or one on "
        "Ray or another machine, matches an uninterrupted local run bit for bit.",
    ),
    S(
        "tensorboard",
        "run.tensorboard",
        "bool",
        "Write TensorBoard event files under <run>/tensorboard/r<r>/L<level>-<branch>.",
    ),
    S(
        "strategy",
        "run.strategy",
        "str",
        "tf.distribute strategy: default, one_device, mirrored (all local GPUs, or "
        "--cpu_devices logical CPUs), multi_worker_mirrored (cluster from TF_CONFIG; every worker runs the same command) "
        "or tpu (see --tpu).",
        choices=STRATEGIES,
    ),
    S(
        "tpu",
        "run.tpu",
        "str",
        "With --strategy=tpu: the TPU's name, grpc://host:port address, or 'local' on a TPU VM.",
        reader=READERS["tpu"],
    ),
    S(
        "cpu_devices",
        "run.cpu_devices",
        "int",
        "--strategy=mirrored without GPUs: split the CPU into this many logical devices (2..256; 0 = the CPU "
        "as one device). Refused where nothing reads it (another strategy, or a machine with GPUs).",
        low=2,
        high=256,
        default_means=0,
        reader=MIRRORED,
    ),
    S(
        "wait_for_lock",
        "run.wait_for_lock",
        "bool",
        "If another process is training the same levels, wait for it instead of exiting.",
    ),
    S(
        "executor",
        "run.executor",
        "str",
        "Who runs the study's trainings: local (this process, one after another) or ray (every training "
        "a Ray task, side by side as the graph allows; needs pip install 'lottery_tf[ray]').",
        choices=EXECUTORS,
    ),
    S(
        "ray_address",
        "run.ray_address",
        "str",
        "With --executor=ray: the cluster to join, 'auto' or HOST:PORT (default: start a local Ray instance "
        "sized to this machine and stop it at the end). On a cluster --output_dir must be a shared filesystem.",
        reader=READERS["ray"],
    ),
    S(
        "cpus_per_training",
        "run.cpus_per_training",
        "float",
        "With --executor=ray: CPUs Ray reserves for each training; its TensorFlow uses that many threads.",
        low=0,
        low_open=True,
        high=1024,
        reader=READERS["ray"],
    ),
    S(
        "gpus_per_training",
        "run.gpus_per_training",
        "float",
        "With --executor=ray: the fraction of one GPU each training gets, in (0, 1] (0.25: four trainings "
        "share a GPU); 0 = trainings use no GPU.",
        low=0,
        low_open=True,
        high=1,
        default_means=0,
        reader=READERS["ray"],
    ),
)
del S
SETTING = {s.flag: s for s in SETTINGS}

# The flags' sections, in order, with their titles: ``--help`` (lottery_tf/main.py) and the site's flag
# reference (docs/hooks.py) both group the flags by these.
FLAG_SECTIONS = (
    ("data", "Data"),
    ("model", "Model"),
    ("training", "Training"),
    ("pruning", "Pruning"),
    ("branches", "Branches, analyses and baselines"),
    ("run", "Where and how to run"),
)


def flag_section(setting: Setting) -> str:
    """The section of :data:`FLAG_SECTIONS` that lists ``setting``'s flag (``--seed`` is listed with pruning)."""
    section = setting.field.split(".")[0]
    return "pruning" if section == "seed" else section


def setting_for_field(field: str) -> Setting:
    return next(s for s in SETTINGS if s.field == field)


def identity(config: ExperimentConfig) -> dict[str, Any]:
    """The settings that define the experiment, flattened ``section.field`` (declared with ``identity=True``)."""
    return {s.field: _plain(s.value(config)) for s in SETTINGS if s.identity}


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


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
    return experiment_hash_of(non_default_identity(config))


def experiment_hash_of(non_default: dict) -> str:
    """The hash of an identity record (what ``identity.json`` holds)."""
    canonical = json.dumps(non_default, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def parse_levels(text: str) -> tuple:
    """``"0-3,7,11"`` -> ``(0, 1, 2, 3, 7, 11)``.

    Raises:
        ValueError: If an item is not an integer or a range ``a-b`` with a <= b,
            or a level is given twice.
    """
    levels = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        first, sep, last = item.partition("-")
        if sep and first:
            a, b = int(first), int(last)
            if a > b:
                raise ValueError(f"range {item!r} is empty")
            levels.extend(range(a, b + 1))
        else:
            levels.append(int(item))
    repeated = sorted({level for level in levels if levels.count(level) > 1})
    if repeated:
        raise ValueError(f"level {', '.join(map(str, repeated))} given twice")
    return tuple(sorted(levels))


# Branch types that need a pruned level: at level 0 they would compute the dense main line again
# (random_prune: the same dense mask and weights) or nothing at all (lr_rewind: no previous level).
BRANCH_MIN_LEVEL = {
    "lr_rewind": 1,
    "lr_rewind_oneshot": 1,
    "random_prune": 1,
    "gmp": 1,
    **{f"pai_{m}": 1 for m in PAI_METHODS},
    **{name: 1 for name in DST_BRANCHES},
}


def validate(config: ExperimentConfig, dataset_names=None, model_names=None, study: dict | None = None) -> None:
    """Checks every setting that can be checked before training.

    First every declared setting (type, range, choices), then every setting
    set to a value other than its default that nothing in this run reads,
    then the rules that relate settings to each other.

    Args:
        config: The settings.
        dataset_names: Valid dataset names (from the registry), if known.
        model_names: Valid model names (from the registry), if known.
        study: What the whole invocation adds (``{"start_steps": (...)}``: the sweep's rewind steps).

    Raises:
        ConfigError: Naming the flag and what was expected.
    """
    study = study or {}
    if dataset_names is not None and config.data.name not in dataset_names:
        raise ConfigError(
            "dataset", f"unknown dataset {config.data.name!r}; expected one of {', '.join(dataset_names)}"
        )
    if model_names is not None and config.model.name not in model_names:
        # model_names may be a Registry (name families such as cifar_resnet_<depth>).
        listed = model_names.names() if hasattr(model_names, "names") else model_names
        raise ConfigError("model", f"unknown model {config.model.name!r}; expected one of {', '.join(listed)}")
    for setting in SETTINGS:
        setting.check(config)
    for setting in SETTINGS:
        if setting.is_set(config) and not setting.reader.reads(config, study):
            now = setting.reader.now(config)
            raise ConfigError(
                setting.flag,
                f"{setting.shown(config)} is set, but only {setting.reader.description} "
                f"reads it{f' (this run has {now})' if now else ''}; remove it",
            )
    for rule in _RULES:
        rule(config)


PATH_SETTINGS = ("output_dir", "data_dir", "tfds_data_dir", "tfds_manual_dir")


def _path_rules(config) -> None:
    """A path still starting with ``~`` names a user that does not exist (the command line expands the others):
    it would make a folder literally named ``~user``."""
    for flag in PATH_SETTINGS:
        problem = output_folders.home_problem(SETTING[flag].value(config))
        if problem:
            raise ConfigError(flag, problem)


def _data_rules(config) -> None:
    data = config.data
    if (
        data.name == "synthetic"
        and data.synthetic_classes > data.synthetic_train_examples - data.validation_examples > 0
    ):
        train = data.synthetic_train_examples - data.validation_examples
        raise ConfigError(
            "synthetic_classes",
            f"{data.synthetic_classes} classes for {train} training examples (--synthetic_train_examples="
            f"{data.synthetic_train_examples} less --validation_examples={data.validation_examples}): some classes "
            "would have no training example; expected at most as many classes as training examples",
        )
    for flag, folder in (("data_dir", data.data_dir), ("tfds_manual_dir", data.tfds_manual_dir)):
        if folder and not os.path.isdir(folder):
            expected = (
                "a readable folder of MNIST-format IDX files"
                if flag == "data_dir"
                else "a folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"
            )
            raise ConfigError(flag, f"{folder!r} is not a folder (expected {expected})")
        if folder and not os.access(folder, os.R_OK | os.X_OK):
            raise ConfigError(flag, f"{folder!r} is not readable")


def _training_rules(config) -> None:
    t, p = config.training, config.pruning
    if t.optimizer == "adamw" and t.weight_decay_mode == "l2":
        raise ConfigError(
            "weight_decay_mode",
            "l2 cannot be combined with --optimizer=adamw, whose weight decay is "
            "decoupled by definition; use --optimizer=adam --weight_decay_mode=l2 for Adam with L2",
        )
    if t.iterations % t.eval_every:
        raise ConfigError("eval_every", f"must divide --iterations={t.iterations}; got {t.eval_every}")
    b = config.branches
    longest = max(t.iterations, b.iterations if "retrain" in b.names else 0)
    if config.run.checkpoint_every > longest:
        training = (
            f"the longest training (--iterations={t.iterations}, --branch_iterations={longest})"
            if longest > t.iterations
            else f"--iterations={t.iterations}"
        )
        raise ConfigError(
            "checkpoint_every",
            f"{config.run.checkpoint_every} is beyond {training}: no level trains that long, so it would never "
            f"checkpoint; expected 0 (only between levels) or at most {longest}",
        )
    if t.lr_schedule == "step" and t.lr_gamma == 1:
        raise ConfigError(
            "lr_gamma",
            "1 multiplies the rate by 1 at every milestone: the step schedule would never decay; expected a "
            "factor in (0, 1), or --lr_schedule=constant",
        )
    if t.lr_schedule == "step":
        if not t.lr_milestones:
            raise ConfigError(
                "lr_milestones",
                "--lr_schedule=step needs the steps at which the rate drops, e.g. --lr_milestones=80ep,120ep",
            )
        for milestone in t.lr_milestones:
            if not 0 < milestone < t.iterations:
                raise ConfigError(
                    "lr_milestones", f"expected steps in (0, --iterations={t.iterations}), got {milestone!r}"
                )
        if list(t.lr_milestones) != sorted(t.lr_milestones):
            raise ConfigError("lr_milestones", f"expected increasing steps, got {','.join(map(str, t.lr_milestones))}")
    if t.warmup_iterations >= t.iterations:
        raise ConfigError("warmup", f"must be below --iterations={t.iterations}; got {t.warmup_iterations}")
    if p.rewind_step >= t.iterations:
        raise ConfigError("rewind_step", f"must be below --iterations={t.iterations}; got {p.rewind_step}")
    steps = t.resolved_steps_per_execution(*start_steps(config))
    for flag, value in (
        ("eval_every", t.eval_every),
        ("iterations", t.iterations),
        ("rewind_step", p.rewind_step),
        ("checkpoint_every", config.run.checkpoint_every),
    ):
        if value % steps:
            raise ConfigError(flag, f"must be a multiple of --steps_per_execution={steps}; got {value}")


def _branch_rules(config) -> None:
    b, t, p = config.branches, config.training, config.pruning
    steps = t.resolved_steps_per_execution(*start_steps(config))
    if b.names and not b.levels:
        raise ConfigError("branch_levels", "expected the levels to run the branches at, e.g. 0-3,7,11")
    for level in b.levels:
        if level > p.levels:
            raise ConfigError(
                "branch_levels", f"level {level!r} does not exist: the main line has levels 0-{p.levels} (--levels)"
            )
    for name in b.names:
        low = BRANCH_MIN_LEVEL.get(name, 0)
        if low and min(b.levels) < low:
            why = (
                "starts from the previous level's trained weights"
                if name.startswith("lr_rewind")
                else "at level 0 has nothing to prune (the dense network)"
            )
            raise ConfigError(
                "branch_levels", f"{name} {why}, so it needs levels >= {low}; got {','.join(map(str, b.levels))}"
            )
    if "rewind" in b.names and b.rewind_step < 0:
        raise ConfigError("branch_rewind_step", "the rewind branch needs the step to rewind to (an integer >= 0)")
    if b.rewind_step >= t.iterations:
        raise ConfigError("branch_rewind_step", f"must be below --iterations={t.iterations}; got {b.rewind_step}")
    if b.rewind_step > 0 and b.rewind_step % steps:
        raise ConfigError(
            "branch_rewind_step", f"must be a multiple of --steps_per_execution={steps}; got {b.rewind_step}"
        )
    if b.iterations and (b.iterations % t.eval_every or b.iterations % steps or b.iterations <= p.rewind_step):
        raise ConfigError(
            "branch_iterations", f"must be a multiple of --eval_every and above --rewind_step; got {b.iterations}"
        )
    if any(name in ANALYSIS_BRANCHES for name in b.names):
        for k in b.analysis_rewind_steps:
            if k >= t.iterations:
                raise ConfigError(
                    "analysis_rewind_steps",
                    f"step {k!r} is beyond the training: expected steps in [0, --iterations={t.iterations})",
                )
            if k % steps:
                raise ConfigError(
                    "analysis_rewind_steps", f"must be multiples of --steps_per_execution={steps}; got {k}"
                )
    pai = {name for name in b.names if name.startswith("pai_")}
    if pai == {"pai_random"}:
        # pai_random's scores are random: each ablation gives pai_random again (another sample of it).
        same = {
            "shuffle": "shuffling a random mask within each layer gives another random mask of the same densities",
            "invert": "inverting random scores gives random scores",
            "reinit": "with --rewind_step=0 a random mask on a fresh initialization is another sample of pai_random",
        }
        for ablation in b.pai_ablations:
            if ablation != "reinit" or p.rewind_step == 0:
                raise ConfigError(
                    "pai_ablations",
                    f"{ablation} with --branch=pai_random trains pai_random again ({same[ablation]}); remove it, or "
                    "add a --branch=pai_* that scores weights",
                )
    if "reinit" in b.analysis_controls and "stability" in b.names and "instability" not in b.names:
        raise ConfigError(
            "analysis_controls",
            "reinit is analysed by --branch=instability only; the stability "
            "analysis compares the ticket and random_prune (add --branch=instability, or remove reinit)",
        )
    if p.block and p.n_m:
        raise ConfigError("pruning_n_m", "--pruning_block and --pruning_n_m are two structures; give one of them")
    if "gmp" in b.names and (p.block or p.n_m):
        raise ConfigError(
            "branch",
            "gmp prunes single weights on TFMOT's schedule; it cannot follow "
            f"--pruning_{'block' if p.block else 'n_m'}: run it in an experiment without a structure",
        )
    _dst_rules(config)
    if "gmp" in b.names:
        begin, end, frequency = gmp_steps(config)
        if not 1 <= begin < end <= t.iterations:
            raise ConfigError(
                "gmp_end_step",
                f"pruning must begin before it ends, within the training: expected "
                f"1 <= --gmp_begin_step ({begin}) < --gmp_end_step ({end}) <= --iterations={t.iterations}",
            )
        if (end - begin) % frequency:
            raise ConfigError(
                "gmp_end_step",
                f"{end} - --gmp_begin_step {begin} is not a multiple of --gmp_frequency "
                f"{frequency}: the schedule would never reach its final sparsity (TFMOT prunes only at "
                "begin + n * frequency)",
            )


def _run_rules(config) -> None:
    r = config.run
    if not r.output_dir:
        raise ConfigError("output_dir", "expected a folder path, got an empty string")
    if os.path.exists(r.output_dir) and not os.path.isdir(r.output_dir):
        raise ConfigError("output_dir", f"{r.output_dir!r} exists and is not a folder")
    problem = output_folders.creatable_problem(r.output_dir)  # a file or a link loop on the way, /proc, read-only
    if problem:
        raise ConfigError("output_dir", problem)
    inside = output_folders.holding_run_folder(r.output_dir)
    if inside is not None:  # an experiment inside another would be taken for part of its run data
        raise ConfigError(
            "output_dir",
            f"{output_folders.in_run_folder(r.output_dir, inside)}: pass the folder that holds the experiments "
            "(the runs root)",
        )
    if r.replicate >= r.replicates:
        raise ConfigError(
            "replicate",
            f"replicate {r.replicate} does not exist with --replicates={r.replicates}; "
            f"replicates are numbered 0..{r.replicates - 1} (pass --replicates={r.replicate + 1} or more)",
        )
    if r.strategy == "tpu" and not r.tpu:
        raise ConfigError(
            "tpu", "--strategy=tpu needs --tpu: the TPU's name, grpc://host:port address, or 'local' on a TPU VM"
        )
    if r.executor == "ray" and r.strategy in ("multi_worker_mirrored", "tpu"):
        raise ConfigError(
            "executor",
            f"ray schedules whole trainings, each in one process; --strategy={r.strategy} spans several "
            "machines for one training: use --executor=local for it",
        )
    if r.executor == "ray" and r.ray_address:
        problem = ray_address_problem(r.ray_address)
        if problem:
            raise ConfigError("ray_address", problem)


def ray_address_problem(address: str) -> str | None:
    """What is wrong with the form of a ``--ray_address`` (``auto`` or HOST:PORT), or None; nothing is contacted."""
    if address == "auto":
        return None
    if address.lower().startswith("ray://"):
        return (
            f"{address} is a Ray Client address, which lottery_tf does not support: its driver reads and writes "
            "the output folder itself, so it runs on a machine of the cluster and joins through the head's GCS "
            "port; run the command on the head with --ray_address=auto, or give HOST:PORT of `ray start --head "
            "--port=PORT` (6379 by default)"
        )
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        return f"expected auto or HOST:PORT (the --port of `ray start --head`, 6379 by default), got {address!r}"
    return None


_RULES = (_path_rules, _data_rules, _training_rules, _branch_rules, _run_rules)


def lr_rewind_step(config: ExperimentConfig) -> int:
    """The step learning-rate rewinding rewinds the schedule to."""
    b = config.branches
    return b.rewind_step if b.rewind_step >= 0 else config.pruning.rewind_step


def dst_end_step(config: ExperimentConfig) -> int:
    """The last step at which ``set`` and ``rigl`` may update masks: ``floor(dst_end_fraction * iterations)``."""
    from fractions import Fraction

    b = config.branches
    return int(Fraction(repr(float(b.dst_end_fraction))) * config.training.iterations)


def _dst_rules(config: ExperimentConfig) -> None:
    b, p, t = config.branches, config.pruning, config.training
    names = [name for name in b.names if name in DST_BRANCHES]
    if not names:
        return
    if p.block or p.n_m:
        raise ConfigError(
            "branch",
            f"{','.join(names)} move single weights; they cannot keep --pruning_{'block' if p.block else 'n_m'}: "
            "run them in an experiment without a structure",
        )
    # Masks change when the step after an update begins: an update at the last step would change nothing trained.
    end = min(dst_end_step(config), t.iterations - 1)
    first = (p.rewind_step // b.dst_update_every + 1) * b.dst_update_every  # the first update after step k
    if first > end:
        raise ConfigError(
            "dst_update_every",
            f"{b.dst_update_every} is larger than the training masks may change in: the first update would be "
            f"at step {first}, after the last one allowed (--dst_end_fraction={b.dst_end_fraction:g} of "
            f"--iterations={t.iterations}, before the last step: step {end}"
            + (f", from --rewind_step={p.rewind_step}" if p.rewind_step else "")
            + ")",
        )


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
