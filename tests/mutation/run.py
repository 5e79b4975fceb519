"""Mutation testing of the safety-critical modules: ``nox -s mutate`` runs this.

``python -m tests.mutation.run [GROUP ...]`` runs mutmut (3.x) on each group
of ``tests/mutation/modules.toml`` (all of them without arguments) in a copy
of the checkout under ``build/mutate/<group>``, each mutant against the tests
of its group that call the mutated function, and prints per module: mutants,
killed, survived, without a test, and the survivors ``allowlist.toml``
explains. The score counts killed (and timed-out) mutants and those the
allow-list explains; below 90% the command exits 1. ``--report`` prints the
last results without running anything; ``--resume`` carries on with the last
run of a group: its survivors again, against the tests as they are now, then
the mutants it did not run; ``GROUP --again MUTANT ...`` runs the mutants
named, in a fresh copy of the code as it is, and says what became of each.
``--report`` also names the allow-list's entries that explain nothing any
more. Not part of CI: run it before a release and when those modules change
(docs/testing.md).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD = REPO / "build" / "mutate"
#: What the tests read besides src/ and tests/ (docs pages, examples).
COPIED = ("src", "tests", "docs", "examples", "README.md", "mkdocs.yml")
TARGET = 0.90
#: The columns of the report, in order.
KINDS = ("total", "killed", "allowed", "survived", "no tests", "other", "not run")
#: mutmut's exit codes of a mutant's test run, as its ``stats`` module reads them.
KILLED = {1, 3}
TIMEOUT = {36, -24, 24, 152, 255}
#: SIGKILL (mutmut says "segfault"): its wall-clock bound's second signal, or the
#: kernel's out-of-memory killer, ended a run that did not stop (a mutant that
#: loops growing a buffer). The tests did not pass: counted as killed.
SIGKILLED = {-9}
NO_TESTS = {5, 33}
SURVIVED = {0}


def load(name: str) -> dict:
    return tomllib.loads((HERE / name).read_text())


def prepare(group: str, spec: dict, *, resume: bool = False, folder: str | None = None) -> Path:
    """A copy of the checkout for *group*, with mutmut's settings in its pyproject.toml.

    With *resume*, the copy of the last run stays (its mutants and results);
    only the tests and the settings are brought up to date. *folder* names
    the copy under ``build/mutate`` (default: the group's name).
    """
    work = BUILD / (folder or group)
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.pyc")
    for name in COPIED:
        source = REPO / name
        if resume and name == "src":
            continue
        if source.is_dir():
            shutil.rmtree(work / name, ignore_errors=True)
            shutil.copytree(source, work / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(source, work / name)
    args = ["-p", "no:cacheprovider", "-q", "-p", "no:randomly"]
    if spec.get("deselect"):
        args += ["-k", spec["deselect"]]
    settings = {
        "source_paths": ["src/"],
        "only_mutate": spec["modules"],
        "pytest_add_cli_args_test_selection": spec["tests"],
        "pytest_add_cli_args": args,
        "also_copy": [n for n in COPIED if n not in ("src", "tests")],
    }
    # A mutant that deadlocks a thread burns no CPU: only mutmut's wall-clock
    # bound, (the tests' time + constant) x multiplier, ends it. A group whose
    # mutants deadlock sets a lower multiplier than mutmut's 15.
    for key in ("timeout_multiplier", "timeout_constant"):
        if key in spec:
            settings[key] = float(spec[key])
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (work / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text() + "\n".join(lines))
    return work


def same_source(group: str) -> bool:
    """Whether the last run of *group* mutated the package as it is now (then it can resume)."""
    copy = BUILD / group / "src"
    here = sorted(p.relative_to(REPO / "src") for p in (REPO / "src").rglob("*.py"))
    there = sorted(p.relative_to(copy) for p in copy.rglob("*.py")) if copy.is_dir() else []
    return here == there and all(
        filecmp.cmp(REPO / "src" / p, copy / p, shallow=False) for p in here
    )


def run(group: str, spec: dict, jobs: int, *, resume: bool = False) -> int:
    resume = resume and (BUILD / group / "mutants").is_dir()
    if resume and not same_source(group):
        # Its mutants are of other code, and today's tests test today's code.
        print(f"mutate: {group}: the package changed since the last run; running afresh")
        resume = False
    work = prepare(group, spec, resume=resume)
    log = BUILD / f"{group}.log"
    print(f"mutate: {group}: mutmut run in {work} (log: {log})", flush=True)
    runs: list[list[str]] = [[]]
    if resume:  # the survivors again (against today's tests), then the mutants not run yet
        again = [
            name
            for codes in results(group, spec).values()
            for name, code in codes.items()
            if code is not None and not killed(code)
        ]
        runs = [again, []] if again else [[]]
    with log.open("a" if resume else "w") as out:
        if spec.get("forked") and not resume:
            # The mutants, and which test calls which function, with one mutant run
            # (mutmut runs at least one): one of a function called in the test's process.
            runs.insert(0, [spec["warm_up"]])
        for names in runs:
            if names == [] and spec.get("forked"):
                add_forked_callers(work, spec["forked"])
            code = mutmut_run(work, jobs, names, out)
            if code != 0:
                print(f"mutate: {group}: mutmut failed (exit {code}); see {log}")
                return code
    return 0


def mutmut_env(work: Path) -> dict[str, str]:
    """The environment of a run in *work*: its tests import the mutants, not a checkout's src/.

    No git either: build/ is inside the checkout, whose untracked files (the
    suite's "nothing left in the checkout" check) are not the copy's.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GIT_DIR"] = str(work / ".not-a-git-checkout")
    return env


def mutmut_run(work: Path, jobs: int, names: list[str], out: IO[str]) -> int:
    """``mutmut run`` in *work* (the mutants *names*, or all), its output to *out*; its exit code."""
    return subprocess.run(
        ["mutmut", "run", "--max-children", str(jobs), *names],
        cwd=work,
        env=mutmut_env(work),
        stdout=out,
        stderr=subprocess.STDOUT,
        check=False,
    ).returncode


def again(group: str, spec: dict, jobs: int, names: list[str]) -> int:
    """Run the mutants *names* of *group* in a fresh copy of the code as it is; say what each became.

    For the survivors of a whole run, against the tests written since, or for
    the mutants of a function changed since (their names are the new code's).
    The copy is ``build/mutate/<group>-again``; the group's own results stay.
    """
    if spec.get("forked"):
        print(f"mutate: {group}: its forked tests need a whole run (--resume)")
        return 2
    work = prepare(group, spec, folder=f"{group}-again")
    log = BUILD / f"{group}-again.log"
    print(f"mutate: {group}: {len(names)} mutants in {work} (log: {log})", flush=True)
    with log.open("w") as out:
        code = mutmut_run(work, jobs, names, out)
    if code != 0:
        print(f"mutate: {group}: mutmut failed (exit {code}); see {log}")
        return code
    codes: dict[str, int | None] = {}
    for found in results(group, spec, folder=work.name).values():
        codes.update(found)
    allowed = load("allowlist.toml").get("mutants", {})
    left = 0
    for name in names:
        code = codes.get(name, "no such mutant")
        if code == "no such mutant":
            what = "no such mutant in the code as it is"
        elif killed(code):
            what = "killed"
        elif name in allowed:
            what = "survived, allow-listed"
        else:
            what = "survived" if code in SURVIVED else f"not killed (exit {code})"
            left += 1
        print(f"{name}: {what}")
    return 1 if left else 0


def add_forked_callers(work: Path, forked: dict[str, list[str]]) -> None:
    """Record the tests that call functions in a forked child (``forked`` in modules.toml).

    mutmut learns which test calls which function from the calls it sees in
    the test's own process; a test that runs the code in a child it forks
    (stop_processes_under in a PID namespace of its own) calls it where
    mutmut does not see it. Without this, those functions' mutants would
    count as having no test.
    """
    path = work / "mutants" / "mutmut-stats.json"
    stats = json.loads(path.read_text())
    callers = stats["tests_by_mangled_function_name"]
    for test, functions in forked.items():
        for function in functions:
            callers[function] = sorted({*callers.get(function, []), test})
    path.write_text(json.dumps(stats))


def results(
    group: str, spec: dict, *, folder: str | None = None
) -> dict[str, dict[str, int | None]]:
    """Per module of *group*: each mutant's exit code, from mutmut's ``.meta`` files.

    *folder* names the copy under ``build/mutate`` (default: the group's name).
    """
    out: dict[str, dict[str, int | None]] = {}
    mutants = BUILD / (folder or group) / "mutants"
    for pattern in spec["modules"]:
        for meta in sorted(mutants.glob(pattern + ".meta")):
            module = str(meta.relative_to(mutants))[: -len(".meta")]
            out[module] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def killed(code: int | None) -> bool:
    """Whether a mutant's exit code says a test failed on it (or its tests timed out or were killed)."""
    return code in KILLED or code in TIMEOUT or code in SIGKILLED


def summarise(codes: dict[str, int | None], allowed: dict[str, str]) -> dict[str, object]:
    kinds: Counter[str] = Counter()
    unexplained: list[str] = []
    for name, code in codes.items():
        if code is None:
            kinds["not run"] += 1  # an interrupted run: --resume runs it
        elif killed(code):
            kinds["killed"] += 1
        elif name in allowed:
            kinds["allowed"] += 1
        else:
            kinds[
                "no tests" if code in NO_TESTS else "survived" if code in SURVIVED else "other"
            ] += 1
            unexplained.append(name)
    total = len(codes)
    tested = total - kinds["not run"]
    score = (kinds["killed"] + kinds["allowed"]) / tested if tested else 0.0
    return {"total": total, **kinds, "score": score, "unexplained": sorted(unexplained)}


def report(groups: list[str], config: dict, allowed: dict[str, str]) -> bool:
    rows = []
    totals: Counter[str] = Counter()
    for group in groups:
        for module, codes in results(group, config["groups"][group]).items():
            s = summarise(codes, allowed)
            rows.append((module, s))
            for key in KINDS:
                totals[key] += int(s.get(key, 0))  # type: ignore[call-overload]
    print(
        "| module | mutants | killed | allow-listed | survived | no test | other | not run | score |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for module, s in rows:
        counts = " | ".join(str(s.get(key, 0)) for key in KINDS)
        print(f"| {module} | {counts} | {s['score']:.1%} |")
    tested = totals["total"] - totals["not run"]
    score = (totals["killed"] + totals["allowed"]) / tested if tested else 0.0
    print(f"| all | {' | '.join(str(totals[key]) for key in KINDS)} | {score:.1%} |")
    print("score: killed or allow-listed, of the mutants run (a group with mutants not run")
    print("does not meet the target, whatever its score)")
    for _, s in rows:
        for name in s["unexplained"]:  # type: ignore[attr-defined]
            print(f"not killed, not allow-listed: {name} (mutmut show {name}, in build/mutate)")
    for name, why in stale_entries(groups, config, allowed):
        print(f"allow-list entry to remove: {name} ({why})")
    return score >= TARGET and not totals["not run"]


def stale_entries(
    groups: list[str], config: dict, allowed: dict[str, str]
) -> list[tuple[str, str]]:
    """The allow-list's entries for the modules of *groups* that explain nothing any more.

    A mutant killed needs no reason; a name no mutant has any more (its function
    changed, or went) would explain, wrongly, whatever mutant takes it later.
    """
    codes: dict[str, int | None] = {}
    prefixes: set[str] = set()
    for group in groups:
        for module, found in results(group, config["groups"][group]).items():
            codes.update(found)
            prefixes.add(module.removeprefix("src/").removesuffix(".py").replace("/", ".") + ".")
    stale = []
    for name in sorted(allowed):
        if not any(name.startswith(prefix) for prefix in prefixes):
            continue
        if name not in codes:
            stale.append((name, "no such mutant"))
        elif killed(codes[name]):
            stale.append((name, "killed"))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.run", description=__doc__)
    parser.add_argument("groups", nargs="*", help="groups of tests/mutation/modules.toml")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    parser.add_argument(
        "--resume", action="store_true", help="carry on with the last run (then its survivors)"
    )
    parser.add_argument(
        "--again",
        nargs="+",
        metavar="MUTANT",
        help="run these mutants of the one group named, in a fresh copy of the code as it is",
    )
    args = parser.parse_args(argv)
    config = load("modules.toml")
    groups = args.groups or list(config["groups"])
    unknown = [g for g in groups if g not in config["groups"]]
    if unknown:
        parser.error(f"unknown groups: {', '.join(unknown)}; known: {', '.join(config['groups'])}")
    if args.again:
        if len(args.groups) != 1:
            parser.error("--again runs the mutants of one group: name it")
        return again(groups[0], config["groups"][groups[0]], args.jobs, args.again)
    allowed = load("allowlist.toml").get("mutants", {})
    failed = []
    if not args.report:
        failed = [
            g for g in groups if run(g, config["groups"][g], args.jobs, resume=args.resume) != 0
        ]
    ok = report(groups, config, allowed)
    if failed:
        print(f"mutate: mutmut failed for: {', '.join(failed)}")
    if not ok:
        print(f"mutate: below the target of {TARGET:.0%} killed or explained")
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
