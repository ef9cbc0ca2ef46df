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
