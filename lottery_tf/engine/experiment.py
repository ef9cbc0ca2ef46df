"""The experiment: the IMP main line per replicate, then branches at chosen levels.

Files go where :mod:`lottery_tf.engine.run_dir` says; the recipe (model, optimizer,
loss, input order) is :mod:`lottery_tf.engine.recipe`; how one level trains,
checkpoints and resumes is :mod:`lottery_tf.engine.levels`; the kinds of branch
(controls, rewinding, the analyses) are the registry in
:mod:`lottery_tf.engine.branches`. Each lineage a process trains is locked
(:mod:`lottery_tf.store.locks`), so several processes can share a run folder.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from lottery_tf.core.callbacks import PruneRewindCallback
from lottery_tf.core.masking import get_masks, mask_names, set_masks
from lottery_tf.core.pruning import count_to_prune, resolve_mask_name
from lottery_tf.engine import repair, run_dir
from lottery_tf.engine.branches import (  # noqa: F401
    BranchStart,
    branch_folder_name,
    branch_type,
    check_branch_inputs,
    dst,
    prepare_branch,
    run_branch,
    run_branches,
    run_lr_rewind_lineage,
)
from lottery_tf.engine.config import (
    ConfigError,
    ExperimentConfig,
    StrategyError,
    replicate_seed,
)
from lottery_tf.engine.data import get_splits
from lottery_tf.engine.data.registry import check_sizes, class_counts, splits_fingerprint
from lottery_tf.engine.distribute import (
    is_chief,
    is_multi_worker,
    leave_together,
    make_deterministic,
    make_strategy,
    split_cpu,
    worker_label,
)
from lottery_tf.engine.levels import (  # noqa: F401
    Context,
    agreement,
    check_layer_names,
    dense_optimizer_at,
    pruning_spec,
    record_cache,
    todo,
    train_level,
    train_lineage,
)
from lottery_tf.engine.models import checks as model_checks
from lottery_tf.engine.recipe import build_masked_model
from lottery_tf.engine.run_dir import MAIN, is_done, level_dir, replicates  # noqa: F401
from lottery_tf.store import atomic, faults, locks, states
from lottery_tf.store import reader as store

StoreError = store.StoreError


def run_main_line(ctx: Context, last: int | None = None) -> bool:
    """Trains main levels 0..``last`` (default: every level) not yet done, after rebuilding what is damaged.

    ``--executor=ray`` trains each level as its own task (``last`` = that level), after the task of
    the level before it; a level that does not follow one trained in this process starts from the
    files the previous level wrote, as a resumed run does.

    Returns:
        Whether it trained any level.
    """
    config, p = ctx.config, ctx.config.pruning
    last = p.levels if last is None else last
    damaged = repair.main_line_damage(ctx)
    if all(is_done(ctx.folder, level, MAIN) for level in range(last + 1)) and not damaged:
        return False
    if config.branches.names and atomic.writes_enabled() and locks.is_held(ctx.folder, MAIN):
        # Another process is training the main line this command's branches start from: wait for it.
        locks.wait_until_free(ctx.folder, MAIN, "this command's branches need its levels")
    with locks.hold(ctx.folder, MAIN, config.run.wait_for_lock):
        repair.rebuild_main_line(ctx)
        levels = todo(ctx, MAIN, range(last + 1))
        if not levels:  # another process finished it while we waited
            return False
        first = levels[0]
        rewind_path = os.path.join(ctx.folder, "rewind_point.npz")
        optimizer_path = os.path.join(ctx.folder, "rewind_optimizer.npz")
        model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
        check_layer_names(config, model)

        def on_capture(state):
            states.save(state, rewind_path)
            repair.record_rewind_point(ctx, state)
            if imp.optimizer_point is not None:
                states.save_optimizer(imp.optimizer_point, optimizer_path)
                record_cache(ctx, optimizer_path, p.rewind_step)

        imp = PruneRewindCallback(
            pruning_spec(config),
            rewind_step=p.rewind_step,
            on_capture=on_capture,
            rewind_optimizer=p.rewind_optimizer,
            agree_on_masks=agreement(ctx),
        )
        imp.set_model(model)
        if os.path.exists(rewind_path):
            imp.rewind_point = states.load(rewind_path)
            imp.optimizer_point = dense_optimizer_at(ctx, p.rewind_step)

        def load_level(level):
            if imp.rewind_point is None:
                raise FileNotFoundError(f"{rewind_path} is missing; the run cannot continue at level {level}")
            # Masks of this level were written when the previous level ended.
            set_masks(model, repair.masks_of(ctx, MAIN, level))
            imp.level = level
            imp.rewind()

        if first > 0:
            load_level(first)
        train_lineage(
            ctx, model, imp, MAIN, levels, lambda level: p.rewind_step if level > 0 else 0, load_level=load_level
        )
    return True


@dataclasses.dataclass
class Ready:
    """What :func:`check` found: everything a run needs, checked before any file is written."""

    strategy: object
    splits: object
    record: dict  # the data record (source, fingerprint, sizes)
    new_data_record: bool  # data.json is to be written
    store_lines: list = dataclasses.field(default_factory=list)  # what the store check found and the run does about it


def check(
    config: ExperimentConfig, rerecord_data: bool = False, strategy=None, splits=None, folder_lines=None
) -> Ready:
    """Every check that needs TensorFlow, the data or the run folder, before anything is written.

    The strategy and batch sizes, the data's real content and sizes, the model
    (initializer, layer names, exclusions, levels that would prune a layer to
    nothing), the data record and identity of an existing run folder, and what
    the store says a run must refuse. On Ray a warmed worker runs it
    (:func:`lottery_tf.engine.ray_executor.check_study`), with the strategy and
    data it has set up (``strategy``, ``splits``), and the driver has checked the run folder
    (``folder_lines``: :func:`lottery_tf.engine.run_dir.check_folder`'s lines).

    Raises:
        ConfigError: Naming the flag.
        StoreError: Naming the file of the run folder and what to do.
        DataUnavailableError: Naming the data source.
    """
    model_checks.check_initializer(config.model.initializer)
    if strategy is None:
        strategy = start_strategy(config)
    check_batch_sizes(config, strategy)
    if splits is None:
        splits = get_splits(config.data)
    train = splits.sizes()[0]
    check_sizes(
        config.data, config.training.batch_size, config.branches, train=train, class_counts=class_counts(splits)
    )
    check_model(config, splits.input_shape, splits.num_classes)
    record = {
        "source": splits.source,
        "fingerprint": splits_fingerprint(splits),
        "sizes": list(splits.sizes()),
        "input_shape": list(splits.input_shape),
        "num_classes": int(splits.num_classes),
    }
    # On Ray the driver trains nothing: its tasks wait for a lock they meet (a live holder's, or a lost one's
    # until its lease runs out), so another process's lock refuses nothing here.
    trains_here = is_chief(strategy) and config.run.executor != "ray"
    new_data_record, lines = check_store(config, record, rerecord_data, trains_here, folder_lines)
    return Ready(strategy, splits, record, new_data_record, lines)


def run(config: ExperimentConfig, ready: Ready | None = None) -> bool | None:
    """Runs (or continues) the experiment.

    Args:
        config: The settings (validated).
        ready: What :func:`check` returned; checked here when not given.

    Returns:
        Whether anything was trained; ``None`` on a worker that is not the chief
        (it writes nothing; the chief's command writes the summary).
    """
    ready = ready or check(config)
    strategy = ready.strategy
    if config.run.strategy != "default":
        devices = ", ".join(getattr(strategy.extended, "worker_devices", ()) or ())
        print(f"strategy: {config.run.strategy}, {strategy.num_replicas_in_sync} replica(s): {devices}", flush=True)
    chief = is_chief(strategy)
    if worker_label(strategy):
        role = "the chief: writes the run's files" if chief else "not the chief: reads the run's files, writes none"
        print(f"{worker_label(strategy)}: {role}", flush=True)
    try:
        with atomic.discarding_writes(not chief):
            trained = _run_replicates(config, ready)
        faults.crash_point("before_leave")  # every collective is behind this worker
        leave_together(strategy)
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as error:
        if not is_multi_worker(strategy):
            raise
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise StrategyError(
            f"--strategy=multi_worker_mirrored: a worker stopped ({first.strip()}); restart every worker "
            "with the same command: the run resumes from the chief's last checkpoint"
        ) from None
    if not chief:
        print("done; the chief writes the results", flush=True)
        return None
    return trained


def check_model(config: ExperimentConfig, input_shape: tuple, num_classes: int) -> None:
    """Settings that need the model (layers to exclude, per-layer fractions, levels), checked before anything is written.

    The model is built for the data's ``input_shape`` and ``num_classes`` (the loaded data's; ``--dry_run``
    passes the dataset's nominal ones: :func:`lottery_tf.engine.data.registry.nominal_shape`).

    Raises:
        ConfigError: Naming the flag and the valid names.
    """
    from lottery_tf.core.masking import wrap_model

    built = model_checks.build_for_data(config, tuple(input_shape), num_classes)  # names the images' flag
    try:
        model = wrap_model(built, exclude=config.pruning.exclude_layers)
    except ValueError as error:
        raise ConfigError("exclude_layers", str(error).rstrip(".")) from None
    try:
        names = mask_names(model)
    except ValueError:
        raise ConfigError(
            "exclude_layers",
            f"{','.join(config.pruning.exclude_layers)} leaves nothing to prune in "
            f"{config.model.name}; exclude fewer layers",
        ) from None
    check_layer_names(config, model)
    model_checks.check_settings(config, model)  # settings this model does not read
    note = check_levels(config, {name: tuple(m.shape) for name, m in get_masks(model).items()}, names)
    if note:
        print(note, flush=True)
    check_baselines(config)
    dst.check_erk(config, {name: tuple(m.shape) for name, m in get_masks(model).items()})


def check_levels(config: ExperimentConfig, shapes: dict, names: list) -> str | None:
    """No level may prune a weight (or the global pool) to nothing; a structure must fit and be reached.

    Counts what the pruning decision counts: weights, or blocks with
    ``--pruning_block``. With ``--pruning_n_m`` every layer must keep at most
    N/M of its weights by the last level, or its ticket would not have the
    structure.

    Returns:
        For N:M, one line saying from which level each layer can have the
        structure at the earliest (the level it has it from depends on the
        trained weights; each level's line and ``metrics.json`` say).

    Raises:
        ConfigError: Naming --levels (or the structure's flag), the weight and the level.
    """
    from lottery_tf.core.pruning import block_ids, runtime_view

    spec = pruning_spec(config)
    block, n_m = spec.block, spec.n_m
    for name in names:
        outputs, inputs = runtime_view(np.empty(shapes[name], np.int8)).shape
        if block and (block[0] > outputs or block[1] > inputs):
            raise ConfigError(
                "pruning_block",
                f"{block[0]}x{block[1]} does not fit {name}: it has {outputs} outputs x "
                f"{inputs} inputs in the runtime's layout",
            )
        if n_m and n_m[1] > inputs:
            raise ConfigError(
                "pruning_n_m", f"{n_m[0]}:{n_m[1]} does not fit {name}: it has {inputs} inputs per output"
            )
    sizes = {n: (block_ids(shapes[n], block)[1] if block else int(np.prod(shapes[n]))) for n in names}
    what = "blocks" if block else "weights"
    fractions = {resolve_mask_name(n, names): f for n, f in spec.layer_fractions.items()}
    own = {}
    for name in names:
        fraction = fractions.get(name)
        if fraction is None and name == names[-1]:
            fraction = spec.output_fraction
        if fraction is None and spec.method == "layerwise":
            fraction = spec.fraction
        if fraction is not None:
            own[name] = fraction
    remaining = {name: sizes[name] for name in own}
    pool = sum(sizes[name] for name in names if name not in own)
    pool_size = pool
    reached = {}
    for level in range(1, config.pruning.levels + 1):
        for name, fraction in own.items():
            remaining[name] -= count_to_prune(fraction, remaining[name])
            if remaining[name] <= 0:
                raise ConfigError(
                    "levels",
                    f"{config.pruning.levels} prunes {name} ({sizes[name]} {what}) to nothing "
                    f"by level {level}; use --levels={level - 1} or fewer, or a smaller fraction",
                )
            if n_m and name not in reached and remaining[name] <= n_m[0] * sizes[name] / n_m[1]:
                reached[name] = level
        if pool:
            pool -= count_to_prune(spec.fraction, pool)
            if pool <= 0:
                raise ConfigError(
                    "levels",
                    f"{config.pruning.levels} prunes every pooled weight to nothing by level "
                    f"{level}; use --levels={level - 1} or fewer",
                )
            if n_m and "the global pool" not in reached and pool <= n_m[0] * pool_size / n_m[1]:
                reached["the global pool"] = level
    if not n_m:
        return None
    wanted = [*own, *(["the global pool"] if pool_size else [])]
    missing = [name for name in wanted if name not in reached]
    if missing:
        raise ConfigError(
            "pruning_n_m",
            f"{n_m[0]}:{n_m[1]} keeps at most {100 * n_m[0] / n_m[1]:g}% of the weights, "
            f"but {missing[0]} never gets there in --levels={config.pruning.levels}; add levels or "
            "raise the fraction",
        )
    first = min(reached.values())
    return (
        f"pruning: {n_m[0]}:{n_m[1]} can hold from level {first} at the earliest (the levels before keep more "
        f"than {100 * n_m[0] / n_m[1]:g}% and prune single weights); per weight, at the earliest: "
        + ", ".join(f"{name} level {level}" for name, level in reached.items())
        + f". A weight has it from the first level whose kept weights fit among the {n_m[0]} largest survivors "
        f"of every group of {n_m[1]}, which depends on the trained weights: each level's line says which have it"
    )


def check_store(
    config: ExperimentConfig,
    record: dict,
    rerecord_data: bool = False,
    trains_here: bool = True,
    folder_lines: list | None = None,
) -> tuple[bool, list]:
    """What the run folder must allow before anything is written: its identity, its damage, its data record.

    The folder's verdict is :func:`lottery_tf.engine.run_dir.check_folder` (``folder_lines``: what it
    returned, where the caller checked the folder already: a Ray driver, before Ray starts); the data
    record found now must then be the one the run recorded.

    Returns:
        Whether ``data.json`` is to be written (a new run, or ``rerecord_data``), and the lines to print:
        ``warning: <problem>`` for damage the run repairs, ``note: <problem>`` for what it leaves alone.

    Raises:
        StoreError: For damage no run can rebuild (the line the health check prints).
        ConfigError: If the run's data fingerprint differs from the data found now.
        LockedError: If another process holds the main line's lock this command would take.
    """
    folder = run_dir.experiment_dir(config)
    if not os.path.isdir(folder):
        return True, []
    if folder_lines is None:
        folder_lines = run_dir.check_folder(config, rerecord_data, trains_here)
    lines = list(folder_lines)
    path = os.path.join(folder, "data.json")
    if rerecord_data:  # (main.py allows the flag only for a damaged record of a run with finished levels)
        lines.append(
            f"note: --rerecord_data: {path} now records the data found here, {record['source']} (fingerprint "
            f"{record['fingerprint']}); what the levels already done were trained on cannot be checked against it"
        )
        return True, lines
    if store.json_problem(path):
        return True, lines
    previous = store.read_json(path)
    if previous.get("fingerprint") != record["fingerprint"]:
        raise ConfigError(
            "data_dir",
            f"this run was trained on {previous.get('source')} (data fingerprint {previous.get('fingerprint')}), "
            f"but the data found now is {record['source']} (fingerprint {record['fingerprint']}); point "
            "--data_dir or --tfds_data_dir at the run's data, or use another --output_dir",
        )
    return False, lines


def check_baselines(config: ExperimentConfig) -> None:
    """``--gmp_schedule=tfmot`` needs TFMOT (run in a subprocess): checked before anything is written.

    Raises:
        ConfigError: Naming the flag and how to install the extra.
    """
    if "gmp" in config.branches.names and config.branches.gmp_schedule == "tfmot":
        from lottery_tf.core.gradual import TfmotUnavailableError, tfmot_schedule_table

        try:
            tfmot_schedule_table(0.0, 0.5, 1, 2, 1, 2)
        except TfmotUnavailableError as error:
            raise ConfigError("gmp_schedule", str(error)) from None


def open_store(config: ExperimentConfig, ready: Ready) -> None:
    """Creates (or checks) the experiment folder and records the data (:func:`run_dir.open_experiment`)."""
    run_dir.open_experiment(config, ready.record, ready.new_data_record, ready.store_lines)


def context(config: ExperimentConfig, splits, replicate: int, strategy=None, data_fingerprint=None) -> Context:
    """What every level of one replicate needs (``data_fingerprint``: the data record's, computed if not given)."""
    return Context(
        config,
        splits,
        replicate,
        replicate_seed(config.seed, replicate),
        run_dir.replicate_dir(config, replicate),
        strategy,
        data_fingerprint or splits_fingerprint(splits),
    )


def _run_replicates(config: ExperimentConfig, ready: Ready) -> bool:
    splits = ready.splits
    open_store(config, ready)
    trained = False
    for r in replicates(config):
        ctx = context(config, splits, r, ready.strategy, ready.record["fingerprint"])
        trained |= run_main_line(ctx)
        ensure_branch_inputs(ctx)
        trained |= run_branches(ctx)
    return trained


def ensure_branch_inputs(ctx: Context, names=None, levels=None) -> None:
    """Every main-line file the requested branches (or ``names`` at ``levels``) read exists: rebuilt if damaged.

    Raises:
        FileNotFoundError: Naming the branch, the level and the file, if the main line has not written it.
    """
    names = ctx.config.branches.names if names is None else names
    levels = ctx.config.branches.levels if levels is None else levels
    needed = [
        (name, level, relative)
        for name in names
        for level in levels
        for relative in branch_type(name).needs(ctx.config, level)
    ]
    damaged = sorted({relative for _, _, relative in needed if store.npz_problem(os.path.join(ctx.folder, relative))})
    if damaged:
        with locks.hold(ctx.folder, MAIN, ctx.config.run.wait_for_lock):
            for relative in damaged:
                repair.rebuild_input(ctx, relative)
    check_branch_inputs(ctx, names, levels)


def start_strategy(config: ExperimentConfig):
    """The run's strategy on this machine: the CPU split (``--cpu_devices``) and determinism set first.

    Raises:
        StrategyError: If the cluster or TPU cannot be set up.
    """
    split_cpu(config.run.cpu_devices)
    if config.run.deterministic:
        make_deterministic()
    return make_strategy(config.run.strategy, config.run.tpu)


def check_batch_sizes(config: ExperimentConfig, strategy) -> None:
    """Every global batch size must split evenly across the replicas.

    Raises:
        ConfigError: Naming the flag.
    """
    replicas = strategy.num_replicas_in_sync
    for flag, size in (("batch_size", config.training.batch_size), ("branch_batch_size", config.branches.batch_size)):
        if size and size % replicas:
            raise ConfigError(
                flag, f"{size} does not split evenly across the {replicas} replicas of --strategy={config.run.strategy}"
            )
