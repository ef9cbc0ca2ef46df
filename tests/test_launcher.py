"""tests/launcher.py: a forked command behaves as the same command in a new interpreter would."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import launcher
import pytest
from conftest import REPO

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


@pytest.fixture(autouse=True)
def forking(monkeypatch):
    monkeypatch.setenv("LOTTERY_TF_TEST_FORK", "1")  # these tests are about the fork, whatever the run chose


def python(*args, **kwargs):
    return launcher.run([sys.executable, *args], env=kwargs.pop("env", ENV), capture_output=True, text=True, **kwargs)


def test_a_child_has_its_own_pid_argv_environment_and_folder_not_the_test_processes_state(tmp_path):
    code = textwrap.dedent(
        """
        import json, os, sys
        print(json.dumps({"argv": sys.argv, "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
                          "x": os.environ.get("LAUNCHER_X"), "path0": sys.path[0],
                          "pytest": "pytest" in sys.modules, "launcher": "launcher" in sys.modules,
                          "lottery_tf": "lottery_tf" in sys.modules, "main": sorted(vars(sys.modules["__main__"]))}))
        """
    )
    assert "pytest" in sys.modules  # this process has it; a new interpreter would not
    result = python("-c", code, "a", "--b=c", cwd=tmp_path, env={**ENV, "LAUNCHER_X": "42"})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["argv"] == ["-c", "a", "--b=c"] and found["path0"] == ""
    assert found["pid"] not in (os.getpid(), launcher._server["process"].pid)
    assert found["ppid"] == launcher._server["process"].pid  # forked by the server, not by pytest
    assert found["cwd"] == str(tmp_path) and found["x"] == "42"
    assert not found["pytest"] and not found["launcher"]
    assert "serve" not in found["main"] and "json" in found["main"]  # a fresh __main__, not the fork server's
    assert found["lottery_tf"]  # what the server imported: `import lottery_tf`


def test_exit_statuses_are_those_of_an_interpreter():
    assert python("-c", "import sys; sys.exit(3)").returncode == 3
    assert python("-c", "pass").returncode == 0
    message = python("-c", "import sys; sys.exit('bad input')")
    assert message.returncode == 1 and message.stderr == "bad input\n"
    raised = python("-c", "raise ValueError('boom')")
    assert raised.returncode == 1 and raised.stderr.rstrip().endswith("ValueError: boom")
    assert "Traceback (most recent call last)" in raised.stderr
    killed = python("-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -signal.SIGKILL


def test_input_output_bytes_and_text():
    echoed = python(
        "-c", "import sys; data = sys.stdin.read(); print(data.upper()); print('e', file=sys.stderr)", input="hi"
    )
    assert (echoed.stdout, echoed.stderr) == ("HI\n", "e\n")
    raw = launcher.run(
        [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'\\x00\\xff')"], env=ENV, capture_output=True
    )
    assert raw.stdout == b"\x00\xff"


def test_a_timeout_kills_the_child(tmp_path):
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(subprocess.TimeoutExpired):
        python("-c", code, timeout=2)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)


def test_popen_to_a_file_poll_kill(tmp_path):
    with open(tmp_path / "out", "w") as out:
        process = launcher.popen(
            [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], env=ENV, stdout=out
        )
        while "started" not in (tmp_path / "out").read_text():
            assert process.poll() is None
        assert process.poll() is None
        process.send_signal(signal.SIGKILL)
        assert process.wait(30) == -signal.SIGKILL and process.poll() == -signal.SIGKILL


def test_a_module_runs_as_main_and_defines_its_flags_each_time():
    for _ in range(2):  # absl would refuse flags defined twice in one interpreter
        result = python("-m", "lottery_tf.main", "--help", cwd=REPO)
        assert result.returncode == 0 and result.stdout.startswith("lottery_tf: find and study lottery tickets")
    bad = python("-m", "lottery_tf.main", "--no_such_flag", cwd=REPO)
    assert bad.returncode == 2 and "no_such_flag" in bad.stderr


def test_a_script_gets_its_path_threads_are_joined_and_atexit_runs(tmp_path):
    script = tmp_path / "folder" / "script.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            f"""
            import atexit, sys, threading, time
            log = open({str(tmp_path / "log")!r}, "w")
            print(__name__, sys.argv, sys.path[0], file=log, flush=True)
            atexit.register(lambda: print("atexit", file=log, flush=True))
            threading.Thread(target=lambda: (time.sleep(0.5), print("thread", file=log, flush=True))).start()
            """
        )
    )
    assert python(str(script), "x").returncode == 0
    assert (tmp_path / "log").read_text().splitlines() == [
        f"__main__ {[str(script), 'x']} {script.parent}",
        "thread",  # a non-daemon thread is waited for, then atexit functions run
        "atexit",
    ]


def test_each_child_draws_its_own_numpy_random_state():
    code = "import numpy as np; print(np.random.randint(1 << 30))"
    assert python("-c", code).stdout != python("-c", code).stdout


def test_a_sitecustomize_on_the_childs_pythonpath_runs_first(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['SITE_RAN'] = 'yes'\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO])}
    assert python("-c", "import os; print(os.environ.get('SITE_RAN'))", env=env).stdout == "yes\n"


def test_what_a_fork_cannot_give_falls_back_to_a_new_interpreter():
    python_command = [sys.executable, "-c", "pass"]
    assert launcher._forkable(python_command, ENV, {})
    assert launcher._forkable(python_command, {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, {})
    assert not launcher._forkable(python_command, {**ENV, "TF_CPP_MIN_LOG_LEVEL": "0"}, {})  # import-time output
    assert not launcher._forkable(python_command, {**ENV, "TF_USE_LEGACY_KERAS": "1"}, {})
    assert not launcher._forkable([sys.executable, "-u", "-c", "pass"], ENV, {})
    assert not launcher._forkable(["echo", "hi"], ENV, {})
    assert not launcher._forkable(python_command, ENV, {"start_new_session": True})
    legacy = python(
        "-c", "import os; print(os.environ['TF_USE_LEGACY_KERAS'])", env={**ENV, "TF_USE_LEGACY_KERAS": "1"}
    )
    assert legacy.stdout == "1\n"  # a new interpreter ran it
