"""Every code block of the documentation runs as printed, prints what the page shows, and the site builds strictly.

Python blocks run in order, page by page, in one fresh process per page, from a
temporary folder outside the checkout (tools/docs_outputs.py: a block that uses
an earlier block's names says so on its first line, "# Continues ...", every
other block runs in a fresh namespace, folder and Keras session, so it must
define what it uses); what each block prints is compared with the
```text title="Output" block under it (exact text; ``~X`` numbers within a
tolerance; ``…`` any text). Command lines are checked as printed: `python -m
lottery_tf.main` with `--dry_run` (every flag and value validated), the other
commands' flags against their `--help`, `bash tools/...` scripts exist.
"""

import glob
import os
import re
import shlex
import sys

import launcher
import pytest
from conftest import REPO, cli_runs

from tools import docs_outputs

pytestmark = pytest.mark.slow
PAGES = sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True)) + [os.path.join(REPO, "README.md")]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


def blocks(path, language):
    return (
        [block.code for block in docs_outputs.parse(open(path).read())]
        if language == "python"
        else _fenced(path, language)
    )


def _fenced(path, language):
    text = open(path).read()
    found = []
    for indent, body in re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.S | re.M):
        found.append("\n".join(line[len(indent) :] for line in body.splitlines()))
    return found


def _python_pages():
    # README.md's block runs in tests/test_readme_example.py, which also checks what it prints.
    return docs_outputs.pages()


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: os.path.relpath(p, os.path.join(REPO, "docs")))
def test_python_blocks_print_what_the_page_shows(page, tmp_path):
    code = blocks(page, "python")
    assert not code[0].lstrip().startswith("# Continues"), "the first block has nothing to continue"
    root = tmp_path / "blocks"
    assert not str(root).startswith(REPO + os.sep)  # outside the checkout: no flags/ or data beside the blocks
    printed = docs_outputs.run_page(page, str(root), run=launcher.run, env=ENV)
    problems = []
    for number, (block, out) in enumerate(zip(docs_outputs.parse(open(page).read()), printed), start=1):
        problem = docs_outputs.output_problem(block.output, out)
        if problem:
            problems.append(f"block {number}: {problem}")
    fix = f"python tools/docs_outputs.py --write {os.path.relpath(page, REPO)}"
    assert not problems, "\n".join(problems) + f"\n(to show what the blocks print now: {fix})"


def test_shown_outputs_are_compared_as_the_contributing_page_says():
    problem = docs_outputs.line_problem
    assert (
        problem("level 1: 80.13% of the weights, accuracy ~0.766", "level 1: 80.13% of the weights, accuracy 0.81")
        is None
    )
    assert "not within" in problem("accuracy ~0.766", "accuracy 0.85")  # 10% of 0.766 is 0.0766
    assert problem("loss ~1.2±0.5", "loss 1.65") is None
    assert "not within 0.5" in problem("loss ~1.2±0.5", "loss 1.75")
    assert problem("~3 steps", "4 steps") is None and problem("~3 steps", "5 steps")  # one unit of the last digit
    assert problem("took … s", "took 12.5 s") is None
    assert problem("level 1: 80.13%", "level 1: 80.14%")  # an unmarked number is exact text
    assert problem("density 0.5", "density 0.5000")
    text = 'Intro.\n\n```python\nprint(1)\n```\n\n```text title="Output"\nacc ~0.50\nsize 10\n```\n\n```python\nx = 1\n```\n'
    parsed = docs_outputs.parse(text)
    assert [(b.code, b.output) for b in parsed] == [("print(1)", "acc ~0.50\nsize 10"), ("x = 1", None)]
    assert docs_outputs.output_problem(parsed[0].output, "acc 0.52\nsize 10\n\n") is None
    assert "2 lines printed, 1 shown" in docs_outputs.output_problem("acc ~0.5", "acc 0.5\nmore\n")
    assert "has no Output block" in docs_outputs.output_problem(None, "x\n")
    assert "prints nothing" in docs_outputs.output_problem("x", "")
    assert docs_outputs.parse("````markdown\n```python\nprint(1)\n```\n````\n") == []  # an example, not a block
    new, look = docs_outputs.rewrite(text, ["acc 0.61\nsize 12\n", "hello\n"])
    assert new == (
        'Intro.\n\n```python\nprint(1)\n```\n\n```text title="Output"\nacc ~0.61\nsize 12\n```\n\n'
        '```python\nx = 1\n```\n\n```text title="Output"\nhello\n```\n'
    )
    assert look == ["block 2, line 1: hello"]  # new text: its varying numbers are to be marked by hand
    assert (
        docs_outputs.rewrite(new, ["acc 0.60\nsize 12\n", ""])[0]
        == new.split('\n\n```text title="Output"\nhello')[0] + "\n"
    )


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


def test_the_export_help_shows_plain_text_and_every_default():
    import inspect

    from lottery_tf import export
    from lottery_tf.engine.export_files import export_model

    parser = export._parser()
    text = parser.format_help()
    assert "``" not in text and ":mod:" not in text
    # The defaults the help names are the parser's, and export_model's: a SavedModel only if asked.
    assert "(default: keras,litert)" in text and "saved_model" in text
    assert (
        tuple(parser.get_default("formats").split(",")) == inspect.signature(export_model).parameters["formats"].default
    )
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "out", "level"):
            shown = "off" if action.default is False else str(action.default)
            assert action.help.endswith(f"(default: {shown})"), (action.dest, action.help)
    assert "SavedModel only if" in text


def test_the_guides_index_and_the_pages_give_the_same_times():
    index = open(os.path.join(REPO, "docs", "guides", "index.md")).read()
    rows = re.findall(r"^\| \[[^\]]+\]\(([\w-]+\.md)\) \|[^\n]*\| ~(\d+) s \|$", index, re.M)
    assert len(rows) == len(glob.glob(os.path.join(REPO, "docs", "guides", "*.md"))) - 1
    for page, seconds in rows:
        text = " ".join(open(os.path.join(REPO, "docs", "guides", page)).read().split())
        stated = re.findall(r"About (\d+) s on a 2-core CPU", text)
        # A page states its own time, or "a few seconds" for those under 6 s.
        assert stated == [seconds] if stated else (int(seconds) < 6 and "a few seconds" in text), (page, seconds)
