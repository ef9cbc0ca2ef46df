"""The analysis report: literal means over pairs and replicates, matching/stable, what the figures draw."""

import os

import numpy as np
import pytest
from matplotlib.colors import to_hex

from lottery_tf.reports import cli as report_cli
from lottery_tf.reports import plotting
from lottery_tf.store import atomic

ALPHAS = [0.0, 0.5, 1.0]


def _experiment(root, name, rewind_step=0):
    folder = os.path.join(root, name)
    atomic.write_json(os.path.join(folder, "identity.json"), {})
    atomic.write_json(
        os.path.join(folder, "settings.json"),
        {
            "model": {"name": "lenet_300_100"},
            "data": {"name": "fashion_mnist"},
            "pruning": {"method": "layerwise", "fraction": 0.2, "rewind_step": rewind_step},
        },
    )
    return folder


def _main_level(folder, replicate, level, density, accuracy):
    atomic.write_json(
        os.path.join(folder, f"replicate_{replicate}", f"level_{level:02d}", "main", "metrics.json"),
        {
            "level": level,
            "branch": "main",
            "density": density,
            "final_test_accuracy": accuracy,
            "early_stop_iteration": 100,
            "early_stop_test_accuracy": accuracy,
            "final_val_accuracy": accuracy,
            "iterations": [0, 100],
            "curves": {"test": {"accuracy": [0.1, accuracy], "loss": [2, 1]}},
        },
    )


def _instability(folder, replicate, level, network, k, pair, errors, density):
    path = os.path.join(
        folder,
        f"replicate_{replicate}",
        f"level_{level:02d}",
        "instability",
        f"{network}_k{k}",
        f"pair_{pair}",
        "instability.json",
    )
    test = {
        "error": errors,
        "endpoint_errors": [errors[0], errors[-1]],
        "instability": max(errors) - (errors[0] + errors[-1]) / 2,
        "barrier": 0.0,
    }
    atomic.write_json(
        path,
        {
            "analysis": "instability",
            "network": network,
            "level": level,
            "replicate": replicate,
            "rewind_step": k,
            "pair": pair,
            "density": density,
            "alphas": ALPHAS,
            "batchnorm_statistics": "none",
            "test": test,
            "train": test,
            "instability": test["instability"],
        },
    )


def _stability(folder, replicate, level, network, k, l2, angle, density):
    path = os.path.join(
        folder, f"replicate_{replicate}", f"level_{level:02d}", "stability", f"{network}_k{k}", "stability.json"
    )
    pair = {"l2_distance": l2, "normalized_l2_distance": l2 / 10, "angle_degrees": angle}
    atomic.write_json(
        path,
        {
            "analysis": "stability",
            "network": network,
            "level": level,
            "replicate": replicate,
            "rewind_step": k,
            "density": density,
            "to_pruning": pair,
            "to_data_order": pair,
        },
    )


@pytest.fixture
def study(tmp_path):
    root = str(tmp_path / "root")
    folder = _experiment(root, "lottery_abc")
    for replicate, dense in ((0, 0.90), (1, 0.88)):  # dense accuracy 0.89 ± 0.01414
        _main_level(folder, replicate, 0, 1.0, dense)
        _main_level(folder, replicate, 7, 0.21, 0.89)
        for pair in (0, 1):
            # Ticket at k = 0: errors [0.10, 0.14, 0.12] and [0.11, 0.15, 0.11] -> instability 0.03 and 0.04.
            ticket0 = [[0.10, 0.14, 0.12], [0.11, 0.15, 0.11]][pair]
            _instability(folder, replicate, 7, "ticket", 0, pair, ticket0, 0.21)
            _instability(folder, replicate, 7, "ticket", 100, pair, [0.10, 0.105, 0.10], 0.21)  # 0.005
            _instability(folder, replicate, 7, "random_prune", 0, pair, [0.20, 0.30, 0.20], 0.21)  # 0.10
            _instability(folder, replicate, 0, "dense", 0, pair, [0.11, 0.11, 0.11], 1.0)  # 0
        _stability(folder, replicate, 7, "ticket", 0, 4.0 + replicate, 30.0, 0.21)
        _stability(folder, replicate, 7, "ticket", 100, 2.0, 10.0, 0.21)
    return root, folder


def _table(path):
    lines = open(path).read().splitlines()[2:]
    return {
        tuple(cell.strip() for cell in line.strip("|").split("|"))[1:5]: [c.strip() for c in line.strip("|").split("|")]
        for line in lines
    }


def test_instability_table_means_over_pairs_and_replicates(study, tmp_path, drawn):
    root, _ = study
    out = str(tmp_path / "out")
    assert report_cli.main([root, "--out", out]) == 0
    rows = _table(os.path.join(out, "instability_table.md"))
    ticket0 = rows[("7", "ticket", "21.00", "0")]
    # Instabilities 0.03, 0.04 per replicate: mean 3.50%, sample std 0.58%.
    assert ticket0[5] == "3.50 ± 0.58"
    # Copies' accuracy: 1 - endpoint errors 0.90, 0.88, 0.89, 0.89 (per replicate) -> 89.00%; dense 89.00%.
    assert ticket0[7].startswith("89.00 ± 0.76") and ticket0[8] == "89.00"
    # Matching within the dense std over replicates (1.41 points): yes; unstable (3.5% >= 2%).
    assert ticket0[9:11] == ["yes", "no"]
    assert (
        rows[("7", "ticket", "21.00", "100")][5] == "0.50 ± 0.00" and rows[("7", "ticket", "21.00", "100")][10] == "yes"
    )
    assert rows[("7", "random_prune", "21.00", "0")][9] == "no"  # 80% accuracy: not matching
    # Matching compares the mean accuracy: random pruning (80%) is not matching even at a 5-point tolerance, but is at 10.
    assert report_cli.main([root, "--out", str(tmp_path / "loose"), "--matching_tolerance=10"]) == 0
    assert (
        _table(os.path.join(str(tmp_path / "loose"), "instability_table.md"))[("7", "random_prune", "21.00", "0")][9]
        == "yes"
    )
    assert report_cli.main([root, "--out", str(tmp_path / "strict"), "--matching_tolerance=5"]) == 0
    assert (
        _table(os.path.join(str(tmp_path / "strict"), "instability_table.md"))[("7", "random_prune", "21.00", "0")][9]
        == "no"
    )


def test_instability_figure_draws_the_table(study, tmp_path, drawn):
    root, _ = study
    assert report_cli.main([root, "--out", str(tmp_path / "out"), "--no_plots"]) == 0
    assert "instability_vs_step.png" not in drawn and os.path.exists(tmp_path / "out" / "instability_table.csv")
    assert report_cli.main([root, "--out", str(tmp_path / "out")]) == 0
    test_ax, train_ax = drawn["instability_vs_step.png"].axes
    assert test_ax.get_xscale() == "symlog"
    assert [t.get_text() for t in test_ax.get_xticklabels()] == ["0", "100"]
    (ticket,) = [c for c in test_ax.containers if c.get_label().startswith("IMP ticket")]
    np.testing.assert_allclose(np.asarray(ticket.lines[0].get_xdata(), float), [0, 100])
    np.testing.assert_allclose(np.asarray(ticket.lines[0].get_ydata(), float), [3.5, 0.5])
    assert ticket.has_yerr
    (random,) = [c for c in test_ax.containers if c.get_label().startswith("random pruning")]
    # Each network in its branch's colour (as in the accuracy figures); the same level, the same marker.
    assert to_hex(random.lines[0].get_color()) == to_hex(plotting.branch_style("random_prune_layerwise")["color"])
    assert to_hex(ticket.lines[0].get_color()) == to_hex(plotting.branch_style("main")["color"])
    assert random.lines[0].get_marker() == ticket.lines[0].get_marker()
    assert any(line.get_label().startswith("2%") and list(line.get_ydata()) == [2.0, 2.0] for line in test_ax.lines)
    path_axes = [ax for ax in drawn["error_along_path.png"].axes if ax.get_visible()]
    assert len(path_axes) == 3  # dense level 0, ticket and random pruning at level 7
    (ticket_path,) = [ax for ax in path_axes if ax.get_title().startswith("IMP ticket")]
    k0 = [line for line in ticket_path.lines if line.get_label() == "k = 0"][0]
    np.testing.assert_allclose(
        np.asarray(k0.get_ydata(), float), [10.5, 14.5, 11.5]
    )  # mean over pairs and replicates, %


def test_stability_table_and_figure(study, tmp_path, drawn):
    root, _ = study
    out = str(tmp_path / "out")
    assert report_cli.main([root, "--out", out]) == 0
    rows = _table(os.path.join(out, "stability_table.md"))
    assert rows[("7", "ticket", "21.00", "0")][5:8] == ["4.500 ± 0.707", "0.450 ± 0.071", "30.0 ± 0.0"]
    distance_ax, angle_ax = drawn["stability_vs_step.png"].axes
    (pruning,) = [c for c in angle_ax.containers if c.get_label().endswith("to pruning")]
    np.testing.assert_allclose(np.asarray(pruning.lines[0].get_ydata(), float), [30.0, 10.0])
    assert "rewind_sweep.png" not in drawn  # one experiment: no sweep


def test_rewind_sweep_figure_from_experiments_with_different_rewind_steps(tmp_path, drawn):
    root = str(tmp_path / "sweep")
    for name, k, accuracy in (("lottery_k0", 0, 0.85), ("lottery_k500", 500, 0.89)):
        folder = _experiment(root, name, k)
        _main_level(folder, 0, 0, 1.0, 0.89)
        _main_level(folder, 0, 7, 0.21, accuracy)
        _instability(folder, 0, 7, "ticket", k, 0, [0.1, 0.2 if k == 0 else 0.105, 0.1], 0.21)
    assert report_cli.main([root, "--out", str(tmp_path / "out")]) == 0
    accuracy_ax, instability_ax = drawn["rewind_sweep.png"].axes
    labels = [c.get_label() for c in accuracy_ax.containers]
    assert labels == ["IMP, rewind to k = 0", "IMP, rewind to k = 500"]
    (ticket,) = instability_ax.containers
    np.testing.assert_allclose(np.asarray(ticket.lines[0].get_xdata(), float), [0, 500])
    np.testing.assert_allclose(np.asarray(ticket.lines[0].get_ydata(), float), [10.0, 0.5])


@pytest.mark.parametrize("damage", ['{"analysis": "instabi', '{"analysis": "instability", "level": 7}'])
def test_a_truncated_or_incomplete_result_is_one_line_naming_it(study, tmp_path, capsys, damage):
    root, folder = study
    path = os.path.join(folder, "replicate_0", "level_07", "instability", "ticket_k0", "pair_0", "instability.json")
    with open(path, "w") as handle:
        handle.write(damage)
    assert report_cli.main([root, "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: is ") and "recomputes it" in lines[0]
