"""The documentation's Python blocks and the outputs shown under them: run, compare, rewrite.

Usage:
    python tools/docs_outputs.py [PAGE ...]            # run the pages' blocks, report every difference
    python tools/docs_outputs.py --write [PAGE ...]    # rewrite the shown outputs with what the blocks print

Without pages: every Markdown page under docs/ with a Python block. Each page's
blocks run in one process, from a fresh temporary folder outside the checkout
(a block that starts with "# Continues" shares the names and the folder of the
blocks before it; every other block gets a fresh namespace, folder and Keras
session). What each block prints (file descriptor 1: Python's and native
code's) is compared with the ```text title="Output" block right under it:

* text is compared exactly, line by line (trailing spaces and trailing empty
  lines ignored);
* ``~X`` is a number that varies between machines: it matches a printed
  number within 10% of X or one unit of X's last digit, whichever is larger;
  ``~X±T`` within T;
* ``…`` matches any text within its line (a time, a path, a size).

A page whose first line is ``<!-- keras_backend: jax ... -->`` runs with
``KERAS_BACKEND=jax`` (:func:`page_backend`). A block that prints nothing has no Output block. ``--write`` keeps every
shown line that still matches; a changed line whose text is the same but for
its numbers keeps its ``~`` marks with the new values; any other line is
replaced by what was printed, and named, so that its varying numbers can be
marked by hand. tests/test_docs.py runs the same comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_FENCE = '```text title="Output"'

_PYTHON = re.compile(r"^( *)```python\n(.*?)^\1```\n", re.S | re.M)
_OUTPUT = re.compile(r"\n*( *)```text title=\"Output\"\n(.*?)^\1```\n", re.S | re.M)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_MARK = re.compile(rf"~({_NUMBER})(?:±({_NUMBER}))?|…")
_ANY_NUMBER = re.compile(_NUMBER)


@dataclasses.dataclass
class Block:
    """One Python block of a page and the Output block under it (``output`` None when it has none)."""

    code: str
    indent: str
    end: int  # where the Python block's closing fence line ends
    output: str | None
    output_span: tuple[int, int] | None  # the Output block, with the blank lines before it


def _dedent(body: str, indent: str) -> str:
    return "\n".join(line[len(indent) :] for line in body.splitlines())


def pages() -> list[str]:
    """Every Markdown page under docs/ that has a Python block, in order."""
    found = sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
    return [page for page in found if parse(open(page).read())]


_BACKEND = re.compile(r"\A<!-- keras_backend: (\w+)")


def page_backend(text: str) -> str | None:
    """The Keras backend a page's first line asks its blocks to run on (``<!-- keras_backend: jax -->``), or None."""
    match = _BACKEND.match(text)
    return match.group(1) if match else None


def parse(text: str) -> list[Block]:
    """The Python blocks of a page's text, each with the Output block right under it (blank lines between)."""
    blocks = []
    # A block shown inside a four-backtick fence (an example of the convention) is not one of the page's.
    searched = re.sub(r"^````.*?^````", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S | re.M)
    for match in _PYTHON.finditer(searched):
        indent = match.group(1)
        output = _OUTPUT.match(text, match.end())
        if output and output.group(1) == indent:
            shown, span = _dedent(output.group(2), indent), (match.end(), output.end())
        else:
            shown, span = None, None
        code = _dedent(text[match.start(2) : match.end(2)], indent)
        blocks.append(Block(code, indent, match.end(), shown, span))
    return blocks


# Runs one page's blocks in order, each block's file descriptor 1 captured on its own; writes a JSON list of
# what each printed, then the error of the block that failed (if one did) as the last entry.
RUNNER = r"""
import json, linecache, os, sys, tempfile, traceback
blocks, root, results_path = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
page_names = {"__name__": "__main__"}
printed, failure, real_stdout = [], None, os.dup(1)
for number, code in enumerate(blocks, start=1):
    continues = code.lstrip().startswith("# Continues")
    if not continues:
        if "keras" in sys.modules:
            sys.modules["keras"].backend.clear_session()
        folder = os.path.join(root, f"block_{number}")
        os.makedirs(folder)
        os.chdir(folder)
        names = {"__name__": "__main__"}
    else:
        names = page_names
    capture = tempfile.TemporaryFile(mode="w+")
    sys.stdout.flush()
    os.dup2(capture.fileno(), 1)
    filename = f"<block {number}>"  # its source findable, as a file's is (AutoGraph reads a tf.function's)
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        exec(compile(code, filename, "exec"), names)
    except BaseException:
        failure = f"block {number} failed:\n" + traceback.format_exc()
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    capture.seek(0)
    printed.append(capture.read())
    if not continues:
        page_names.update(names)
    if failure:
        break
json.dump({"printed": printed, "failure": failure}, open(results_path, "w"))
"""


def run_page(page: str, root: str, run=subprocess.run, env=None, timeout=900) -> list[str]:
    """Runs a page's blocks in one process, from folders under ``root``; returns what each block printed.

    Args:
        page: The Markdown file.
        root: An empty folder outside the checkout, for the blocks' folders.
        run: ``subprocess.run`` or a function with its arguments (the tests' forked ``launcher.run``).
        env: The process's environment (default: this one, with TensorFlow's logs quiet).
        timeout: Seconds for the whole page.

    Raises:
        RuntimeError: When a block fails (its traceback, with what the process wrote to stderr).
    """
    text = open(page).read()
    blocks = parse(text)
    os.makedirs(root, exist_ok=True)
    source, results = os.path.join(root, "blocks.json"), os.path.join(root, "printed.json")
    with open(source, "w") as file:
        json.dump([block.code for block in blocks], file)
    env = env if env is not None else {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    backend = page_backend(text)
    if backend:  # chosen once per process, at Keras's import: the page's process starts with it
        env = {**env, "KERAS_BACKEND": backend}
    result = run(
        [sys.executable, "-c", RUNNER, source, root, results],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0 or not os.path.exists(results):
        raise RuntimeError(f"{page}: the page's process failed ({result.returncode}):\n{result.stderr[-3000:]}")
    outcome = json.load(open(results))
    if outcome["failure"]:
        raise RuntimeError(f"{page}, {outcome['failure']}\nstderr:\n{result.stderr[-2000:]}")
    return outcome["printed"]


def _lines(text: str | None) -> list[str]:
    lines = [line.rstrip() for line in (text or "").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _tolerance(shown: str, given: str | None) -> float:
    if given is not None:
        return abs(float(given))
    digits = shown.split(".")[1] if "." in shown and "e" not in shown.lower() else ""
    return max(0.1 * abs(float(shown)), 10.0 ** -len(digits))


def line_problem(shown: str, printed: str) -> str | None:
    """Why a printed line does not match a shown line (``~X``, ``~X±T`` and ``…`` marks), or None."""
    pattern, checks, position = "", [], 0
    for mark in _MARK.finditer(shown):
        pattern += re.escape(shown[position : mark.start()])
        if mark.group(0) == "…":
            pattern += "(.*?)"
            checks.append(None)
        else:
            pattern += f"({_NUMBER})"
            checks.append((mark.group(1), _tolerance(mark.group(1), mark.group(2))))
        position = mark.end()
    pattern += re.escape(shown[position:])
    found = re.fullmatch(pattern, printed)
    if not found:
        return f"shown   {shown!r}\nprinted {printed!r}"
    for value, check in zip(found.groups(), checks):
        if check is not None and abs(float(value) - float(check[0])) > check[1] + 1e-12:
            return f"shown   {shown!r}\nprinted {printed!r}: {value} is not within {check[1]:g} of {check[0]}"
    return None


def output_problem(shown: str | None, printed: str) -> str | None:
    """Why what a block printed does not match its shown output (None: it matches)."""
    shown_lines, printed_lines = _lines(shown), _lines(printed)
    if not printed_lines and shown is not None:
        return "the block prints nothing: remove its Output block"
    if printed_lines and shown is None:
        return "the block prints and has no Output block under it:\n" + "\n".join(printed_lines)
    if len(shown_lines) != len(printed_lines):
        return (
            f"{len(printed_lines)} lines printed, {len(shown_lines)} shown:\n"
            + "\n".join(printed_lines)
            + "\n--- shown:\n"
            + "\n".join(shown_lines)
        )
    problems = [line_problem(s, p) for s, p in zip(shown_lines, printed_lines)]
    problems = [f"line {n}: {problem}" for n, problem in enumerate(problems, start=1) if problem]
    return "\n".join(problems) or None


def _skeleton(line: str) -> str:
    return _ANY_NUMBER.sub("#", _MARK.sub("#", line))


def rewrite_line(shown: str | None, printed: str) -> tuple[str, bool]:
    """The line to show for ``printed``; True when it needs a look (its varying numbers may need marks)."""
    if shown is not None and line_problem(shown, printed) is None:
        return shown, False
    if shown is None or "…" in shown or _skeleton(shown) != _skeleton(printed):
        return printed, True
    marks = [m.group(0) for m in re.finditer(rf"~{_NUMBER}(?:±{_NUMBER})?|{_NUMBER}", shown)]
    pieces, position = [], 0
    for mark, number in zip(marks, _ANY_NUMBER.finditer(printed)):
        pieces.append(printed[position : number.start()])
        tolerance = mark.split("±")[1] if "±" in mark else None
        pieces.append(
            f"~{number.group(0)}" + (f"±{tolerance}" if tolerance else "") if mark.startswith("~") else number.group(0)
        )
        position = number.end()
    return "".join(pieces) + printed[position:], False


def rewrite(text: str, printed: list[str]) -> tuple[str, list[str]]:
    """The page's text with each block's Output block made from what it printed; the lines to look at."""
    blocks, look = parse(text), []
    for number, (block, out) in reversed(list(enumerate(zip(blocks, printed), start=1))):
        shown_lines, new = _lines(block.output), []
        for index, line in enumerate(_lines(out)):
            kept, needs_look = rewrite_line(shown_lines[index] if index < len(shown_lines) else None, line)
            new.append(kept)
            if needs_look:
                look.append(f"block {number}, line {index + 1}: {line}")
        start, end = block.output_span or (block.end, block.end)
        body = "".join(f"{block.indent}{line}\n" if line else "\n" for line in new)
        replacement = f"\n{block.indent}{OUTPUT_FENCE}\n{body}{block.indent}```\n" if new else ""
        text = text[:start] + replacement + text[end:]
    return text, sorted(look)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", help="Markdown pages (default: every page under docs/ with Python)")
    parser.add_argument("--write", action="store_true", help="rewrite the Output blocks with what was printed")
    args = parser.parse_args(argv)
    chosen = [os.path.abspath(page) for page in args.pages] or pages()
    missing = [page for page in chosen if not os.path.isfile(page)]
    if missing:
        print(f"docs_outputs: no such page: {missing[0]}", file=sys.stderr)
        return 2
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    status = 0
    for page in chosen:
        name = os.path.relpath(page, REPO)
        with tempfile.TemporaryDirectory() as root:
            try:
                printed = run_page(page, root, env=env)
            except RuntimeError as error:
                print(error, file=sys.stderr)
                status = 1
                continue
        text = open(page).read()
        if args.write:
            new, look = rewrite(text, printed)
            if new != text:
                with open(page, "w") as file:
                    file.write(new)
            print(f"{name}: {'rewritten' if new != text else 'unchanged'}")
            for line in look:
                print(f"  look at {line}")
        else:
            differs = False
            for number, (block, out) in enumerate(zip(parse(text), printed), start=1):
                problem = output_problem(block.output, out)
                if problem:
                    print(f"{name}, block {number}:\n{problem}")
                    differs = True
            print(f"{name}: {'differs' if differs else 'matches'}")
            status = status or int(differs)
    return status


if __name__ == "__main__":
    sys.exit(main())
