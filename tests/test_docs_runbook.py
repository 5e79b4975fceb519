"""docs/runbook.md runs as written: every ``console`` block, in order, in one shell.

The runbook's paths are folders of the test: ``/path/to/paas-platform`` (a platform
checkout), ``/path/to/cellvault`` (a copy of this repository's examples),
``/srv/paas`` (the cells' live data), ``/backup/paas`` and ``/mnt/nas`` (the
targets). Each ``$ `` command (``> `` lines continue it) must exit 0, unless the
next command is ``echo $?`` and shows its code. Each documented output line must
appear, in order, in what the command printed (stdout and stderr together);
``...`` stands for any number of lines. Archive stamps are matched by position:
the runbook's ``20250101_020000`` is whatever stamp the run made there, and the
same runbook stamp later (``RESTORE_DATE=20250101_0200``) means that same
archive. Run ids, sizes, durations, ages, times, hosts and pids are wildcards.

``RUNBOOK_RECORD=1 pytest tests/test_docs_runbook.py -s`` prints what each
command printed, to update the page.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import SAMPLE, write_tree
from tests.system_tools import unavailable

REPO = Path(__file__).resolve().parents[1]
RUNBOOK = REPO / "docs" / "runbook.md"
#: The runbook's absolute paths, all moved under the test's folder.
PREFIXES = ("/path/to/paas-platform", "/path/to/cellvault", "/srv/paas", "/backup/paas", "/mnt/nas")
MARK = "@@runbook-exit@@"

STAMP = re.compile(r"\d{8}_\d{6}(?!(_[0-9a-f]+)?\.log)")
PREFIX_DATE = re.compile(r"(?<![\d_])\d{8}_\d{4}(?!\d)")
#: Wildcards of an expected line: (pattern in the documented text, regex for the actual text).
WILDCARDS = (
    # A run log's stamp is when the run started, not an archive's.
    (
        re.compile(r"\b(backup|verify|restore|prune|sync)_\d{8}_\d{6}(_[0-9a-f]+)?\.log"),
        r"(?:backup|verify|restore|prune|sync)_\d{8}_\d{6}(?:_[0-9a-f]+)?\.log",
    ),
    # The AGE column of cellvault status.
    (re.compile(r"(?<= )\d+(\.\d+)?[mhd](?= )"), r"\d+(\.\d+)?[mhd]"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)"), r"\S+"),
    (re.compile(r"host \S+ \(pid \d+\)"), r"host \S+ \(pid \d+\)"),
    (re.compile(r"\b[0-9a-f]{12}\b"), r"[0-9a-f]{12}"),
    (re.compile(r"\d+(\.\d+)? (B|KiB|MiB|GiB)\b"), r"[\d.]+ (B|KiB|MiB|GiB)"),
    (re.compile(r"\d+(\.\d+)? ?s\b"), r"[\d.]+ ?s"),
    (re.compile(r"\d+(\.\d+)? (min|h|days) (old|ago)"), r"[\d.]+ (min|h|days) (old|ago)"),
    # How much of a damaged archive was read before the damage showed.
    (re.compile(r"\(\d+ bytes read\)"), r"\(\d+ bytes read\)"),
)


@dataclass
class Command:
    text: str
    expected: list[str]
    line: int
    #: The exit code shown by a following ``echo $?``; 0 when there is none.
    code: int = 0


@dataclass
class Stamps:
    """The runbook's stamps and the stamps the run made at the same places."""

    to_actual: dict[str, str] = field(default_factory=dict)

    def command(self, text: str, line: int) -> str:
        def full(m: re.Match[str]) -> str:
            if m[0] not in self.to_actual:
                raise AssertionError(f"runbook line {line}: stamp {m[0]} was not seen before")
            return self.to_actual[m[0]]

        def prefix(m: re.Match[str]) -> str:
            # A date prefix means the newest archive it matches: the same one here,
            # named to the second (this run's archives are seconds, not hours, apart).
            known = sorted(s for s in self.to_actual if s.startswith(m[0]))
            if not known:
                return m[0]
            return self.to_actual[known[-1]]

        return PREFIX_DATE.sub(prefix, STAMP.sub(full, text))

    def pattern(self, expected: str) -> tuple[re.Pattern[str], list[tuple[str, str]]]:
        """A regex for *expected*; the new runbook stamps it captures, by group name."""
        out, groups, pos = [], [], 0
        seen: dict[str, str] = {}
        for m in STAMP.finditer(expected):
            out.append(_literal(expected[pos : m.start()]))
            stamp = m[0]
            if stamp in self.to_actual:
                out.append(re.escape(self.to_actual[stamp]))
            elif stamp in seen:
                out.append(f"(?P={seen[stamp]})")
            else:
                name = f"s{len(seen)}"
                seen[stamp] = name
                groups.append((stamp, name))
                out.append(rf"(?P<{name}>\d{{8}}_\d{{6}})")
            pos = m.end()
        out.append(_literal(expected[pos:]))
        return re.compile("".join(out)), groups

    def learn(self, groups: list[tuple[str, str]], match: re.Match[str]) -> None:
        # Not one-to-one: runs of different cells may share a stamp.
        for stamp, name in groups:
            self.to_actual[stamp] = match[name]


def _literal(text: str) -> str:
    """Regex for a piece of an expected line: wildcards, runs of spaces, the rest literal."""
    spans: list[tuple[int, int, str]] = []
    for pattern, regex in WILDCARDS:
        for m in pattern.finditer(text):
            if not any(s < m.end() and m.start() < e for s, e, _ in spans):
                spans.append((m.start(), m.end(), regex))
    out, pos = [], 0
    for start, end, regex in sorted(spans):
        out.append(_spaces(text[pos:start]))
        out.append(regex)
        pos = end
    out.append(_spaces(text[pos:]))
    return "".join(out)


def _spaces(text: str) -> str:
    return " +".join(re.escape(part) for part in re.split(r" {2,}", text))


#: The comments that keep the next block from being run.
SKIP_MARKS = ("<!-- runbook: skip -->", "<!-- docs-test: skip -->")


def parse(text: str) -> list[Command]:
    """The commands of every ``console`` block (not after a :data:`SKIP_MARKS` comment)."""
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        skip = i > 0 and lines[i - 1].strip() in SKIP_MARKS
        i += 1
        block: list[Command] = []
        while lines[i].strip() != "```":
            line = lines[i]
            if line.startswith("$ "):
                block.append(Command(line[2:], [], i + 1))
            elif line.startswith("> ") and block and not block[-1].expected:
                block[-1].text += "\n" + line[2:]
            elif line == ">" and block and not block[-1].expected:
                block[-1].text += "\n"
            else:
                assert block, f"runbook line {i + 1}: output before any command"
                block[-1].expected.append(line)
            i += 1
        if not skip:
            commands.extend(block)
    for before, after in itertools.pairwise(commands):
        if after.text.strip() == "echo $?":
            before.code = int(after.expected[0])
    return commands


def sandbox(tmp: Path) -> Path:
    """The folders the runbook's paths point at; returns the fake root."""
    root = tmp / "root"
    platform = root / "path" / "to" / "paas-platform"
    (platform / "deploy" / "scripts").mkdir(parents=True)
    # The examples of this repository, as an operator's checkout has them.
    examples = root / "path" / "to" / "cellvault" / "examples"
    for folder in ("deploy", "systemd", "k8s"):
        shutil.copytree(REPO / "examples" / folder, examples / folder)
    for path in examples.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for prefix in PREFIXES:
                text = text.replace(prefix, f"{root}{prefix}")
            path.write_text(text)
    # The platform's cells, and the NAS mount.
    cells = root / "srv" / "paas" / "cells"
    write_tree(cells / "crm", SAMPLE)
    write_tree(
        cells / "billing",
        {"ledger.csv": "id,amount\n1,100\n2,250\n", "invoices/2025-001.txt": "x\n"},
    )
    (root / "mnt" / "nas" / "paas-backup").mkdir(parents=True)
    return root


def run_runbook(tmp: Path, record: bool) -> None:
    commands = parse(RUNBOOK.read_text())
    assert len(commands) >= 30, "the runbook lost its commands"
    root = sandbox(tmp)
    run_console(commands, tmp, root, root, PREFIXES, record)


def run_console(
    commands: list[Command],
    tmp: Path,
    root: Path,
    cwd: Path,
    prefixes: tuple[str, ...],
    record: bool,
    stamps: Stamps | None = None,
) -> Stamps:
    """Run *commands* in one bash, in *cwd*, with each of *prefixes* moved under *root*.

    Fails on a wrong exit code or a documented line missing from the output;
    returns the stamps seen, for what the page says next.
    """
    cellvault = Path(sys.executable).parent / "cellvault"
    if not cellvault.exists():
        unavailable("the cellvault console script is not installed next to this Python")
    env = {
        "PATH": f"/usr/bin:/bin:{cellvault.parent}",
        "HOME": str(tmp / "home"),
        "PYTHONUNBUFFERED": "1",
        "CELLVAULT_LOAD_PLUGINS": "",
        "LANG": "C.UTF-8",
    }
    if os.environ.get("PYTHONPATH"):
        # A checkout run with PYTHONPATH=src: its commands are the ones documented.
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    (tmp / "home").mkdir()
    # One bash reads the commands one by one from a pipe, so that each one can use the
    # stamps the ones before it printed (RESTORE_DATE=..., a damaged archive's name).
    shell = subprocess.Popen(
        ["bash", "--noprofile", "--norc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        text=True,
        bufsize=1,
    )
    assert shell.stdin is not None and shell.stdout is not None
    stamps = stamps or Stamps()
    failures: list[str] = []
    try:
        shell.stdin.write(f"set +e\ncd {cwd}\n")
        for command in commands:
            text = command.text
            for prefix in prefixes:
                text = re.sub(rf"(?<![\w/]){re.escape(prefix)}", f"{root}{prefix}", text)
            text = stamps.command(text, command.line)
            shell.stdin.write(f'{text}\n__rc=$?; echo; echo "{MARK} $__rc"; (exit $__rc)\n')
            shell.stdin.flush()
            output: list[str] = []
            while True:
                line = shell.stdout.readline()
                assert line, f"runbook line {command.line}: the shell ended"
                if line.startswith(MARK):
                    code = int(line.split()[1])
                    break
                output.append(line.rstrip("\n").replace(str(root), ""))
            if output and output[-1] == "":
                output.pop()  # the echo before the mark
            if record:
                print(f"--- line {command.line}: $ {command.text} (exit {code})")
                print("\n".join(output))
            if code != command.code:
                failures.append(
                    f"runbook line {command.line}: '{command.text}' exited {code}, "
                    f"documented {command.code}:\n" + "\n".join(output)
                )
                continue
            problem = match(command, output, stamps)
            if problem:
                failures.append(problem)
    finally:
        shell.stdin.close()
        shell.wait(timeout=60)
    assert not failures, "\n\n".join(failures)
    return stamps


def match(command: Command, output: list[str], stamps: Stamps) -> str | None:
    """Check that the documented lines appear in *output*, in order."""
    pos = 0
    for n, expected in enumerate(command.expected):
        if expected.strip() == "...":
            continue
        pattern, groups = stamps.pattern(expected.rstrip())
        for i in range(pos, len(output)):
            found = pattern.fullmatch(output[i].rstrip())
            if found:
                stamps.learn(groups, found)
                pos = i + 1
                break
        else:
            return (
                f"runbook line {command.line + 1 + n}: after '$ {command.text}', the line\n"
                f"  {expected}\nis not in the output:\n" + "\n".join(output)
            )
    return None


def test_the_runbook_runs_as_written(tmp_path: Path) -> None:
    run_runbook(tmp_path, record=os.environ.get("RUNBOOK_RECORD") == "1")


def test_the_runbook_follows_the_manual() -> None:
    """The sections of the manual, in its order, and links that resolve."""
    text = RUNBOOK.read_text()
    headings = re.findall(r"^## (\d)\. (.+)$", text, re.M)
    assert [n for n, _ in headings] == [str(i) for i in range(1, 8)]
    titles = " ".join(t.lower() for _, t in headings)
    for word in (
        "overview",
        "configuration",
        "restore",
        "verification",
        "disaster",
        "trouble",
        "checklist",
    ):
        assert word in titles
    for target in re.findall(r"\]\(([a-z_]+\.md)(?:#[^)]*)?\)", text):
        assert (REPO / "docs" / target).exists(), target


def test_the_harness_matches_stamps_by_position() -> None:
    stamps = Stamps()
    pattern, groups = stamps.pattern("ok   cell_crm_20250101_020000  full  3 files, 65.4 KiB read")
    found = pattern.fullmatch("ok   cell_crm_20261125_101112  full  3 files, 1.0 MiB read")
    assert found
    stamps.learn(groups, found)
    assert stamps.command("RESTORE_DATE=20250101_0200 x cell_crm_20250101_020000", 2) == (
        "RESTORE_DATE=20261125_101112 x cell_crm_20261125_101112"
    )
    pattern, _ = stamps.pattern("ok   cell_crm_20250101_020000 on local")
    assert not pattern.fullmatch("ok   cell_crm_20261125_101113 on local")
