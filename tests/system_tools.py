"""The programs the test suite runs, the Debian packages that bring them, and a check.

One table for two users:

* ``python -m tests.system_tools --install`` (run by ``nox -s tests`` before
  pytest) says which programs are missing and, as root with ``apt-get``,
  installs their packages, saying so; without root or without ``apt-get`` it
  prints the command to run and carries on: the tests that need a missing
  program are then skipped with that command as the reason;
* :func:`require` (and the ``tools`` marker of ``tests/conftest.py``) skips a
  test whose program is missing, with the install command, except under
  ``CI=true``, where it fails it: CI must not go green by skipping.

:func:`unavailable` is the suite's one way to skip: every skip of the suite
(a missing program, Python module, server, root, device) goes through it, and
under ``CI=true`` it fails the test instead. :func:`needs_root` and
:func:`import_module` are its two common uses.

Only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn

__all__ = [
    "PACKAGES",
    "find",
    "import_module",
    "in_ci",
    "install_command",
    "missing",
    "needs_root",
    "require",
    "unavailable",
]

#: Program -> the Debian package that installs it.
PACKAGES: dict[str, str] = {
    "rsync": "rsync",
    "zstd": "zstd",
    "tar": "tar",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "psql": "postgresql-client",
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "mariadb": "mariadb-client",
    "mariadb-dump": "mariadb-client",
    "redis-cli": "redis-tools",
    "redis-server": "redis-server",
    # The fidelity tests: ACLs set and read, extended attributes, bsdtar reading archives.
    "setfacl": "acl",
    "getfacl": "acl",
    "getfattr": "attr",
    "bsdtar": "libarchive-tools",
    "setpriv": "util-linux",
    # Local immutable archives (tests/targets/test_local_immutable.py): the attribute read;
    # a swap's clean-up of old data that refuses removal (tests/ops/test_swap.py): set.
    "lsattr": "e2fsprogs",
    "chattr": "e2fsprogs",
    # cellvault mount (tests/ops/test_mount.py): unmounting, and libfuse3 with it.
    "fusermount3": "fuse3",
    # The examples' checks: the shell wrappers linted, the systemd units verified.
    "shellcheck": "shellcheck",
    "systemd-analyze": "systemd",
    # Encryption at rest (tests/test_crypt.py): the stock age | zstd | tar restore.
    "age": "age",
}
# sshd and redis-server live in sbin folders that a user's PATH may lack.
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find(program: str) -> str | None:
    """The path of *program*, on PATH or in an sbin folder; ``None`` when it is not installed."""
    found = shutil.which(program)
    if found is not None:
        return found
    for folder in _SBIN:
        candidate = Path(folder) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing(programs: Iterable[str] = PACKAGES) -> list[str]:
    """The programs of *programs* that are not installed."""
    return [p for p in programs if find(p) is None]


def _packages(programs: Iterable[str]) -> list[str]:
    return sorted({PACKAGES.get(p, p) for p in programs})


def install_command(programs: Iterable[str]) -> str:
    """The command that installs *programs* on Debian or Ubuntu."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install -y {' '.join(_packages(programs))}"


def in_ci() -> bool:
    """Whether this is a CI run (``CI=true``, as ``.ci/run`` exports it)."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the running test for *reason*, or fail it under ``CI=true``: the suite's one skip."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing test dependency is an error)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def needs_root(what: str) -> None:
    """Skip (fail under ``CI=true``, which runs as root) a test that only root can run."""
    if os.geteuid() != 0:
        unavailable(f"only root can {what}; run the tests as root")


def import_module(name: str, install: str) -> ModuleType:
    """Import the module *name*, or :func:`unavailable` saying to ``pip install`` *install*."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        problem = f"Python module {name!r} is missing ({err}); pip install {install}"
    unavailable(problem)  # outside the except: no chained traceback


def require(*programs: str) -> None:
    """Skip the running test when one of *programs* is missing (fail it under ``CI=true``)."""
    absent = missing(programs)
    if absent:
        unavailable(f"{', '.join(absent)} not installed; install with: {install_command(absent)}")


def _install(packages: Sequence[str]) -> bool:
    """``apt-get install`` *packages*; tell whether it worked."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"system_tools: installing {' '.join(packages)} (apt-get, as root)", flush=True)
    update = subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    if update.returncode != 0:
        return False
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        stdout=subprocess.DEVNULL,
        check=False,
    )
    return done.returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    """Check (and with ``--install``, install) the test suite's programs."""
    parser = argparse.ArgumentParser(prog="python -m tests.system_tools", description=__doc__)
    parser.add_argument(
        "--install", action="store_true", help="install what is missing (root and apt-get only)"
    )
    args = parser.parse_args(argv)
    absent = missing()
    if not absent:
        print(f"system_tools: all {len(PACKAGES)} programs the tests run are installed")
        return 0
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if args.install and can_install and _install(_packages(absent)):
        absent = missing()
        if not absent:
            print("system_tools: installed; all programs the tests run are there now")
            return 0
    print(f"system_tools: not installed: {', '.join(absent)}", file=sys.stderr)
    if shutil.which("apt-get") is not None:
        print(f"system_tools: install with: {install_command(absent)}", file=sys.stderr)
    else:
        print(
            "system_tools: install these with your system's package manager "
            f"(Debian's packages: {' '.join(_packages(absent))})",
            file=sys.stderr,
        )
    if in_ci():
        print("system_tools: CI=true: the tests need every program", file=sys.stderr)
        return 1
    print("system_tools: the tests that need them will be skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
