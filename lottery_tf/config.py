"""Frozen experiment settings, their validation, and their JSON form.

Library code takes these objects and never reads absl flags. ``validate()``
checks everything that can be checked without TensorFlow, and raises
:class:`ConfigError` whose message names the *flag* at fault, so the CLI can
print one line and exit before any training starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")
PRUNING_METHODS = ("layerwise", "global")


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
    """

    name: str = "fashion_mnist"
    data_dir: str = ""
    tfds_data_dir: str = ""
    tfds_download: bool = True
    validation_examples: int = 5000
    synthetic_train_examples: int = 2048
    synthetic_test_examples: int = 512


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
    batch_size: int = 60
    iterations: int = 50000
    eval_every: int = 100
    steps_per_execution: int = 0  # 0 = the largest that divides every boundary
    jit_compile: bool = True

    def resolved_steps_per_execution(self, rewind_step: int) -> int:
        if self.steps_per_execution:
            return self.steps_per_execution
        steps = math.gcd(self.eval_every, self.iterations)
        if rewind_step:
            steps = math.gcd(steps, rewind_step)
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


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One lottery-ticket experiment: an IMP main line plus controls."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    pruning: PruningConfig = PruningConfig()
    reinit_levels: tuple = ()  # levels that get a random-reinitialization control
    seed: int = 0
    output_dir: str = "runs/lottery"
    tensorboard: bool = True

    def to_json(self) -> str:
        """Readable JSON of every setting (what is written to the run folder)."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        """Inverse of ``dataclasses.asdict`` (lists become tuples)."""

        def tuples(value):
            if isinstance(value, list):
                return tuple(tuples(v) for v in value)
            return value

        return cls(
            data=DataConfig(**data["data"]),
            model=ModelConfig(**data["model"]),
            training=TrainingConfig(**data["training"]),
            pruning=PruningConfig(
                **{k: tuples(v) for k, v in data["pruning"].items()}
            ),
            **{
                k: tuples(v)
                for k, v in data.items()
                if k not in ("data", "model", "training", "pruning")
            },
        )


def _integer(flag: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(flag, f"expected an integer >= {minimum}, got {value!r}")


def _fraction(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(flag, f"expected a fraction in (0, 1), got {value!r}")


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
        raise ConfigError("model", f"unknown model {config.model.name!r}; expected one of {', '.join(model_names)}")
    if data.data_dir and not os.path.isdir(data.data_dir):
        raise ConfigError("data_dir", f"{data.data_dir!r} is not a readable folder of MNIST-format IDX files")
    if data.data_dir and not os.access(data.data_dir, os.R_OK | os.X_OK):
        raise ConfigError("data_dir", f"{data.data_dir!r} is not readable")
    _integer("validation_examples", data.validation_examples, 0)
    _integer("synthetic_train_examples", data.synthetic_train_examples, 1)
    _integer("synthetic_test_examples", data.synthetic_test_examples, 1)

    if training.optimizer not in OPTIMIZERS:
        raise ConfigError("optimizer", f"unknown optimizer {training.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if not training.learning_rate > 0:
        raise ConfigError("learning_rate", f"expected a number > 0, got {training.learning_rate!r}")
    if not 0 <= training.momentum < 1:
        raise ConfigError("momentum", f"expected a number in [0, 1), got {training.momentum!r}")
    if training.weight_decay < 0:
        raise ConfigError("weight_decay", f"expected a number >= 0, got {training.weight_decay!r}")
    _integer("batch_size", training.batch_size, 1)
    _integer("iterations", training.iterations, 1)
    _integer("eval_every", training.eval_every, 1)
    _integer("steps_per_execution", training.steps_per_execution, 0)
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
    if pruning.rewind_step >= training.iterations:
        raise ConfigError("rewind_step", f"must be below --iterations={training.iterations}; got {pruning.rewind_step}")
    steps = training.resolved_steps_per_execution(pruning.rewind_step)
    for flag, value in (("eval_every", training.eval_every), ("iterations", training.iterations), ("rewind_step", pruning.rewind_step)):
        if value % steps:
            raise ConfigError(flag, f"must be a multiple of --steps_per_execution={steps}; got {value}")

    for level in config.reinit_levels:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= pruning.levels:
            raise ConfigError("reinit_levels", f"expected levels in 0..{pruning.levels} (--levels), got {level!r}")
    _integer("seed", config.seed, 0)
    if not config.output_dir:
        raise ConfigError("output_dir", "expected a folder path, got an empty string")
    if os.path.exists(config.output_dir) and not os.path.isdir(config.output_dir):
        raise ConfigError("output_dir", f"{config.output_dir!r} exists and is not a folder")
