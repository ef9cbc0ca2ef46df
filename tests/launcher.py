"""``run`` and ``popen``: ``subprocess.run`` and ``subprocess.Popen`` for the tests' Python commands, forked.

A command ``[sys.executable, "-m" MODULE | "-c" CODE | SCRIPT, ...]`` is started by this pytest process's
fork server (tests/forkserver.py), which has run ``import lottery_tf`` once: the child is a real process
with its own pid, argv, environment, working directory and descriptors, that a SIGKILL kills, in the state
of a fresh interpreter that has run ``import lottery_tf`` (not the state of the pytest process), without
the ~4.5 s of CPU that import costs. The suite starts about 150 such commands; before this, a third of
its CPU time was TensorFlow's import.

What a fork cannot give falls back to ``subprocess`` itself: another program, interpreter options, an
environment whose import-time variables differ from the server's (``TF_USE_LEGACY_KERAS`` for the TFMOT
record, ...), or other ``subprocess`` options (``start_new_session``, ...). ``PIPE`` output is collected
in temporary files (``communicate()``, or ``run(capture_output=True)``). ``LOTTERY_TF_TEST_FORK=0`` runs
every command in a fresh interpreter instead.

Children share the server's ``PYTHONHASHSEED``. A test that needs an interpreter that has not imported
lottery_tf (tests/test_export.py's plain-Keras load) calls ``subprocess`` directly; so does the module-scope
smoke run of tests/test_cli.py, the suite's end-to-end start of ``python -m lottery_tf.main`` as a user
types it.
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from conftest import REPO

PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL
TimeoutExpired = subprocess.TimeoutExpired

# Read once at interpreter start: a child that needs other values than the server's gets a fresh interpreter.
_IMPORT_TIME = (
    "TF_USE_LEGACY_KERAS",
    "KERAS_BACKEND",
    "CUDA_VISIBLE_DEVICES",
    "PYTHONHASHSEED",
    "TF_ENABLE_ONEDNN_OPTS",
)
_SERVER_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
_server = {}


def _enabled() -> bool:
    return os.environ.get("LOTTERY_TF_TEST_FORK", "1") != "0"


def _socket_path() -> str:
    """The server of this process, started on first use (about 6 s: TensorFlow's import)."""
    if "path" not in _server:
        folder = tempfile.mkdtemp(prefix="lottery_tf_forkserver_")
        path = os.path.join(folder, "socket")
        process = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "forkserver.py"), path],
            cwd=REPO,
            env=_SERVER_ENV,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        ready = process.stdout.readline()
        assert ready.strip() == "ready", f"the fork server did not start (exit status {process.poll()})"
        atexit.register(shutil.rmtree, folder, True)
        atexit.register(process.kill)  # (it also ends by itself when this process has gone)
        _server.update(path=path, process=process)
    return _server["path"]


def _forkable(args, env, kwargs) -> bool:
    if not _enabled() or kwargs or not isinstance(args, (list, tuple)) or len(args) < 2:
        return False
    if args[0] != sys.executable or args[1] in ("-m", "-c") and len(args) < 3:
        return False
    if args[1].startswith("-") and args[1] not in ("-m", "-c"):
        return False  # an interpreter option (-u, -X, -W, ...)
    environment = os.environ if env is None else env
    # What TensorFlow prints while it is imported: unset is lottery_tf's own default, 3 (lottery_tf.main and
    # keras_compat set it before importing TensorFlow); the tests of that default start fresh interpreters.
    if environment.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        return False
    return all(environment.get(name) == _SERVER_ENV.get(name) for name in _IMPORT_TIME)


class _Stream:
    """A descriptor for the child: this process's own, a file the caller gave, /dev/null, or a temporary
    file read back (``PIPE``, or ``input=`` data)."""

    def __init__(self, spec, own_fd, data=None):
        self.file, self.capture = None, spec == PIPE and data is None
        if spec is None:
            self.fd = own_fd  # inherited, as subprocess does
        elif spec == PIPE:
            self.file = tempfile.TemporaryFile()
            if data is not None:
                self.file.write(data)
                self.file.seek(0)
            self.fd = self.file.fileno()
        elif spec == DEVNULL:
            self.file = open(os.devnull, "r+b")
            self.fd = self.file.fileno()
        else:
            self.fd = spec if isinstance(spec, int) else spec.fileno()

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self):
        if self.file is not None:
            self.file.close()


class ForkedProcess:
    """What ``subprocess.Popen`` gives, for a forked child: pid, poll, wait, kill, send_signal, communicate
    (``PIPE`` output is read back from temporary files; there are no ``stdin``/``stdout`` stream attributes)."""

    def __init__(self, args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False, _input=None):
        self.args, self.text, self.returncode = args, text, None
        data = _input.encode() if isinstance(_input, str) else _input
        self._in = _Stream(PIPE if data is not None else stdin, 0, data)
        self._out = _Stream(stdout, 1)
        self._err = self._out if stderr == STDOUT else _Stream(stderr, 2)
        fds = [self._in.fd, self._out.fd, self._err.fd]
        kind, rest = (args[1], list(args[2:])) if args[1] in ("-m", "-c") else ("script", list(args[1:]))
        request = {
            "kind": kind,
            "target": str(rest[0]),
            "args": [str(a) for a in rest[1:]],
            "env": dict(os.environ if env is None else env),
            "cwd": os.path.abspath(str(cwd or os.getcwd())),
        }
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connection.connect(_socket_path())
        socket.send_fds(self._connection, [json.dumps(request).encode() + b"\n"], fds)
        self._buffer = b""
        self.pid = self._message(None)["pid"]

    def _message(self, timeout):
        while b"\n" not in self._buffer:
            self._connection.settimeout(timeout)
            try:
                chunk = self._connection.recv(4096)
            except TimeoutError:
                return None
            assert chunk, "the fork server closed the connection"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def poll(self):
        if self.returncode is None:
            message = self._message(0.0001)
            if message is not None:
                self._done(message)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            message = self._message(timeout)
            if message is None:
                raise TimeoutExpired(self.args, timeout)
            self._done(message)
        return self.returncode

    def _done(self, message):
        self.returncode = message["status"]
        self._connection.close()

    def send_signal(self, sig):
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def _decode(self, stream):
        if not stream.capture:
            return None
        data = stream.read()
        return data.decode().replace("\r\n", "\n").replace("\r", "\n") if self.text else data

    def communicate(self, input=None, timeout=None):
        assert input is None, "give input= to launcher.run"
        self.wait(timeout)
        out = self._decode(self._out)
        err = None if self._err is self._out else self._decode(self._err)
        for stream in (self._in, self._out, self._err):
            stream.close()
        return out, err


def popen(args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False, **kwargs):
    """``subprocess.Popen(args, ...)``, forked when it can be (see the module docstring)."""
    if stdin == PIPE or not _forkable(args, env, kwargs):  # a stdin to write to while it runs: a real pipe
        return subprocess.Popen(args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text, **kwargs)
    return ForkedProcess(args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text)


def run(args, *, cwd=None, env=None, input=None, capture_output=False, text=False, timeout=None, check=False, **kwargs):
    """``subprocess.run(args, ...)``, forked when it can be (see the module docstring)."""
    stdout, stderr = (PIPE, PIPE) if capture_output else (kwargs.pop("stdout", None), kwargs.pop("stderr", None))
    if not _forkable(args, env, kwargs):
        return subprocess.run(
            args,
            cwd=cwd,
            env=env,
            input=input,
            stdout=stdout,
            stderr=stderr,
            text=text,
            timeout=timeout,
            check=check,
            **kwargs,
        )
    process = ForkedProcess(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text, _input=input)
    try:
        out, err = process.communicate(timeout=timeout)
    except TimeoutExpired:
        process.kill()
        process.wait()
        raise
    result = subprocess.CompletedProcess(args, process.returncode, out, err)
    if check:
        result.check_returncode()
    return result
