"""End-to-end: the real CLI (`python -m lottery_tf.main`) in a subprocess."""

import glob
import json
import os
import subprocess
import sys

import launcher
import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def cli(*args, timeout=300, env=None, fresh=False):
    """``python -m lottery_tf.main *args``: forked (tests/launcher.py), or ``fresh``: a new interpreter."""
    return (subprocess.run if fresh else launcher.run)(
        [sys.executable, "-m", "lottery_tf.main", *args],
        cwd=REPO,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def smoke(out, *extra, env=None, fresh=False):
    return cli("--flagfile=flags/smoke.flags", f"--output_dir={out}", *extra, env=env, fresh=fresh)


def error_lines(result):
    return [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]


def replicate(out, r=0):
    (folder,) = glob.glob(os.path.join(out, "lottery_*", f"replicate_{r}"))
    return folder


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "smoke")
    result = smoke(out, fresh=True)  # the one run of this file in a new interpreter, as a user starts it
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_smoke_run_writes_every_level_and_prints_table(smoke_run):
    out, result = smoke_run
    assert "| experiment | branch | level |" in result.stdout
    (experiment,) = glob.glob(os.path.join(out, "lottery_*"))
    assert f"results: {experiment}" in result.stdout
    settings = json.load(open(os.path.join(experiment, "settings.json")))
    assert settings["pruning"]["levels"] == 2 and settings["data"]["name"] == "synthetic"
    assert json.load(open(os.path.join(experiment, "identity.json"))) == {
        "data.name": "synthetic",
        "data.validation_examples": 512,
        "training.eval_every": 50,
        "training.iterations": 200,
    }
    rep = replicate(out)
    # Layer-wise: hidden layers keep 80% then 64%, the output layer 90% then 81%.
    level2 = json.load(open(os.path.join(rep, "level_02", "main", "metrics.json")))
    assert level2["layer_densities"] == {
        "fc1/kernel": 150528 / 235200,
        "fc2/kernel": 19200 / 30000,
        "output/kernel": 810 / 1000,
    }
    assert level2["iterations"] == [0, 50, 100, 150, 200]
    for key in ("val", "test"):
        assert len(level2["curves"][key]["accuracy"]) == 5
    best = int(np.argmin(level2["curves"]["val"]["loss"]))
    assert level2["early_stop_iteration"] == level2["iterations"][best]
    assert level2["early_stop_test_accuracy"] == level2["curves"]["test"]["accuracy"][best]
    assert level2["final_test_accuracy"] > 0.5  # learns the synthetic task
    reinit = json.load(open(os.path.join(rep, "level_02", "reinit", "metrics.json")))
    assert reinit["layer_densities"] == level2["layer_densities"]
    # Finished levels keep no checkpoints.
    assert not glob.glob(os.path.join(rep, "level_*", "*", "checkpoints"))
    summary = open(os.path.join(experiment, "summary.md")).read()
    assert summary.count("| main |") == 3 and summary.count("| reinit |") == 1


def test_tensorboard_event_files_hold_accuracy_sparsity_hparams_histograms(smoke_run):
    import tensorflow as tf
    from tensorboard.backend.event_processing import plugin_event_multiplexer

    out, _ = smoke_run
    rep = replicate(out)
    experiment = os.path.dirname(rep)
    # TensorBoard's own run names (what its run list shows) end in what differs: replicate, level, branch.
    runs = ["r0/L00-main", "r0/L01-main", "r0/L02-main", "r0/L02-reinit"]
    for logdir, prefix in ((out, f"{os.path.basename(experiment)}/tensorboard/"), (experiment, "tensorboard/")):
        multiplexer = plugin_event_multiplexer.EventMultiplexer()
        multiplexer.AddRunsFromDirectory(logdir)
        assert sorted(multiplexer.Runs()) == [prefix + run for run in runs]
    assert not os.path.exists(os.path.join(rep, "tensorboard"))  # the layout before issue 30
    tags, values = set(), {}
    for path in glob.glob(os.path.join(experiment, "tensorboard", "r0", "L01-main", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values[value.tag] = float(tf.make_ndarray(value.tensor))
    assert {
        "val/accuracy",
        "val/loss",
        "test/accuracy",
        "test/loss",
        "sparsity/overall",
        "sparsity/fc1/kernel",
        "sparsity/fc2/kernel",
        "sparsity/output/kernel",
        "surviving_weights/fc1/kernel",
        "_hparams_/session_start_info",
        "train/learning_rate",
        "train/examples_per_second",
    } <= tags
    assert values["sparsity/fc1/kernel"] == pytest.approx(0.2)
    assert values["sparsity/output/kernel"] == pytest.approx(0.1)
    assert values["train/learning_rate"] == pytest.approx(1.2e-3)
    assert values["train/examples_per_second"] > 0


def test_rerun_does_no_work_and_more_levels_continue(smoke_run, tmp_path):
    out, _ = smoke_run
    rep = replicate(out)
    stamp = os.path.getmtime(os.path.join(rep, "level_01", "main", "metrics.json"))
    again = smoke(out)
    assert again.returncode == 0
    assert "done:" not in again.stdout and "nothing to do" in again.stdout
    assert os.path.getmtime(os.path.join(rep, "level_01", "main", "metrics.json")) == stamp

    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-r", out, copy], check=True)
    more = smoke(copy, "--levels=3")
    assert more.returncode == 0, more.stderr[-2000:]
    done = [line for line in more.stdout.splitlines() if " done:" in line]
    assert done == [line for line in done if "level  3 [main]" in line] and len(done) == 1
    assert glob.glob(os.path.join(copy, "lottery_*")) == [os.path.join(copy, os.path.basename(os.path.dirname(rep)))]


def test_other_settings_go_to_another_folder(smoke_run, tmp_path):
    out, _ = smoke_run
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-r", out, copy], check=True)
    result = smoke(copy, "--pruning_fraction=0.5", "--levels=0", "--branch=", "--branch_levels=")
    assert result.returncode == 0
    folders = sorted(os.path.basename(f) for f in glob.glob(os.path.join(copy, "lottery_*")))
    assert len(folders) == 2


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--dataset=cifar",
            "--dataset: unknown dataset 'cifar'; expected one of cifar10, fashion_mnist, imagenet2012, mnist, synthetic",
        ),
        (
            "--model=resnet",
            "--model: unknown model 'resnet'; expected one of conv2, conv4, conv6, lenet_300_100, "
            "resnet20, resnet50, vgg11, vgg13, vgg16, vgg19, cifar_resnet_<depth 6n+2>[_<width>], "
            "keras.applications.<Name> (e.g. keras.applications.MobileNetV2)",
        ),
        ("--pruning_fraction=0", "--pruning_fraction: expected a number in [0.001, 1), got 0.0"),
        ("--pruning_fraction=1.5", "--pruning_fraction: expected a number in [0.001, 1), got 1.5"),
        ("--output_pruning_fraction=-0.2", "--output_pruning_fraction: expected a number in [0.001, 1), got -0.2"),
        ("--iterations=-3", "--iterations: expected an integer >= 1, got -3"),
        ("--iterations=1.5", "--iterations: expected a length in steps (500 or 500it) or epochs (2ep), got '1.5'"),
        ("--batch_size=1.5", "--batch_size: expected an integer >= 1, got '1.5'"),
        ("--levels=abc", "--levels: expected an integer in [0, 200], got 'abc'"),
        ("--learning_rate=fast", "--learning_rate: expected a number in (0, 100], got 'fast'"),
        ("--lr_schedule=linear", "--lr_schedule: unknown value 'linear'; expected one of constant, step, cosine"),
        (
            "--lr_milestones=500",
            "--lr_milestones: 500 is set, but only --lr_schedule=step reads it (this run has --lr_schedule=constant); remove it",
        ),
        ("--warmup=10ep", "--warmup: must be below --iterations=200; got 250"),  # 1 epoch = 1536 // 60 = 25 steps
        (
            "--mixed_precision=fp8",
            "--mixed_precision: unknown value 'fp8'; expected one of (empty), mixed_float16, mixed_bfloat16",
        ),
        (
            "--strategy=gpus",
            "--strategy: unknown value 'gpus'; expected one of default, one_device, mirrored, multi_worker_mirrored, tpu",
        ),
        ("--synthetic_shape=32,x", "--synthetic_shape: expected integers like 32,32,3, got '32,x'"),
        ("--rewind_step=-1", "--rewind_step: expected an integer >= 0, got -1"),
        ("--rewind_step=500", "--rewind_step: must be below --iterations=200; got 500"),
        ("--levels=-1", "--levels: expected an integer in [0, 200], got -1"),
        ("--branch_levels=7", "--branch_levels: level 7 does not exist: the main line has levels 0-2 (--levels)"),
        (
            "--branch_levels=a-b",
            "--branch_levels: expected levels like 0-3,7,11, got 'a-b' (invalid literal for int() with base 10: 'a')",
        ),
        (
            "--branch=shuffle",
            "--branch: unknown value 'shuffle'; expected one or more of reinit, random_prune, rewind, lr_rewind, lr_rewind_oneshot, retrain, instability, stability, "
            "pai_magnitude, pai_random, pai_snip, pai_grasp, pai_synflow, gmp, set, rigl",
        ),
        ("--branch=rewind", "--branch_rewind_step: the rewind branch needs the step to rewind to (an integer >= 0)"),
        ("--replicates=0", "--replicates: expected an integer in [1, 10000], got 0"),
        ("--checkpoint_every=7", "--checkpoint_every: must be a multiple of --steps_per_execution=50; got 7"),
        (
            "--data_dir=/no/such/folder",
            "--data_dir: /no/such/folder is set, but only --dataset=mnist or fashion_mnist reads it (this run has --dataset=synthetic); remove it",
        ),
        ("--flagfile=flags/nope.flags", "--flagfile: 'flags/nope.flags' does not exist or is not readable"),
        ("--validation_examples=0", "--validation_examples: expected an integer >= 1, got 0"),
        ("--rewind_optimizer=zero", "--rewind_optimizer: unknown value 'zero'; expected one of fresh, reset, restore"),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, capfd, monkeypatch, flag, message):
    # The CLI's entry point in-process (absl flags and all): a process per case would
    # spend most of its time importing TensorFlow. test_output_dir_that_is_a_file and
    # test_trust.py run the same path in real processes.
    from absl import flags

    from lottery_tf import main as cli_main

    monkeypatch.chdir(REPO)
    out = str(tmp_path / "run")
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:
        cli_main.run(["lottery_tf.main", "--flagfile=flags/smoke.flags", f"--output_dir={out}", flag])
    assert exit_info.value.code == 2
    assert capfd.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not os.path.exists(out)


def test_output_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("precious")
    result = smoke(str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --output_dir: '{path}' exists and is not a folder"
    assert path.read_text() == "precious"


def test_unreadable_settings_file_is_named(smoke_run, tmp_path):
    out, _ = smoke_run
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-r", out, copy], check=True)
    (identity,) = glob.glob(os.path.join(copy, "lottery_*", "identity.json"))
    with open(identity, "w") as handle:
        handle.write("{not json")
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(copy, "**"), recursive=True)}
    result = smoke(copy)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line.startswith(f"error: {identity}: is unreadable") and line.endswith(
        "a run refuses this folder: restore identity.json or move the experiment aside"
    )
    assert {p: os.path.getmtime(p) for p in glob.glob(os.path.join(copy, "**"), recursive=True)} == before


def test_missing_data_is_one_line_naming_both_ways(tmp_path):
    result = smoke(
        str(tmp_path / "run"),
        "--dataset=mnist",
        "--tfds_download=false",
        f"--tfds_data_dir={tmp_path / 'tfds'}",
        env={"LOTTERY_TF_IDX_SEARCH_PATH": str(tmp_path / "none")},
    )
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "--data_dir" in line and "tfds build mnist" in line
    assert not glob.glob(str(tmp_path / "run" / "*" / "replicate_*"))


def test_helpfull_lists_every_flag_with_help():
    result = cli("--helpfull")
    for flag in (
        "dataset",
        "data_dir",
        "model",
        "optimizer",
        "iterations",
        "pruning_method",
        "pruning_fraction",
        "output_pruning_fraction",
        "levels",
        "rewind_step",
        "branch",
        "branch_levels",
        "replicates",
        "checkpoint_every",
        "[no]deterministic",
        "output_dir",
    ):
        assert f"--{flag}:" in result.stdout, flag
    assert "Fraction of the remaining weights pruned per level" in result.stdout


@pytest.mark.parametrize(
    "flagfile", sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "flags", "*.flags")))
)
def test_every_flagfile_validates(flagfile, tmp_path, capfd, monkeypatch):
    from absl import flags

    from lottery_tf import main as cli_main

    monkeypatch.chdir(REPO)
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:  # absl's app.run exits after main returns
        cli_main.run(["lottery_tf.main", f"--flagfile=flags/{flagfile}", "--dry_run", f"--output_dir={tmp_path}"])
    captured = capfd.readouterr()
    assert exit_info.value.code in (0, None), captured.err[-2000:]
    settings, _ = json.JSONDecoder().raw_decode(captured.out)  # a sweep prints one config per rewind step
    lines = captured.out.strip().splitlines()
    assert lines[-3].startswith(f"run folder: {tmp_path}/lottery_")  # then the study graph's size, two lines
    assert lines[-2].startswith("study graph: ") and lines[-1].startswith("ideal speed-up with N trainings at once: 1:")
    assert not os.listdir(tmp_path)  # a dry run writes nothing
    if settings["pruning"]["layer_fractions"]:
        from lottery_tf.core.masking import mask_names, wrap_model
        from lottery_tf.engine.config import ModelConfig
        from lottery_tf.engine.models import build_model

        model = wrap_model(build_model(ModelConfig(name=settings["model"]["name"]), (32, 32, 3), 10))
        assert {name for name, _ in settings["pruning"]["layer_fractions"]} <= set(mask_names(model))


def test_a_dry_run_checks_the_model_as_a_run_does_and_loads_no_data(tmp_path):
    """Layers, exclusions, levels (on the dataset's nominal images) and batch sizes over the replicas are
    checked as a run checks them: the run's line, exit 2."""
    cases = (
        ["--exclude_layers=fc9"],
        ["--levels=60"],
        ["--layer_pruning_fractions=fc1/kernel=0.5,fc3=0.1"],
        ["--strategy=mirrored", "--cpu_devices=2", "--batch_size=61"],  # 2 replicas: a batch that does not split
    )
    for case in cases:
        ran = smoke(str(tmp_path / "run"), *case)
        dry = smoke(str(tmp_path / "dry"), *case, "--dry_run")
        assert ran.returncode == dry.returncode == 2, (case, dry.stderr[-1500:])
        (line,) = error_lines(ran)
        assert dry.stderr.strip().splitlines() == [line], case
    # ResNet-50 on ImageNet, which this machine does not have: its layers checked all the same.
    dry = cli(
        "--flagfile=flags/imagenet_resnet50_rewind.flags",
        f"--output_dir={tmp_path}",
        "--exclude_layers=conv9",
        "--dry_run",
    )
    assert dry.returncode == 2 and error_lines(dry)[0].startswith(
        "error: --exclude_layers: exclude names layers that are not in the model: ['conv9']; the layers with weights "
        "to prune are ['conv1_conv', 'conv2_block1_0_conv', "
    ), dry.stderr[-1500:]
    dry = smoke(str(tmp_path / "dry"), "--dataset=mnist", "--dry_run")  # no MNIST here: a dry run plans all the same
    assert dry.returncode == 0 and dry.stdout.strip().splitlines()[-2].startswith("study graph: "), dry.stderr[-1500:]
    assert not os.listdir(tmp_path)


def test_paper_recipes_resolve_epochs(tmp_path):
    result = cli("--flagfile=flags/cifar10_resnet20_rewind.flags", "--dry_run", f"--output_dir={tmp_path}")
    training = json.loads(result.stdout[: result.stdout.rindex("}") + 1])["training"]
    # 45,000 training images / batch 128 = 351 steps per epoch.
    assert training["iterations"] == 160 * 351 and training["lr_milestones"] == [80 * 351, 120 * 351]
    assert training["weight_decay_mode"] == "l2" and training["lr_schedule"] == "step"


def test_unknown_layer_fraction_names_the_flag(tmp_path):
    result = smoke(str(tmp_path / "run"), "--layer_pruning_fractions=conv9/kernel=0.1")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line == (
        "error: --layer_pruning_fractions: 'conv9/kernel' matches no masked weight; "
        "the model has fc1/kernel, fc2/kernel, output/kernel"
    )
    assert not os.path.exists(tmp_path / "run")  # checked before the run folder is written


def test_layer_fraction_may_name_a_layer_with_one_mask(tmp_path):
    """`fc1=0.5` means fc1/kernel, as in the library."""
    result = smoke(
        str(tmp_path / "run"), "--layer_pruning_fractions=fc1=0.5", "--levels=1", "--branch=", "--branch_levels="
    )
    assert result.returncode == 0, result.stderr[-1500:]
    (metrics,) = glob.glob(
        os.path.join(str(tmp_path / "run"), "lottery_*", "replicate_0", "level_01", "main", "metrics.json")
    )
    densities = json.load(open(metrics))["layer_densities"]
    assert densities["fc1/kernel"] == 0.5 and densities["fc2/kernel"] == 0.8


def test_a_tilde_in_a_folder_flag_is_the_home_folder(tmp_path, capfd, monkeypatch):
    from absl import flags

    from lottery_tf import main as cli_main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HOME", str(tmp_path))
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:
        cli_main.run(["lottery_tf.main", "--flagfile=flags/smoke.flags", "--output_dir=~/runs", "--dry_run"])
    assert exit_info.value.code in (0, None)
    out = capfd.readouterr().out
    assert f"run folder: {tmp_path}/runs/lottery_" in out and '"output_dir": "' + str(tmp_path / "runs") in out
    assert not os.path.exists(os.path.join(REPO, "~"))


def test_n_m_start_is_printed_from_the_masks_level_by_level(tmp_path):
    """The earliest N:M level is printed before training; after each level, which weights have 2:4 (from
    the level's own masks, as metrics.json records), and a warning if one has not got it by the last level."""
    from lottery_tf.core.pruning import satisfies_n_m

    out = tmp_path / "runs"
    result = smoke(
        out,
        "--pruning_n_m=2:4",
        "--levels=7",
        "--iterations=40",
        "--eval_every=20",
        "--checkpoint_every=0",
        "--branch=",
        "--branch_levels=",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "pruning: 2:4 can hold from level 4 at the earliest (the levels before keep more than 50% and prune "
        "single weights); per weight, at the earliest: fc1/kernel level 4, fc2/kernel level 4, output/kernel level 7"
    ) in result.stdout
    folder = replicate(str(out))
    for level in range(8):
        metrics = json.load(open(os.path.join(folder, f"level_{level:02d}", "main", "metrics.json")))
        with np.load(os.path.join(folder, f"level_{level:02d}", "main", "masks.npz")) as masks:
            expected = {name: bool(satisfies_n_m(masks[name], (2, 4))) for name in masks.files}
        assert metrics["n_m_holds"] == expected
        have = [name for name, ok in expected.items() if ok]
        assert (
            f"replicate 0 level {level:2d} [main] 2:4 holds for {', '.join(have) or 'no weight yet'}" in result.stdout
        )
    assert not any(expected.values()) or level >= 4
    lacking = [name for name, ok in expected.items() if not ok]  # the last level's
    warned = "warning: 2:4 never held for " in result.stderr
    assert warned == bool(lacking)
    if lacking:
        assert f"warning: 2:4 never held for {', '.join(lacking)} by level 7, the last (--levels)" in result.stderr


def test_the_commands_refuse_a_keras_backend_other_than_tensorflow_with_one_line(tmp_path):
    """The engine is TensorFlow; under KERAS_BACKEND=jax (the library's other backend) each command says so."""
    out = tmp_path / "run"
    run = cli("--flagfile=flags/smoke.flags", f"--output_dir={out}", env={"KERAS_BACKEND": "jax"})
    export = launcher.run(
        [sys.executable, "-m", "lottery_tf.export", str(tmp_path / "missing"), "--level=0"],
        cwd=REPO,
        env={**ENV, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    for result, command in ((run, "python -m lottery_tf.main"), (export, "python -m lottery_tf.export")):
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = error_lines(result)
        assert line == (
            f"error: KERAS_BACKEND is 'jax', but {command} runs on TensorFlow (tf.distribute, TensorFlow Datasets, "
            "TensorBoard); run it with KERAS_BACKEND=tensorflow or unset (lottery_tf's Keras library in your own "
            "code runs on jax)"
        )
    assert not out.exists()


def test_a_bad_flag_is_refused_before_tensorflow_is_imported(tmp_path):
    """``python -m lottery_tf.main`` imports TensorFlow only where it trains or builds: a typo costs no 6 s import."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lottery_tf.main", "--flagfile=flags/smoke.flags"]
        + [f"--output_dir={out}", "--iterations=-3"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result) == ["error: --iterations: expected an integer >= 1, got -3"]
    imported = {
        line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert "lottery_tf.engine.config" in imported and not imported & {"tensorflow", "keras"}, sorted(imported)[:5]
    assert not out.exists()
