"""The launcher the functional tests fork `orion` commands from (tests/support/launcher.py):
a command it forks behaves as the same console script executed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from support.launcher import Launcher

pytestmark = pytest.mark.slow

PROBE = f"""#!{sys.executable}
import atexit, os, sys, threading, time
print((sys.argv, __name__, sys.path[0], os.getcwd(), os.environ.get("HOME"), os.environ.get("PROBE")))
print("orion.core" in sys.modules)  # never preloaded: Oríon reads its configuration at import
print(repr(sys.stdin.read()))
print("to stderr", file=sys.stderr)
atexit.register(print, "atexit ran")
threading.Thread(target=lambda: (time.sleep(0.3), print("non-daemon thread joined"))).start()
if sys.argv[1] == "raise":
    raise ValueError("raised")
if sys.argv[1] == "sleep":
    time.sleep(600)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    with Launcher({**os.environ, "HOME": str(tmp_path_factory.mktemp("server_home"))}) as server:
        yield server


@pytest.fixture
def probe(tmp_path) -> str:
    path = tmp_path / "bin" / "probe"
    path.parent.mkdir()
    path.write_text(PROBE)
    path.chmod(0o755)
    return str(path)


def _both(launcher: Launcher, probe: str, tmp_path, argument: str) -> list[subprocess.CompletedProcess]:
    """The probe run by the launcher, then executed, with the same arguments, environment,
    working directory and input."""
    environment = {**os.environ, "HOME": str(tmp_path / "home"), "PROBE": "per command"}
    done = []
    for popen in (launcher.popen, subprocess.Popen):
        process = popen([probe, argument], env=environment, cwd=tmp_path, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = process.communicate("typed in", timeout=60)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return done


def test_a_launched_command_runs_and_exits_as_the_executed_one(launcher, probe, tmp_path):
    launched, executed = _both(launcher, probe, tmp_path, "3")
    assert (launched.returncode, launched.stdout, launched.stderr) == (3, executed.stdout, executed.stderr)
    lines = launched.stdout.splitlines()
    assert lines[0] == str(([probe, "3"], "__main__", os.path.dirname(probe), str(tmp_path),
                            str(tmp_path / "home"), "per command"))
    assert lines[1:] == ["False", "'typed in'", "non-daemon thread joined", "atexit ran"]


def test_a_launched_command_that_raises_fails_as_the_executed_one(launcher, probe, tmp_path):
    launched, executed = _both(launcher, probe, tmp_path, "raise")
    assert launched.returncode == executed.returncode == 1
    assert launched.stdout == executed.stdout
    # The traceback also shows the launcher's frames, above the script's.
    assert launched.stderr.splitlines()[-1] == executed.stderr.splitlines()[-1] == "ValueError: raised"


@pytest.mark.parametrize("stop", ["kill", "terminate"])
def test_a_launched_command_is_a_process_that_dies_of_its_signal(launcher, probe, tmp_path, stop):
    process = launcher.popen([probe, "sleep"], env=dict(os.environ), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=1)
    getattr(process, stop)()
    assert process.wait(timeout=60) == -(signal.SIGKILL if stop == "kill" else signal.SIGTERM)


def test_a_command_must_start_with_the_launchers_interpreter_settings(launcher, probe):
    with pytest.raises(ValueError, match="PYTHONHASHSEED"):
        launcher.popen([probe, "0"], env={**os.environ, "PYTHONHASHSEED": "1"})
