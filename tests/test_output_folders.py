"""Where a command may write: never over, into or around run data (lottery_tf.store.output_folders).

Literal folder layouts, no training: what counts as an experiment folder, and the one rule that the export,
the report and the runner's --output_dir share. The commands themselves are tested with real runs in
tests/test_export.py (export --out, --overwrite), tests/test_report.py (report --out) and
tests/test_bad_inputs.py (--output_dir).
"""

import os

import pytest

from lottery_tf.store import output_folders


def _level(folder):
    """A level's main folder with its masks, as a run writes it first."""
    os.makedirs(os.path.join(folder, "main"), exist_ok=True)
    open(os.path.join(folder, "main", "masks.npz"), "wb").close()


def _experiment(folder, *names):
    _level(os.path.join(folder, "replicate_0", "level_00"))
    for name in names:
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("{}")
    return str(folder)


@pytest.fixture
def store(tmp_path):
    """tmp/projects/runs/lottery_abc (identity.json), tmp/other/group/lottery_def (no identity.json)."""
    runs = tmp_path / "projects" / "runs"
    experiment = _experiment(runs / "lottery_abc", "identity.json", "settings.json")
    other = _experiment(tmp_path / "other" / "group" / "lottery_def", "settings.json")
    return tmp_path, str(runs), experiment, other


def test_what_is_a_run_folder(tmp_path):
    assert output_folders.is_experiment(_experiment(tmp_path / "renamed_backup", "identity.json"))
    # identity.json lost: a lottery_<hash> folder with its replicates, settings or data record still is one, and
    # so is a copy under any name that holds a replicate (a folder with level_<nn>/main).
    assert output_folders.is_experiment(_experiment(tmp_path / "lottery_0a1b"))
    assert output_folders.is_experiment(_experiment(tmp_path / "copy_without_identity"))
    os.makedirs(tmp_path / "lottery_0a1c")
    (tmp_path / "lottery_0a1c" / "data.json").write_text("{}")
    assert output_folders.is_experiment(str(tmp_path / "lottery_0a1c"))
    # A replicate copied out on its own, renamed: run data, not an experiment.
    _level(str(tmp_path / "saved_replicate" / "level_03"))
    assert output_folders.is_run_data(str(tmp_path / "saved_replicate"))
    assert not output_folders.is_experiment(str(tmp_path / "saved_replicate"))
    # A project folder with a settings.json of its own, an empty lottery_ folder, a non-hash name, a level
    # folder without main, an empty level_01/main (and a replicate_0 holding one): none of them.
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "settings.json").write_text("{}")
    (tmp_path / "lottery_0a1d").mkdir()
    (tmp_path / "lottery_notes").mkdir()
    (tmp_path / "lottery_notes" / "settings.json").write_text("{}")
    os.makedirs(tmp_path / "thesis" / "level_01" / "figures")
    os.makedirs(tmp_path / "game" / "level_01" / "main")
    os.makedirs(tmp_path / "chapters" / "replicate_0" / "level_01" / "main")
    for name in ("project", "lottery_0a1d", "lottery_notes", "thesis", "game", "chapters", "missing"):
        assert not output_folders.is_run_data(str(tmp_path / name)), name


def test_the_run_folders_holding_a_path_and_those_below_a_folder(store):
    tmp, runs, experiment, other = store
    inside = os.path.join(experiment, "replicate_0", "level_00", "x")
    replicate = os.path.join(experiment, "replicate_0")
    assert output_folders.run_folders_holding(inside) == [replicate, experiment]  # innermost first
    assert output_folders.holding_run_folder(inside) == experiment  # the experiment is named
    assert output_folders.holding_run_folder(runs) is None
    assert output_folders.run_folder_below(str(tmp / "projects")) == experiment
    assert output_folders.run_folder_below(str(tmp / "other")) == other
    deep = _experiment(tmp / "studies" / "a" / "b" / "c" / "d" / "e" / "lottery_0e0e", "identity.json")
    assert output_folders.run_folder_below(str(tmp / "studies")) == deep  # however deep
    assert output_folders.run_folder_below(str(tmp / "missing")) is None


def test_an_output_folder_is_never_what_the_command_reads_nor_around_it(store):
    tmp, runs, experiment, _ = store
    os.symlink(experiment, tmp / "link")

    def problem(out, **kwargs):
        return output_folders.output_problem(str(out), reads=[experiment], **kwargs)

    reads = "which this command reads: write to a folder of its own"
    assert problem(experiment) == f"{experiment} is the run folder this command reads: write to a folder of its own"
    assert problem(tmp / "link") == (
        f"{tmp / 'link'} is the run folder this command reads ({experiment}): write to a folder of its own"
    )
    assert problem(experiment + "/replicate_0/..") == (
        f"{experiment}/replicate_0/.. is the run folder this command reads: write to a folder of its own"
    )
    for ancestor in (runs, tmp / "projects", tmp, "/"):
        assert problem(ancestor) == f"{ancestor} holds {experiment}, {reads}", ancestor
    inside = f"write to {experiment}/exports/<name> or a folder outside every run folder"
    for folder in ("replicate_0", "replicate_0/level_00/main", "replicate_0/new", "exports", "new"):
        out = os.path.join(experiment, folder)
        assert problem(out, exports_allowed=True) == f"{out} is inside the run folder {experiment}: {inside}"
    # Below exports/ is where an export goes; a report may not go there.
    assert problem(os.path.join(experiment, "exports", "ticket"), exports_allowed=True) is None
    assert problem(os.path.join(experiment, "exports", "ticket")) == (
        f"{experiment}/exports/ticket is inside the run folder {experiment}: write to a folder outside every run folder"
    )
    # A folder beside the experiments, a new folder elsewhere, one beside an unrelated empty level_01/main: fine.
    assert problem(os.path.join(runs, "report")) is None and problem(tmp / "out") is None
    os.makedirs(tmp / "game" / "level_01" / "main")
    assert problem(tmp / "game" / "new") is None and problem(tmp / "game") is None


def test_an_output_folder_never_holds_or_lies_in_other_run_data(store):
    tmp, runs, experiment, other = store
    for root in (tmp / "other", tmp / "other" / "group"):
        assert output_folders.output_problem(str(root), reads=[experiment]) == (
            f"{root} holds run data ({other}): write to a folder of its own"
        )
    out = os.path.join(other, "replicate_0")
    assert output_folders.output_problem(out, reads=[experiment], exports_allowed=True) == (
        f"{out} is inside the run folder {other}: write to a folder outside every run folder"
    )  # no exports/ offered: that experiment has lost its identity.json
