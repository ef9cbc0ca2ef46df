"""Test setup: quiet TensorFlow, an XLA compilation cache per run, one intra-op thread, two logical CPU devices for MirroredStrategy tests."""

import glob
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# XLA's persistent compilation cache, one folder per test run, shared by the xdist workers and every process
# they start: the suite compiles the same few training steps in about a hundred processes, and compiling was
# a quarter of a smoke run's CPU time (10.5 s -> 8.0 s). A cached executable is what XLA compiled for the same
# program: the smoke run's files are bit-identical with and without it (--deterministic). TensorFlow 2.21
# writes an entry to a temporary file and renames it, so processes compiling at once never read half an entry.
_RUN_OWNER = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()
XLA_CACHE = os.path.join(tempfile.gettempdir(), f"lottery_tf_test_xla_cache_{_RUN_OWNER}")
os.environ.setdefault("TF_XLA_FLAGS", f"--tf_xla_persistent_cache_directory={XLA_CACHE}")
# One intra-op thread per TensorFlow process (pytest's workers and every command they start): the suite runs
# three workers and their subprocesses on two cores, where TensorFlow's thread pools spin while they wait.
# Three concurrent baseline runs here: 27.2 s with the default pool, 20.9 s with one thread each.
# The tests of bit-identical results across processes give their runs TensorFlow's default pool back
# (tests/test_resume.py, tests/test_analysis_cli.py; tests/test_ray_executor.py's local runs, which it
# compares with Ray's one-thread workers).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

# Must happen before TensorFlow initializes its devices, i.e. before any test runs.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `python -m lottery_tf.main ARGS` for many ARGS in one process (TensorFlow imported once): absl's flags are
# reset to their defaults before each, and each gets its own exit status and its own file descriptors 1 and 2
# (what TensorFlow's and Ray's C++ code print is captured too, as with a process of its own).
_CLI_RUNS = """
import json, os, sys, tempfile
from absl import flags
from lottery_tf import main
results, real = [], (os.dup(1), os.dup(2))
for argv in json.load(sys.stdin):
    flags.FLAGS.unparse_flags()
    captured = [tempfile.TemporaryFile(mode="w+") for _ in range(2)]
    sys.stdout.flush(), sys.stderr.flush()
    os.dup2(captured[0].fileno(), 1), os.dup2(captured[1].fileno(), 2)
    code = 0
    try:
        main.main(main._parse_flags(["lottery_tf", *argv]))
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(real[0], 1), os.dup2(real[1], 2)
    texts = []
    for handle in captured:
        handle.seek(0)
        texts.append(handle.read())
    results.append((code, *texts))
print("\\n" + json.dumps(results))
"""


def cli_runs(arguments: list, env: dict | None = None, timeout: int = 600) -> list:
    """``python -m lottery_tf.main *args`` for each args, in one process (TensorFlow imported once).

    Returns:
        Per args, an object with ``returncode``, ``stdout`` and ``stderr``, as ``subprocess.run`` gives.
    """
    import json
    import types

    import launcher

    result = launcher.run(
        [sys.executable, "-c", _CLI_RUNS],
        input=json.dumps(arguments),
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.rstrip().rsplit("\n", 1)[-1])
    return [types.SimpleNamespace(returncode=c, stdout=out, stderr=err) for c, out, err in found]


def wait_until_printed(process, path, text: str, timeout: float = 120) -> None:
    """Waits until the running ``process`` has written ``text`` to ``path`` (the file its stdout goes to).

    Raises:
        AssertionError: With the end of what it printed, if it ends first or ``timeout`` seconds pass.
    """
    import time

    deadline = time.time() + timeout
    while text not in open(path).read():
        assert process.poll() is None and time.time() < deadline, open(path).read()[-2000:]
        time.sleep(0.05)


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


# The longest files first (measured with --durations): xdist hands the files to its workers in collection
# order, so a long file collected last would run alone at the end while the other workers sit idle.
_LONGEST_FIRST = (
    "test_ray_executor.py",
    "test_analysis_cli.py",
    "test_resume.py",
    "test_baselines_cli.py",
    "test_multi_worker.py",
    "test_models.py",
    "test_distribute.py",
    "test_imagenet.py",
)


# The JAX counterparts run in tools/test.sh's JAX pass only (KERAS_BACKEND=jax), not in the TensorFlow pass.
collect_ignore = [] if os.environ["KERAS_BACKEND"] == "jax" else ["test_jax_backend.py"]


def pytest_collection_modifyitems(items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # a stable sort: each file's tests keep their order


def pytest_sessionfinish(session):
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the run's own process: every worker has ended
        shutil.rmtree(XLA_CACHE, ignore_errors=True)


def results(out):
    """Every metrics curve and every saved array of a finished run, by relative path."""
    found = {}
    for path in glob.glob(os.path.join(out, "lottery_*", "replicate_*", "**", "*"), recursive=True):
        rel = os.path.relpath(path, out)
        if path.endswith("metrics.json"):
            metrics = json.load(open(path))
            found[rel] = (metrics["iterations"], metrics["curves"], metrics["layer_densities"])
        elif path.endswith(".npz"):
            with np.load(path) as data:
                found[rel] = {k: data[k] for k in data.files}
    return found
