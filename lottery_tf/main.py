"""Command line: python -m lottery_tf.main --flagfile=flags/<experiment>.flags

Flags stop here: they become a frozen ExperimentConfig, which is validated
(one-line error naming the flag, exit status 2, before any data is loaded or
any file written) and handed to lottery_tf.experiment.run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

# TensorFlow's C++ start-up lines (CUDA probing on a machine without a GPU,
# oneDNN notices) are not the user's concern; TF_CPP_MIN_LOG_LEVEL=0 shows them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

USAGE = """lottery_tf: find and study lottery tickets (iterative magnitude pruning with rewinding).

Usage:
  python -m lottery_tf.main --flagfile=flags/<experiment>.flags [--flag=value ...]

Flagfiles hold one --flag=value per line; the repository's flags/ folder has
the papers' recipes (lenet300_fashion_mnist, cifar10_conv2/4/6,
cifar10_resnet20_rewind, cifar10_vgg16_rewind, imagenet_resnet50_rewind) and
quickstart / smoke runs. Flags given after --flagfile override it.
--dry_run validates the settings and prints them with the run folder.

Flags (--helpfull lists absl's own flags too):
"""

from absl import app, flags  # noqa: E402

from lottery_tf import config as config_lib  # noqa: E402
from lottery_tf import run_dir  # noqa: E402
from lottery_tf.atomic import CorruptFileError  # noqa: E402
from lottery_tf.data import DATASETS, DataUnavailableError, train_examples  # noqa: E402
from lottery_tf.data.registry import check_sizes  # noqa: E402
from lottery_tf.models import MODELS  # noqa: E402  (no TensorFlow until a model is built)

FLAGS = flags.FLAGS

# Data
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset: mnist, fashion_mnist, cifar10, imagenet2012 or synthetic.")
flags.DEFINE_string("data_dir", "", "Folder of MNIST-format IDX files (.gz or not). Empty: use TFDS, then known local folders.")
flags.DEFINE_string("tfds_data_dir", "", "TFDS data folder. Empty: TFDS's default (~/tensorflow_datasets).")
flags.DEFINE_bool("tfds_download", True, "Try a TFDS download (only if the network answers within seconds) when no local copy exists.")
flags.DEFINE_string("tfds_manual_dir", "", "imagenet2012: folder with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (TFDS prepares them once into --tfds_data_dir).")
flags.DEFINE_integer("image_size", 224, "imagenet2012: side of the square training and evaluation crops.")
flags.DEFINE_integer("validation_examples", 5000, "Training examples held out for validation (early stopping).")
flags.DEFINE_integer("synthetic_train_examples", 2048, "Training examples of the synthetic dataset.")
flags.DEFINE_integer("synthetic_test_examples", 512, "Test examples of the synthetic dataset.")
flags.DEFINE_list("synthetic_shape", ["28", "28", "1"], "Image shape of the synthetic dataset, e.g. 32,32,3.")
flags.DEFINE_integer("synthetic_classes", 10, "Classes of the synthetic dataset.")
# Model
flags.DEFINE_string("model", "lenet_300_100", "Model name from the registry.")
flags.DEFINE_string("initializer", "glorot_normal", "Keras initializer of the prunable weights.")
# Training
flags.DEFINE_string("optimizer", "adam", "Optimizer: adam, adamw or sgd.")
flags.DEFINE_float("learning_rate", 1.2e-3, "Learning rate.")
flags.DEFINE_float("momentum", 0.0, "SGD momentum.")
flags.DEFINE_bool("nesterov", False, "SGD: Nesterov momentum.")
flags.DEFINE_float("weight_decay", 0.0, "Weight decay coefficient (see --weight_decay_mode).")
flags.DEFINE_string("weight_decay_mode", "decoupled", "decoupled (Keras: w -= lr * wd * w) or l2 (wd * w added to the gradient, as PyTorch's SGD/Adam weight_decay and the papers).")
flags.DEFINE_string("lr_schedule", "constant", "Learning-rate schedule: constant, step (x lr_gamma at each milestone) or cosine (to 0).")
flags.DEFINE_list("lr_milestones", [], "step schedule: lengths at which the rate is multiplied by --lr_gamma, e.g. 80ep,120ep.")
flags.DEFINE_float("lr_gamma", 0.1, "step schedule: factor at each milestone.")
flags.DEFINE_string("warmup", "0", "Linear learning-rate warmup length (steps, or e.g. 5ep).")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the cross-entropy loss, in [0, 1).")
flags.DEFINE_string("mixed_precision", "", "Empty, mixed_float16 or mixed_bfloat16 (masks and weights stay float32).")
flags.DEFINE_integer("batch_size", 60, "Global batch size (split across replicas).")
flags.DEFINE_string("iterations", "50000", "Training length per level: steps (50000 or 50000it) or epochs (160ep). Rewound levels train iterations - rewind_step.")
flags.DEFINE_string("eval_every", "100", "Evaluate validation and test sets every this many steps (or e.g. 1ep).")
flags.DEFINE_integer("steps_per_execution", 0, "Steps per compiled call. 0: the largest that divides eval_every, iterations and rewind_step.")
flags.DEFINE_bool("jit_compile", True, "Compile training and evaluation with XLA.")
# Pruning
flags.DEFINE_string("pruning_method", "layerwise", "layerwise (each layer prunes its fraction) or global (one pool by raw magnitude).")
flags.DEFINE_float("pruning_fraction", 0.2, "Fraction of the remaining weights pruned per level, in (0, 1).")
flags.DEFINE_float("output_pruning_fraction", 0.1, "Fraction for the output layer, in (0, 1); 0 = same rule as other layers.")
flags.DEFINE_list("layer_pruning_fractions", [], "Per-weight overrides, e.g. fc1/kernel=0.2,fc2/kernel=0.2.")
flags.DEFINE_list("exclude_layers", [], "Layers never pruned (by layer name).")
flags.DEFINE_integer("levels", 12, "Pruning levels: levels 0 (dense) to --levels are trained.")
flags.DEFINE_string("rewind_step", "0", "Step the survivors are rewound to (0 = reset to initialization), or e.g. 5ep.")
flags.DEFINE_string(
    "rewind_optimizer", "fresh",
    "How the optimizer is rewound with the weights: fresh (a new optimizer state with its own step counter at 0, "
    "the learning-rate schedule offset to the rewind step, as open_lth), reset (the same state with its step "
    "counter at the rewind step) or restore (the optimizer state saved at the rewind step).")
flags.DEFINE_integer("seed", 0, "Base seed; each replicate derives its own seed for initialization and data order.")
# Branches (controls) at chosen levels of the main line
flags.DEFINE_list("branch", [], "Branches to run: reinit, random_prune, rewind, lr_rewind (its own lineage), lr_rewind_oneshot, retrain; "
                  "the analyses instability (linear mode connectivity), stability (distances); the baselines pai_magnitude, "
                  "pai_random, pai_snip, pai_grasp, pai_synflow (pruning at initialization), gmp (gradual magnitude pruning) "
                  "(comma-separated).")
flags.DEFINE_string("branch_levels", "", "Levels to run the branches at, e.g. 0-3,7,11 (must be within 0..--levels).")
flags.DEFINE_string("random_prune_scope", "layerwise", "random_prune: keep each layer's density (layerwise) or only the overall density (global).")
flags.DEFINE_string("branch_rewind_step", "-1", "rewind: the step k to rewind to (0 = reset to init; steps or e.g. 2ep); lr_rewind: -1 = the main line's --rewind_step.")
flags.DEFINE_string("branch_optimizer", "", "retrain: optimizer (empty = the main line's).")
flags.DEFINE_float("branch_learning_rate", 0.0, "retrain: learning rate (0 = the main line's).")
flags.DEFINE_string("branch_iterations", "0", "retrain: training length, steps or epochs (0 = the main line's).")
flags.DEFINE_integer("branch_batch_size", 0, "retrain: batch size (0 = the main line's).")
flags.DEFINE_list("analysis_rewind_steps", [], "instability, stability: the steps k the analysed networks start from, "
                  "steps or epochs, e.g. 0,25,100,500,2000 (empty = --rewind_step).")
flags.DEFINE_integer("interpolation_points", 30, "instability: points on the linear path between two copies (>= 2, both ends).")
flags.DEFINE_integer("instability_pairs", 2, "instability: pairs of copies per network and step k (>= 1).")
flags.DEFINE_list("analysis_controls", ["random_prune"], "instability, stability: controls beside the ticket at levels >= 1: "
                  "random_prune, reinit (instability only); empty = none.")
flags.DEFINE_string("batchnorm_statistics", "reestimate", "instability: reestimate BatchNorm statistics at every point of a path "
                    "from --batchnorm_batches training batches, or interpolate them like the weights.")
flags.DEFINE_integer("batchnorm_batches", 20, "instability: training batches used to re-estimate BatchNorm statistics.")
flags.DEFINE_string("pai_scope", "global", "pai_*: prune with one global threshold over every prunable weight "
                    "(the output layer included, as Frankle et al. 2021) or layerwise.")
flags.DEFINE_list("pai_ablations", [], "pai_*: also run these ablations, each in its own folder: shuffle (each layer's "
                  "mask shuffled), reinit (fresh initialization after pruning), invert (prune the highest scores).")
flags.DEFINE_integer("scoring_examples_per_class", 10, "pai_snip, pai_grasp: class-balanced scoring examples per class.")
flags.DEFINE_integer("synflow_rounds", 100, "pai_synflow: pruning rounds (exponential schedule).")
flags.DEFINE_string("gmp_begin_step", "-1", "gmp: first (1-based) pruning step, steps or epochs (-1 = 10% of --iterations).")
flags.DEFINE_string("gmp_end_step", "-1", "gmp: last pruning step, steps or epochs (-1 = 50% of --iterations).")
flags.DEFINE_string("gmp_frequency", "-1", "gmp: prune every this many steps (-1 = --eval_every).")
flags.DEFINE_string("gmp_schedule", "lottery_tf", "gmp: sparsity values from lottery_tf's polynomial schedule or "
                    "TFMOT's own PolynomialDecay (tfmot; needs pip install 'lottery_tf[tfmot]').")
flags.DEFINE_list("sweep_rewind_steps", [], "Runs the whole experiment once per rewind step k (steps or epochs, e.g. "
                  "0,100,500,2000), each in its own run folder, one after another; replaces --rewind_step.")
flags.DEFINE_integer("analysis_train_examples", 10000, "instability: size of the fixed training subset the path's train error uses.")
# Run
flags.DEFINE_string("output_dir", "runs", "Root folder; the run goes to <output_dir>/lottery_<hash of non-default settings>/.")
flags.DEFINE_integer("replicates", 1, "Number of replicates (independent seeds) to run: 0..N-1.")
flags.DEFINE_integer("replicate", -1, "Run only this replicate index (>= 0), e.g. one per machine.")
flags.DEFINE_string("checkpoint_every", "5000", "Checkpoint every this many steps (or e.g. 1ep) within a level (0 = only between levels).")
flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism so a resumed run matches an uninterrupted one bit for bit.")
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard event files under <run>/replicate_<r>/tensorboard.")
flags.DEFINE_string(
    "strategy", "default",
    "tf.distribute strategy: default, one_device, mirrored (all local GPUs, or --cpu_devices logical CPUs), "
    "multi_worker_mirrored (cluster from TF_CONFIG; every worker runs the same command) or tpu (see --tpu).")
flags.DEFINE_string("tpu", "", "With --strategy=tpu: the TPU's name, grpc://host:port address, or 'local' on a TPU VM.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices (for mirrored runs without GPUs).")
flags.DEFINE_bool("wait_for_lock", False, "If another process is training the same levels, wait for it instead of exiting.")
flags.DEFINE_bool("dry_run", False, "Validate the settings, print them resolved (lengths in steps) and the run folder, and exit.")


def _levels(flag: str, text: str) -> tuple:
    try:
        return config_lib.parse_levels(text)
    except ValueError as error:
        raise config_lib.ConfigError(flag, f"expected levels like 0-3,7,11, got {text!r} ({error})") from None


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


def _length(flag: str, text: str, steps_per_epoch: int) -> int:
    """``"500"``/``"500it"`` -> 500 steps; ``"2ep"`` -> 2 epochs of steps."""
    value = str(text).strip()
    try:
        if value.endswith("ep"):
            return int(round(float(value[:-2]) * steps_per_epoch))  # inf/nan raise Overflow/ValueError
        return int(value[:-2] if value.endswith("it") else value)
    except (ValueError, OverflowError):
        raise config_lib.ConfigError(flag, f"expected a length in steps (500 or 500it) or epochs (2ep), got {text!r}") from None


def _optional_length(flag: str, steps_per_epoch: int) -> int:
    """A length flag whose -1 means "the default"."""
    text = str(getattr(FLAGS, flag)).strip()
    return -1 if text == "-1" else _length(flag, text, steps_per_epoch)


def _shape(values) -> tuple:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise config_lib.ConfigError("synthetic_shape", f"expected integers like 32,32,3, got {','.join(values)!r}") from None


def config_from_flags() -> config_lib.ExperimentConfig:
    """Builds the frozen config from parsed flags (no validation)."""
    data = config_lib.DataConfig(
        name=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        tfds_data_dir=FLAGS.tfds_data_dir,
        tfds_download=FLAGS.tfds_download,
        validation_examples=FLAGS.validation_examples,
        tfds_manual_dir=FLAGS.tfds_manual_dir,
        image_size=FLAGS.image_size,
        synthetic_train_examples=FLAGS.synthetic_train_examples,
        synthetic_test_examples=FLAGS.synthetic_test_examples,
        synthetic_shape=_shape(FLAGS.synthetic_shape),
        synthetic_classes=FLAGS.synthetic_classes,
    )
    epoch = 0
    if data.name in DATASETS and FLAGS.batch_size > 0:
        epoch = max(1, train_examples(data) // FLAGS.batch_size)

    def length(flag):
        return _length(flag, getattr(FLAGS, flag), epoch)

    return config_lib.ExperimentConfig(
        data=data,
        model=config_lib.ModelConfig(name=FLAGS.model, initializer=FLAGS.initializer),
        training=config_lib.TrainingConfig(
            optimizer=FLAGS.optimizer,
            learning_rate=FLAGS.learning_rate,
            momentum=FLAGS.momentum,
            weight_decay=FLAGS.weight_decay,
            weight_decay_mode=FLAGS.weight_decay_mode,
            batch_size=FLAGS.batch_size,
            iterations=length("iterations"),
            eval_every=length("eval_every"),
            steps_per_execution=FLAGS.steps_per_execution,
            jit_compile=FLAGS.jit_compile,
            nesterov=FLAGS.nesterov,
            lr_schedule=FLAGS.lr_schedule,
            lr_milestones=tuple(_length("lr_milestones", m, epoch) for m in FLAGS.lr_milestones),
            lr_gamma=FLAGS.lr_gamma,
            warmup_iterations=length("warmup"),
            label_smoothing=FLAGS.label_smoothing,
            mixed_precision=FLAGS.mixed_precision,
        ),
        pruning=config_lib.PruningConfig(
            method=FLAGS.pruning_method,
            fraction=FLAGS.pruning_fraction,
            output_fraction=FLAGS.output_pruning_fraction,
            layer_fractions=_layer_fractions(FLAGS.layer_pruning_fractions),
            exclude_layers=tuple(FLAGS.exclude_layers),
            levels=FLAGS.levels,
            rewind_step=length("rewind_step"),
            rewind_optimizer=FLAGS.rewind_optimizer,
        ),
        seed=FLAGS.seed,
        branches=config_lib.BranchConfig(
            names=tuple(FLAGS.branch),
            levels=_levels("branch_levels", FLAGS.branch_levels),
            random_prune_scope=FLAGS.random_prune_scope,
            rewind_step=length("branch_rewind_step"),
            optimizer=FLAGS.branch_optimizer,
            learning_rate=FLAGS.branch_learning_rate,
            iterations=length("branch_iterations"),
            batch_size=FLAGS.branch_batch_size,
            analysis_rewind_steps=tuple(_length("analysis_rewind_steps", k, epoch) for k in FLAGS.analysis_rewind_steps),
            interpolation_points=FLAGS.interpolation_points,
            instability_pairs=FLAGS.instability_pairs,
            analysis_controls=tuple(FLAGS.analysis_controls),
            batchnorm_statistics=FLAGS.batchnorm_statistics,
            batchnorm_batches=FLAGS.batchnorm_batches,
            analysis_train_examples=FLAGS.analysis_train_examples,
            pai_scope=FLAGS.pai_scope,
            pai_ablations=tuple(FLAGS.pai_ablations),
            scoring_examples_per_class=FLAGS.scoring_examples_per_class,
            synflow_rounds=FLAGS.synflow_rounds,
            gmp_begin_step=_optional_length("gmp_begin_step", epoch),
            gmp_end_step=_optional_length("gmp_end_step", epoch),
            gmp_frequency=_optional_length("gmp_frequency", epoch),
            gmp_schedule=FLAGS.gmp_schedule,
        ),
        run=config_lib.RunConfig(
            output_dir=FLAGS.output_dir,
            replicates=FLAGS.replicates,
            replicate=FLAGS.replicate,
            checkpoint_every=length("checkpoint_every"),
            deterministic=FLAGS.deterministic,
            tensorboard=FLAGS.tensorboard,
            strategy=FLAGS.strategy,
            tpu=FLAGS.tpu,
            cpu_devices=FLAGS.cpu_devices,
            wait_for_lock=FLAGS.wait_for_lock,
        ),
    )


def _sweep(config) -> list:
    """One config per ``--sweep_rewind_steps`` value (the config itself without a sweep)."""
    if not FLAGS.sweep_rewind_steps:
        return [config]
    epoch = max(1, train_examples(config.data) // config.training.batch_size) if config.training.batch_size > 0 else 0
    steps = []
    for text in FLAGS.sweep_rewind_steps:
        step = _length("sweep_rewind_steps", text, epoch)
        if not 0 <= step < config.training.iterations:
            raise config_lib.ConfigError("sweep_rewind_steps", f"expected steps in [0, --iterations={config.training.iterations}), got {text!r}")
        if step not in steps:
            steps.append(step)
    return [dataclasses.replace(config, pruning=dataclasses.replace(config.pruning, rewind_step=k)) for k in steps]


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; all settings are --flags")
    try:
        configs = _sweep(config_from_flags())
        # Every check that needs no TensorFlow runs before it is imported.
        for config in configs:
            config_lib.validate(config, DATASETS.names(), MODELS)
        check_sizes(config.data, config.training.batch_size)
        _check_initializer(config.model.initializer)
        if FLAGS.dry_run:
            for config in configs:
                print(config.to_json(), end="")
                print(f"run folder: {run_dir.experiment_dir(config)}")
            return
        _quiet_python_logging()
        from lottery_tf import experiment
        from lottery_tf.distribute import describe_devices

        started = time.time()
        for number, config in enumerate(configs):
            print(f"lottery_tf: {experiment.describe(config)} -> {run_dir.experiment_dir(config)}", flush=True)
            if number == 0:
                print(f"device: {describe_devices()}", flush=True)
            experiment.run(config)
        if len(configs) > 1:
            print(f"sweep over rewind steps {', '.join(str(c.pruning.rewind_step) for c in configs)}: "
                  f"{', '.join(run_dir.experiment_dir(c) for c in configs)}", flush=True)
        print(f"total wall time: {_duration(time.time() - started)}", flush=True)
    except config_lib.ConfigError as error:
        _fail(str(error))
    except config_lib.StrategyError as error:
        _fail(str(error))
    except DataUnavailableError as error:
        _fail(f"--dataset={config.data.name}: {error}")
    except (FileNotFoundError, CorruptFileError) as error:
        _fail(str(error))
    except OSError as error:  # disk full, permissions: earlier files are intact
        _fail(f"cannot write {error.filename or 'a run file'}: {error.strerror or error}")
    except ValueError as error:  # the library's checks on what the user asked for
        _fail(str(error))
    except Exception as error:  # the library's one-line errors (divergence, locks), by type name
        if type(error).__name__ in ("DivergedError", "LockedError", "ReportError"):
            _fail(str(error))
        # Anything else is our bug, not the user's mistake: the traceback, and a line saying so.
        import traceback

        traceback.print_exc()
        _fail(f"{type(error).__name__}: {error}. This is a bug in lottery_tf, not in your settings; please "
              "report it with the command line and the traceback above")


def _check_initializer(name: str) -> None:
    from lottery_tf.keras_compat import keras

    try:
        keras.initializers.get(name)
    except (ValueError, TypeError):
        raise config_lib.ConfigError(
            "initializer", f"unknown Keras initializer {name!r}; expected a name such as glorot_normal, "
            "glorot_uniform, he_normal, he_uniform, lecun_normal") from None


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _quiet_python_logging() -> None:
    """TensorFlow's and TFDS's Python warnings (e.g. about TFDS folders that do not exist) are not the user's concern."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("tensorflow", "absl", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _parse_flags(argv):
    """absl's parser, with its errors as one line and exit status 2; ``--help`` exits 0."""
    if any(arg in ("--help", "-h", "-help", "--helpshort") for arg in argv[1:]):
        print(USAGE + FLAGS.module_help(sys.modules[__name__]))
        sys.exit(0)
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
