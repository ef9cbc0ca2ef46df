"""``python -m lottery_tf.main --helpshort / --help / --helpfull``: the flags by the site's sections, common flags first."""

import os
import re
import sys

import launcher
import pytest
from absl import flags
from conftest import REPO

from lottery_tf.engine import config

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
# What the site's flag reference (docs/hooks.py) titles its sections, in its order; --help has the same.
SITE_TITLES = [
    "Data",
    "Model",
    "Training",
    "Pruning",
    "Branches, analyses and baselines",
    "Where and how to run",
    "What one invocation adds",
]
# The flags lottery_tf.main defines beside the declared settings.
INVOCATION = {"sweep_rewind_steps", "dry_run", "rerecord_data"}


@pytest.fixture(scope="module")
def helps():
    """Each spelling of help, as a user types it: ``python -m lottery_tf.main ARG`` (through absl's app.run)."""
    spellings = ("--helpshort", "--help", "-h", "-?", "--helpfull", "-helpfull")
    found = {}
    for arg in spellings:
        found[arg] = launcher.run(
            [sys.executable, "-m", "lottery_tf.main", arg], cwd=REPO, env=ENV, capture_output=True, text=True
        )
    return found


def groups(text: str) -> list:
    """``(title, [flag names])`` of each group of a help text: a line ``Title:`` or ``Title (and ... above):``."""
    found = []
    for line in text[text.index("\nCommon flags:\n") :].splitlines():
        heading = re.fullmatch(r"(\S.*?)(?: \(and .* above\))?:", line)
        if heading and not line.startswith("-"):
            found.append((heading.group(1), []))
        elif found and (flag := re.match(r"  (?:-\S,)?--(?:\[no\])?(\w+): ", line)):
            found[-1][1].append(flag.group(1))
    return found


def section_of(name: str) -> str:
    """The site's title for a flag, from the setting's field (``--seed`` is listed under pruning)."""
    if name in INVOCATION:
        return "What one invocation adds"
    section = config.SETTING[name].field.split(".")[0]
    titles = dict(zip(["data", "model", "training", "pruning", "branches", "run"], SITE_TITLES))
    return titles["pruning" if section == "seed" else section]


def test_help_lists_common_flags_then_every_flag_by_the_sites_sections(helps):
    result = helps["--help"]
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    found = groups(result.stdout)
    assert [title for title, _ in found] == ["Common flags", *SITE_TITLES]
    common = found[0][1]
    assert common[0] == "flagfile" and {"dataset", "model", "iterations", "levels", "output_dir"} <= set(common)
    assert len(common) <= 15
    listed = [name for _, names in found for name in names]
    assert sorted(listed) == sorted([*config.SETTING, *INVOCATION, "flagfile"])  # each once
    for title, names in found[1:]:
        assert names and all(section_of(name) == title for name in names), title
        declared = [s.flag for s in config.SETTINGS if s.flag in names]
        if title != "What one invocation adds":
            assert names == declared, title  # the settings' declared order, as on the site
    # A section names the common flags it holds, so a reader of "Training" finds --iterations.
    assert "\nTraining (and --iterations above):\n" in result.stdout
    assert "Fraction of the remaining weights pruned per level" in result.stdout
    assert result.stdout.rstrip().endswith("--helpfull adds absl's own flags (logging, debugging).")
    for spelling in ("-h", "-?"):
        assert (helps[spelling].returncode, helps[spelling].stdout) == (0, result.stdout), spelling


def test_the_site_has_the_sections_of_help_in_its_order(helps):
    sys.path.insert(0, os.path.join(REPO, "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(os.path.join(REPO, "docs"))
    reference = hooks.flag_reference()
    titles = [line[3:] for line in reference.splitlines() if line.startswith("## ")]
    assert titles == SITE_TITLES
    on_site = {title: re.findall(r"^\| `--(\w+)`", part, re.M) for title, part in _parts(reference)}
    in_help = {title: names for title, names in groups(helps["--help"].stdout)}
    for title in SITE_TITLES:  # --help lists the common flags once, first, and the rest where the site does
        assert [n for n in on_site[title] if n not in in_help["Common flags"]] == in_help[title], title


def _parts(markdown: str) -> list:
    pieces = re.split(r"^## (.*)$", markdown, flags=re.M)
    return list(zip(pieces[1::2], pieces[2::2]))


def test_helpfull_exits_0_with_every_flag_once_and_no_other_librarys_flags(helps):
    for spelling in ("--helpfull", "-helpfull"):
        result = helps[spelling]
        assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
        names = [name for _, group in groups(result.stdout) for name in group]
        for name in [*config.SETTING, *INVOCATION, "flagfile", "verbosity", "logtostderr", "undefok"]:
            assert names.count(name) == 1, name
        assert [title for title, _ in groups(result.stdout)][-1] == "absl's own flags (logging, debugging)"
        # TensorFlow (imported here, as by the command) defines flags no one here reads: none is listed.
        library = {
            f.name
            for module, defined in flags.FLAGS.flags_by_module_dict().items()
            if module.startswith(("tensorflow", "absl.testing"))
            for f in defined
        }
        assert "tt_check_filter" in library
        assert not library & set(names) and "tt_check_filter" not in result.stdout
        assert result.stdout.startswith(helps["--help"].stdout.rsplit("\n--helpfull adds", 1)[0])


def test_helpshort_lists_only_the_common_flags(helps):
    result = helps["--helpshort"]
    assert result.returncode == 0 and result.stderr == ""
    ((title, names),) = groups(result.stdout)
    assert title == "Common flags" and names == groups(helps["--help"].stdout)[0][1]
    assert result.stdout.startswith("lottery_tf: find and study lottery tickets")
    assert result.stdout.rstrip().endswith("--help lists every flag by section; --helpfull adds absl's own flags.")
    assert len(result.stdout.splitlines()) < len(helps["--help"].stdout.splitlines()) / 4
