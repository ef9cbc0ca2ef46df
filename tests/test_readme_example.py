"""Every Python block in README.md runs exactly as printed, in order, in a fresh process (real Fashion-MNIST)."""

import os
import re
import sys

import launcher
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end: left out of tools/test.sh --quick


def python_blocks(path):
    """The ```python blocks of a Markdown file, dedented (a block inside a list item is indented)."""
    text = open(path).read()
    blocks = []
    for indent, body in re.findall(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M):
        blocks.append("\n".join(line[len(indent) :] for line in body.splitlines()))
    return blocks


def test_readme_python_blocks_run_as_printed(tmp_path):
    blocks = python_blocks(os.path.join(REPO, "README.md"))
    assert len(blocks) >= 1
    for later in blocks[1:]:  # a block that uses an earlier one's names says so
        assert later.lstrip().startswith("# Continues"), later[:80]
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(blocks))
    result = launcher.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # The LTH rates, exactly: 20% of fc1 and fc2 (ceil), 10% of the output layer, per level.
    # 266,200 weights -> 213,060 -> 170,538 -> 136,511, as the README says after the block.
    levels = [line for line in lines if line.startswith("level ")]
    densities = [re.search(r"([\d.]+)% of weights", line).group(1) for line in levels]
    assert densities == ["100.00", "80.04", "64.06", "51.28"]
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "(100.00%, 80.04%, 64.06%, 51.28%)" in readme
    accuracies = [float(re.search(r"val acc ([\d.]+)", line).group(1)) for line in levels]
    assert all(a > 0.6 for a in accuracies)
    # The saved file is the ticket the last level trained, not the next level's rewound one: its test
    # accuracy is the last level's (an untrained, rewound network scored far lower before).
    (saved,) = [float(line.split()[-1]) for line in lines if line.startswith("saved ticket: test acc")]
    assert abs(saved - accuracies[-1]) < 0.03, (saved, accuracies[-1])
    # It loads in a fresh process without lottery_tf, its pruned weights exact zeros.
    check = launcher.run(
        [
            sys.executable,
            "-c",
            "import keras, numpy as np; m = keras.models.load_model('ticket.keras'); "
            "k = [l.kernel.numpy() for l in m.layers if hasattr(l, 'kernel')]; "
            "print(f'{100 * sum(np.count_nonzero(w) for w in k) / sum(w.size for w in k):.2f}')",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.split()[-1] == "51.28"
    # The numbers the README quotes are the committed evidence's.
    evidence = open(os.path.join(REPO, "results", "readme_example.txt")).read()
    quoted = re.search(r"val acc ([\d.]+), saved ticket test acc ([\d.]+)", readme).groups()
    assert f"val acc {quoted[0]}" in evidence.splitlines()[-2] and evidence.splitlines()[-1].endswith(quoted[1])
