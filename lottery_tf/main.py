"""Command line: python -m lottery_tf.main --flagfile=flags/<experiment>.flags

Flags stop here: they become a frozen ExperimentConfig, which is validated
(one-line error naming the flag, exit status 2, before any data is loaded or
any file written) and handed to lottery_tf.engine.experiment.run.
"""

from __future__ import annotations

import dataclasses
import os
import re
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
--dry_run validates the settings, the model (built for the dataset's images)
and an existing run folder, loads no data, and prints the settings with the
run folder and the study's size.
"""

from absl import app, flags  # noqa: E402

from lottery_tf.engine import config as config_lib  # noqa: E402
from lottery_tf.engine import errors, run_dir, study  # noqa: E402
from lottery_tf.engine.data import DATASETS, train_examples  # noqa: E402
from lottery_tf.engine.data.registry import check_sizes  # noqa: E402
from lottery_tf.engine.models import MODELS  # noqa: E402  (no TensorFlow until a model is built)
from lottery_tf.engine.models.checks import check_initializer  # noqa: E402

FLAGS = flags.FLAGS
_PATH_FLAGS = ("output_dir", "data_dir", "tfds_data_dir", "tfds_manual_dir")  # "~" expanded, as a shell would


def _define(setting: config_lib.Setting) -> None:
    """One absl flag per declared setting (lottery_tf.engine.config.SETTINGS): its name, default and help."""
    default, kind = setting.default(), setting.kind
    if kind == "int":
        flags.DEFINE_integer(setting.flag, default, setting.help)
    elif kind == "float":
        flags.DEFINE_float(setting.flag, default, setting.help)
    elif kind == "bool":
        flags.DEFINE_bool(setting.flag, default, setting.help)
    elif kind in ("str", "length"):
        flags.DEFINE_string(setting.flag, str(default), setting.help)
    elif kind == "levels":
        flags.DEFINE_string(setting.flag, ",".join(map(str, default)), setting.help)
    elif kind == "fractions":
        flags.DEFINE_list(setting.flag, [f"{n}={v}" for n, v in default], setting.help)
    elif kind in ("block", "n_m"):
        flags.DEFINE_string(setting.flag, "", setting.help)
    else:  # lengths, names, shape
        flags.DEFINE_list(setting.flag, [str(v) for v in default], setting.help)


for _setting in config_lib.SETTINGS:
    _define(_setting)
flags.DEFINE_list(
    "sweep_rewind_steps",
    [],
    "Runs the whole experiment once per rewind step k (steps or epochs, e.g. "
    "0,100,500,2000), each in its own run folder, one after another; replaces --rewind_step.",
)
flags.DEFINE_bool(
    "dry_run",
    False,
    "Validate the settings, the model (built for the dataset's image shape) and an existing run folder (the "
    "data is checked when a run starts), print the settings resolved (lengths in steps), the run folder and "
    "the study's size, and exit.",
)
flags.DEFINE_bool(
    "rerecord_data",
    False,
    "Record the data found now as the run's data (data.json), for a run whose "
    "data.json was lost or damaged after levels were done; only if you know it is the data the run was trained "
    "on. Refused for a new run folder and for one whose data.json is intact (nothing would read it).",
)


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
            raise config_lib.ConfigError(
                "layer_pruning_fractions", f"expected NAME=FRACTION items, got {item!r}"
            ) from None
    return tuple(out)


def _length(flag: str, text: str, steps_per_epoch: int) -> int:
    """``"500"``/``"500it"`` -> 500 steps; ``"2ep"`` -> 2 epochs of steps."""
    value = str(text).strip()
    try:
        if value.endswith("ep"):
            return int(round(float(value[:-2]) * steps_per_epoch))  # inf/nan raise Overflow/ValueError
        return int(value[:-2] if value.endswith("it") else value)
    except (ValueError, OverflowError):
        raise config_lib.ConfigError(
            flag, f"expected a length in steps (500 or 500it) or epochs (2ep), got {text!r}"
        ) from None


def _shape(flag: str, values) -> tuple:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise config_lib.ConfigError(flag, f"expected integers like 32,32,3, got {','.join(values)!r}") from None


def _pair(flag: str, text: str, separator: str) -> tuple:
    """``"1x4"`` -> (1, 4); ``"2:4"`` -> (2, 4); empty -> ()."""
    text = str(text).strip().lower()
    if not text:
        return ()
    parts = text.split(separator)
    example = "1x4 (rows x columns)" if separator == "x" else "2:4 (N of every M)"
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise config_lib.ConfigError(flag, f"expected two integers like {example}, got {text!r}") from None


def _value(setting: config_lib.Setting, epoch: int):
    """A setting's value from its flag (lengths in steps)."""
    raw, flag, kind = getattr(FLAGS, setting.flag), setting.flag, setting.kind
    if kind == "length":
        return -1 if str(raw).strip() == "-1" and setting.default_means == -1 else _length(flag, raw, epoch)
    if kind == "lengths":
        return tuple(_length(flag, item, epoch) for item in raw)
    if kind == "levels":
        return _levels(flag, raw)
    if kind == "fractions":
        return _layer_fractions(raw)
    if kind == "shape":
        return _shape(flag, raw)
    if kind in ("block", "n_m"):
        return _pair(flag, raw, "x" if kind == "block" else ":")
    if kind == "names":
        return tuple(item.strip() for item in raw)
    if kind == "str" and flag in _PATH_FLAGS and raw:
        return os.path.expanduser(raw)  # "~nosuchuser/x" stays as it is: the settings' check refuses it
    return raw


def config_from_flags() -> config_lib.ExperimentConfig:
    """Builds the frozen config from parsed flags (no validation): one value per declared setting."""
    sections = {f.name: {} for f in dataclasses.fields(config_lib.ExperimentConfig)}
    data_settings = [s for s in config_lib.SETTINGS if s.field.startswith("data.")]
    for setting in data_settings:
        sections["data"][setting.field.split(".", 1)[1]] = _value(setting, 0)
    data = config_lib.DataConfig(**sections["data"])
    epoch = 0
    if data.name in DATASETS and FLAGS.batch_size > 0:
        epoch = max(1, train_examples(data) // FLAGS.batch_size)
    top = {}
    for setting in config_lib.SETTINGS:
        if setting in data_settings:
            continue
        section, _, name = setting.field.partition(".")
        if name:
            sections[section][name] = _value(setting, epoch)
        else:
            top[section] = _value(setting, epoch)
    built = {name: config_lib.SECTIONS[name](**values) for name, values in sections.items() if values}
    return config_lib.ExperimentConfig(**built, **top)


def _sweep(config) -> list:
    """One config per ``--sweep_rewind_steps`` value (the config itself without a sweep)."""
    if not FLAGS.sweep_rewind_steps:
        return [config]
    if config.pruning.rewind_step:
        raise config_lib.ConfigError(
            "rewind_step",
            f"{config.pruning.rewind_step} is set, but --sweep_rewind_steps "
            "replaces it (each run of the sweep rewinds to its own step); remove it",
        )
    epoch = max(1, train_examples(config.data) // config.training.batch_size) if config.training.batch_size > 0 else 0
    steps = []
    for text in FLAGS.sweep_rewind_steps:
        step = _length("sweep_rewind_steps", text, epoch)
        if not 0 <= step < config.training.iterations:
            raise config_lib.ConfigError(
                "sweep_rewind_steps", f"expected steps in [0, --iterations={config.training.iterations}), got {text!r}"
            )
        if step in steps:
            raise config_lib.ConfigError("sweep_rewind_steps", f"step {step} given twice; give each once")
        steps.append(step)
    return [dataclasses.replace(config, pruning=dataclasses.replace(config.pruning, rewind_step=k)) for k in steps]


def configs_from_flags() -> list:
    """The configs the parsed flags run: one, or one per ``--sweep_rewind_steps`` step (for tools that plan studies)."""
    return _sweep(config_from_flags())


def _check_without_data(config) -> None:
    """The checks a run makes that need no data: the batch sizes over the strategy's replicas on this machine
    (a cluster's strategy is set up when the run starts), and the model (layers, exclusions, levels) on the
    dataset's nominal images.

    A dry run plans studies on machines without the data (ImageNet on a laptop), so it loads none.
    """
    from lottery_tf.engine import experiment
    from lottery_tf.engine.data.registry import nominal_shape

    if config.run.strategy in ("multi_worker_mirrored", "tpu"):
        print(
            f"dry run: the batch sizes are checked against --strategy={config.run.strategy}'s replicas when the "
            "run starts",
            flush=True,
        )
    else:
        _check_cpu_devices(config)
        experiment.check_batch_sizes(config, experiment.start_strategy(config))
    shape = nominal_shape(config.data)
    if shape is None:  # a dataset that does not say what it loads
        print(f"dry run: the model is checked when a run loads {config.data.name}", flush=True)
        return
    experiment.check_model(config, *shape)


def _fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def main(argv):
    if line := errors.keras_backend_problem("python -m lottery_tf.main"):
        _fail(line)
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; all settings are --flags")
    try:
        config = config_from_flags()
        configs = _sweep(config)
        sweep = {"start_steps": tuple(c.pruning.rewind_step for c in configs)} if len(configs) > 1 else {}
        # Every check that needs no TensorFlow runs before it is imported.
        for config in configs:
            config_lib.validate(config, DATASETS.names(), MODELS, sweep)
        check_sizes(config.data, config.training.batch_size, config.branches)
        # Per run: which ones --rerecord_data repairs (in a sweep, the runs whose data record is lost).
        rerecord = [_rerecords(c) for c in configs] if FLAGS.rerecord_data else [False] * len(configs)
        if FLAGS.rerecord_data and not any(rerecord):
            _check_rerecord(configs[0])  # raises: why nothing reads it
        ray = config.run.executor == "ray"
        if ray:
            from lottery_tf.engine import ray_executor

            ray_executor.check_installed(config.run)
            configs = [ray_executor.absolute_paths(c) for c in configs]
        # The run folders' verdict (identity, damage) needs neither TensorFlow nor the data: a dry run or a
        # Ray driver refuses a damaged folder in a second (the driver hands its lines to the worker that
        # checks the study); a local run checks it with the data, where it also judges the folder's lock.
        folder_lines = []
        if FLAGS.dry_run or ray:
            folder_lines = [run_dir.check_folder(c, again, trains_here=False) for c, again in zip(configs, rerecord)]
        if FLAGS.dry_run:
            for config, lines, again in zip(configs, folder_lines, rerecord):
                if again:
                    path = os.path.join(run_dir.experiment_dir(config), "data.json")
                    lines = [*lines, f"note: --rerecord_data: a run records the data it loads in {path}"]
                run_dir.print_store_lines(lines)
            _load_keras()
            _quiet_python_logging()  # (TensorFlow's INFO lines: a strategy's devices)
            check_initializer(config.model.initializer)  # (a run checks it with the model, on Ray on a worker)
            _check_without_data(configs[0])  # the runs of a sweep differ only in their rewind step
            if ray:  # checked as a run checks them (the cluster joined and left, or this machine read); no study
                offered = ray_executor.check_for_dry_run(config.run)
            for config in configs:
                print(config.to_json(), end="")
                print(f"run folder: {run_dir.experiment_dir(config)}")
            nodes = study.plan(configs)
            print(study.format_size(study.size(nodes)), end="")
            if done := study.known_done(configs, nodes):  # a resumed study: a run trains what is left
                print(
                    f"done already: {len(done)} of {study.count(len(nodes), 'training')} (main levels and branches "
                    "with a complete metrics.json; an analysis's trainings are judged when a run reaches them)"
                )
            if ray:
                print(ray_executor.describe_slots(offered, config.run))
                if line := ray_executor.estimate_study(configs, nodes, offered, done):
                    print(line)
            return
        _quiet_python_logging()
        session = ray_executor.connect(config.run) if ray else None
        try:
            if session is not None:  # before the study: what Ray offers, what outlives a kill
                print(session.describe(), flush=True)
                # Each slot's worker imports TensorFlow and loads the data; the first checks the study and
                # plans its graph, so this process needs no TensorFlow.
                ray_executor.warm_up(session, configs, folder_lines, rerecord)
            _run(configs, session, rerecord)
        finally:
            if session is not None:
                session.close()
    except KeyboardInterrupt:
        _fail(
            "interrupted: every finished level and branch is kept; run the same command again and the trainings "
            "that were running resume from their last checkpoints",
            status=130,
        )
    except Exception as error:
        line = errors.user_message(error, FLAGS.dataset)
        if line is not None:
            _fail(line)
        # Anything else is our bug, not the user's mistake: the traceback, and a line saying so.
        import traceback

        traceback.print_exc()
        _fail(errors.bug_line(error))


def _rerecords(config) -> bool:
    """Whether ``--rerecord_data`` repairs this run: its folder lost its data record after levels were done."""
    from lottery_tf.store import reader as store

    folder = run_dir.experiment_dir(config)
    if not os.path.isdir(folder):
        return False
    return any(getattr(problem, "kind", None) == "data" for problem in store.inspect_experiment(folder).problems)


def _check_rerecord(config) -> None:
    """Why ``--rerecord_data`` is read by no run: said for ``config``, a run it does not repair.

    Raises:
        ConfigError: For a run folder that does not exist yet, or whose ``data.json`` is intact.
    """
    from lottery_tf.store import reader as store

    folder = run_dir.experiment_dir(config)
    if not os.path.isdir(folder):
        raise config_lib.ConfigError(
            "rerecord_data",
            f"the run folder {folder} does not exist yet: a new run records its data itself, so nothing reads "
            "--rerecord_data; leave the flag out",
        )
    path = os.path.join(folder, "data.json")
    damage = store.json_problem(path, ("source", "fingerprint"))
    if damage is None:
        why = f"is intact ({path}): it records the data the run was trained on (data that moved keeps its fingerprint)"
    else:
        why = f"{damage} ({path}), but no level is done yet: the run records its data again itself"
    raise config_lib.ConfigError(
        "rerecord_data", f"data.json {why}, so nothing reads --rerecord_data; leave the flag out"
    )


def _check_cpu_devices(config) -> None:
    """``--cpu_devices`` splits the CPU for ``--strategy=mirrored``, which uses the GPUs instead where there are any.

    Raises:
        ConfigError: Where this machine has GPUs.
    """
    if config.run.cpu_devices <= 0 or config.run.strategy != "mirrored":
        return
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        raise config_lib.ConfigError(
            "cpu_devices",
            f"{config.run.cpu_devices} is set, but --strategy=mirrored uses this machine's {len(gpus)} GPU(s), "
            "not the CPU, so nothing reads it; remove it",
        )


def _load_keras() -> None:
    """TensorFlow and Keras, quietly (:mod:`lottery_tf.core.keras_compat`): this command starts without them.

    ``python -m lottery_tf.main`` checks its flags, sizes a dry run and drives a Ray study (whose workers
    check and train it) without TensorFlow; it loads it only where it needs it here.
    """
    import lottery_tf.core.keras_compat  # noqa: F401


def _run(configs, session, rerecord) -> None:
    """Checks every run of the invocation, then trains it here (``session`` None) or on Ray."""
    started = time.time()
    if session is not None:
        # On Ray the driver needs no TensorFlow: a warmed worker checks the study (data, model, run store),
        # with the TensorFlow it imported and the data it loaded for the trainings (no second import here).
        from lottery_tf.engine import ray_executor

        checked, nodes = ray_executor.check_study(session, configs)
        if line := ray_executor.estimate_study(configs, nodes, session):  # local or Ray, for what is left
            print(line, flush=True)
        ray_executor.check_shared_store(session, configs[0].run.output_dir)
        for config, ready in zip(configs, checked):
            print(f"lottery_tf: {run_dir.describe(config)} -> {run_dir.experiment_dir(config)}", flush=True)
            run_dir.open_experiment(config, ready.record, ready.new_data_record, ready.store_lines)
        records = [ready.record for ready in checked]
        trained = ray_executor.run_study(session, configs, records, configs[0].run, nodes)
        for config, anything in zip(configs, trained):
            _summary(run_dir.experiment_dir(config), anything)
    else:
        _load_keras()
        from lottery_tf.engine import experiment
        from lottery_tf.engine.distribute import describe_devices

        _check_cpu_devices(configs[0])
        # Every run of a sweep is checked (data, model, the run store, branch inputs) before any trains.
        checked = [experiment.check(config, rerecord_data=again) for config, again in zip(configs, rerecord)]
        for number, (config, ready) in enumerate(zip(configs, checked)):
            print(f"lottery_tf: {run_dir.describe(config)} -> {run_dir.experiment_dir(config)}", flush=True)
            if number == 0:
                print(f"device: {describe_devices()}", flush=True)
            trained = experiment.run(config, ready)
            if trained is not None:  # the chief (or the only process) writes the summary
                _summary(run_dir.experiment_dir(config), trained)
    if len(configs) > 1:
        print(
            f"sweep over rewind steps {', '.join(str(c.pruning.rewind_step) for c in configs)}: "
            f"{', '.join(run_dir.experiment_dir(c) for c in configs)}",
            flush=True,
        )
    # From the process's start (Python, TensorFlow's import, Ray's start included), as the user waited.
    print(f"total wall time: {study.format_duration(study.seconds_since_start() or time.time() - started)}", flush=True)


def _summary(folder: str, trained: bool) -> None:
    """The experiment's table over replicates: printed, and written as summary.{csv,md} in its folder."""
    from lottery_tf.reports import tables

    entries = tables.aggregate([folder])
    tables.write_tables(folder, entries, prefix="summary")
    print(tables.format_markdown(entries), flush=True)
    if not trained:
        print(f"nothing to do: every requested level is done. Results: {folder}", flush=True)
    else:
        print(f"results: {folder}", flush=True)


def _quiet_python_logging() -> None:
    """TensorFlow's and TFDS's Python warnings (e.g. about TFDS folders that do not exist) are not the user's concern."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("tensorflow", "absl", "tensorflow_datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


# -- help ------------------------------------------------------------------------------------------------

# What a newcomer sets first (flags/quickstart.flags over a recipe, docs/cli.md): --help lists these before
# the sections, --helpshort only these.
COMMON_FLAGS = (
    "flagfile",
    "dataset",
    "model",
    "iterations",
    "levels",
    "pruning_fraction",
    "rewind_step",
    "branch",
    "branch_levels",
    "replicates",
    "output_dir",
    "dry_run",
)
# The flags this module adds beside the declared settings, and their section's title (also the site's).
INVOCATION_FLAGS = ("sweep_rewind_steps", "dry_run", "rerecord_data")
INVOCATION_TITLE = "What one invocation adds"
# absl's own flags that work with this command (--helpfull); other libraries' flags (TensorFlow's TPU
# tracer, absltest's) are defined when they are imported but read by nothing here.
_ABSL_MODULES = ("absl.app", "absl.logging")
_FLAGFILE_HELP = (
    "A file of flags, one --flag=value a line (# comments on their own lines); flags/ holds the papers' "
    "recipes. Flags given after it override it."
)
_UNDEFOK_HELP = "Comma-separated names of flags that may be given although this command does not define them."
_HELP_SPELLINGS = {
    "help": ("--help", "-help", "-h", "-?"),
    "short": ("--helpshort", "-helpshort"),
    "full": ("--helpfull", "-helpfull"),
}


def flag_groups() -> list:
    """``(key, title, flag names)`` of every flag of this command, section by section, as ``--help`` and the site list them.

    The sections are :data:`lottery_tf.engine.config.FLAG_SECTIONS`, each with its settings in their
    declared order, then the flags one invocation adds (``key`` ``"invocation"``).
    """
    groups = [
        (key, title, [s.flag for s in config_lib.SETTINGS if config_lib.flag_section(s) == key])
        for key, title in config_lib.FLAG_SECTIONS
    ]
    return [*groups, ("invocation", INVOCATION_TITLE, list(INVOCATION_FLAGS))]


def _render(
    name: str, help_text: str, default: str = "", syntax: str = "", boolean: bool = False, short: str = ""
) -> str:
    """One flag as absl's help writes it: ``-s,--[no]name: help``, then its default and syntax, wrapped."""
    first = f"{'-' + short + ',' if short else ''}--{'[no]' if boolean else ''}{name}: {help_text}"
    lines = [flags.text_wrap(first, indent="    ", firstline_indent="  ")]
    for extra in (f"(default: {default})" if default else "", f"({syntax})" if syntax else ""):
        if extra:
            lines.append(flags.text_wrap(extra, indent="    "))
    return "\n".join(lines)


def _render_flag(name: str) -> str:
    if name == "flagfile":  # absl's, not among FLAGS' own
        return _render(name, _FLAGFILE_HELP)
    flag = FLAGS[name]
    return _render(name, flag.help, flag.default_as_str, flag.parser.syntactic_help, flag.boolean)


def help_text(which: str = "help") -> str:
    """What ``--helpshort`` (``"short"``), ``--help`` (``"help"``) or ``--helpfull`` (``"full"``) prints.

    ``short``: the usage and the common flags (:data:`COMMON_FLAGS`). ``help``: the common flags, then
    every other flag of this command by section (:func:`flag_groups`, the site's order). ``full``: the
    same, then absl's own flags (logging, debugging); no other library's. Every flag is listed once.

    Args:
        which: ``"short"``, ``"help"`` or ``"full"``.

    Returns:
        The text, ending in a newline.
    """
    parts = [USAGE.rstrip("\n"), "Common flags:\n" + "\n".join(_render_flag(name) for name in COMMON_FLAGS)]
    if which == "short":
        parts.append("--help lists every flag by section; --helpfull adds absl's own flags.")
        return "\n\n".join(parts) + "\n"
    for _, title, names in flag_groups():
        common = [name for name in names if name in COMMON_FLAGS]
        rest = [name for name in names if name not in COMMON_FLAGS]
        besides = f" (and {', '.join('--' + name for name in common)} above)" if common else ""
        parts.append(f"{title}{besides}:\n" + "\n".join(_render_flag(name) for name in rest))
    if which != "full":
        parts.append("--helpfull adds absl's own flags (logging, debugging).")
        return "\n\n".join(parts) + "\n"
    by_module = FLAGS.flags_by_module_dict()
    own = [_render("undefok", _UNDEFOK_HELP)]
    for module in _ABSL_MODULES:
        for flag in by_module.get(module, []):
            if not flag.name.startswith("help"):  # --help..., this text (absl's --helpxml lists every library's)
                syntax = flag.parser.syntactic_help
                own.append(_render(flag.name, flag.help, flag.default_as_str, syntax, flag.boolean, flag.short_name))
    parts.append("absl's own flags (logging, debugging):\n" + "\n".join(own))
    return "\n\n".join(parts) + "\n"


def _help_asked(args) -> str | None:
    """``"short"``, ``"help"`` or ``"full"`` for the first help flag in ``args`` (before ``--``), or None."""
    for arg in args:
        if arg == "--":
            return None
        for which, spellings in _HELP_SPELLINGS.items():
            if arg in spellings:
                return which
    return None


def _parse_flags(argv):
    """absl's parser, with its errors as one line and exit status 2; the help flags exit 0.

    ``--helpshort``, ``--help`` and ``--helpfull`` print :func:`help_text` and exit 0 (absl's own
    exit 1, and its ``--helpfull`` lists the flags of every library imported, TensorFlow's included).

    Before absl reads anything: every flagfile, in every spelling absl accepts
    (``--flagfile=X``, ``--flagfile X``, ``-flagfile=X``, ``-flagfile X``, and
    nested), is checked (:func:`flagfile_problem`); then an unknown flag is named
    before any other error.
    """
    asked = _help_asked(argv[1:])
    if asked:
        print(help_text(asked), end="")
        sys.exit(0)
    for spelling, path in flagfile_arguments(argv[1:]):
        problem = f"expected a file after {spelling}" if path is None else flagfile_problem(path)
        if problem:
            _fail(f"--flagfile: {problem}")
    unknown = _unknown_flag(argv[1:])
    if unknown:
        _fail(unknown)
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _fail(_flag_error(str(error).splitlines()[0]))


_FLAGFILE_SPELLINGS = ("--flagfile", "-flagfile")


def flagfile_arguments(args) -> list:
    """``(spelling, path)`` of every flagfile the command line names, as absl finds them (path None: missing).

    absl reads ``--flagfile=X``, ``-flagfile=X`` and, with the path as the next
    argument, ``--flagfile X`` and ``-flagfile X``; it stops at ``--``. Paths are
    expanded as absl expands them (``~``; the ``=`` forms also stripped).
    """
    found, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if arg in _FLAGFILE_SPELLINGS:
            found.append((arg, os.path.expanduser(rest.pop(0)) if rest else None))
            continue
        for spelling in _FLAGFILE_SPELLINGS:
            if arg.startswith(spelling + "="):
                found.append((arg, os.path.expanduser(arg[len(spelling) + 1 :].strip())))
    return found


def _unknown_flag(args) -> str | None:
    """``--NAME: unknown flag ...`` for the first flag absl does not know (flagfiles read), or None."""
    import difflib

    try:
        expanded = FLAGS.read_flags_from_files(list(args), force_gnu=True)
    except (flags.Error, OSError, UnicodeDecodeError):
        return None  # absl's own parse says what is wrong
    known = {name: FLAGS[name] for name in FLAGS}
    undefok, rest = set(), list(expanded)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, equals, _ = arg[2:].partition("=") if arg.startswith("--") else arg[1:].partition("=")
        if not name:
            continue
        if name == "undefok":
            value = arg.partition("=")[2] if equals else (rest.pop(0) if rest else "")
            undefok.update(v.strip() for v in value.split(","))
            continue
        flag = known.get(name)
        if flag is not None:
            if not flag.boolean and not equals and rest:
                rest.pop(0)  # "--flag value": absl takes the next argument as the value
            continue
        if name.startswith("no") and name[2:] in known and known[name[2:]].boolean:
            continue
        if name in undefok or (name.startswith("no") and name[2:] in undefok):
            continue
        close = difflib.get_close_matches(name, [n for n in known if len(n) > 2], n=1, cutoff=0.6)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        return f"--{name}: unknown flag{hint}; python -m lottery_tf.main --help lists the flags"
    return None


_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false"}


def _flag_error(line: str) -> str:
    """absl's "flag --levels=abc: invalid literal for int() ..." in the form every other flag error has."""
    match = re.match(r"flag --(\w+)=(.*?): ", line)
    setting = config_lib.SETTING.get(match.group(1)) if match else None
    if setting is None or setting.kind not in _EXPECTED:
        return line
    return f"--{setting.flag}: expected {_EXPECTED[setting.kind]}{setting._range()}, got {match.group(2)!r}"


# What absl reads as one flag on a flagfile's line: one or two dashes, a name, and "=value" or nothing.
_FLAG_LINE = re.compile(r"--?[A-Za-z_][A-Za-z0-9_.-]*(=.*)?", re.DOTALL)
_QUOTES = "\"'"


# A comment after a flag on its line: absl has no trailing comments, so it would be part of the value.
_TRAILING_COMMENT = re.compile(r"\s(#|//)")


def _trailing_comment(line: str) -> str | None:
    """What is wrong with a flag line that ends in a comment (``--output_dir=/x # y``), or None."""
    match = _TRAILING_COMMENT.search(line)
    if match is None or not _FLAG_LINE.fullmatch(line[: match.start()].rstrip()):
        return None
    name, equals, _ = line[: match.start()].lstrip("-").partition("=")
    after, part = (f"the value of --{name}", "the value") if equals else (f"--{name}", "the flag")
    return (
        f"a comment after {after} ({line[match.start() :].strip()[:40]!r}), which absl would read as part of "
        f"{part}: put comments on their own lines"
    )


def flagfile_problem(path: str, seen=()) -> str | None:
    """What is wrong with a flagfile (and the flagfiles it includes), or None.

    absl reads flagfiles itself, line by line, each line one argument as
    written: a binary file, a byte-order mark, a line that is not a flag (a
    bare ``--`` ends the flags), a quoted value (absl keeps the quotes), an
    indented comment or ``--flagfile=`` (absl reads neither as such), a
    comment after a value (absl keeps it in the value) would
    otherwise end in a traceback, an "unexpected arguments" that names no
    file, or a setting other than the one written; an empty file would silently
    run the defaults. Every problem names the file, and the line where there is one.
    """
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        return f"{path!r} does not exist or is not readable"
    if os.path.abspath(path) in seen:
        return f"{path!r} includes itself"
    with open(path, "rb") as handle:
        data = handle.read()
    if data.startswith(b"\xef\xbb\xbf"):
        return f"{path!r} starts with a UTF-8 byte-order mark; save it without one"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"{path!r} is not a text file of flags (byte {error.start} is not UTF-8)"
    if "\x00" in text:
        return f"{path!r} is not a text file of flags (it holds NUL bytes)"
    flag_lines = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{path!r} line {number}"
        if not line or raw.startswith("#") or raw.startswith("//"):
            continue
        indented = raw != raw.lstrip()
        if line.startswith("#") or line.startswith("//"):
            return f"{where}: an indented comment, which absl reads as an argument; start the line with # or //"
        if line in _FLAGFILE_SPELLINGS:
            return f"{where}: expected --flagfile=PATH on one line, got {line!r}"
        if line.startswith(tuple(spelling + "=" for spelling in _FLAGFILE_SPELLINGS)):
            if indented:
                return f"{where}: an indented {line.split('=', 1)[0]}=, which absl does not read as a flagfile; remove the indent"
            if problem := _trailing_comment(line):
                return f"{where}: {problem}"
            nested = os.path.expanduser(line.split("=", 1)[1].strip())
            if not nested:
                return f"{where}: {line.split('=', 1)[0]}= names no file; give the path after the ="
            if not os.path.isfile(nested) or not os.access(nested, os.R_OK):
                return f"{nested!r} does not exist or is not readable (named on {where})"
            problem = flagfile_problem(nested, (*seen, os.path.abspath(path)))
            if problem:
                return problem
            flag_lines += 1
            continue
        if line.strip("-") == "":
            return f"{where}: a bare {line!r}, which ends the flags (absl would read every later line as an argument); remove it"
        if problem := _trailing_comment(line):
            return f"{where}: {problem}"
        if not _FLAG_LINE.fullmatch(line):
            return f"{where}: expected --flag=value, got {line[:60]!r}"
        name, _, value = line.lstrip("-").partition("=")
        if value and (value[0] in _QUOTES or value[-1] in _QUOTES):
            return (
                f"{where}: the value of --{name} is in quotes ({value[:60]}); a flagfile takes values as written "
                "(absl would keep the quotes in it): remove them"
            )
        flag_lines += 1
    if not flag_lines:
        return f"{path!r} holds no flags (only comments or blank lines); it would run the default experiment"
    return None


def run(argv=None) -> None:
    """Entry point of ``python -m lottery_tf.main``."""
    app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
