"""Every code block of the documentation runs as printed, and the site builds strictly.

Python blocks run in order, page by page, in one fresh process per page; a block
that uses an earlier block's names says so on its first line ("# Continues
..."), every other block in a fresh namespace, folder (holding the repository's
flags/) and Keras session, so it must define what it uses. Command lines are checked as printed: `python -m
lottery_tf.main` with `--dry_run` (every flag and value validated), the other
commands' flags against their `--help`, `bash tools/...` scripts exist.
"""

import glob
import json
import os
import re
import shlex
import sys

import launcher
import pytest
from conftest import REPO, cli_runs

pytestmark = pytest.mark.slow
PAGES = sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))) + [os.path.join(REPO, "README.md")]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def blocks(path, language):
    text = open(path).read()
    found = []
    for indent, body in re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.S | re.M):
        found.append("\n".join(line[len(indent) :] for line in body.splitlines()))
    return found


def _python_pages():
    # README.md's block runs in tests/test_readme_example.py, which also checks what it prints.
    return [p for p in PAGES if blocks(p, "python") and not p.endswith("README.md")]


# A page's blocks in one process: a block that does not say it continues runs in a fresh namespace, in a
# fresh folder (with flags/) and a fresh Keras session, so it must define what it uses, as it would alone;
# one that continues sees every name the page defined before it, in the folder of the block before it.
_PAGE_RUNNER = """
import json, os, sys
page, blocks, root, flags = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
page_names = {"__name__": "__main__"}  # what the page has defined so far, for the blocks that continue
for number, code in enumerate(blocks, start=1):
    if code.lstrip().startswith("# Continues"):
        exec(compile(code, f"{page}, block {number}", "exec"), page_names)
        continue
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()
    folder = os.path.join(root, f"block_{number}")
    os.makedirs(folder)
    os.symlink(flags, os.path.join(folder, "flags"))
    os.chdir(folder)
    names = {"__name__": "__main__"}
    exec(compile(code, f"{page}, block {number}", "exec"), names)
    page_names.update(names)
"""


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: os.path.basename(p))
def test_python_blocks_run_as_printed(page, tmp_path):
    code = blocks(page, "python")
    assert not code[0].lstrip().startswith("# Continues"), "the first block has nothing to continue"
    (tmp_path / "blocks.json").write_text(json.dumps(code))
    result = launcher.run(
        [
            sys.executable,
            "-c",
            _PAGE_RUNNER,
            os.path.basename(page),
            str(tmp_path / "blocks.json"),
            str(tmp_path),
            os.path.join(REPO, "flags"),
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _commands():
    found = []
    for page in PAGES:
        for block in blocks(page, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found.append((os.path.basename(page), line))
    return found


def _help(module):
    result = launcher.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-1000:]
    return result.stdout


def test_every_command_line_is_valid_as_printed():
    helps = {}
    checked = 0
    mains = []  # (where, arguments): validated together below, in one process
    for page, line in _commands():
        words = shlex.split(line)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # an environment assignment before the command
        for command in " ".join(shlex.quote(w) for w in words).split(" && "):
            words = shlex.split(command)
            if words[:2] == ["bash", "tools/setup.sh"] or words[:1] == ["bash"]:
                assert os.path.exists(os.path.join(REPO, words[1])), (page, line)
            elif words[:3] == ["python", "-m", "lottery_tf.main"]:
                # The dry run checks a cluster's address and GPU share against what Ray finds, and neither a
                # cluster nor a GPU is here: those two are checked by name.
                elsewhere = [w for w in words[3:] if w.split("=", 1)[0] in ("--ray_address", "--gpus_per_training")]
                text = helps.setdefault("lottery_tf.main", _help("lottery_tf.main")) if elsewhere else ""
                assert all(w.split("=", 1)[0] in text for w in elsewhere), (page, line)
                mains.append(((page, line), [*(w for w in words[3:] if w not in elsewhere), "--dry_run"]))
            elif words[:2] == ["python", "-m"] and words[2].startswith("lottery_tf."):
                text = helps.setdefault(words[2], _help(words[2]))
                for word in words[3:]:
                    if word.startswith("--"):
                        assert word.split("=", 1)[0] in text, (page, line, word)
            elif words[:1] == ["python"] and words[1].startswith("tools/"):
                assert os.path.exists(os.path.join(REPO, words[1])), (page, line)
                text = helps.setdefault(
                    words[1],
                    launcher.run(
                        [sys.executable, words[1], "--help"], cwd=REPO, env=ENV, capture_output=True, text=True
                    ).stdout,
                )
                for word in words[2:]:
                    if word.startswith("--"):
                        assert word.split("=", 1)[0] in text, (page, line, word)
            elif words[:1] in (["tensorboard"], ["mkdocs"], ["pip"], ["ruff"]):
                pass  # other programs' command lines
            else:
                raise AssertionError(f"{page}: a command line the test does not know how to check: {line}")
            checked += 1
    for (where, _), result in zip(mains, cli_runs([arguments for _, arguments in mains])):
        assert result.returncode == 0, (*where, result.stderr[-500:])
    assert checked >= 15


def test_the_site_builds_strictly(tmp_path):
    result = launcher.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO,
        env={**ENV, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    flags_page = open(tmp_path / "site" / "flags" / "index.html").read()
    from lottery_tf.engine.config import SETTINGS

    assert all(f"--{s.flag}" in flags_page for s in SETTINGS)  # generated from the definitions: none missing
    assert os.path.exists(tmp_path / "site" / "results" / "baselines" / "baselines_vs_weights.png")
