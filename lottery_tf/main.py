"""Command line: ``python -m lottery_tf.main --flagfile=flags/<experiment>.flags``.

Flags stop here: they become a frozen :class:`ExperimentConfig`, which is
validated (one-line error naming the flag, exit status 2, before any data is
loaded or any file written) and handed to :func:`lottery_tf.experiment.run`.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from lottery_tf import config as config_lib  # noqa: E402
from lottery_tf import run_dir  # noqa: E402
from lottery_tf.data import DATASETS, DataUnavailableError  # noqa: E402  (no TensorFlow)
from lottery_tf.models import MODELS  # noqa: E402  (no TensorFlow until a model is built)

FLAGS = flags.FLAGS

# Data
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset: mnist, fashion_mnist or synthetic.")
flags.DEFINE_string("data_dir", "", "Folder of MNIST-format IDX files (.gz or not). Empty: use TFDS, then known local folders.")
flags.DEFINE_string("tfds_data_dir", "", "TFDS data folder. Empty: TFDS's default (~/tensorflow_datasets).")
flags.DEFINE_bool("tfds_download", True, "Try a TFDS download (only if the network answers within seconds) when no local copy exists.")
flags.DEFINE_integer("validation_examples", 5000, "Training examples held out for validation (early stopping).")
flags.DEFINE_integer("synthetic_train_examples", 2048, "Training examples of the synthetic dataset.")
flags.DEFINE_integer("synthetic_test_examples", 512, "Test examples of the synthetic dataset.")
# Model
flags.DEFINE_string("model", "lenet_300_100", "Model name from the registry.")
flags.DEFINE_string("initializer", "glorot_normal", "Keras initializer of the prunable weights.")
# Training
flags.DEFINE_string("optimizer", "adam", "Optimizer: adam, adamw or sgd.")
flags.DEFINE_float("learning_rate", 1.2e-3, "Learning rate.")
flags.DEFINE_float("momentum", 0.0, "SGD momentum.")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (Keras optimizers' weight_decay).")
flags.DEFINE_integer("batch_size", 60, "Batch size.")
flags.DEFINE_integer("iterations", 50000, "Training steps per level (from step 0; rewound levels train iterations - rewind_step).")
flags.DEFINE_integer("eval_every", 100, "Evaluate validation and test sets every this many steps.")
flags.DEFINE_integer("steps_per_execution", 0, "Steps per compiled call. 0: the largest that divides eval_every, iterations and rewind_step.")
flags.DEFINE_bool("jit_compile", True, "Compile training and evaluation with XLA.")
# Pruning
flags.DEFINE_string("pruning_method", "layerwise", "layerwise (each layer prunes its fraction) or global (one pool by raw magnitude).")
flags.DEFINE_float("pruning_fraction", 0.2, "Fraction of the remaining weights pruned per level, in (0, 1).")
flags.DEFINE_float("output_pruning_fraction", 0.1, "Fraction for the output layer, in (0, 1); 0 = same rule as other layers.")
flags.DEFINE_list("layer_pruning_fractions", [], "Per-weight overrides, e.g. fc1/kernel=0.2,fc2/kernel=0.2.")
flags.DEFINE_list("exclude_layers", [], "Layers never pruned (by layer name).")
flags.DEFINE_integer("levels", 12, "Pruning levels: levels 0 (dense) to --levels are trained.")
flags.DEFINE_integer("rewind_step", 0, "Step the survivors are rewound to (0 = reset to initialization).")
# Controls and run
flags.DEFINE_list("reinit_levels", [], "Levels that also get a random-reinitialization control (same mask, fresh init).")
flags.DEFINE_integer("seed", 0, "Seed for initialization and data order.")
flags.DEFINE_string("output_dir", "runs/lottery", "Run folder. Re-running continues an unfinished run with the same settings.")
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard event files under <output_dir>/tensorboard.")


def _integer_list(flag: str, values) -> tuple:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise config_lib.ConfigError(flag, f"expected comma-separated integers, got {','.join(values)!r}") from None


def _layer_fractions(values) -> tuple:
    out = []
    for item in values:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out.append((name.strip(), float(value)))
        except ValueError:
            raise config_lib.ConfigError("layer_pruning_fractions", f"expected NAME=FRACTION items, got {item!r}") from None
    return tuple(out)


def config_from_flags() -> config_lib.ExperimentConfig:
    """Builds the frozen config from parsed flags (no validation)."""
    return config_lib.ExperimentConfig(
        data=config_lib.DataConfig(
            name=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            tfds_data_dir=FLAGS.tfds_data_dir,
            tfds_download=FLAGS.tfds_download,
            validation_examples=FLAGS.validation_examples,
            synthetic_train_examples=FLAGS.synthetic_train_examples,
            synthetic_test_examples=FLAGS.synthetic_test_examples,
        ),
        model=config_lib.ModelConfig(name=FLAGS.model, initializer=FLAGS.initializer),
        training=config_lib.TrainingConfig(
            optimizer=FLAGS.optimizer,
            learning_rate=FLAGS.learning_rate,
            momentum=FLAGS.momentum,
            weight_decay=FLAGS.weight_decay,
            batch_size=FLAGS.batch_size,
            iterations=FLAGS.iterations,
            eval_every=FLAGS.eval_every,
            steps_per_execution=FLAGS.steps_per_execution,
            jit_compile=FLAGS.jit_compile,
        ),
        pruning=config_lib.PruningConfig(
            method=FLAGS.pruning_method,
            fraction=FLAGS.pruning_fraction,
            output_fraction=FLAGS.output_pruning_fraction,
            layer_fractions=_layer_fractions(FLAGS.layer_pruning_fractions),
            exclude_layers=tuple(FLAGS.exclude_layers),
            levels=FLAGS.levels,
            rewind_step=FLAGS.rewind_step,
        ),
        reinit_levels=_integer_list("reinit_levels", FLAGS.reinit_levels),
        seed=FLAGS.seed,
        output_dir=FLAGS.output_dir,
        tensorboard=FLAGS.tensorboard,
    )


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; all settings are --flags")
    try:
        config = config_from_flags()
        # Every check that needs no TensorFlow runs before it is imported.
        config_lib.validate(config, DATASETS.names(), MODELS.names())
        run_dir.prepare(config)
        from lottery_tf import experiment

        print(f"lottery_tf: {experiment.describe(config)} -> {config.output_dir}", flush=True)
        experiment.run(config)
    except config_lib.ConfigError as error:
        _fail(str(error))
    except DataUnavailableError as error:
        _fail(f"--dataset={config.data.name}: {error}")


def _parse_flags(argv):
    """absl's parser, with its errors as one line and exit status 2."""
    for arg in argv[1:]:
        if arg.startswith("--flagfile="):
            path = arg.split("=", 1)[1]
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                _fail(f"--flagfile: {path!r} does not exist or is not readable")
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _fail(str(error).splitlines()[0])


def run(argv=None) -> None:
    """Entry point of ``python -m lottery_tf.main``."""
    app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
