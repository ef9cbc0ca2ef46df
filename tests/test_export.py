"""Tickets out of run folders: load_ticket, and python -m lottery_tf.export end to end on a smoke run with 1x4 blocks."""

import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import launcher
import numpy as np
import pytest
from conftest import REPO

from lottery_tf import TicketError, load_ticket
from lottery_tf import export as export_cli
from lottery_tf.core import litert
from lottery_tf.core.masking import get_masks, get_prunable_weights, overall_density
from lottery_tf.core.pruning import block_ids

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
RUN = ["--flagfile=flags/smoke.flags", "--pruning_block=1x4", "--branch=reinit,random_prune", "--branch_levels=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "runs")
    result = launcher.run(
        [sys.executable, "-m", "lottery_tf.main", *RUN, f"--output_dir={out}"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (experiment,) = glob.glob(os.path.join(out, "lottery_*"))
    return experiment


def _level(experiment, level, branch="main"):
    return os.path.join(experiment, "replicate_0", f"level_{level:02d}", branch)


def test_load_ticket_final_and_rewind_weights(run):
    final = load_ticket(run, level=2)
    metrics = json.load(open(os.path.join(_level(run, 2), "metrics.json")))
    assert overall_density(final) == pytest.approx(metrics["density"])
    trained = np.load(os.path.join(_level(run, 2), "final_weights.npz"))
    for name, value in get_prunable_weights(final).items():
        np.testing.assert_array_equal(value, trained[name])
    ticket = load_ticket(run, level=2, weights="rewind")  # the mask on the rewind point: the winning ticket
    start = np.load(os.path.join(run, "replicate_0", "rewind_point.npz"))
    masks = get_masks(ticket)
    for name, value in get_prunable_weights(ticket).items():
        np.testing.assert_array_equal(value, start[name] * masks[name])
    # Every 1x4 block is whole: kept or pruned as a unit.
    for name, mask in masks.items():
        ids, _ = block_ids(mask.shape, (1, 4))
        counts = np.bincount(ids.ravel(), weights=mask.ravel())
        sizes = np.bincount(ids.ravel())
        assert np.all((counts == 0) | (counts == sizes)), name


def test_load_ticket_of_branches(run):
    reinit = load_ticket(run, level=2, branch="reinit", weights="rewind")
    info = json.load(open(os.path.join(_level(run, 2, "reinit"), "branch.json")))
    assert "init_seed" in info["start_state"]  # the reinit control starts from a fresh initialization
    np.testing.assert_array_equal(
        get_masks(reinit)["fc1/kernel"], np.load(os.path.join(_level(run, 2), "masks.npz"))["fc1/kernel"]
    )
    random_final = load_ticket(run, level=2, branch="random_prune_layerwise")
    assert overall_density(random_final) == pytest.approx(overall_density(load_ticket(run, level=2)), abs=1e-3)
    ids, _ = block_ids((784, 300), (1, 4))  # the random control draws random blocks
    mask = get_masks(random_final)["fc1/kernel"]
    assert np.all(np.isin(np.bincount(ids.ravel(), weights=mask.ravel()), (0, 4)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"level": 5}, "level 5 of branch 'main' is not finished in"),
        ({"level": 1, "branch": "reinit"}, "level 1 of branch 'reinit' is not finished"),
        (
            {"level": 2, "branch": "rewind_0"},
            "has no finished level of branch 'rewind_0'; its branches are main, random_prune_layerwise, reinit",
        ),
        ({"level": 2, "replicate": 3}, "has no replicate 3; it has replicates 0"),
        ({"level": 2, "weights": "best"}, "weights must be one of final, rewind"),
    ],
)
def test_load_ticket_errors_name_what_is_missing(run, kwargs, message):
    with pytest.raises(TicketError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_ticket(run, **kwargs)
    with pytest.raises(TicketError, match="is not a lottery_tf experiment folder"):
        load_ticket(os.path.dirname(run), level=1)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exported") / "ticket")
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.export",
            run,
            "--level=2",
            f"--out={out}",
            "--formats=keras,litert,saved_model",
            "--quantize=none,dynamic,int8",
            "--latency_runs=5",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out, json.load(open(os.path.join(out, "export.json"))), result


def test_export_writes_every_artifact_and_measures_each_by_running_it(exported, run):
    out, record, result = exported
    assert sorted(os.listdir(out)) == [
        "export.json",
        "saved_model",
        "ticket.keras",
        "ticket.tflite",
        "ticket_dynamic.tflite",
        "ticket_int8.tflite",
    ]
    artifacts = record["artifacts"]
    keras_accuracy = artifacts["keras"]["accuracy"]
    assert abs(keras_accuracy - record["run_test_accuracy"]) <= 1 / 512  # the run's own accuracy, 512 test images
    float_file = artifacts["ticket.tflite"]
    for label in ("default_delegates", "without_default_delegates"):
        assert float_file[label]["accuracy"] == keras_accuracy and float_file[label]["max_output_difference"] < 1e-4
    assert artifacts["saved_model"]["accuracy"] == keras_accuracy
    for name in ("ticket_dynamic.tflite", "ticket_int8.tflite"):
        assert abs(artifacts[name]["without_default_delegates"]["accuracy"] - keras_accuracy) < 0.05
    for entry in artifacts.values():
        assert entry["bytes"] > entry["gzip_bytes"] > 0
    # The dense LeNet file is 1,066,368 bytes; this ticket keeps 64% of fc1 and fc2: 4 bytes a kept weight and a
    # few bytes of index per block.
    assert artifacts["ticket.tflite"]["bytes"] < (record["density"] + 0.05) * 1_066_368
    # The interpreter's failure on one artifact is named and the others are still written.
    failed = [p for p in record["problems"] if "under the interpreter's default delegates" in p]
    assert failed and all(
        "failed to prepare" in p
        and p.endswith("run it with the builtin kernels (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)")
        for p in failed
    )
    assert all(f"warning: {p}" in result.stderr for p in failed)
    # Every file's weights were decoded and checked against the ticket; each configuration against Keras.
    for name in ("ticket.tflite", "ticket_dynamic.tflite", "ticket_int8.tflite"):
        assert artifacts[name]["stored_weights"]["equal_to_ticket"], name
        assert artifacts[name]["run_with"], name


def test_the_tflite_file_runs_in_the_interpreter_with_the_keras_accuracy(exported):
    out, record, _ = exported
    from lottery_tf.engine.config import DataConfig
    from lottery_tf.engine.data import get_splits

    splits = get_splits(DataConfig(name="synthetic", validation_examples=512))
    flat = open(os.path.join(out, "ticket.tflite"), "rb").read()
    logits = litert.Runner(flat, default_delegates=False).predict(splits.x_test)
    assert float(np.mean(np.argmax(logits, -1) == splits.y_test)) == record["artifacts"]["keras"]["accuracy"]


def test_the_storage_is_sparse_in_blocks_and_read_by_the_sparse_kernel(exported):
    _, record, _ = exported
    weights = record["artifacts"]["ticket.tflite"]["weights"]
    assert sorted(weights) == ["fc1/kernel", "fc2/kernel", "output/kernel"]
    # The converter stores a weight sparse only where that is smaller: not the output layer, 80.8% kept.
    assert record["layer_densities"]["output/kernel"] == pytest.approx(0.808)
    output = weights.pop("output/kernel")
    assert not output["sparse"] and output["value_bytes"] == 4 * 10 * 100
    for name, stored in weights.items():
        assert record["layer_densities"][name] == pytest.approx(0.64)
        assert stored["sparse"] and stored["block"] == [1, 4], name
        assert stored["nonzeros"] == stored["kept"]  # blocks hold only kept weights
        assert stored["value_bytes"] == 4 * stored["kept"]  # float32 values, no zeros stored
        assert stored["bytes_per_nonzero"] < 4 + 1  # 4 bytes of value and a fraction of a byte of index per weight
        assert stored["read_by"] == ["FULLY_CONNECTED"]  # no DENSIFY: the sparse kernel runs on it
    int8 = record["artifacts"]["ticket_int8.tflite"]["weights"]
    for name in weights:  # int8 needs 1x16 blocks: stored sparse, expanded to dense at load
        assert int8[name]["sparse"] and int8[name]["read_by"] == ["DENSIFY"], name


@pytest.fixture(scope="module")
def dense_export(run):
    """Level 0 exported to its default folder, <experiment>/exports/replicate_0_level_00_main_final."""
    assert (
        export_cli.main([run, "--level=0", "--formats=keras,litert", "--quantize=none,int8", "--latency_runs=5"]) == 0
    )
    return os.path.join(run, "exports", "replicate_0_level_00_main_final")


def test_a_dense_level_is_stored_dense(dense_export):
    weights = json.load(open(os.path.join(dense_export, "export.json")))["artifacts"]["ticket.tflite"]["weights"]
    assert sorted(weights) == ["fc1/kernel", "fc2/kernel", "output/kernel"]
    assert not any(w["sparse"] for w in weights.values())
    assert all(w["value_bytes"] == 4 * int(np.prod(w["shape"])) for w in weights.values())


def test_the_report_adds_a_deployment_table(run, exported, dense_export, tmp_path):
    from lottery_tf.reports import cli as report_cli

    out, record, _ = exported
    shutil.copytree(out, os.path.join(run, "exports", "replicate_0_level_02_main_final"))
    assert report_cli.main([run, "--out", str(tmp_path / "report"), "--no_plots"]) == 0
    table = open(tmp_path / "report" / "deployment_table.md").read().splitlines()
    level0 = next(l for l in table if "| 1x4 blocks | main | 0 |" in l)
    level2 = next(l for l in table if "| 1x4 blocks | main | 2 |" in l)
    dense_bytes = json.load(open(os.path.join(dense_export, "export.json")))["artifacts"]["ticket.tflite"]["bytes"]
    ticket = record["artifacts"]["ticket.tflite"]
    cells = [c.strip() for c in level2.split("|")[1:-1]]
    assert (
        cells[5] == f"{100 * record['density']:.2f}"
        and cells[8] == f"{100 * ticket['without_default_delegates']['accuracy']:.2f}"
    )
    assert cells[10] == f"{ticket['bytes']:,}" and cells[12] == f"{ticket['bytes'] / dense_bytes:.2f}"
    assert cells[15] == "FULLY_CONNECTED on the stored format"
    assert level0.split("|")[13].strip() == ""  # the dense export has nothing to be compared with


def test_the_keras_file_loads_in_a_fresh_process_without_lottery_tf(exported):
    out, record, _ = exported
    code = (
        "import sys, numpy as np, keras; "
        f"m = keras.models.load_model({os.path.join(out, 'ticket.keras')!r}); "
        "assert not any(name.startswith('lottery_tf') for name in sys.modules), 'lottery_tf was imported'; "
        "assert not m.compiled and not m.get_config().get('optimizer'), 'an optimizer was saved'; "
        "k = m.get_layer('fc1').kernel.numpy(); print(m.count_params(), float((k != 0).mean()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    params, fc1_density = result.stdout.split()
    assert int(params) == 266610 and float(fc1_density) == pytest.approx(record["layer_densities"]["fc1/kernel"])
    # float32 weights and a few KB of config: no optimizer state (Adam's moments would triple it)
    assert os.path.getsize(os.path.join(out, "ticket.keras")) < 1.1 * 4 * 266610


def snapshot(root):
    return {
        p: open(p, "rb").read() for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if os.path.isfile(p)
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--level=4"], "level 4 of branch 'main' is not finished"),
        (["--level=2", "--branch=rewind_0"], "has no finished level of branch 'rewind_0'"),
        (["--level=2", "--replicate=2"], "has no replicate 2"),
        (["--level=2", "--formats=onnx"], "--formats: unknown 'onnx'; expected some of keras, litert, saved_model"),
        (["--level=2", "--quantize=fp16"], "--quantize: unknown 'fp16'; expected some of none, dynamic, int8"),
        (["--level=2", "--formats=keras", "--quantize=int8"], "--quantize=int8 applies to LiteRT files: add litert"),
        (["--level=2", "--weights=best"], "--weights: expected final or rewind, got 'best'"),
        (["--level=2", "--out={existing}"], "--out: {existing} exists; pass --overwrite to replace it"),
        (["--level=abc"], "argument --level: invalid int value: 'abc'"),
    ],
)
def test_bad_export_input_is_one_line_before_anything_is_written(run, tmp_path, capsys, extra, message):
    existing = str(tmp_path / "existing")
    os.makedirs(existing)
    extra = [e.format(existing=existing) for e in extra]
    before = snapshot(os.path.dirname(run))
    try:
        code = export_cli.main([run, *extra])
    except SystemExit as exit_info:  # argparse's own checks (an integer flag that is not one)
        code = exit_info.code
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert (
        code == 2
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and message.format(existing=existing) in lines[0]
    )
    assert snapshot(os.path.dirname(run)) == before and os.listdir(existing) == []


# Issue 28, item 1: `--out=EXPERIMENT --overwrite` replaced a finished study with its export. The targets: the
# experiment, its parent (the runs root), the folder above that, the experiment under another name, folders
# inside it, another store, and folders that are not earlier exports; with --overwrite, as the data loss was.
OUT_TARGETS = {
    "the experiment": ("{experiment}", "{experiment} is the run folder this command reads: write to a folder"),
    "its parent, the runs root": ("{runs}", "{runs} holds {experiment}, which this command reads"),
    "the folder above the runs root": ("{above}", "{above} holds {experiment}, which this command reads"),
    "a link to the experiment": ("{link}", "{link} is the run folder this command reads ({experiment})"),
    "the experiment spelled with ..": ("{experiment}/replicate_0/..", "is the run folder this command reads"),
    "a replicate": ("{experiment}/replicate_0", "{experiment}/replicate_0 is inside the run folder {experiment}"),
    "a level's branch": ("{experiment}/replicate_0/level_01/reinit", "is inside the run folder {experiment}"),
    "a new folder in a level": ("{experiment}/replicate_0/level_01/x", "is inside the run folder {experiment}"),
    "the exports folder itself": ("{experiment}/exports", "{experiment}/exports is inside the run folder"),
    "another runs root": ("{other}", "{other} holds run data ({other}/lottery_0f0f)"),
    "a folder inside another experiment": ("{other}/lottery_0f0f/replicate_0", "is inside the run folder {other}"),
    "a studies folder, runs five deep": ("{t}/studies", "holds run data ({t}/studies/a/b/c/d/e/lottery_0e0e)"),
    "a copy renamed, identity lost": ("{t}/backup/replicate_0/x", "is inside the run folder {t}/backup: write"),
    "a replicate saved on its own": ("{t}/saved_replicate/new", "is inside the run folder {t}/saved_replicate"),
    "a folder of the user's": ("{t}/user", "{t}/user is not an earlier export (it holds no readable export.json)"),
    "an export with a file added": (
        "{t}/notes",
        "{t}/notes is not an earlier export (it holds the file 'notes.txt', which",
    ),
    "an export with a run in its SavedModel": ("{t}/hidden", "holds run data ({t}/hidden/saved_model)"),
    "an export with a file in its SavedModel": (
        "{t}/sm_file",
        "(it holds the file 'saved_model/variables/notes.txt', which",
    ),
    "an export naming a level it holds": ("{t}/named", "{t}/named is the run folder {t}/named: write to a folder"),
    "an export whose ticket.keras is a folder": ("{t}/keras_dir", "(it holds the folder 'ticket.keras', which"),
    "an export naming a file it never writes": (
        "{t}/named_file",
        "(it holds the file 'notes.txt', which lottery_tf.export",
    ),
}


@pytest.fixture(scope="module")
def targets(run, exported, tmp_path_factory):
    """Folders that an export may not replace nor write into, beside the run (``t`` is their folder)."""
    t = str(tmp_path_factory.mktemp("targets"))
    runs = os.path.dirname(run)
    level0 = os.path.join(run, "replicate_0", "level_00")
    names = {"experiment": run, "runs": runs, "above": os.path.dirname(runs), "link": f"{t}/link", "t": t}
    names["other"] = f"{t}/other"
    os.symlink(run, names["link"])
    os.makedirs(f"{t}/other/lottery_0f0f/replicate_0")
    open(f"{t}/other/lottery_0f0f/identity.json", "w").write("{}")
    os.makedirs(f"{t}/studies/a/b/c/d/e/lottery_0e0e")
    open(f"{t}/studies/a/b/c/d/e/lottery_0e0e/identity.json", "w").write("{}")
    shutil.copytree(level0, f"{t}/backup/replicate_0/level_00")  # no identity.json, not named lottery_*
    shutil.copytree(level0, f"{t}/saved_replicate/level_00")
    os.makedirs(f"{t}/user")
    open(f"{t}/user/thesis.tex", "w").write("mine")
    for name in ("notes", "hidden", "sm_file", "named", "named_file", "keras_dir"):
        shutil.copytree(exported[0], f"{t}/{name}")
    for name in ("notes/notes.txt", "sm_file/saved_model/variables/notes.txt", "named_file/notes.txt"):
        open(f"{t}/{name}", "w").write("mine")
    shutil.copytree(os.path.join(run, "replicate_0"), f"{t}/hidden/saved_model/replicate_0")
    shutil.copytree(level0, f"{t}/named/level_00")
    os.remove(f"{t}/keras_dir/ticket.keras")
    os.makedirs(f"{t}/keras_dir/ticket.keras")
    for name, file in (("named", "level_00"), ("named_file", "notes.txt")):  # export.json edited to name them
        record = json.load(open(f"{t}/{name}/export.json"))
        record["artifacts"]["extra"] = {"file": file}
        json.dump(record, open(f"{t}/{name}/export.json", "w"))
    return names


@pytest.mark.parametrize("target, message", OUT_TARGETS.values(), ids=list(OUT_TARGETS))
def test_overwrite_never_replaces_run_data_nor_a_folder_that_is_not_an_export(run, targets, capsys, target, message):
    above = targets["above"]
    before = {**snapshot(above), **snapshot(targets["t"])}
    for overwrite in (["--overwrite"], []):
        code = export_cli.main([run, "--level=2", "--formats=keras", f"--out={target.format(**targets)}", *overwrite])
        lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --out: "), lines
        assert message.format(**targets) in lines[0], lines[0]
    assert {**snapshot(above), **snapshot(targets["t"])} == before
    assert [os.path.basename(p) for p in glob.glob(os.path.join(targets["runs"], "*"))] == [os.path.basename(run)]


def test_overwrite_replaces_an_earlier_export_whole(run, tmp_path, capsys):
    out = str(tmp_path / "ticket")
    os.makedirs(out)  # an empty folder: nothing to lose, but it exists
    assert export_cli.main([run, "--level=1", "--formats=keras", f"--out={out}", "--latency_runs=1"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out: {out} exists; pass --overwrite to replace it"
    args = [run, "--level=1", "--formats=keras,litert", f"--out={out}", "--latency_runs=1", "--overwrite"]
    assert export_cli.main(args) == 0
    assert sorted(os.listdir(out)) == ["export.json", "ticket.keras", "ticket.tflite"]
    # The export folder has the mode of every run folder (0777 less the umask), not tempfile.mkdtemp's 0700.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == stat.S_IMODE(os.stat(run).st_mode) == 0o777 & ~umask
    assert export_cli.main([run, "--level=2", "--formats=keras", f"--out={out}", "--latency_runs=1"]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out: {out} exists; pass --overwrite to replace it"
    assert (
        export_cli.main([run, "--level=2", "--formats=keras", f"--out={out}", "--latency_runs=1", "--overwrite"]) == 0
    )
    assert sorted(os.listdir(out)) == ["export.json", "ticket.keras"]  # the old export went whole
    assert json.load(open(os.path.join(out, "export.json")))["level"] == 2
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_int8_without_the_training_data_is_one_line(tmp_path, capsys):
    from test_data import write_idx_folder

    data = str(tmp_path / "idx")
    os.makedirs(data)
    write_idx_folder(data, n_train=120, n_test=40)
    out = str(tmp_path / "runs")
    result = launcher.run(
        [
            sys.executable,
            "-m",
            "lottery_tf.main",
            "--dataset=mnist",
            f"--data_dir={data}",
            "--validation_examples=20",
            "--batch_size=20",
            "--iterations=20",
            "--eval_every=10",
            "--levels=1",
            "--checkpoint_every=0",
            f"--output_dir={out}",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-1500:]
    os.rename(data, data + "_moved")
    (experiment,) = glob.glob(os.path.join(out, "lottery_*"))
    assert export_cli.main([experiment, "--level=1", "--quantize=none,int8", "--formats=litert"]) == 2
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert line.startswith("error: --quantize=int8 needs the run's data (mnist): ")
    assert not os.path.exists(os.path.join(experiment, "exports"))


def test_the_report_draws_accuracy_and_size_per_structure(run, exported, dense_export, tmp_path, drawn):
    from lottery_tf.reports import cli as report_cli

    out, record, _ = exported
    copy = os.path.join(run, "exports", f"replicate_0_level_{record['level']:02d}_main_final")
    if not os.path.exists(copy):
        shutil.copytree(out, copy)
    assert report_cli.main([run, "--out", str(tmp_path / "report")]) == 0
    accuracy, size = drawn["deployment_vs_weights.png"].axes
    dense = json.load(open(os.path.join(dense_export, "export.json")))["artifacts"]
    ticket = record["artifacts"]
    (bars,) = accuracy.containers  # errorbar: one container per structure
    assert bars.get_label() == "1x4 blocks"
    line = bars.lines[0]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), [100.0, 100 * record["density"]])
    np.testing.assert_allclose(
        np.asarray(line.get_ydata(), float),
        [
            100 * dense["ticket.tflite"]["without_default_delegates"]["accuracy"],
            100 * ticket["ticket.tflite"]["without_default_delegates"]["accuracy"],
        ],
    )
    lines = {l.get_label(): l for l in size.get_lines()}
    assert sorted(lines) == ["1x4 blocks, float32", "1x4 blocks, int8"]
    np.testing.assert_allclose(
        np.asarray(lines["1x4 blocks, float32"].get_ydata(), float),
        [dense["ticket.tflite"]["bytes"] / 1e3, ticket["ticket.tflite"]["bytes"] / 1e3],
    )
    np.testing.assert_allclose(
        np.asarray(lines["1x4 blocks, int8"].get_ydata(), float),
        [dense["ticket_int8.tflite"]["bytes"] / 1e3, ticket["ticket_int8.tflite"]["bytes"] / 1e3],
    )
    assert lines["1x4 blocks, int8"].get_linestyle() == "--" and size.get_yscale() == "log"
    summary = open(tmp_path / "report" / "deployment_summary.md").read().splitlines()
    row = next(l for l in summary if f"| 1x4 blocks | {record['level']} |" in l)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == f"{100 * record['density']:.2f}" and cells[7] == f"{ticket['ticket.tflite']['bytes']:,}"
    assert cells[9] == f"{ticket['ticket.tflite']['bytes'] / dense['ticket.tflite']['bytes']:.2f}" and cells[-1] == "1"


def test_the_report_after_a_keras_only_export_skips_the_figure_and_draws_what_litert_files_there_are(
    run, exported, tmp_path, drawn
):
    """Issue 30, item 1: after ``export --formats=keras`` the report crashed drawing a figure with no rows."""
    from lottery_tf.reports import cli as report_cli

    root = tmp_path / "runs"
    copy = str(root / os.path.basename(run))
    shutil.copytree(run, copy, ignore=lambda folder, names: ["exports"] if folder == run else [])
    command = [sys.executable, "-m", "lottery_tf.export", copy, "--level=1", "--formats=keras", "--latency_runs=5"]
    result = launcher.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    command = [sys.executable, "-m", "lottery_tf.report", str(root), f"--out={tmp_path / 'report'}"]
    result = launcher.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    notes = [l for l in result.stderr.splitlines() if l.startswith(("note:", "error:", "warning:"))]
    assert notes == [
        "note: deployment_vs_weights.png not drawn: no export of the main line's final weights holds a LiteRT file "
        "(ticket.tflite; python -m lottery_tf.export writes one with --formats=litert, its default)"
    ]
    assert not os.path.exists(tmp_path / "report" / "deployment_vs_weights.png")
    assert "deployment_table.md, deployment_table.csv, deployment_summary.md" in result.stdout
    table = open(tmp_path / "report" / "deployment_table.md").read()
    assert "| 1x4 blocks | main | 1 | 0 |" in table
    summary = open(tmp_path / "report" / "deployment_summary.md").read()
    assert summary.startswith("Nothing to summarize: no export of the main line's final weights holds a LiteRT file")

    # Beside it a LiteRT export of level 2: the figure draws that one (the Keras-only export has no file to size).
    out, record, _ = exported
    level2 = os.path.join(copy, "exports", "replicate_0_level_02_main_final")
    shutil.copytree(out, level2)
    assert report_cli.main([str(root), "--out", str(tmp_path / "report2")]) == 0
    accuracy, size = drawn["deployment_vs_weights.png"].axes
    (bars,) = accuracy.containers
    np.testing.assert_allclose(np.asarray(bars.lines[0].get_xdata(), float), [100 * record["density"]])
    float_file = record["artifacts"]["ticket.tflite"]
    np.testing.assert_allclose(
        np.asarray(bars.lines[0].get_ydata(), float), [100 * float_file["without_default_delegates"]["accuracy"]]
    )
    lines = {l.get_label(): l for l in size.get_lines()}
    assert sorted(lines) == ["1x4 blocks, float32", "1x4 blocks, int8"]
    np.testing.assert_allclose(np.asarray(lines["1x4 blocks, float32"].get_ydata(), float), [float_file["bytes"] / 1e3])

    # A float file the interpreter could not run: its size is drawn, no accuracy is (none was measured).
    edited = json.load(open(os.path.join(level2, "export.json")))
    for label in ("default_delegates", "without_default_delegates"):
        edited["artifacts"]["ticket.tflite"][label] = {"error": "cannot prepare", "agrees_with_keras": False}
    json.dump(edited, open(os.path.join(level2, "export.json"), "w"))
    drawn.clear()
    assert report_cli.main([str(root), "--out", str(tmp_path / "report3")]) == 0
    accuracy, size = drawn["deployment_vs_weights.png"].axes
    assert not accuracy.containers and accuracy.get_legend() is None
    assert sorted(l.get_label() for l in size.get_lines()) == ["1x4 blocks, float32", "1x4 blocks, int8"]
    row = next(l for l in open(tmp_path / "report3" / "deployment_table.md") if "| main | 2 |" in l)
    assert "float: wrong under default delegates and without default delegates" in row


# Issue 28, items 5 and 6: an unknown flag named before the missing --level, a latency bound, and an --out that
# cannot be made named as --out (not an OS error about a temporary folder); one line, nothing written.
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lvl=2"], "--lvl: unknown flag (did you mean --level?); python -m lottery_tf.export --help lists"),
        (["--level=2", "--overwrit"], "--overwrit: unknown flag (did you mean --overwrite?)"),  # no abbreviations
        (["--level=2", "--latency_runs=1000000000"], "--latency_runs: expected an integer in [1, 1000]"),
        (["--level=2", "--latency_runs=0"], "--latency_runs: expected an integer in [1, 1000]"),
        (["--level=2", "--out=/proc/x"], "--out: /proc is a proc filesystem that holds no files"),
        (["--level=2", "--out={tmp}/loop/x"], "--out: {tmp}/loop is a symbolic link that leads nowhere"),
        (["--level=2", "--out={tmp}/a_file/x"], "--out: {tmp}/a_file is a file, not a folder"),
        (["--level=2", "--out=~nosuchuser/x"], "--out: ~nosuchuser/x: there is no user 'nosuchuser'"),
    ],
)
def test_bad_export_input_of_round_four_is_one_line(run, tmp_path, capsys, monkeypatch, extra, message):
    (tmp_path / "a_file").write_text("")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    monkeypatch.chdir(tmp_path)
    extra = [e.format(tmp=tmp_path) for e in extra]
    before = snapshot(os.path.dirname(run)), sorted(os.listdir(tmp_path))
    try:
        code = export_cli.main([run, *extra])
    except SystemExit as exit_info:  # the parser's own errors
        code = exit_info.code
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message.format(tmp=tmp_path)}"), lines
    assert (snapshot(os.path.dirname(run)), sorted(os.listdir(tmp_path))) == before
    assert not os.path.exists("/proc/x")


def test_export_model_bounds_the_latency_runs_too(tmp_path):
    from lottery_tf.core.keras_compat import keras
    from lottery_tf.engine.export_files import ExportError, export_model

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ExportError, match=r"^latency_runs: expected an integer in \[1, 1000\]"):
        export_model(model, str(tmp_path / "out"), np.zeros((3, 4)), np.zeros(3, int), latency_runs=10**9)
    assert os.listdir(tmp_path) == []
