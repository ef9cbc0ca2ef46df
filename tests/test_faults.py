"""The named crash points tests use to kill, fill or hold a run (lottery_tf.store.faults)."""

import errno
import threading

import pytest

from lottery_tf.store import faults


@pytest.fixture(autouse=True)
def fresh_counts():
    faults._counts.clear()
    yield
    faults._counts.clear()


def test_without_the_variable_a_crash_point_does_nothing(monkeypatch):
    monkeypatch.delenv("LOTTERY_TF_CRASH_AT", raising=False)
    for _ in range(3):
        faults.crash_point("checkpoint_write")
    assert faults._counts == {}


def test_enospc_at_the_nth_pass_only(monkeypatch):
    monkeypatch.setenv("LOTTERY_TF_CRASH_AT", "checkpoint_write:2:enospc")
    faults.crash_point("atomic_write")  # another point: not counted
    faults.crash_point("checkpoint_write")
    with pytest.raises(OSError) as raised:
        faults.crash_point("checkpoint_write")
    assert raised.value.errno == errno.ENOSPC
    faults.crash_point("checkpoint_write")  # the third pass goes on
    assert faults._counts == {"checkpoint_write": 3}


def test_wait_holds_the_process_until_the_release_file_exists(monkeypatch, tmp_path):
    release = tmp_path / "release"
    monkeypatch.setenv("LOTTERY_TF_CRASH_AT", f"after_checkpoint:2:wait={release}")
    waiting = tmp_path / "release.waiting"
    faults.crash_point("after_checkpoint")  # the first pass does not wait
    assert not waiting.exists()
    seen = []
    timer = threading.Timer(0.3, lambda: (seen.append(waiting.exists()), release.touch()))
    timer.start()
    try:
        faults.crash_point("after_checkpoint")
        assert release.exists()  # it returned only once the file was there
        assert seen == [True]  # and said it was waiting before it was released
    finally:
        timer.cancel()
