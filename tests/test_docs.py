"""Every code block of the documentation runs as printed, and the site builds strictly.

Python blocks run in order, page by page, in one fresh process per page, from a
folder that has the repository's flags/ (commands run from the repository
root); a block that uses an earlier block's names says so on its first line
("# Continues ..."). Command lines are checked as printed: `python -m
lottery_tf.main` with `--dry_run` (every flag and value validated), the other
commands' flags against their `--help`, `bash tools/...` scripts exist.
"""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO, dry_runs

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


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: os.path.basename(p))
def test_python_blocks_run_as_printed(page, tmp_path):
    code = blocks(page, "python")
    os.symlink(os.path.join(REPO, "flags"), tmp_path / "flags")
    for later in code[1:]:
        first = later.lstrip().splitlines()[0]
        uses_earlier = first.startswith("# Continues")
        # A block that does not say it continues must define what it uses: it runs alone first.
        if not uses_earlier:
            alone = subprocess.run(
                [sys.executable, "-c", later], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
            )
            assert alone.returncode == 0, (
                f"a block that does not say it continues fails alone:\n{later[:300]}\n{alone.stderr[-1500:]}"
            )
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(code))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
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
    result = subprocess.run(
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
                mains.append(((page, line), [*words[3:], "--dry_run"]))
            elif words[:2] == ["python", "-m"] and words[2].startswith("lottery_tf."):
                text = helps.setdefault(words[2], _help(words[2]))
                for word in words[3:]:
                    if word.startswith("--"):
                        assert word.split("=", 1)[0] in text, (page, line, word)
            elif words[:1] == ["python"] and words[1].startswith("tools/"):
                assert os.path.exists(os.path.join(REPO, words[1])), (page, line)
                text = helps.setdefault(
                    words[1],
                    subprocess.run(
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
    for (where, _), (code, _, stderr) in zip(mains, dry_runs([arguments for _, arguments in mains])):
        assert code == 0, (*where, stderr[-500:])
    assert checked >= 15


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run(
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
