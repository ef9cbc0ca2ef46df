"""Summary tables over replicate runs: literal mean and spread; atomic writes."""

import json
import os

import numpy as np
import pytest

from lottery_tf import atomic, report


def _write(run, level, branch, density, final, es_iter, es_acc):
    atomic.write_json(
        os.path.join(run, f"level_{level:02d}", branch, "metrics.json"),
        {"level": level, "branch": branch, "density": density, "final_test_accuracy": final,
         "early_stop_iteration": es_iter, "early_stop_test_accuracy": es_acc, "final_val_accuracy": final,
         "wall_seconds": 1.0, "curves": {}, "iterations": []},
    )


def test_aggregate_mean_and_sample_std(tmp_path):
    a, b = str(tmp_path / "s0"), str(tmp_path / "s1")
    _write(a, 0, "main", 1.0, 0.90, 1000, 0.91)
    _write(b, 0, "main", 1.0, 0.88, 3000, 0.89)
    _write(a, 1, "reinit", 0.5, 0.80, 500, 0.81)
    _write(b, 1, "reinit", 0.5, 0.82, 700, 0.83)
    entries = report.aggregate([a, b])
    assert [(e["branch"], e["level"]) for e in entries] == [("main", 0), ("reinit", 1)]
    main = entries[0]
    assert main["final_test_accuracy_mean"] == pytest.approx(0.89)
    assert main["final_test_accuracy_std"] == pytest.approx(np.sqrt(2) * 0.01)
    assert main["early_stop_iteration_mean"] == 2000 and main["early_stop_iteration_std"] == pytest.approx(1414.2136, 1e-6)
    table = report.format_markdown(entries)
    assert "| main | 0 | 100.00 | 89.00 ± 1.41 | 2000 ± 1414 | 90.00 ± 1.41 | 2 |" in table


def test_report_cli_writes_tables_and_rejects_empty_folder(tmp_path, capsys):
    run = str(tmp_path / "s0")
    _write(run, 0, "main", 1.0, 0.9, 100, 0.9)
    out = str(tmp_path / "out")
    assert report.main([run, "--out", out]) == 0
    assert open(os.path.join(out, "table.md")).read().startswith("| branch | level |")
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--out", out]) == 2
    assert "holds no finished levels" in capsys.readouterr().err


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    atomic.write_json(path, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic.write_json(path, {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]  # no temporary file left behind
