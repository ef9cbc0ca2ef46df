"""What the figures draw, measured on the drawn objects (issue 30): one style per branch in every figure,
titles that do not overlap, panels that read at the documentation site's width, and the redraw from tables."""

import os

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image

from lottery_tf.reports import analysis, baselines, plotting, redraw, tables


def _entry(branch, level, density, accuracy, replicates=1, experiment="lottery_abc"):
    std = None if replicates < 2 else 0.002
    return {
        "experiment": experiment,
        "branch": branch,
        "level": level,
        "replicates": replicates,
        "density_mean": density,
        "final_test_accuracy_mean": accuracy,
        "final_test_accuracy_std": std,
        "early_stop_test_accuracy_mean": accuracy,
        "early_stop_test_accuracy_std": std,
        "early_stop_iteration_mean": 1000.0,
        "early_stop_iteration_std": None if replicates < 2 else 10.0,
        "title": f"lenet_300_100 on fashion_mnist ({experiment})",
    }


@pytest.fixture
def entries():
    rows = [_entry("main", level, 0.8**level, 0.9 - 0.001 * level) for level in range(4)]
    for branch, accuracy in (("reinit", 0.85), ("random_prune_layerwise", 0.84), ("pai_snip", 0.86), ("gmp", 0.89)):
        rows.append(_entry(branch, 3, 0.512, accuracy))
    rows.append(_entry("pai_snip_shuffled", 3, 0.512, 0.855))
    return rows


def _colors(fig):
    return {c.get_label(): to_hex(c.lines[0].get_color()) for ax in fig.axes for c in ax.containers if c.get_label()}


def _shown_scale(path):
    """Pixels on the site per pixel of the PNG (the site shows it plotting.SITE_WIDTH_PX wide)."""
    return plotting.SITE_WIDTH_PX / Image.open(path).size[0]


def test_a_branch_has_one_colour_in_every_figure(entries, tmp_path, drawn):
    tables.plot_accuracy_vs_weights(
        [e for e in entries if not baselines.is_baseline(e["branch"])], str(tmp_path / "a.png")
    )
    baselines.plot(entries, "lottery_abc", str(tmp_path / "b.png"), "title")
    general, comparison = _colors(drawn["a.png"]), _colors(drawn["b.png"])
    for branch in ("main", "reinit", "random_prune_layerwise"):
        label = plotting.branch_label(branch)
        assert general[label] == comparison[label] == to_hex(plotting.branch_style(branch)["color"])
    assert len({general[plotting.branch_label(b)] for b in ("main", "reinit", "random_prune_layerwise")}) == 3
    # The analyses draw the ticket as IMP's main line and their controls as the controls' branches.
    assert plotting.network_style("ticket")["color"] == plotting.branch_style("main")["color"]
    assert plotting.network_style("random_prune")["color"] == plotting.branch_style("random_prune_layerwise")["color"]


def test_branches_outside_the_table_get_a_stable_distinct_style():
    fixed = {plotting.branch_style(b)["color"] for b in ("main", "reinit", "random_prune_layerwise", "gmp", "dense")}
    fixed |= set(plotting.PAI_COLORS.values())
    for branch in ("lr_rewind_1000", "rewind_500", "retrain_adam", "something_new"):
        style = plotting.branch_style(branch)
        assert style == plotting.branch_style(branch) and style["color"] not in fixed
    assert plotting.branch_style("lr_rewind_1000")["linestyle"] == "--"
    assert plotting.branch_style("pai_grasp_inverted") == {"color": "tab:green", "linestyle": "-.", "marker": "x"}


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("which", ["accuracy", "baselines", "instability"])
def test_the_figure_title_is_above_the_panel_titles(entries, tmp_path, drawn, which):
    path = str(tmp_path / f"{which}.png")
    if which == "accuracy":
        tables.plot_accuracy_vs_weights([_entry("main", level, 0.8**level, 0.9) for level in range(3)], path)
    elif which == "baselines":
        baselines.plot(entries, "lottery_abc", path, "a long title of the experiment\nsecond line")
    else:
        rows = [
            {
                "experiment": "lottery_abc",
                "title": "lenet_300_100 on fashion_mnist (lottery_abc)",
                "level": level,
                "network": network,
                "rewind_step": k,
                "density": 0.8**level,
                "samples": 1,
                "replicates": 1,
                "instability_test_mean": 0.01,
                "instability_test_std": 0.0,
                "instability_train_mean": 0.01,
                "instability_train_std": 0.0,
            }
            for level, network in ((0, "dense"), (2, "ticket"), (2, "random_prune"))
            for k in (0, 100)
        ]
        analysis.plot_instability_vs_step(rows, path)
    fig = drawn[os.path.basename(path)]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    title = fig._suptitle.get_window_extent(renderer)
    panel_titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert panel_titles and not any(_overlap(title, t) for t in panel_titles)
    assert all(title.y0 >= t.y1 for t in panel_titles)  # above them
    # Every panel reads at the site's width: at least 280 px wide, its smallest text at least 8 px high.
    scale = _shown_scale(path) * plotting.DPI / fig.dpi
    for ax in fig.axes:
        if ax.get_visible():
            assert ax.get_window_extent(renderer).width * scale >= 280
            smallest = min(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels() + [ax.title])
            assert smallest / 72 * plotting.DPI * _shown_scale(path) >= 8


def test_redraw_draws_what_the_table_holds(entries, tmp_path, drawn, capsys):
    folder = tmp_path / "report"
    folder.mkdir()
    tables.write_tables(str(folder), entries)
    (folder / "curves_lottery_abc.png").write_bytes(b"")
    assert redraw.main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "drew accuracy_vs_weights.png, early_stop_vs_weights.png, baselines_vs_weights.png" in out
    assert "not redrawn: curves_lottery_abc.png: the per-evaluation test accuracy" in out
    (every, *_) = drawn["baselines_vs_weights.png"].axes
    gmp = {c.get_label(): c for c in every.containers}[plotting.branch_label("gmp")]
    np.testing.assert_allclose(np.asarray(gmp.lines[0].get_xdata(), float), [51.2])
    np.testing.assert_allclose(np.asarray(gmp.lines[0].get_ydata(), float), [89.0])
    assert redraw.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing' / 'table.csv'}: cannot be read")


def _path_rows(samples):
    return [
        {
            "experiment": "lottery_abc",
            "title": "lenet_300_100 on fashion_mnist (lottery_abc)",
            "level": 2,
            "network": "ticket",
            "rewind_step": k,
            "density": 0.64,
            "samples": samples,
            "replicates": 1,
            "alphas": [0.0, 0.5, 1.0],
            "test_error_path": [0.1, 0.1 + 0.01 * i, 0.1],
            "instability_test_mean": 0.01 * i,
            "instability_test_std": 0.001,
            "instability_train_mean": 0.01 * i,
            "instability_train_std": 0.001,
        }
        for i, k in enumerate((0, 100, 500, 2000))
    ]


def test_the_path_colours_k_in_order_apart_from_every_branch_and_counts_pairs(tmp_path, drawn):
    analysis.plot_error_along_path(_path_rows(1), str(tmp_path / "path.png"))
    fig = drawn["path.png"]
    colors = {line.get_label(): line.get_color() for line in fig.axes[0].lines}
    assert list(colors) == ["k = 0", "k = 100", "k = 500", "k = 2000"]
    branches = {
        to_hex(plotting.branch_style(b)["color"])
        for b in ("main", "reinit", "random_prune_layerwise", "gmp", "dense", "set_uniform", "rigl_erk")
    }
    branches |= {to_hex(c) for c in plotting.PAI_COLORS.values()} | {to_hex(c) for c in plotting.FALLBACK_COLORS}
    branches |= {to_hex(s["color"]) for s in plotting.STRUCTURES.values()}
    assert not {to_hex(c) for c in colors.values()} & branches
    # Sequential: darker as k grows.
    lightness = [sum(c[:3]) for c in colors.values()]
    assert lightness == sorted(lightness, reverse=True) and len(set(lightness)) == 4
    assert "mean over 1 pair of copies" in fig._suptitle.get_text() and "(s)" not in fig._suptitle.get_text()


def test_instability_vs_step_has_no_empty_negative_half_and_keeps_its_tick_labels_inside(tmp_path, drawn):
    analysis.plot_instability_vs_step(_path_rows(4), str(tmp_path / "steps.png"))
    fig = drawn["steps.png"]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        assert "mean ± std over 4 pairs of copies" in ax.get_title()
        left, right = ax.get_xlim()
        assert -100 < left < 0 and right > 2000  # k = 0 near the left edge; symlog's threshold is 100
        box = ax.get_window_extent(renderer)
        labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "100", "500", "2000"]
        assert all(box.x0 <= t.x0 and t.x1 <= box.x1 for t in labels)
        # k = 0 within the left fifth of the panel: no empty half for negative k.
        zero = ax.transData.transform((0, 0))[0]
        assert zero - box.x0 < 0.2 * box.width
