"""Reports over replicates: literal mean and spread, plots, atomic writes."""

import json
import os

import numpy as np
import pytest

from lottery_tf import atomic, report


def _write(experiment, replicate, level, branch, density, final, es_iter, es_acc):
    os.makedirs(experiment, exist_ok=True)
    if not os.path.exists(os.path.join(experiment, "identity.json")):
        atomic.write_json(os.path.join(experiment, "identity.json"), {})
    atomic.write_json(
        os.path.join(experiment, f"replicate_{replicate}", f"level_{level:02d}", branch, "metrics.json"),
        {"level": level, "branch": branch, "density": density, "final_test_accuracy": final,
         "early_stop_iteration": es_iter, "early_stop_test_accuracy": es_acc, "final_val_accuracy": final,
         "wall_seconds": 1.0, "iterations": [0, 100, 200],
         "curves": {"test": {"accuracy": [0.1, es_acc, final], "loss": [2, 1, 1]},
                    "val": {"accuracy": [0.1, es_acc, final], "loss": [2, 1, 1]}}},
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
    assert main["early_stop_iteration_mean"] == 2000 and main["early_stop_iteration_std"] == pytest.approx(1414.2136, 1e-6)
    table = report.format_markdown(entries)
    assert "| lottery_abc | main | 0 | 100.00 | 89.00 ± 1.41 | 2000 ± 1414 | 90.00 ± 1.41 | 2 |" in table


def test_report_cli_writes_tables_and_pngs(two_replicates, tmp_path):
    root, experiment = two_replicates
    out = str(tmp_path / "out")
    assert report.main([experiment, "--out", out, "--curve_levels=0-1"]) == 0
    assert open(os.path.join(out, "table.md")).read().startswith("| experiment | branch | level |")
    for name in ("accuracy_vs_weights.png", "early_stop_vs_weights.png", "curves_lottery_abc.png"):
        with open(os.path.join(out, name), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_report_on_folder_without_runs_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'empty'} holds no lottery_tf runs (no lottery_*/identity.json)"
    assert not (tmp_path / "out").exists()


def test_unreadable_metrics_named(two_replicates, tmp_path, capsys):
    root, experiment = two_replicates
    bad = os.path.join(experiment, "replicate_0", "level_00", "main", "metrics.json")
    with open(bad, "w") as handle:
        handle.write("{trunc")
    assert report.main([root, "--out", str(tmp_path / "out")]) == 2
    assert f"cannot read {bad}" in capsys.readouterr().err


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
    assert report.main([experiment, "--out", str(tmp_path / "out")]) == 0
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
    (ticket,) = [c for c in early.containers if c.get_label() == report.branch_label("main")]
    np.testing.assert_allclose(np.asarray(ticket.lines[0].get_ydata(), float), [90.0, 91.0])  # early-stop means, %


def test_one_replicate_says_so_and_draws_no_error_bars(tmp_path, drawn):
    experiment = str(tmp_path / "root" / "lottery_one")
    _write(experiment, 0, 0, "main", 1.0, 0.90, 1000, 0.91)
    _write(experiment, 0, 1, "main", 0.8, 0.91, 900, 0.92)
    assert report.main([experiment, "--out", str(tmp_path / "out")]) == 0
    for ax in drawn["accuracy_vs_weights.png"].axes + drawn["early_stop_vs_weights.png"].axes:
        assert "one replicate (no spread)" in ax.get_title() and "1 replicates" not in ax.get_title()
        assert not any(c.has_yerr for c in ax.containers)


def test_curves_plot_lines_and_missing_level_warning(two_replicates, tmp_path, drawn, capsys):
    _, experiment = two_replicates
    assert report.main([experiment, "--out", str(tmp_path / "out"), "--curve_levels=0,1,11"]) == 0
    (ax,) = drawn["curves_lottery_abc.png"].axes
    assert [l.get_label() for l in ax.get_lines()] == ["level 0: 100.0% of weights", "level 1: 80.0% of weights"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [10.0, 90.0, 89.0])
    assert "first evaluation, below" in ax.get_ylabel()  # the 10% start is off the axis, and it says so
    assert "warning: --curve_levels: level(s) 11 not found" in capsys.readouterr().err
