"""A fork server for console scripts: `orion` commands without paying Oríon's imports each time.

Each `orion` process spends about 3 s of CPU importing what Oríon's command modules
import (scipy.stats, sklearn.ensemble, pandas, plotly.express...), most of the cost of
a functional test. The server (this file run as a script) imports those third-party
modules once; each command is then a fork of it that runs the console script's own
file (`runpy`, as ``__main__``) with the command's argv, working directory, environment
and standard streams, and exits as that script's interpreter would (SystemExit
propagates out of this file: non-daemon threads joined, atexit handlers run). The
command is a real process, a child of the server: it can be signalled, and its exit
status (a signal's included) comes back through the server.

What stays faithful: Oríon and orion_sql are never preloaded, so everything they read
at import (Oríon builds its global configuration from HOME/XDG at import) is read in
the command's own environment; the server checks that no preloaded module reads a
variable a command may set (HOME, XDG_*, ORION_*, PWD). Variables the interpreter
reads at start-up (PYTHON*) must be the server's. What differs from a fresh
interpreter: the hash seed is the server's, a traceback shows this file's frames
under the script's, and sysconfig's (unused in a virtualenv) user base is the
server's HOME.

:class:`Launcher` starts the server; :meth:`Launcher.popen` gives a
:class:`subprocess.Popen` for a command run by it.
"""
from __future__ import annotations

import gc
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path

# What Oríon 0.2.7's command modules (and orion_sql) import from third parties, the
# heavy part first. Not gunicorn: its configuration takes the working directory at import.
PRELOAD = (
    "scipy.stats", "sklearn.ensemble", "pandas", "numpy", "plotly.express", "pkg_resources", "git",
    "sqlalchemy.orm", "sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.mysql", "sqlalchemy.dialects.sqlite",
    "alembic", "falcon", "pymongo", "filelock", "yaml", "tabulate", "psycopg", "pymysql",
)
PER_COMMAND = ("HOME", "PWD", "XDG_", "ORION_")
READY = b"ready\n"
SERVER_START_SECONDS = 180


class _ReadsRecorded(MutableMapping):
    """os.environ, recording which variables are read by name. Not a copy: GitPython
    copies the environment at import to run `git version`, which keeps nothing."""

    def __init__(self, environ):
        self.environ, self.read = environ, set()

    def __getitem__(self, key):
        self.read.add(key)
        return self.environ[key]

    def __setitem__(self, key, value):
        self.environ[key] = value

    def __delitem__(self, key):
        del self.environ[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.environ)

    def __len__(self) -> int:
        return len(self.environ)

    def copy(self) -> dict:
        return self.environ.copy()


def preload() -> None:
    """Import PRELOAD; fail if that read a variable a command may set."""
    import importlib
    import sysconfig

    sysconfig.get_config_vars()  # reads HOME for the user base, see the module's docstring
    environ, recorded = os.environ, _ReadsRecorded(os.environ)
    os.environ = recorded  # type: ignore[assignment]  # noqa: B003 (a wrapper, not a new environment)
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    finally:
        os.environ = environ  # noqa: B003
    read = sorted(key for key in recorded.read if any(key.startswith(prefix) for prefix in PER_COMMAND))
    if read:
        raise RuntimeError(f"preloading read {read}, which each command sets: the commands would see the server's")


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """A request: a length-prefixed JSON header with the command's stdin, stdout and stderr."""
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    size, _, data = data.partition(b"\n")
    while len(data) < int(size):
        chunk = connection.recv(1 << 16)
        if not chunk:
            raise EOFError("the request was cut short")
        data += chunk
    return json.loads(data), fds


def serve(address: str) -> dict:
    """Fork a child per request; report each child's pid, then its wait status, to its
    requester. Returns only in a child, the request it is to run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)  # EOF: the client died
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd: (pid, the requester's connection)
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                if not os.read(key.fd, 1024):
                    raise SystemExit(0)
            elif key.fileobj is listener:
                connection, _ = listener.accept()
                try:
                    request, fds = _receive(connection)
                except (OSError, EOFError, ValueError):
                    connection.close()  # a requester that died while asking
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for pidfd, (_, other) in children.items():
                        os.close(pidfd)
                        other.close()
                    connection.close()
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                        os.close(fd)
                    return request
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, connection)
                selector.register(pidfd, selectors.EVENT_READ)
                try:
                    connection.sendall(b"%d\n" % pid)
                except OSError:
                    pass  # the requester is gone; the child is reaped all the same
            else:
                pid, connection = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                try:
                    connection.sendall(b"%d\n" % status)
                except OSError:
                    pass
                connection.close()


def run(request: dict) -> None:
    """In the child: become the command, then run its console script as __main__."""
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "numpy" in sys.modules:  # `random` reseeds itself after a fork, numpy's global generator does not
        sys.modules["numpy"].random.seed()
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(script)
    runpy.run_path(script, run_name="__main__")


class LaunchedPopen(subprocess.Popen):
    """A Popen whose process the launcher server forks instead of this process executing it.

    Popen's own machinery (pipes, communicate, timeouts, signals) is kept: only the
    start and the wait for the exit status are replaced (CPython's private
    ``_execute_child``, ``_try_wait`` and ``_internal_poll``, stable since 3.8).
    """

    def __init__(self, address: str, args, **options):
        self._address, self._received, self._connection = address, b"", None
        super().__init__(args, **options)

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env, startupinfo,
                       creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, *_):
        header = json.dumps({
            "argv": [os.fspath(arg) for arg in args],
            "cwd": os.path.abspath(cwd if cwd is not None else os.getcwd()),
            "env": dict(env if env is not None else os.environ),
        }).encode()
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(self._address)
            streams = [p2cread if p2cread != -1 else 0, c2pwrite if c2pwrite != -1 else 1,
                       errwrite if errwrite != -1 else 2]
            socket.send_fds(connection, [b"%d\n" % len(header) + header], streams)
            self._connection = connection
            self.pid = int(self._line(block=True))
        except BaseException:
            connection.close()
            raise
        self._child_created = True
        self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _line(self, block: bool) -> bytes | None:
        """The next line from the server, or None when not blocking and none has come yet."""
        assert self._connection is not None
        while b"\n" not in self._received:
            self._connection.setblocking(block)
            try:
                chunk = self._connection.recv(64)
            except BlockingIOError:
                return None
            if not chunk:
                raise RuntimeError(f"the launcher server closed the connection of {self.args!r}")
            self._received += chunk
        line, _, self._received = self._received.partition(b"\n")
        return line

    def _relayed_waitpid(self, pid: int, flags: int) -> tuple[int, int]:
        """os.waitpid's answer, as the server relays it."""
        status = self._line(block=not flags & os.WNOHANG)
        if status is None:
            return 0, 0
        assert self._connection is not None
        self._connection.close()
        return pid, int(status)

    def _try_wait(self, wait_flags):
        return self._relayed_waitpid(self.pid, wait_flags)

    def _internal_poll(self, _deadstate=None, **_):
        return super()._internal_poll(_deadstate, _waitpid=self._relayed_waitpid)


class Launcher:
    """The server, started with `environment` (its PYTHON* variables are every command's)."""

    def __init__(self, environment: dict[str, str]):
        self.environment = environment
        self._folder = tempfile.TemporaryDirectory(prefix="orion_launcher_")
        self.address = os.path.join(self._folder.name, "socket")
        self._log = Path(self._folder.name, "server.log")
        with self._log.open("wb") as log:
            self._server = subprocess.Popen(
                [sys.executable, __file__, self.address], env=environment,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self._folder.name,
            )
        assert self._server.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self._server.stdout, selectors.EVENT_READ)
        if not selector.select(SERVER_START_SECONDS) or self._server.stdout.readline() != READY:
            output = self._log.read_text()
            self.close()
            raise RuntimeError(f"the launcher server did not start:\n{output}")

    def popen(self, args, *, env: dict[str, str], **options) -> subprocess.Popen:
        """Popen(args, env=env, **options) of a Python console script, forked by the server."""
        startup = {key for key in {*env, *self.environment} if key.startswith("PYTHON")}
        differing = sorted(key for key in startup if env.get(key) != self.environment.get(key))
        if differing:
            raise ValueError(f"{differing} differ from the launcher's: they are read at the interpreter's start")
        return LaunchedPopen(self.address, args, env=env, **options)

    def close(self) -> None:
        """Stop the server (not by EOF on its stdin: processes forked from this one hold the pipe)."""
        self._server.terminate()
        self._server.wait(timeout=60)
        for pipe in (self._server.stdin, self._server.stdout):
            pipe.close()  # type: ignore[union-attr]
        self._folder.cleanup()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *_) -> None:
        self.close()


if __name__ == "__main__":
    sys.path[0] = os.path.dirname(sys.executable)  # as for a console script of this environment
    preload()
    # The preloaded objects out of the collector's sight: a command's collections (and its
    # interpreter's exit, 0.8 s otherwise) then neither scan them nor copy their pages.
    gc.freeze()
    run(serve(sys.argv[1]))
