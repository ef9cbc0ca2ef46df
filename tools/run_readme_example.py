"""Runs README.md's Python example as printed and writes what it prints (the committed evidence).

Usage: python tools/run_readme_example.py [--out=results/readme_example.txt]

The example runs in a fresh temporary folder (it writes ticket.keras there);
the output file starts with the command, the machine and the versions.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(path: str) -> list[str]:
    """The ```python blocks of a Markdown file, dedented (a block inside a list item is indented)."""
    text = open(path).read()
    return [
        "\n".join(line[len(indent) :] for line in body.splitlines())
        for indent, body in re.findall(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    code = "\n\n".join(python_blocks(os.path.join(REPO, "README.md")))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr)
        return 1
    import keras
    import tensorflow

    text = (
        f"# command: python tools/run_readme_example.py --out=results/readme_example.txt\n"
        f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU used; TensorFlow "
        f"{tensorflow.__version__}, Keras {keras.__version__}; {time.time() - start:.0f} s\n" + result.stdout
    )
    print(text, end="")
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
