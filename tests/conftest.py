"""Test setup: quiet TensorFlow, two logical CPU devices for MirroredStrategy tests."""

import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initializes its devices, i.e. before any test runs.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `python -m lottery_tf.main ARGS` for many ARGS in one process (TensorFlow imported once): absl's flags are
# reset to their defaults before each, and each gets its own exit status, stdout and stderr.
_DRY_RUNS = """
import contextlib, io, json, sys
from absl import flags
from lottery_tf import main
results = []
for argv in json.load(sys.stdin):
    flags.FLAGS.unparse_flags()
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main.main(main._parse_flags(["lottery_tf", *argv]))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    results.append((code, out.getvalue(), err.getvalue()))
json.dump(results, sys.stdout)
"""


def dry_runs(arguments: list, timeout: int = 600) -> list:
    """(exit status, stdout, stderr) of ``python -m lottery_tf.main *args`` for each args, run in one process."""
    import json
    import subprocess

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    result = subprocess.run(
        [sys.executable, "-c", _DRY_RUNS],
        input=json.dumps(arguments),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [tuple(r) for r in json.loads(result.stdout)]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the reports draw (matplotlib objects), by file name; the files are still written."""
    from lottery_tf.reports import plotting

    figures = {}
    real_save = plotting.save

    def save(fig, path):
        figures[os.path.basename(path)] = fig
        real_save(fig, path)

    monkeypatch.setattr(plotting, "save", save)
    import matplotlib.pyplot as plt

    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: None)  # keep the figures to inspect them
    yield figures
    for fig in figures.values():
        real_close(fig)
