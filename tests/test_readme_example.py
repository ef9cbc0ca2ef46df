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
    # 266,200 weights -> 213,060 -> 170,538 -> 136,511 -> 109,281, as the README says after the block.
    keeps = [re.search(r"next level keeps ([\d.]+)%", line).group(1) for line in lines if line.startswith("level ")]
    assert keeps == ["80.04", "64.06", "51.28", "41.05"]
    assert "(80.04%,\n64.06%, 51.28%, 41.05%)" in open(os.path.join(REPO, "README.md")).read()
    assert all(
        float(re.search(r"val acc ([\d.]+)", line).group(1)) > 0.6 for line in lines if line.startswith("level ")
    )
    # The saved ticket loads in a fresh process after a plain import, masks and zeros included.
    check = launcher.run(
        [
            sys.executable,
            "-c",
            "import keras, lottery_tf; m = keras.models.load_model('ticket.keras'); "
            "print(f'{100 * lottery_tf.overall_density(m):.2f}')",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO},
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.split()[-1] == "41.05"
