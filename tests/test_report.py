"""Reports over replicates: literal mean and spread, plots, atomic writes."""

import json
import os

import numpy as np
import pytest

from lottery_tf.reports import cli as report_cli
from lottery_tf.reports import plotting
from lottery_tf.reports import tables as report
from lottery_tf.store import atomic


def _write(experiment, replicate, level, branch, density, final, es_iter, es_acc):
    os.makedirs(experiment, exist_ok=True)
    if not os.path.exists(os.path.join(experiment, "identity.json")):
        atomic.write_json(os.path.join(experiment, "identity.json"), {})
    atomic.write_json(
        os.path.join(experiment, f"replicate_{replicate}", f"level_{level:02d}", branch, "metrics.json"),
        {
            "level": level,
            "branch": branch,
            "density": density,
            "final_test_accuracy": final,
            "early_stop_iteration": es_iter,
            "early_stop_test_accuracy": es_acc,
            "final_val_accuracy": final,
            "wall_seconds": 1.0,
            "iterations": [0, 100, 200],
            "curves": {
                "test": {"accuracy": [0.1, es_acc, final], "loss": [2, 1, 1]},
                "val": {"accuracy": [0.1, es_acc, final], "loss": [2, 1, 1]},
            },
        },
    )


@pytest.fixture
def two_replicates(tmp_path):
    experiment = str(tmp_path / "root" / "lottery_abc")
    _write(experiment, 0, 0, "main", 1.0, 0.90, 1000, 0.91)
    _write(experiment, 1, 0, "main", 1.0, 0.88, 3000, 0.89)
    _write(experiment, 0, 1, "main", 0.8, 0.91, 900, 0.92)
    _write(experiment, 1, 1, "main", 0.8, 0.89, 1100, 0.90)
    _write(experiment, 0, 1, "reinit", 0.8, 0.80, 500, 0.81)
    _write(experiment, 1, 1, "reinit", 0.8, 0.82, 700, 0.83)
    return str(tmp_path / "root"), experiment


def test_aggregate_mean_and_sample_std(two_replicates):
    root, _ = two_replicates
    entries = report.aggregate([root])
    assert [(e["branch"], e["level"]) for e in entries] == [("main", 0), ("main", 1), ("reinit", 1)]
    main = entries[0]
    assert main["final_test_accuracy_mean"] == pytest.approx(0.89)
    assert main["final_test_accuracy_std"] == pytest.approx(np.sqrt(2) * 0.01)
    assert main["early_stop_iteration_mean"] == 2000 and main["early_stop_iteration_std"] == pytest.approx(
        1414.2136, 1e-6
    )
    table = report.format_markdown(entries)
    assert "| lottery_abc | main | 0 | 100.00 | 89.00 ± 1.41 | 2000 ± 1414 | 90.00 ± 1.41 | 2 |" in table


def test_report_cli_writes_tables_and_pngs(two_replicates, tmp_path):
    root, experiment = two_replicates
    out = str(tmp_path / "out")
    assert report_cli.main([experiment, "--out", out, "--curve_levels=0-1"]) == 0
    assert open(os.path.join(out, "table.md")).read().startswith("| experiment | branch | level |")
    for name in ("accuracy_vs_weights.png", "early_stop_vs_weights.png", "curves_lottery_abc.png"):
        with open(os.path.join(out, name), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_report_on_folder_without_runs_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report_cli.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'empty'} holds no lottery_tf runs (no lottery_*/identity.json)"
    assert not (tmp_path / "out").exists()


def _files(folder):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, files in os.walk(folder) for f in files}


REPORT_TARGETS = {
    "the experiment": ("{experiment}", "{experiment} is the run folder this command reads: write to a folder"),
    "its parent, the runs root": ("{root}", "{root} holds {experiment}, which this command reads"),
    "the folder above": ("{above}", "{above} holds {experiment}, which this command reads"),
    "a link to the experiment": ("{link}", "{link} is the run folder this command reads ({experiment})"),
    "a replicate": ("{experiment}/replicate_1", "is inside the run folder {experiment}: write to a folder outside"),
    "a new folder in a level": ("{experiment}/replicate_0/level_01/report", "is inside the run folder {experiment}"),
    "the experiment's exports": ("{experiment}/exports/report", "is inside the run folder {experiment}"),
    "another runs root": ("{other}", "{other} holds run data ({other}/g/lottery_0f0f)"),
    "a studies folder, runs five deep": ("{deep}", "{deep} holds run data ({deep}/a/b/c/d/lottery_0d0d)"),
}


@pytest.mark.parametrize("target, message", REPORT_TARGETS.values(), ids=list(REPORT_TARGETS))
def test_a_report_never_goes_into_run_data(two_replicates, tmp_path, capsys, target, message):
    root, experiment = two_replicates
    names = {"experiment": experiment, "root": root, "above": str(tmp_path), "link": str(tmp_path / "link")}
    names["other"] = str(tmp_path / "other")
    os.symlink(experiment, names["link"])
    names["deep"] = str(tmp_path / "studies")
    _write(os.path.join(names["other"], "g", "lottery_0f0f"), 0, 0, "main", 1.0, 0.5, 100, 0.5)
    _write(os.path.join(names["deep"], "a", "b", "c", "d", "lottery_0d0d"), 0, 0, "main", 1.0, 0.5, 100, 0.5)
    before = _files(str(tmp_path))
    for paths in ([experiment], [root], [names["link"]]):
        assert report_cli.main([*paths, "--out", target.format(**names), "--no_plots"]) == 2
        lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: --out: "), lines
        if paths == [experiment]:
            assert message.format(**names) in lines[0], lines[0]
    assert _files(str(tmp_path)) == before
    # Beside the experiments, in a folder of its own, is fine.
    assert report_cli.main([experiment, "--out", os.path.join(root, "report"), "--no_plots"]) == 0
    assert sorted(os.listdir(os.path.join(root, "report"))) == ["table.csv", "table.md"]


def test_a_report_out_with_a_tilde_goes_home_not_into_a_folder_named_tilde(two_replicates, tmp_path, monkeypatch):
    _, experiment = two_replicates
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert report_cli.main([experiment, "--out=~/report", "--no_plots"]) == 0
    assert sorted(os.listdir(tmp_path / "home" / "report")) == ["table.csv", "table.md"]
    assert not os.path.exists(tmp_path / "~")


def test_unreadable_metrics_named(two_replicates, tmp_path, capsys):
    root, experiment = two_replicates
    bad = os.path.join(experiment, "replicate_0", "level_00", "main", "metrics.json")
    with open(bad, "w") as handle:
        handle.write("{trunc")
    assert report_cli.main([root, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: is unreadable")  # the health check's line


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    atomic.write_json(path, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic.write_json(path, {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]  # no temporary file left behind


def test_accuracy_plot_draws_what_it_says(two_replicates, tmp_path, drawn):
    _, experiment = two_replicates
    assert report_cli.main([experiment, "--out", str(tmp_path / "out")]) == 0
    early, final = drawn["accuracy_vs_weights.png"].axes
    for ax in (early, final):
        assert ax.get_xscale() == "log" and ax.xaxis_inverted()
        assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "80"]
        assert all(t.get_rotation() == 0 for t in ax.get_xticklabels())
        assert "mean ± std over 2 replicates" in ax.get_title()
        labels = ax.get_legend_handles_labels()[1]
        assert labels[0].startswith("dense network (") and len(labels) == 3  # dense line, ticket, reinit
        assert all(c.has_yerr for c in ax.containers)
    assert early.get_ylim() == final.get_ylim()  # one y range for both panels
    (ticket,) = [c for c in early.containers if c.get_label() == plotting.branch_label("main")]
    np.testing.assert_allclose(np.asarray(ticket.lines[0].get_ydata(), float), [90.0, 91.0])  # early-stop means, %


def test_one_replicate_says_so_and_draws_no_error_bars(tmp_path, drawn):
    experiment = str(tmp_path / "root" / "lottery_one")
    _write(experiment, 0, 0, "main", 1.0, 0.90, 1000, 0.91)
    _write(experiment, 0, 1, "main", 0.8, 0.91, 900, 0.92)
    assert report_cli.main([experiment, "--out", str(tmp_path / "out")]) == 0
    for ax in drawn["accuracy_vs_weights.png"].axes + drawn["early_stop_vs_weights.png"].axes:
        assert "one replicate (no spread)" in ax.get_title() and "1 replicates" not in ax.get_title()
        assert not any(c.has_yerr for c in ax.containers)


def test_curves_plot_lines(two_replicates, tmp_path, drawn, capsys):
    _, experiment = two_replicates  # a level no run has is refused: test_missing_curve_levels_list_the_levels_...
    assert report_cli.main([experiment, "--out", str(tmp_path / "out"), "--curve_levels=0,1"]) == 0
    (ax,) = drawn["curves_lottery_abc.png"].axes
    assert [l.get_label() for l in ax.get_lines()] == ["level 0: 100.0% of weights", "level 1: 80.0% of weights"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [10.0, 90.0, 89.0])
    assert "first evaluation, below" in ax.get_ylabel()  # the 10% start is off the axis, and it says so
    assert "--curve_levels" not in capsys.readouterr().err


@pytest.fixture
def baselines(tmp_path):
    """Main levels 0-2 and, at level 2 only, IMP's controls, two PaI methods with ablations and GMP."""
    experiment = str(tmp_path / "root" / "lottery_base")
    for r, shift in ((0, 0.0), (1, 0.02)):
        _write(experiment, r, 0, "main", 1.0, 0.90 + shift, 1000, 0.91)
        _write(experiment, r, 1, "main", 0.8, 0.91 + shift, 900, 0.92)
        _write(experiment, r, 2, "main", 0.64, 0.92 + shift, 900, 0.93)
        _write(experiment, r, 2, "random_prune_layerwise", 0.64, 0.85 + shift, 900, 0.86)
        _write(experiment, r, 2, "reinit", 0.64, 0.86 + shift, 900, 0.87)
        _write(experiment, r, 2, "pai_snip", 0.64, 0.88 + shift, 900, 0.89)
        _write(experiment, r, 2, "pai_snip_shuffled", 0.64, 0.87 + shift, 900, 0.88)
        _write(experiment, r, 2, "pai_snip_inverted", 0.64, 0.30 + shift, 900, 0.31)
        _write(experiment, r, 2, "pai_synflow", 0.64, 0.89 + shift, 900, 0.90)
        _write(experiment, r, 2, "gmp", 0.6391, 0.93 + shift, 900, 0.94)
    return experiment


def test_baselines_table_compares_methods_at_the_baseline_levels(baselines, tmp_path):
    out = tmp_path / "out"
    assert report_cli.main([baselines, "--out", str(out), "--no_plots"]) == 0
    table = (out / "baselines_table.md").read_text()
    final = table.split("Test accuracy at early stopping")[0]
    assert "| method | branch folder | level 2: 64.0% |" in final and "level 1" not in final  # only baseline levels
    rows = [line for line in final.splitlines() if line.startswith("| ") and "branch folder" not in line]
    # IMP, its controls, each PaI method followed by its ablations, GMP; mean ± sample std of (x, x + 0.02) = x + 0.01 ± 0.0141.
    assert rows == [
        "| lottery ticket (IMP main line) | main | 93.00 ± 1.41 |",
        "| random reinitialization (same mask) | reinit | 87.00 ± 1.41 |",
        "| random pruning (layerwise density kept) | random_prune_layerwise | 86.00 ± 1.41 |",
        "| SNIP at initialization | pai_snip | 89.00 ± 1.41 |",
        "| SNIP at initialization, layer masks shuffled | pai_snip_shuffled | 88.00 ± 1.41 |",
        "| SNIP at initialization, scores inverted | pai_snip_inverted | 31.00 ± 1.41 |",
        "| SynFlow at initialization | pai_synflow | 90.00 ± 1.41 |",
        "| gradual magnitude pruning (TFMOT's schedule) | gmp | 94.00 ± 1.41 (at 63.91%) |",
    ]
    assert "Dense network: 91.00 ± 1.41." in final
    early = table.split("Test accuracy at early stopping")[1]
    assert "| SNIP at initialization, scores inverted | pai_snip_inverted | 31.00 ± 0.00 |" in early
    csv_rows = (out / "baselines_table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("experiment,branch,method,pai_method,ablation,level,density,replicates,")
    assert any(
        line.startswith("lottery_base,pai_snip_shuffled,") and ",snip,shuffled,2,0.64,2," in line for line in csv_rows
    )


def test_baselines_figure_draws_every_method_and_each_methods_ablations(baselines, tmp_path, drawn):
    assert report_cli.main([baselines, "--out", str(tmp_path / "out")]) == 0
    every, snip, synflow, *hidden = drawn["baselines_vs_weights.png"].axes
    assert all(not ax.get_visible() for ax in hidden)

    def lines(ax):
        return {c.get_label(): c for c in ax.containers}

    assert set(lines(every)) == {
        plotting.branch_label(b) for b in ("main", "random_prune_layerwise", "reinit", "pai_snip", "pai_synflow", "gmp")
    }
    gmp = lines(every)[plotting.branch_label("gmp")]
    np.testing.assert_allclose(np.asarray(gmp.lines[0].get_xdata(), float), [63.91])
    np.testing.assert_allclose(
        np.asarray(gmp.lines[0].get_ydata(), float), [94.0]
    )  # final test accuracy, mean of 93 and 95
    assert gmp.has_yerr
    assert set(lines(snip)) == {
        plotting.branch_label(b)
        for b in ("main", "random_prune_layerwise", "pai_snip", "pai_snip_shuffled", "pai_snip_inverted")
    }
    assert lines(snip)[plotting.branch_label("pai_snip_shuffled")].lines[0].get_linestyle() == "--"
    assert lines(snip)[plotting.branch_label("pai_snip_inverted")].lines[0].get_linestyle() == "-."
    inverted = lines(snip)[plotting.branch_label("pai_snip_inverted")].lines[0]
    np.testing.assert_allclose(np.asarray(inverted.get_ydata(), float), [31.0])
    assert plotting.branch_label("pai_snip") not in lines(synflow)
    # The collapsed inverted SNIP (31%) is named, not drawn: the axis stays on the lines near the top.
    assert snip.get_ylim()[0] == pytest.approx(86.0 - 0.5)
    assert snip.get_title().endswith("below the axis: scores inverted: 31.0% at 64.0% of weights")
    assert "below the axis" not in every.get_title() and every.get_ylim()[0] < 86.0  # nothing collapsed there
    for ax in (every, snip, synflow):
        assert ax.get_xscale() == "log" and ax.get_ylabel() == "final test accuracy (%)"
        assert any(l.get_label().startswith("dense network (91.00%") for l in ax.get_lines())
    # The general figure leaves the baselines to this one.
    for ax in drawn["accuracy_vs_weights.png"].axes:
        assert not any(c.get_label().startswith(("SNIP", "SynFlow", "gradual")) for c in ax.containers)


def test_no_baselines_no_baselines_files(two_replicates, tmp_path):
    _, experiment = two_replicates
    assert report_cli.main([experiment, "--out", str(tmp_path / "out"), "--no_plots"]) == 0
    assert not (tmp_path / "out" / "baselines_table.md").exists()


def test_baselines_layer_densities_from_the_trained_masks(baselines, tmp_path):
    for replicate, kept in ((0, 1), (1, 3)):  # fc: 1 and 3 of 4 kept -> mean 50%; out: all of 2 -> 100%
        fc = np.array([[1, 0], [0, 0]], np.float32) if kept == 1 else np.array([[1, 1], [1, 0]], np.float32)
        for branch in ("pai_snip", "pai_snip_inverted"):
            folder = os.path.join(baselines, f"replicate_{replicate}", "level_02", branch)
            masks = {
                "fc/kernel": fc if branch == "pai_snip" else np.zeros_like(fc),
                "out/kernel": np.ones(2, np.float32),
            }
            atomic.write_npz(os.path.join(folder, "masks.npz"), masks)
    untrained = os.path.join(baselines, "replicate_0", "level_02", "pai_grasp")  # a mask without metrics.json
    atomic.write_npz(os.path.join(untrained, "masks.npz"), {"fc/kernel": np.zeros(4, np.float32)})
    out = tmp_path / "out"
    assert report_cli.main([baselines, "--out", str(out), "--no_plots"]) == 0
    text = (out / "baselines_layer_densities.md").read_text()
    assert "Level 2 (64.0% of weights):" in text and "| method | branch folder | fc/kernel | out/kernel |" in text
    assert "| SNIP at initialization | pai_snip | 50.0 | 100.0 |" in text
    assert "| SNIP at initialization, scores inverted | pai_snip_inverted | 0.0 | 100.0 |" in text
    assert "pai_grasp" not in text


# -- round 3: what the report says with one replicate, sparse controls and no early stop ----------------


@pytest.fixture
def one_replicate(tmp_path):
    experiment = str(tmp_path / "root" / "lottery_one")
    densities = [1.0, 0.8, 0.641, 0.513, 0.41, 0.329, 0.263, 0.21, 0.169, 0.135, 0.108]
    for level, density in enumerate(densities):
        # es_iter 200 = the last evaluation at levels 0 and 1: no early stop there.
        _write(experiment, 0, level, "main", density, 0.9 - 0.01 * level, 200 if level < 2 else 100, 0.9)
    for level in (5, 10):  # a control measured at two levels only
        _write(experiment, 0, level, "reinit", densities[level], 0.8, 100, 0.8)
    return str(tmp_path / "root"), experiment


def test_one_replicate_has_no_spread_in_the_csv_and_the_titles_say_so(one_replicate, tmp_path, drawn):
    root, experiment = one_replicate
    out = str(tmp_path / "out")
    assert report_cli.main([root, "--out", out]) == 0
    import csv

    rows = list(csv.DictReader(open(os.path.join(out, "table.csv"))))
    assert rows[0]["final_test_accuracy_std"] == "" and rows[0]["final_test_accuracy_mean"] == "0.9"
    curves = drawn["curves_lottery_one.png"].axes[0]
    assert "(one replicate)" in curves.get_title() and "mean over" not in curves.get_title()
    ax = drawn["accuracy_vs_weights.png"].axes[0]
    assert "one replicate (no spread)" in ax.get_title()


def test_every_level_has_a_tick_label(one_replicate, tmp_path, drawn):
    root, _ = one_replicate
    assert report_cli.main([root, "--out", str(tmp_path / "out")]) == 0
    ax = drawn["accuracy_vs_weights.png"].axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["100", "80", "64.1", "51.3", "41", "32.9", "26.3", "21", "16.9", "13.5", "10.8"]
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())  # eleven labels stand upright


def test_a_control_at_two_levels_is_markers_only_and_says_so(one_replicate, tmp_path, drawn):
    root, _ = one_replicate
    assert report_cli.main([root, "--out", str(tmp_path / "out")]) == 0
    for name in ("accuracy_vs_weights.png", "early_stop_vs_weights.png"):
        ax = drawn[name].axes[0]
        lines = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar containers hold the data lines
        control = lines["random reinitialization (same mask) (levels 5, 10 only)"]
        assert control.get_linestyle() == "None" and control.get_marker() == plotting.branch_style("reinit")["marker"]
        assert lines["lottery ticket (IMP main line)"].get_linestyle() == "-"  # consecutive levels: a line


def test_an_early_stop_at_the_last_iteration_is_marked(one_replicate, tmp_path, drawn):
    root, _ = one_replicate
    out = str(tmp_path / "out")
    assert report_cli.main([root, "--out", out]) == 0
    table = open(os.path.join(out, "table.md")).read()
    assert "| lottery_one | main | 0 | 100.00 | 90.00 | 200 (last) | 90.00 | 1 |" in table
    assert "| lottery_one | main | 2 | 64.10 | 88.00 | 100 | 90.00 | 1 |" in table
    assert "(last): the minimum validation loss was at the last evaluation" in table
    ax = drawn["early_stop_vs_weights.png"].axes[0]
    ringed = [l for l in ax.get_lines() if l.get_label().startswith("ringed: stopped at the last evaluation")]
    assert (
        len(ringed) == 1 and list(ringed[0].get_xdata()) == [100.0, 80.0] and ringed[0].get_markerfacecolor() == "none"
    )


def test_missing_curve_levels_list_the_levels_the_run_has(one_replicate, two_replicates, tmp_path, capsys):
    """A level one experiment lacks is left out of its plot with a warning; one that no run has is refused
    (issue 30, item 4: it was accepted, and nothing drawn)."""
    root, experiment = one_replicate
    assert two_replicates[0] == root  # the root holds lottery_abc (levels 0-1) and lottery_one (levels 0-10)
    assert report_cli.main([root, "--out", str(tmp_path / "out"), "--curve_levels=0,5"]) == 0
    err = capsys.readouterr().err
    assert f"level(s) 5 not found in {two_replicates[1]} (it has main levels 0-1)" in err
    assert report_cli.main([root, "--out", str(tmp_path / "out2"), "--curve_levels=0,15,99"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --curve_levels: no run read here has main level(s) 15, 99; the runs have main levels 0-10"
    ]
    assert not os.path.exists(tmp_path / "out2")


@pytest.mark.slow
def test_no_figure_stays_open(one_replicate, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from lottery_tf.reports import plotting

    saved, real_save = [], plotting.save
    monkeypatch.setattr(plotting, "save", lambda fig, path: (saved.append(path), real_save(fig, path)))
    root, _ = one_replicate
    while len(saved) <= 20:  # more figures in one process than matplotlib's 20-figure warning
        assert report_cli.main([root, "--out", str(tmp_path / "out")]) == 0
        assert plt.get_fignums() == []


# Issue 28, items 5 and 6: values no report can mean, an --out that cannot be made, and unknown flags named
# before anything else; one line, exit status 2, nothing written.
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--matching_tolerance=nan"], "--matching_tolerance: expected percentage points in [0, 100], got nan"),
        (["--matching_tolerance=-1"], "--matching_tolerance: expected percentage points in [0, 100], got -1"),
        (["--matching_tolerance", "-0.5"], "--matching_tolerance: expected percentage points in [0, 100], got -0.5"),
        (["--matching_tolerance=inf"], "--matching_tolerance: expected percentage points in [0, 100], got inf"),
        (["--matching_tolerance=150"], "--matching_tolerance: expected percentage points in [0, 100], got 150"),
        (["--lvl=2"], "--lvl: unknown flag; python -m lottery_tf.report --help lists the flags"),
        (["--curve_level=0"], "--curve_level: unknown flag (did you mean --curve_levels?)"),
        (["--no_plot"], "--no_plot: unknown flag (did you mean --no_plots?)"),  # no abbreviations
        (["--out={tmp}/a_file/report"], "--out: {tmp}/a_file is a file, not a folder"),
        (["--out={tmp}/loop/report"], "--out: {tmp}/loop is a symbolic link that leads nowhere"),
        (["--out=/proc/report"], "--out: /proc is a proc filesystem that holds no files"),
        (["--out=~nosuchuser/report"], "--out: ~nosuchuser/report: there is no user 'nosuchuser'"),
        # Issue 30, item 4: levels that are not levels, or that no run read has (the run has main levels 0-1).
        (["--curve_levels=99"], "--curve_levels: no run read here has main level(s) 99; the runs have main levels 0-1"),
        (["--curve_levels=-1"], "--curve_levels: expected levels >= 0 like 0,3,7 or 0-3,7 (level -1 is below 0), got"),
        (["--curve_levels=abc"], "--curve_levels: expected levels >= 0 like 0,3,7 or 0-3,7 (not integers), got 'abc'"),
        (["--curve_levels=1,2"], "--curve_levels: no run read here has main level(s) 2; the runs have main levels 0-1"),
        (["--curve_levels=3-1"], "--curve_levels: expected levels >= 0 like 0,3,7 or 0-3,7 (range '3-1' is empty)"),
        (["--curve_levels=1,1", "--no_plots"], "--curve_levels: expected levels >= 0 like 0,3,7 or 0-3,7 (level 1"),
    ],
)
def test_bad_report_input_is_one_line_and_writes_nothing(two_replicates, tmp_path, capsys, monkeypatch, extra, message):
    root, experiment = two_replicates
    (tmp_path / "a_file").write_text("")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    monkeypatch.chdir(tmp_path)
    extra = [e.format(tmp=tmp_path) for e in extra]
    if not any(e.startswith("--out") for e in extra):
        extra.append(f"--out={tmp_path / 'report'}")
    before = _files(root), sorted(os.listdir(tmp_path))
    try:
        code = report_cli.main([experiment, *extra])
    except SystemExit as exit_info:  # the parser's own errors
        code = exit_info.code
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message.format(tmp=tmp_path)}"), lines
    assert (_files(root), sorted(os.listdir(tmp_path))) == before and not os.path.exists("/proc/report")


def test_an_unknown_flag_is_named_before_a_missing_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main(["--lvl=2"])  # no path and no --out either
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert exit_info.value.code == 2 and lines == [
        "error: --lvl: unknown flag; python -m lottery_tf.report --help lists the flags"
    ]


def test_a_reference_line_left_below_the_focused_axis_is_named():
    """The dense network's line, below the axis that _focus keeps on the best lines, is named in the title too."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from lottery_tf.reports import baselines as baselines_report

    fig, ax = plt.subplots()
    ax.errorbar([50.0, 20.0], [89.0, 88.0], yerr=[0.1, 0.1], label="IMP")
    ax.errorbar([50.0, 20.0], [87.0, 31.0], yerr=[0.1, 0.1], label="SNIP, scores inverted")
    ax.axhline(78.9, label="dense network (78.90%)")
    ax.set_title("every method")
    baselines_report._focus(ax)
    assert ax.get_ylim()[0] == pytest.approx(87.0 - 0.5)
    assert ax.get_title() == (
        "every method\nbelow the axis: scores inverted: 31.0% at 20.0% of weights;\ndense network (78.90%)"
    )
    plt.close(fig)
