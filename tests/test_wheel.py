"""The wheel carries the migrations: installed in a clean virtualenv, away from any
checkout, `orion-sql upgrade -f` brings an empty SQLite file and an empty
PostgreSQL database to head.

The virtualenv is built once per session (pip installs Oríon and the other
dependencies from the package index: about 20 s), so these tests are slow.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from orion_sql.schema import head_revision
from support.schema import REPOSITORY, revision_of

pytestmark = pytest.mark.slow
PIP_PIN = "pip>=23,<26.3"  # pip 26.3 refuses Oríon 0.2.7's sdist
# Left out of the copy the wheel is built from: setuptools builds in the source
# tree, and a stale build/ there could carry files deleted since into the wheel.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", "*.sqlite*"
)


def _run(*command, cwd: Path, timeout: float = 900, home: Path | None = None) -> subprocess.CompletedProcess:
    """Run with an environment that points at no checkout and no configured database
    (and, given a `home`, at Oríon's configuration there).

    The fresh virtualenv's commands write their bytecode as by default (where the
    session has PYTHONDONTWRITEBYTECODE): pip installs it uncompiled (see `installed`),
    and each command would otherwise compile every module it imports again."""
    environment = {
        key: value for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "ORION_DB_ADDRESS", "PYTHONHOME")
    }
    if Path(command[0]).parent != Path(sys.executable).parent:
        environment.pop("PYTHONDONTWRITEBYTECODE", None)
    if home is not None:
        environment.update(
            HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local" / "share")
        )
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from (a clean copy of) this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPOSITORY, root / "source", ignore=NOT_SOURCE)
    started = time.monotonic()
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", root / "source", cwd=root)
    print(f"\nwheel built in {time.monotonic() - started:.1f}s")
    (built,) = (root / "dist").glob("orion_sql-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """(bin folder of a fresh virtualenv holding the wheel and its dependencies, a folder
    outside the checkout to run it from)."""
    root = tmp_path_factory.mktemp("venv")
    started = time.monotonic()
    _run(sys.executable, "-m", "venv", root / "venv", cwd=root)
    bin_dir = root / "venv" / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "-q", PIP_PIN, cwd=root)
    venv_seconds = time.monotonic() - started
    # --no-compile: pip's byte-compiling of every installed file (numpy, scipy, sklearn,
    # pandas...) was half of the install's time; the commands compile what they import.
    _run(bin_dir / "python", "-m", "pip", "install", "-q", "--no-compile", wheel, cwd=root)
    print(f"\nvirtualenv in {venv_seconds:.1f}s, wheel and dependencies installed in "
          f"{time.monotonic() - started - venv_seconds:.1f}s")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return bin_dir, elsewhere


def test_the_wheel_carries_every_module_and_migration(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        *(str(path.relative_to(REPOSITORY)) for path in (REPOSITORY / "orion_sql").rglob("*.py")),
        *("orion_sql/" + str(path.relative_to(REPOSITORY)) for path in (REPOSITORY / "migrations").rglob("*.py")),
        "orion_sql/migrations/script.py.mako",
    }
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert f"orion_sql/migrations/versions/{head_revision()}.py" in names


def test_the_installed_package_is_not_the_checkout(installed):
    bin_dir, elsewhere = installed
    done = _run(
        bin_dir / "python", "-c", "import orion_sql.migrations; print(orion_sql.migrations.__file__)", cwd=elsewhere
    )
    location = Path(done.stdout.strip())
    assert location.is_relative_to(bin_dir.parent), location
    assert not location.is_relative_to(REPOSITORY)


def test_installed_orion_sql_upgrade_brings_an_empty_database_to_head(installed, empty_url):
    bin_dir, elsewhere = installed
    started = time.monotonic()
    done = _run(bin_dir / "orion-sql", "upgrade", "-f", "--url", empty_url, cwd=elsewhere)
    print(f"\norion-sql upgrade -f in {time.monotonic() - started:.1f}s")
    assert done.stdout.splitlines()[-1].endswith(f"to {head_revision()}.")
    assert revision_of(empty_url) == head_revision()
    _run(bin_dir / "orion-sql", "current", "--url", empty_url, cwd=elsewhere)  # exit 0: up to date


def test_installed_orion_sql_setup_then_test(installed, empty_url, tmp_path):
    """`setup` writes Oríon's configuration file in the home; `test` finds the database there."""
    bin_dir, elsewhere = installed
    home = tmp_path / "home"
    _run(bin_dir / "orion-sql", "setup", "--url", empty_url, "-f", cwd=elsewhere, home=home)
    assert (home / ".config" / "orion.core" / "orion_config.yaml").exists()
    done = _run(bin_dir / "orion-sql", "test", cwd=elsewhere, home=home)  # exit 0: every check passed
    assert done.stdout.splitlines()[-1].startswith("All ") and "checks passed" in done.stdout
    assert revision_of(empty_url) is None  # the check created the schema only inside its rolled-back transaction


@pytest.fixture(params=["regular", "editable"])
def alembic_from_a_checkout(request, installed, wheel) -> tuple[Path, Path]:
    """(the `alembic` console script, a checkout to run it in), once with the package
    installed from the checkout normally (`pip install /path/to/checkout`, where the
    checkout's orion_sql/ has no migrations/ to shadow the installed one with) and
    once editable (`pip install -e`, this test session's own virtualenv)."""
    if request.param == "editable":
        return Path(sys.executable).with_name("alembic"), REPOSITORY
    bin_dir, _ = installed
    return bin_dir / "alembic", wheel.parent.parent / "source"


def test_alembic_upgrade_head_from_a_checkout(alembic_from_a_checkout, empty_url):
    """The README's `alembic upgrade head`, run at the root of a checkout."""
    alembic, checkout = alembic_from_a_checkout
    done = _run(alembic, "-x", f"url={empty_url}", "upgrade", "head", cwd=checkout)
    assert f"-> {head_revision()}" in done.stderr
    assert revision_of(empty_url) == head_revision()
