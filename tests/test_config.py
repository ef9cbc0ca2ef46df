"""Config validation (flag names in errors), JSON round trip, run-folder identity."""

import dataclasses
import json

import pytest

from lottery_tf import run_dir
from lottery_tf.config import ConfigError, ExperimentConfig, PruningConfig, TrainingConfig, validate


def _with(**changes):
    config = ExperimentConfig()
    for section in ("training", "pruning", "data"):
        fields = {f.name for f in dataclasses.fields(getattr(config, section))}
        mine = {k: v for k, v in changes.items() if k in fields}
        if mine:
            config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **mine)})
    return config


def test_defaults_are_the_lenet_recipe_and_valid():
    config = ExperimentConfig()
    validate(config)
    assert (config.training.optimizer, config.training.learning_rate, config.training.batch_size) == ("adam", 1.2e-3, 60)
    assert (config.training.iterations, config.training.eval_every) == (50000, 100)
    assert (config.pruning.fraction, config.pruning.output_fraction, config.pruning.method) == (0.2, 0.1, "layerwise")
    assert config.data.validation_examples == 5000 and config.model.initializer == "glorot_normal"


def test_steps_per_execution_resolves_to_common_divisor():
    assert TrainingConfig(iterations=50000, eval_every=100).resolved_steps_per_execution(0) == 100
    assert TrainingConfig(iterations=50000, eval_every=100).resolved_steps_per_execution(250) == 50
    assert TrainingConfig(steps_per_execution=7).resolved_steps_per_execution(0) == 7


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"eval_every": 300}, "eval_every"),  # does not divide 50000
        ({"steps_per_execution": 30}, "eval_every"),
        ({"optimizer": "lamb"}, "optimizer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"batch_size": 0}, "batch_size"),
        ({"method": "random"}, "pruning_method"),
        ({"layer_fractions": (("fc1/kernel", 2.0),)}, "layer_pruning_fractions"),
        ({"validation_examples": -1}, "validation_examples"),
    ],
)
def test_errors_name_the_flag(changes, flag):
    with pytest.raises(ConfigError) as info:
        validate(_with(**changes))
    assert info.value.flag == flag
    assert str(info.value).startswith(f"--{flag}: ") and "\n" not in str(info.value)


def test_json_round_trip():
    config = _with(layer_fractions=(("fc1/kernel", 0.3),), exclude_layers=("output",))
    config = dataclasses.replace(config, reinit_levels=(1, 2))
    again = ExperimentConfig.from_dict(json.loads(config.to_json()))
    assert again == config


def test_run_folder_identity_ignores_output_dir_only(tmp_path):
    first = dataclasses.replace(ExperimentConfig(), output_dir=str(tmp_path / "a"))
    run_dir.prepare(first)
    (tmp_path / "a").rename(tmp_path / "b")
    moved = dataclasses.replace(first, output_dir=str(tmp_path / "b"))
    run_dir.prepare(moved)  # same experiment, moved folder: accepted
    other = dataclasses.replace(moved, seed=1)
    with pytest.raises(ConfigError, match=r"differs in seed"):
        run_dir.prepare(other)


def test_non_run_folder_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no lottery_tf run"):
        run_dir.prepare(dataclasses.replace(ExperimentConfig(), output_dir=str(tmp_path)))
    assert (tmp_path / "notes.txt").read_text() == "mine"
