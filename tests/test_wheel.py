"""The package as a user installs it (docs/getting-started.md#install): a wheel built from this checkout,
installed into a fresh virtual environment, runs the Keras guide's first example and the command line.

No network: the wheel is built with the setuptools already installed (``--no-build-isolation``), and the
virtual environment sees this machine's packages (``--system-site-packages``: TensorFlow, Keras, ...), so
only the wheel itself is installed into it (``--no-deps --no-index``). The commands run from a folder
outside the checkout with no ``PYTHON*`` variables, and every lottery_tf module they import must come from
the virtual environment: ``tools/setup.sh``'s editable install of this checkout stays visible through the
system site-packages (a ``.pth`` file that adds an import finder), and the assertions would catch it
answering instead of the wheel.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO
from test_docs import blocks

pytestmark = pytest.mark.slow
GUIDE = os.path.join(REPO, "docs", "keras.md")
INSTALL_PAGE = os.path.join(REPO, "docs", "getting-started.md")
# Not copied into the folder the wheel is built from: what git ignores at the top and the history.
_NOT_SOURCES = {".git", "build", "dist", "site", "runs", "report", ".pytest_cache", ".ruff_cache", ".benchmarks"}
_MODULES = "LOTTERY_TF_MODULES "
# Runs one of the guide's blocks as a user's script, then says where every lottery_tf module came from.
_RUNNER = f"""
import json, sys
import lottery_tf
print(lottery_tf.__file__)
exec(compile(open(sys.argv[1]).read(), "docs/keras.md, block 1", "exec"), {{"__name__": "__main__"}})
modules = {{n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] == "lottery_tf"}}
print({_MODULES!r} + json.dumps(modules))
"""


def _user_env():
    """This process's environment without PYTHONPATH and the other variables that steer Python's imports."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, env=_user_env(), **kwargs)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(wheel, venv, user_folder)``: the wheel built from this checkout, installed into a fresh venv."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and lottery_tf.egg-info/ into the folder it builds, and a
    # module left in an earlier build's build/lib would go into the wheel.
    source = root / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=lambda folder, names: [
            n for n in names if n == "__pycache__" or n.endswith(".egg-info") or (folder == REPO and n in _NOT_SOURCES)
        ],
    )
    pip = ["-m", "pip", "--disable-pip-version-check"]
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), str(source)]
    _run([sys.executable, *pip, *build], timeout=300)
    (wheel,) = (root / "dist").iterdir()
    venv = root / "venv"
    # --without-pip: pip comes from the system site-packages (and Debian's python3 needs no python3-venv).
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], timeout=120)
    # --ignore-installed: the editable install of this checkout, in the system site-packages, has the same
    # name and version; pip would try to uninstall it first.
    python = str(venv / "bin" / "python")
    _run([python, *pip, "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], timeout=300)
    user = root / "user"
    user.mkdir()
    return wheel, venv, user


def _inside(path, folder) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def test_the_wheel_holds_every_module_and_only_the_package(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    modules = {
        os.path.relpath(os.path.join(folder, f), REPO)
        for folder, _, files in os.walk(os.path.join(REPO, "lottery_tf"))
        for f in files
        if f.endswith(".py")
    }
    assert {n for n in names if n.endswith(".py")} == modules
    assert {n.split("/")[0] for n in names} == {"lottery_tf", wheel.name.split("-py3")[0] + ".dist-info"}
    # The page tells users to install this file by name.
    assert f"dist/{wheel.name}[" in open(INSTALL_PAGE).read()


def test_the_extras_are_the_ones_setup_and_the_install_page_name(installed):
    wheel, _, _ = installed
    metadata = zipfile.ZipFile(wheel).read(wheel.name.split("-py3")[0] + ".dist-info/METADATA").decode()
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))
    (setup_sh,) = re.findall(r'^extras="([a-z,]+)"$', open(os.path.join(REPO, "tools", "setup.sh")).read(), re.M)
    assert set(setup_sh.split(",")) == extras  # the contributors' install has every extra
    page = open(INSTALL_PAGE).read()
    assert set(re.findall(r"^\| `([a-z]+)` \|", page, re.M)) == extras  # each one described
    # The ones the page's commands install exist.
    for chosen in re.findall(r'^pip install "[^"\[]*\[([a-z,]+)\]"$', page, re.M):
        assert set(chosen.split(",")) <= extras, chosen


def test_the_keras_guides_first_example_runs_from_the_installed_package(installed):
    _, venv, user = installed
    code = blocks(GUIDE, "python")[0]
    (user / "example.py").write_text(code)
    output = _run([str(venv / "bin" / "python"), "-c", _RUNNER, "example.py"], cwd=user, timeout=600).stdout
    lines = output.splitlines()
    assert lines[-1].startswith(_MODULES)
    modules = json.loads(lines[-1][len(_MODULES) :])
    assert _inside(lines[0], venv) and lines[0] == modules["lottery_tf"], lines[0]
    assert {"lottery_tf.core", "lottery_tf.engine.data"} <= set(modules)
    assert all(_inside(path, venv) for path in modules.values() if path), modules
    # What the block prints: a line per level (level, density, test accuracy), then the masked weights' names.
    levels = int(re.search(r"for level in range\((\d+)\)", code).group(1))
    printed = lines[1:-1]
    assert len(printed) == levels + 1, printed
    rows = [line.split() for line in printed[:-1]]
    assert [int(r[0]) for r in rows] == list(range(levels))
    densities, accuracies = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert densities[0] == 1.0 and all(a > b > 0 for a, b in zip(densities, densities[1:])), densities
    assert all(0.5 < a <= 1 for a in accuracies), accuracies  # ten classes: chance is 0.1
    layers = set(re.findall(r'name="(\w+)"', code))
    assert {name.split("/")[0] for name in ast.literal_eval(printed[-1])} == layers


def test_the_command_line_runs_from_the_installed_package(installed):
    _, venv, user = installed
    python = str(venv / "bin" / "python")
    help_text = _run([python, "-m", "lottery_tf.main", "--help"], cwd=user, timeout=300).stdout
    from lottery_tf.engine.config import SETTINGS

    # Every setting of this checkout (absl writes a boolean one as --[no]NAME).
    assert all(f"--{s.flag}:" in help_text or f"--[no]{s.flag}:" in help_text for s in SETTINGS)
    # The `lottery_tf` command pip wrote runs the venv's Python.
    assert open(venv / "bin" / "lottery_tf").readline().strip() == f"#!{python}"
