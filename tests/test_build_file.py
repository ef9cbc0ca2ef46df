"""BUILD declares the library, the main binary and every test in tests/."""

import glob
import os
import re

from conftest import REPO


def _build_text():
    with open(os.path.join(REPO, "BUILD")) as handle:
        return handle.read()


def test_every_test_file_is_a_bazel_test():
    build = _build_text()
    listed = set(re.findall(r'"(tests/test_[a-z_]+\.py)"', build))
    on_disk = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "tests", "test_*.py"))}
    assert listed == on_disk


def test_library_main_and_tools_declared():
    build = _build_text()
    assert 'name = "lottery_tf"' in build and 'glob(["lottery_tf/*.py"])' in build
    for part in ("core", "store", "engine", "reports"):  # every module belongs to a declared part
        assert f'name = "{part}"' in build and f'glob(["lottery_tf/{part}/' in build
    assert 'main = "lottery_tf/main.py"' in build
    for tool in glob.glob(os.path.join(REPO, "tools", "*.py")):
        assert os.path.relpath(tool, REPO) in build
    # Brackets and parentheses balance (a cheap syntax check without Bazel).
    for a, b in ("()", "[]", "{}"):
        assert build.count(a) == build.count(b)
