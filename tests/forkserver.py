"""A fork server for the tests' Python subprocesses (started by tests/launcher.py, one per pytest process).

It runs ``import lottery_tf`` (TensorFlow, Keras, the library: about 4.5 s of CPU on the project's machine)
once. Then, for each request on its Unix socket, it forks a child that becomes what ``python -m MODULE
ARGS``, ``python -c CODE ARGS`` or ``python SCRIPT ARGS`` would be: the given argv, environment, working
directory and file descriptors 0, 1 and 2; the module run as ``__main__`` as ``-m`` runs it; non-daemon
threads joined and atexit functions run at exit. The child is a real process: a SIGKILL kills it, and its
exit status (``-9`` then) goes back to the client.

The command modules (``lottery_tf.main``, ``.report``, ``.runs``, ``.export``) are not imported here: they
define their flags when they run, as in a fresh interpreter.

Protocol, one connection per child: the client sends one JSON line (kind: ``-m``, ``-c`` or ``script``;
target; args; env; cwd) with three file descriptors (stdin, stdout, stderr); the server answers
``{"pid": N}``, then ``{"status": S}`` when the child has ended (S as ``subprocess`` reports it).
"""

import json
import os
import select
import socket
import sys

# The preload is `import lottery_tf` and nothing else, so a child is a fresh interpreter that has run
# `import lottery_tf` (which any command of lottery_tf or test snippet does first; `python -m lottery_tf.main`
# leaves Keras out of it and imports it where it trains, which the tests that start it in a new interpreter
# check): not the state of the pytest process that asked for it. TensorFlow creates no thread and no eager context at import (numpy's
# OpenBLAS pool is fork-safe), so children start clean.
import numpy as np

import lottery_tf  # noqa: F401  (TensorFlow and Keras, quietly: lottery_tf.core.keras_compat)

_COMMANDS = ("lottery_tf.main", "lottery_tf.report", "lottery_tf.runs", "lottery_tf.export")
assert not any(name in sys.modules for name in _COMMANDS), "a command module was imported by the preload"


def _exit_code(stop: SystemExit) -> int:
    """The status ``sys.exit(code)`` gives an interpreter (a message is printed, as Python does)."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def _become(request: dict, fds: list) -> None:
    """In the child: take the request's descriptors, environment and argv, run it, exit. Never returns."""
    import atexit
    import runpy
    import tempfile
    import threading
    import traceback
    import types

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # read TMPDIR again, as a new process would
        np.random.seed()  # a fresh process's global NumPy state, not the server's
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
        sys.path[1:1] = extra
        for folder in extra:  # a sitecustomize on the child's PYTHONPATH runs first, as at interpreter start
            if os.path.isfile(os.path.join(folder, "sitecustomize.py")):
                runpy.run_path(os.path.join(folder, "sitecustomize.py"), run_name="sitecustomize")
        kind, target, args = request["kind"], request["target"], request["args"]
        try:
            if kind == "-m":
                sys.argv = ["-m", *args]
                sys.path[0] = os.getcwd()
                runpy._run_module_as_main(target, alter_argv=True)  # exactly what `python -m` calls
            elif kind == "-c":
                sys.argv = ["-c", *args]
                sys.path[0] = ""
                main = types.ModuleType("__main__")
                sys.modules["__main__"] = main
                exec(compile(target, "<string>", "exec"), main.__dict__)
            else:
                sys.argv = [target, *args]
                sys.path[0] = os.path.dirname(os.path.abspath(target))
                runpy.run_path(target, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = _exit_code(stop)
        except BaseException:
            traceback.print_exc()
            code = 1
        threading._shutdown()  # an interpreter waits for its non-daemon threads, then runs atexit
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def serve(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nobody reads the pipe the client gave; a child gets its own descriptors
    parent = os.getppid()
    children = {}  # pid -> the connection that waits for its status
    while os.getppid() == parent:  # the pytest process that started this server has not ended
        readable, _, _ = select.select([listener], [], [], 0.02)
        if readable:
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            while not message.endswith(b"\n"):
                message += connection.recv(1 << 20)
            request = json.loads(message)
            sys.stdout.flush(), sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                for other in children.values():
                    other.close()
                _become(request, fds)
            for fd in fds:
                os.close(fd)
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            children[pid] = connection
        while children:
            pid, raw = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = children.pop(pid, None)
            if connection is not None:
                try:
                    connection.sendall(json.dumps({"status": _status(raw)}).encode() + b"\n")
                except OSError:
                    pass  # the client has gone
                connection.close()


if __name__ == "__main__":
    serve(sys.argv[1])
