"""The project's verbs: ``nox -s tests``, ``lint``, ``typing``, ``docs``.

Sessions run on the interpreter nox itself runs on (Python >= 3.11); the
supported versions are the classifiers in pyproject.toml.
"""

from __future__ import annotations

import os

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typing"]

# Every optional feature is tested: the object-storage targets, the apprise notifier, the
# Kubernetes traffic switch, the fleet, and mount (its FUSE test runs where /dev/fuse is usable).
TEST_EXTRAS = ".[test,s3,oss,apprise,k8s,fleet,mount,crypt]"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, against the real servers of the machine.

    First the programs the tests run (rsync, zstd, OpenSSH, the database
    clients, redis-server): ``tests/system_tools.py`` installs the missing
    ones as root with apt-get, saying what; otherwise it prints the command
    to run, and the tests that need them are skipped with it. Under
    ``CI=true`` (``.ci/run`` exports it) nothing is skipped: a missing
    program, module, server or root fails its test, and a session that
    skipped any test fails (docs/testing.md, the skip policy).
    """
    session.run("python", "-m", "tests.system_tools", "--install", external=True)
    session.install("-e", TEST_EXTRAS)
    # Two worker processes (pytest-xdist), one a core: most tests wait on servers,
    # children and the disk, and the suite took half the time (docs/testing.md).
    # The slowest tests are listed at the end: where a run's time went.
    args = session.posargs or ["-q", "-p", "no:cacheprovider", "--durations=25", "-n", "2"]
    session.run(
        "pytest",
        *args,
        env={"PYTHONHASHSEED": "0", **({"CI": os.environ["CI"]} if "CI" in os.environ else {})},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """The layers (import-linter), ruff's rules (complexity included) and ruff's formatting."""
    session.install("-e", ".", "ruff>=0.6", "import-linter>=2.1")
    session.run("lint-imports", "--no-cache")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package."""
    # types-requests: requests ships no type hints of its own (the alert webhook uses it).
    session.install("-e", TEST_EXTRAS, "mypy>=1.11", "types-requests", "pyrage-stubs")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation, failing on any warning, and the man pages.

    The API reference comes from the docstrings, docs/cli.md's command
    reference from the click commands (mkdocs-click), and the man pages in
    build/man/ from the same commands (click-man).
    """
    # The fleet's API reference imports celery.
    session.install("-e", ".[docs,fleet]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")
    session.run("python", "docs/_tools/man_pages.py", "build/man")


@nox.session
def mutate(session: nox.Session) -> None:
    """Mutation testing of the safety-critical modules (not a default session, not in CI).

    mutmut mutates each module of ``tests/mutation/modules.toml`` in a copy of the
    checkout (``build/mutate/``) and runs the tests that call the mutated code;
    the survivors not explained in ``tests/mutation/allowlist.toml`` are listed and
    below 90% killed or explained the session fails. Arguments name groups and
    options, e.g. ``nox -s mutate -- swap journal --jobs 2``; see docs/testing.md.
    """
    session.install("-e", f"{TEST_EXTRAS[:-1]},mutate]")
    session.run("python", "-m", "tests.mutation.run", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark harness: cellvault against tar+zstd, restic and borg (not a default session).

    Arguments go to benchmarks/run.py, e.g. ``nox -s bench -- --size 100M --repeat 1``.
    """
    session.install("-e", ".")
    session.run("python", "benchmarks/run.py", *session.posargs)
