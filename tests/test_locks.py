"""Lock files naming a reused pid, an old-format lock, another host's lock, and garbage bytes (issue 28, item 7)."""

import json
import os
import re
import socket
import sys
import threading
import time

import launcher
import pytest
from conftest import REPO

from lottery_tf.engine.config import experiment_hash_of
from lottery_tf.reports import health
from lottery_tf.store import locks
from lottery_tf.store import reader as store

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
GARBAGE = b"\xff\xfe\x00\x80{not json\x00\x9c"

needs_proc = pytest.mark.skipif(
    not store.process_identity(os.getpid()) or not store.process_identity(1), reason="no readable /proc"
)


def _write_lock(folder, name="main", content=None, age=None, **holder):
    path = locks.lock_path(str(folder), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content if content is not None else json.dumps(holder).encode())
    if age is not None:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def _ours(pid, **extra):
    return {"host": socket.gethostname(), "pid": pid, "since": "2026-01-01 00:00:00", **extra}


def test_a_lock_records_the_holders_start_time(tmp_path):
    with locks.hold(str(tmp_path), "main"):
        with open(locks.lock_path(str(tmp_path), "main")) as handle:
            holder = json.load(handle)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        identity = store.process_identity(os.getpid())
        assert {k: holder[k] for k in identity} == identity  # empty where /proc is missing
        assert store.lock_state(locks.lock_path(str(tmp_path), "main")).state == "live"


@needs_proc
def test_a_reused_pid_is_stale_and_taken_over(tmp_path, capsys):
    pid1 = store.process_identity(1)  # alive, and not the process that took the lock
    path = _write_lock(tmp_path, **_ours(1, boot_id=pid1["boot_id"], start_ticks=pid1["start_ticks"] + 1))
    state = store.lock_state(path)
    assert state.state == "stale" and "pid 1 is now another process" in state.line()
    assert not locks.is_held(str(tmp_path), "main")
    locks.wait_until_free(str(tmp_path), "main", "test", poll_seconds=0.01)  # returns at once
    with locks.hold(str(tmp_path), "main"):
        assert json.load(open(path))["pid"] == os.getpid()
    assert f"taking over {path}: stale (pid 1 is now another process" in capsys.readouterr().out


@needs_proc
def test_a_lock_from_before_a_reboot_is_stale(tmp_path):
    pid1 = store.process_identity(1)
    path = _write_lock(tmp_path, **_ours(1, boot_id="another-boot", start_ticks=pid1["start_ticks"]))
    state = store.lock_state(path)
    assert state.state == "stale" and "pid 1 is now another process: the machine rebooted" in state.line()


@needs_proc
def test_a_live_holder_with_its_start_time_is_live(tmp_path):
    parent = os.getppid()  # alive for the whole test, and not this process
    path = _write_lock(tmp_path, **_ours(parent, **store.process_identity(parent)))
    state = store.lock_state(path)
    assert state.state == "live" and state.detail == ""
    assert state.line() == f"{path}: held by pid {parent} on {socket.gethostname()} since 2026-01-01 00:00:00"
    assert locks.is_held(str(tmp_path), "main")
    with pytest.raises(locks.LockedError, match=f"is held by pid {parent} on .*stop it \\(kill {parent}\\)"):
        with locks.hold(str(tmp_path), "main"):
            pass
    assert json.load(open(path))["pid"] == parent  # untouched


def test_an_old_lock_without_start_time(tmp_path):
    # Live pid: held (it cannot be told from a reused pid), and the line says so.
    path = _write_lock(tmp_path, **_ours(os.getppid()))
    state = store.lock_state(path)
    assert (
        state.state == "live"
        and "without its holder's start time" in state.line()
        and "cannot be checked" in state.line()
    )
    with pytest.raises(locks.LockedError, match=f"delete {path}"):
        with locks.hold(str(tmp_path), "main"):
            pass
    # Dead pid: stale, as before.
    dead = launcher.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path, **_ours(int(dead.stdout)))
    assert store.lock_state(path).state == "stale"
    with locks.hold(str(tmp_path), "main"):
        assert json.load(open(path))["pid"] == os.getpid()


def _wait_in_thread(target):
    errors = []

    def run():
        try:
            target()
        except BaseException as error:  # noqa: BLE001  (reported by the test)
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _read_until(capsys, count, limit=60.0):
    """Stdout of this process until it holds ``count`` waiting lines (or ``limit`` seconds pass)."""
    out, deadline = "", time.monotonic() + limit
    while out.count("waiting for ") < count and time.monotonic() < deadline:
        time.sleep(0.02)
        out += capsys.readouterr().out
    return out


@pytest.mark.parametrize("how", ["hold", "wait_until_free"])
def test_a_lock_of_another_host_is_waited_for_with_a_line_saying_so(tmp_path, capsys, how):
    path = _write_lock(tmp_path, host="elsewhere.invalid", pid=os.getpid(), since="2026-01-01 00:00:00")
    state = store.lock_state(path)
    assert state.state == "live" and "another host" in state.line()
    assert locks.is_held(str(tmp_path), "main")  # our own pid, but on another host
    acquired = []

    def wait():
        if how == "hold":
            with locks.hold(str(tmp_path), "main", wait=True, poll_seconds=0.01, report_seconds=0.05):
                acquired.append(json.load(open(path))["pid"])
        else:
            locks.wait_until_free(str(tmp_path), "main", "branches need it", poll_seconds=0.01, report_seconds=0.05)
            acquired.append("free")

    thread, errors = _wait_in_thread(wait)
    out = _read_until(capsys, 2)  # the first line at once, then periodically
    os.remove(path)  # what the wait line tells the user to do
    thread.join(60)
    assert not thread.is_alive() and not errors, errors
    assert acquired == ([os.getpid()] if how == "hold" else ["free"])
    lines = [line for line in out.splitlines() if line.startswith("waiting for ")]
    assert len(lines) >= 2, out
    assert lines[0].startswith(f"waiting for {path} (the main lineage")
    assert "0 s so far: held by pid" in lines[0]
    for line in lines:
        assert f"held by pid {os.getpid()} on elsewhere.invalid since 2026-01-01 00:00:00" in line
        assert " s so far" in line and "on another host: whether it still runs cannot be checked from here" in line
        assert f"progress: python -m lottery_tf.runs {tmp_path}" in line
        assert line.endswith(f"if that process is gone, delete {path}")


def test_wait_line_durations():
    assert locks._duration(0.4) == "0 s" and locks._duration(61) == "1 min 01 s"
    assert locks._duration(420) == "7 min 00 s" and locks._duration(3 * 3600 + 120) == "3 h 02 min"


def test_a_binary_lock_file_in_hold(tmp_path, capsys):
    # Young: it may be a lock being written this instant, so it counts as held, named by its file.
    path = _write_lock(tmp_path, content=GARBAGE)
    with pytest.raises(locks.LockedError, match=f"{path} is held by a process still writing it"):
        with locks.hold(str(tmp_path), "main"):
            pass
    # Old: unreadable, taken over.
    _write_lock(tmp_path, content=GARBAGE, age=60)
    with locks.hold(str(tmp_path), "main"):
        assert json.load(open(path))["pid"] == os.getpid()
    assert f"taking over {path}: unreadable (not a lock this package writes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content",
    [
        GARBAGE,
        b"",
        b"[" * 100000,
        b'{"pid": true}',
        b'{"pid": 1}',
        json.dumps({"host": socket.gethostname(), "pid": 10**30}).encode(),
        b"\x00" * 10,
    ],
)
def test_no_lock_content_makes_a_reader_raise(tmp_path, content):
    path = _write_lock(tmp_path, content=content, age=60)
    state = store.lock_state(path)
    assert state.state in ("unreadable", "stale"), state
    assert str(path) in state.line() and "the next run takes it over" in state.line()


def _folder_with_a_binary_lock(tmp_path):
    identity = {}
    experiment = tmp_path / "root" / f"lottery_{experiment_hash_of(identity)}"
    os.makedirs(experiment / "replicate_0")
    (experiment / "identity.json").write_text(json.dumps(identity))
    path = _write_lock(experiment / "replicate_0", content=GARBAGE, age=60)
    return str(tmp_path / "root"), path


def test_health_check_reads_a_binary_lock(tmp_path, capsys):
    root, path = _folder_with_a_binary_lock(tmp_path)
    code = health.main([root])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(f"note: {re.escape(path)}: unreadable and [0-9]+ s old \\(not a lock this package writes", out), (
        out
    )


@pytest.mark.slow
def test_health_check_command_reads_a_binary_lock(tmp_path):
    root, path = _folder_with_a_binary_lock(tmp_path)
    result = launcher.run(
        [sys.executable, "-m", "lottery_tf.runs", root], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    line = f"    note: {re.escape(path)}: unreadable and [0-9]+ s old \\(not a lock this package writes: not UTF-8 JSON"
    assert re.search(line, result.stdout), result.stdout


def test_an_unreadable_lock_that_cannot_be_removed_is_named(tmp_path):
    os.makedirs(locks.lock_path(str(tmp_path), "main"))  # a folder where the lock file should be
    with pytest.raises(locks.LockedError, match="main.lock is unreadable .* cannot be removed .*remove it by hand"):
        with locks.hold(str(tmp_path), "main"):
            pass


# -- leases (issue 29, item 1) ---------------------------------------------------------------------------


def _leased(host="elsewhere.invalid", renewed_ago=0.0, lease=120.0, **extra):
    renewed = time.time() - renewed_ago
    return {
        "host": host,
        "pid": 4242,
        "since": "2026-01-01 00:00:00",
        "token": "0" * 32,
        "renewed": renewed,
        "expires": renewed + lease,
        **extra,
    }


def _experiment_with_lock(tmp_path, holder):
    identity = {}
    experiment = tmp_path / "root" / f"lottery_{experiment_hash_of(identity)}"
    os.makedirs(experiment / "replicate_0")
    (experiment / "identity.json").write_text(json.dumps(identity))
    age = max(0.0, time.time() - holder["renewed"])
    return str(tmp_path / "root"), _write_lock(experiment / "replicate_0", age=age, **holder)


def test_a_lock_carries_a_lease_that_its_holder_renews(tmp_path, monkeypatch):
    monkeypatch.setenv(locks.LEASE_ENV, "0.4")
    path = locks.lock_path(str(tmp_path), "main")
    with locks.hold(str(tmp_path), "main"):
        first = json.load(open(path))
        assert re.fullmatch("[0-9a-f]{32}", first["token"])
        assert first["expires"] - first["renewed"] == pytest.approx(0.4)
        deadline = time.monotonic() + 60
        while json.load(open(path))["renewed"] == first["renewed"] and time.monotonic() < deadline:
            time.sleep(0.02)
        renewed = json.load(open(path))
        assert renewed["renewed"] > first["renewed"] and renewed["token"] == first["token"]
        assert {k: v for k, v in renewed.items() if k not in ("renewed", "expires")} == {
            k: v for k, v in first.items() if k not in ("renewed", "expires")
        }
        state = store.lock_state(path)
        assert state.state == "live" and "; lease renewed " in state.line()
    assert not os.path.exists(path) and os.listdir(tmp_path / ".locks") == []  # no renewal file left


def test_an_expired_lease_of_another_host_is_stale_and_taken_over(tmp_path, capsys):
    holder = _leased(renewed_ago=1000)  # ended 880 s ago; grace 60 s
    root, path = _experiment_with_lock(tmp_path, holder)
    state = store.lock_state(path, now=holder["renewed"] + 1000)
    assert state.state == "stale" and state.lease.expired
    expected = "stale (its lease expired 880 s ago: the holder on host elsewhere.invalid is gone)"
    assert state.line() == f"{path}: {expected}; the next run takes it over"
    assert not locks.is_held(os.path.dirname(os.path.dirname(path)), "main")
    said = re.escape(f"{path}: {expected}; the next run takes it over").replace("880", "[0-9]+")
    assert health.main([root]) == 0  # a note, not damage
    assert re.search(f"\n    note: {said}\n", capsys.readouterr().out)
    folder = os.path.dirname(os.path.dirname(path))
    locks.wait_until_free(folder, "main", "test", poll_seconds=0.01)  # returns at once
    with locks.hold(folder, "main"):
        assert json.load(open(path))["pid"] == os.getpid()
    assert re.search(re.escape(f"taking over {path}: {expected}").replace("880", "[0-9]+"), capsys.readouterr().out)


def test_a_fresh_lease_of_another_host_is_respected(tmp_path, capsys):
    holder = _leased(renewed_ago=10)
    root, path = _experiment_with_lock(tmp_path, holder)
    folder = os.path.dirname(os.path.dirname(path))
    state = store.lock_state(path, now=holder["renewed"] + 10)
    assert state.state == "live" and state.detail == ""  # checkable: its lease says whether it is renewed
    line = f"{path}: held by pid 4242 on elsewhere.invalid since 2026-01-01 00:00:00; lease renewed 10 s ago, "
    assert state.line() == line + "expires in 110 s"
    assert locks.is_held(folder, "main")
    assert health.main([root]) == 0
    said = re.escape(line + "expires in 110 s").replace("10", "[0-9]+")
    assert re.search(f"\n    lock: {said}\n", capsys.readouterr().out)
    with pytest.raises(locks.LockedError, match="if host elsewhere.invalid is lost, the lock is taken over when its"):
        with locks.hold(folder, "main"):
            pass
    assert json.load(open(path))["pid"] == 4242  # untouched


def test_a_lease_is_held_through_its_grace_and_by_the_later_clock(tmp_path, monkeypatch):
    # Ended 20 s ago, within the grace: still held, and the line says when it is taken over.
    holder = _leased(renewed_ago=140)
    path = _write_lock(tmp_path, age=140, **holder)
    state = store.lock_state(path, now=holder["renewed"] + 140)
    assert state.state == "live"
    assert "lease renewed 140 s ago, expired 20 s ago: taken over in 40 s unless renewed (60 s grace" in state.line()
    monkeypatch.setenv(store.GRACE_ENV, "5")
    assert store.lock_state(path).state == "stale"
    # A holder's clock behind this host's: the file's modification time (touched, or rewritten) keeps it held.
    os.utime(path)
    state = store.lock_state(path, now=os.path.getmtime(path))
    assert state.state == "live" and "lease renewed 0 s ago, expires in 120 s" in state.line()
    # A holder's clock ahead: said so.
    _write_lock(tmp_path, **_leased(renewed_ago=-3600))
    assert "(the holder's clock is ahead of this host's)" in store.lock_state(path).line()


def test_a_lease_of_this_host_whose_process_lives_but_stopped_renewing_is_stale(tmp_path):
    parent = os.getppid()
    holder = _leased(socket.gethostname(), 1000, pid=parent)
    path = _write_lock(tmp_path, age=1000, **holder)
    state = store.lock_state(path, now=holder["renewed"] + 1000)
    assert state.state == "stale"
    assert f"its lease expired 880 s ago: its holder, pid {parent} on this host, stopped renewing it" in state.line()


@needs_proc
def test_a_fresh_lease_of_this_host_keeps_the_pid_rules(tmp_path):
    pid1 = store.process_identity(1)
    reused = _leased(socket.gethostname(), pid=1, boot_id=pid1["boot_id"], start_ticks=pid1["start_ticks"] + 1)
    path = _write_lock(tmp_path, **reused)
    assert "pid 1 is now another process" in store.lock_state(path).line()
    dead = launcher.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path, **_leased(socket.gethostname(), pid=int(dead.stdout)))
    assert store.lock_state(path).state == "stale"
    # Another boot id with a fresh lease: another machine of the same name, or a reboot: the lease decides.
    _write_lock(tmp_path, **_leased(socket.gethostname(), pid=1, boot_id="another-boot", start_ticks=1))
    state = store.lock_state(path)
    assert state.state == "live" and "another boot id" in state.line()


def test_a_lock_taken_over_from_its_holder_is_not_removed_by_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(locks.LEASE_ENV, "0.4")
    path = locks.lock_path(str(tmp_path), "main")
    other = _leased()
    errors = []

    def held():  # not the main thread: the hold ends with LockedError, no KeyboardInterrupt
        try:
            with locks.hold(str(tmp_path), "main"):
                _write_lock(tmp_path, **other)  # what a process that took it over writes
                deadline = time.monotonic() + 60
                while "error: lost the lock" not in capsys.readouterr().err and time.monotonic() < deadline:
                    time.sleep(0.02)
        except locks.LockedError as error:
            errors.append(str(error))

    thread = threading.Thread(target=held)
    thread.start()
    thread.join(120)
    assert len(errors) == 1 and errors[0].startswith(f"lost the lock {path}: pid 4242 on elsewhere.invalid since")
    assert json.load(open(path)) == other  # left alone


def test_a_lock_deleted_while_held_is_written_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(locks.LEASE_ENV, "0.4")
    path = locks.lock_path(str(tmp_path), "main")
    with locks.hold(str(tmp_path), "main"):
        token = json.load(open(path))["token"]
        os.remove(path)
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert json.load(open(path))["token"] == token
    assert f"warning: {path} was deleted while this process held it; written again" in capsys.readouterr().out
    assert not os.path.exists(path)


def test_a_renewal_file_of_a_killed_holder_is_removed_on_takeover(tmp_path):
    path = _write_lock(tmp_path, age=1000, **_leased(renewed_ago=1000))
    leftover = f"{path}.{'0' * 32}.renew"
    open(leftover, "w").close()
    with locks.hold(str(tmp_path), "main"):
        pass
    assert not os.path.exists(leftover)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_lease_setting_is_named(monkeypatch, tmp_path, value):
    monkeypatch.setenv(locks.LEASE_ENV, value)
    with pytest.raises(ValueError, match=f"{locks.LEASE_ENV}='{value}': expected a positive number of seconds"):
        with locks.hold(str(tmp_path), "main"):
            pass


@pytest.mark.parametrize("how", ["hold", "wait_until_free"])
def test_a_wait_ends_when_the_lease_expires(tmp_path, monkeypatch, capsys, how):
    monkeypatch.setenv(store.GRACE_ENV, "0.5")
    path = _write_lock(tmp_path, **_leased(lease=1.0))  # nobody renews it
    if how == "hold":
        with locks.hold(str(tmp_path), "main", wait=True, poll_seconds=0.05, report_seconds=600):
            assert json.load(open(path))["pid"] == os.getpid()
    else:
        locks.wait_until_free(str(tmp_path), "main", "branches need it", poll_seconds=0.05, report_seconds=600)
    out = capsys.readouterr().out
    assert out.startswith(f"waiting for {path} (the main lineage") and "; lease renewed " in out
    assert ("taking over" in out) == (how == "hold")
