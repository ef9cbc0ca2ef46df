"""The experiment: the IMP main line per replicate, then branches at chosen levels.

Files go where :mod:`lottery_tf.run_dir` says; the recipe (model, optimizer,
loss, input order) is :mod:`lottery_tf.recipe`; how one level trains,
checkpoints and resumes is :mod:`lottery_tf.levels`; the kinds of branch
(controls, rewinding, the analyses) are the registry in
:mod:`lottery_tf.branches`. Each lineage a process trains is locked
(:mod:`lottery_tf.locks`), so several processes can share a run folder.
"""

from __future__ import annotations

import os

import tensorflow as tf

from lottery_tf import analysis_branches, baseline_branches  # noqa: F401  (register the analyses and baselines)
from lottery_tf import atomic, locks, report, rewind, run_dir
from lottery_tf.branches import (BranchStart, branch_folder_name, check_branch_inputs, lr_rewind_step,  # noqa: F401
                                 prepare_branch, run_branch, run_branches, run_lr_rewind_lineage)
from lottery_tf.callbacks import PruneRewindCallback
from lottery_tf.config import ConfigError, StrategyError, ExperimentConfig, replicate_seed
from lottery_tf.data import get_splits
from lottery_tf.data.registry import splits_fingerprint
from lottery_tf.distribute import is_chief, is_multi_worker, make_strategy, split_cpu, worker_label
from lottery_tf.levels import (Context, agreement, check_layer_names, dense_optimizer_at, pruning_spec,  # noqa: F401
                               train_level, train_lineage, todo)
from lottery_tf.masking import mask_names, set_masks
from lottery_tf.recipe import (build_masked_model, compiled_fast_path, evaluation_splits, make_loss,  # noqa: F401
                               train_pipeline, training_batches)
from lottery_tf.optimizers import make_optimizer  # noqa: F401  (re-exported for callers of experiment)
from lottery_tf.run_dir import MAIN, is_done, level_dir

def run_main_line(ctx: Context) -> bool:
    """Trains main levels 0..levels not yet done. Returns whether it trained any."""
    config, p = ctx.config, ctx.config.pruning

    if all(is_done(ctx.folder, level, MAIN) for level in range(p.levels + 1)):
        return False
    with locks.hold(ctx.folder, MAIN, config.run.wait_for_lock):
        levels = todo(ctx, MAIN, range(p.levels + 1))
        if not levels:  # another process finished it while we waited
            return False
        first = levels[0]
        rewind_path = os.path.join(ctx.folder, "rewind_point.npz")
        optimizer_path = os.path.join(ctx.folder, "rewind_optimizer.npz")
        model = build_masked_model(config, ctx.splits, ctx.seed, strategy=ctx.strategy)
        check_layer_names(config, model)

        def on_capture(state):
            rewind.save(state, rewind_path)
            if imp.optimizer_point is not None:
                rewind.save_optimizer(imp.optimizer_point, optimizer_path)

        imp = PruneRewindCallback(pruning_spec(config), rewind_step=p.rewind_step, on_capture=on_capture,
                                  rewind_optimizer=p.rewind_optimizer, agree_on_masks=agreement(ctx))
        imp.set_model(model)
        if os.path.exists(rewind_path):
            imp.rewind_point = rewind.load(rewind_path)
            imp.optimizer_point = dense_optimizer_at(ctx, p.rewind_step)

        def load_level(level):
            if imp.rewind_point is None:
                raise FileNotFoundError(f"{rewind_path} is missing; the run cannot continue at level {level}")
            # Masks of this level were written when the previous level ended.
            set_masks(model, atomic.read_npz(os.path.join(level_dir(ctx.folder, level, MAIN), "masks.npz")))
            imp.level = level
            imp.rewind()

        if first > 0:
            load_level(first)
        train_lineage(ctx, model, imp, MAIN, levels, lambda level: p.rewind_step if level > 0 else 0,
                       load_level=load_level)
    return True


def replicates(config: ExperimentConfig) -> list[int]:
    return [config.run.replicate] if config.run.replicate >= 0 else list(range(config.run.replicates))


def run(config: ExperimentConfig) -> list[dict]:
    """Runs (or continues) the experiment and writes its summary files.

    Returns:
        The summary entries (mean and spread over replicates per level and branch).
    """
    split_cpu(config.run.cpu_devices)
    if config.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.run.strategy, config.run.tpu)
    check_batch_sizes(config, strategy)
    if config.run.strategy != "default":
        devices = ", ".join(getattr(strategy.extended, "worker_devices", ()) or ())
        print(f"strategy: {config.run.strategy}, {strategy.num_replicas_in_sync} replica(s): {devices}", flush=True)
    chief = is_chief(strategy)
    if worker_label(strategy):
        role = "the chief: writes the run's files" if chief else "not the chief: reads the run's files, writes none"
        print(f"{worker_label(strategy)}: {role}", flush=True)
    try:
        with atomic.discarding_writes(not chief):
            trained = _run_replicates(config, strategy)
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
        return []
    folder = run_dir.experiment_dir(config)
    entries = report.aggregate([folder])
    report.write_tables(folder, entries, prefix="summary")
    print(report.format_markdown(entries), flush=True)
    if not trained:
        print(f"nothing to do: every requested level is done. Results: {folder}", flush=True)
    else:
        print(f"results: {folder}", flush=True)
    return entries


def check_model(config: ExperimentConfig, splits) -> None:
    """Settings that need the model (layers to exclude, per-layer fractions), checked before anything is written.

    Raises:
        ConfigError: Naming the flag and the valid names.
    """
    from lottery_tf.models import build_model
    from lottery_tf.masking import wrap_model

    try:
        model = wrap_model(build_model(config.model, splits.input_shape, splits.num_classes),
                           exclude=config.pruning.exclude_layers)
    except ValueError as error:
        raise ConfigError("exclude_layers", str(error).rstrip(".")) from None
    try:
        mask_names(model)
    except ValueError:
        raise ConfigError("exclude_layers", f"{','.join(config.pruning.exclude_layers)} leaves nothing to prune in "
                          f"{config.model.name}; exclude fewer layers") from None
    check_layer_names(config, model)
    check_baselines(config)


def check_baselines(config: ExperimentConfig) -> None:
    """``--gmp_schedule=tfmot`` needs TFMOT (run in a subprocess): checked before anything is written.

    Raises:
        ConfigError: Naming the flag and how to install the extra.
    """
    if "gmp" in config.branches.names and config.branches.gmp_schedule == "tfmot":
        from lottery_tf.gradual import TfmotUnavailableError, tfmot_schedule_table

        try:
            tfmot_schedule_table(0.0, 0.5, 1, 2, 1, 2)
        except TfmotUnavailableError as error:
            raise ConfigError("gmp_schedule", str(error)) from None


def check_data(config: ExperimentConfig, record: dict) -> bool:
    """The data (``record``: source, fingerprint, sizes) must be what the run was trained on.

    Returns:
        Whether the run has no data record yet (``data.json`` is to be written).

    Raises:
        ConfigError: Naming both sources, if the run's data fingerprint differs.
    """
    path = os.path.join(run_dir.experiment_dir(config), "data.json")
    if not os.path.exists(path):
        return True
    previous = run_dir.read_json(path, "data record")
    if previous.get("fingerprint") != record["fingerprint"]:
        raise ConfigError(
            "data_dir",
            f"this run was trained on {previous.get('source')} (data fingerprint {previous.get('fingerprint')}), "
            f"but the data found now is {record['source']} (fingerprint {record['fingerprint']}); point "
            "--data_dir or --tfds_data_dir at the run's data, or use another --output_dir",
        )
    return False


def _run_replicates(config: ExperimentConfig, strategy) -> bool:
    splits = get_splits(config.data)
    check_model(config, splits)
    record = {"source": splits.source, "fingerprint": splits_fingerprint(splits), "sizes": list(splits.sizes())}
    new_data_record = check_data(config, record)
    run_dir.prepare(config)  # only now: a command whose data fails writes nothing
    if new_data_record:
        atomic.write_json(os.path.join(run_dir.experiment_dir(config), "data.json"), record)
    train, val, test = splits.sizes()
    print(f"data: {splits.source}  train {train}  val {val}  test {test}  fingerprint {record['fingerprint']}", flush=True)
    trained = False
    for r in replicates(config):
        ctx = Context(config, splits, r, replicate_seed(config.seed, r), run_dir.replicate_dir(config, r), strategy)
        trained |= run_main_line(ctx)
        check_branch_inputs(ctx)
        trained |= run_branches(ctx)
    return trained


def check_batch_sizes(config: ExperimentConfig, strategy) -> None:
    """Every global batch size must split evenly across the replicas.

    Raises:
        ConfigError: Naming the flag.
    """
    replicas = strategy.num_replicas_in_sync
    for flag, size in (("batch_size", config.training.batch_size), ("branch_batch_size", config.branches.batch_size)):
        if size and size % replicas:
            raise ConfigError(flag, f"{size} does not split evenly across the {replicas} replicas of --strategy={config.run.strategy}")


def describe(config: ExperimentConfig) -> str:
    """One line naming the experiment, for logs."""
    return (
        f"{config.model.name} on {config.data.name}, levels 0-{config.pruning.levels}, "
        f"replicates {replicates(config)}, seed {config.seed}"
    )
