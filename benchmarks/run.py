"""Side-by-side benchmark: cellvault against tar+zstd, restic and borg.

For each tool, in one run and over ``--repeat`` repetitions (tools rotate
order in each), on a deterministic corpus (``benchmarks/corpus.py``):

1. a full backup,
2. an incremental with nothing changed,
3. an incremental after 1% of the files changed,
4. a restore of the latest backup into an empty directory,
5. a full verify (every archive, every byte).

Each measured command runs as a subprocess (a pipeline is several). Wall time
is taken around the whole operation. Peak memory is the ``ru_maxrss`` that
``os.wait4`` returns for each measured process: its largest resident set, and
that of any process it waited for (Linux keeps the maximum, not the sum). A
child inherits its parent's high-water mark at ``exec``, so each command is
started by a small ``sh`` that backgrounds it and exits, with this runner a
child subreaper: the command is then reaped here with its own figure (floor:
the shell's resident set, under 1 MiB, printed). For a pipeline (``tar | zstd``) the peaks of its
processes, which run at the same time, are added; for an operation of several
steps (tar's restore of a chain) the largest step counts. Before every
measured operation the page cache is dropped (``sync; echo 3 >
/proc/sys/vm/drop_caches``) when the process may do so; otherwise the run
says it is warm-cache.

The runner installs nothing: a tool that is not on PATH is skipped and named.

    python benchmarks/run.py                      # 500M corpus, 3 repetitions
    python benchmarks/run.py --size 100M --repeat 1 --tools cellvault,tar
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus as corpus_mod  # noqa: E402 - the sibling module, found through HERE
from installed import compile_cellvault  # noqa: E402 - the same

OPS = ("full", "incr_nochange", "incr_change", "restore", "verify")
OP_LABELS = {
    "full": "full backup",
    "incr_nochange": "incremental, no change",
    "incr_change": "incremental, 1% changed",
    "restore": "restore (latest)",
    "verify": "verify (all data)",
}
ALL_TOOLS = ("cellvault", "cellvault-noverify", "cellvault-fullverify", "tar", "restic", "borg")
DEFAULT_TOOLS = ("cellvault", "tar", "restic", "borg")
#: Where cellvault is imported from (``--cellvault-src``); None: the installed package.
CELLVAULT_SRC: Path | None = None
PASSWORD = "cellvault-bench"  # noqa: S105 - a fixed test password for throwaway local repositories


class ToolFailed(Exception):
    pass


@dataclass
class Step:
    """One command or pipeline (each element of *pipeline* is an argument list)."""

    pipeline: list[list[str]]
    cwd: Path | None = None


@dataclass
class Measurement:
    wall: float
    peak_kib: int


def _clean_env() -> dict[str, str]:
    """The environment without any cellvault, restic or borg configuration of the caller."""
    drop = ("BACKUP_", "RESTORE_", "CELLVAULT_", "RESTIC_", "BORG_", "AWS_", "OSS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


#: How each measured process is started. A child created by this (large) Python
#: process inherits its memory high-water mark: Linux folds the parent's peak
#: RSS into the child's ``ru_maxrss`` at ``exec`` (vfork) or its RSS at fork.
#: So each command is started by a small ``sh``: it forks a subshell in the
#: background, writes its pid and exits. This process is a child subreaper
#: (``PR_SET_CHILD_SUBREAPER``), so the subshell becomes its child; only then is
#: the subshell let go (through a FIFO, the "gate") to ``exec`` the command, so
#: the shell can never reap it first. ``os.wait4`` then gives the command's own
#: peak, with a floor of the shell's resident set (under 1 MiB, reported).
_TRAMPOLINE = (
    "pidfile=$1; gate=$2; shift 2; exec 4<&0; "
    '( read -r _ < "$gate"; exec "$@" <&4 4<&- ) & echo $! > "$pidfile"'
)
_SUBREAPER: bool | None = None


def _become_subreaper() -> bool:
    global _SUBREAPER
    if _SUBREAPER is None:
        _SUBREAPER = False
        if sys.platform.startswith("linux") and shutil.which("sh"):
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                _SUBREAPER = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    return _SUBREAPER


def memory_method() -> str:
    if _become_subreaper():
        return (
            "os.wait4 ru_maxrss of each measured process, started through a small sh "
            "(this runner is a child subreaper), so it does not inherit the runner's own peak; "
            "a pipeline's processes run at once and their peaks are added; "
            "an operation of several steps reports its largest step"
        )
    return (
        "os.wait4 ru_maxrss of each measured process started directly by the runner "
        "(includes the runner's own peak as a floor); pipelines added, steps: largest"
    )


def _start(
    argv: list[str], stdin: Any, stdout: Any, stderr: Any, cwd: Path | None, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start *argv*; return its Popen (possibly the trampoline's) and the pid to wait4 for."""
    if not _become_subreaper():
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env)
        return p, p.pid
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        pidfile = os.path.join(tmp, "pid")
        gate = os.path.join(tmp, "gate")
        os.mkfifo(gate)
        p = subprocess.Popen(
            ["sh", "-c", _TRAMPOLINE, "sh", pidfile, gate, *argv],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
        )
        if p.wait() != 0:
            raise ToolFailed(f"cannot start {argv[0]}")
        with open(pidfile) as f:
            pid = int(f.read().strip())
        # The subshell is this process's child now (the shell has exited): let it run.
        with open(gate, "w") as g:
            g.write("go\n")
        return p, pid


def run_steps(
    steps: Sequence[Step], env: dict[str, str], ok_codes: Sequence[int] = (0,)
) -> Measurement:
    """Run *steps* one after the other; return the wall time and the peak RSS (KiB)."""
    peak = 0
    started = time.perf_counter()
    for step in steps:
        with tempfile.TemporaryFile() as err:
            pids: list[int] = []
            prev: subprocess.Popen[bytes] | None = None
            try:
                for i, argv in enumerate(step.pipeline):
                    last = i == len(step.pipeline) - 1
                    p, pid = _start(
                        argv,
                        prev.stdout if prev is not None else subprocess.DEVNULL,
                        subprocess.DEVNULL if last else subprocess.PIPE,
                        err,
                        step.cwd,
                        env,
                    )
                    if prev is not None and prev.stdout is not None:
                        prev.stdout.close()  # the next process holds it now
                    pids.append(pid)
                    prev = p
            finally:
                if prev is not None and prev.stdout is not None:
                    prev.stdout.close()  # a pipeline cut short: its writer must not block
                rss = 0
                codes = []
                for pid in pids:
                    try:
                        _, status, usage = os.wait4(pid, 0)
                    except ChildProcessError:
                        raise ToolFailed(
                            f"lost track of process {pid} (reaped elsewhere)"
                        ) from None
                    codes.append(os.waitstatus_to_exitcode(status))
                    rss += usage.ru_maxrss  # KiB on Linux
            peak = max(peak, rss)
            if any(c not in ok_codes for c in codes):
                err.seek(0)
                tail = err.read()[-2000:].decode(errors="replace")
                cmd = " | ".join(" ".join(a) for a in step.pipeline)
                raise ToolFailed(f"{cmd} exited {codes}:\n{tail}")
    return Measurement(time.perf_counter() - started, peak)


# -- the tools -------------------------------------------------------------------


class Tool:
    name = ""
    #: Exit codes that still mean success (borg: 1 = warnings).
    ok_codes: tuple[int, ...] = (0,)

    def __init__(self, corpus: Path, base: Path, split_cells: bool = False) -> None:
        self.corpus = corpus
        self.base = base
        self.split_cells = split_cells
        self.env = _clean_env()

    def missing(self) -> str | None:
        """Why the tool cannot run here, or None."""
        return None

    def version(self) -> str:
        return ""

    def setup(self) -> None:
        """Make an empty repository (not measured)."""
        self.base.mkdir(parents=True, exist_ok=True)

    def before_backup(self) -> None:
        """Wait for whatever the next backup needs (not measured)."""

    def backup(self, n: int) -> list[Step]:
        raise NotImplementedError

    def restore(self, dest: Path) -> list[Step]:
        raise NotImplementedError

    def verify(self) -> list[Step]:
        raise NotImplementedError

    def repo_bytes(self) -> int:
        return _tree_bytes(self.base / "repo")


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _first_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


class Cellvault(Tool):
    """cellvault's command line, configured by the seed's environment variables."""

    name = "cellvault"
    verify_after_backup = True
    #: ``BACKUP_VERIFY_LEVEL`` of the check after each backup; ``None``: the default (read).
    verify_level: str | None = None
    #: Import cellvault from this copy of ``src/`` (``None``: ``--cellvault-src`` or installed).
    src: Path | None = None

    def __init__(self, corpus: Path, base: Path, split_cells: bool = False) -> None:
        super().__init__(corpus, base, split_cells)
        self.env["BACKUP_DIR"] = str(base / "repo")
        if split_cells:
            cells = sorted(p.name for p in corpus.iterdir() if p.is_dir())
            self.env["BACKUP_CELLS"] = " ".join(cells)
            for cell in cells:
                self.env[f"BACKUP_CELL_{cell.upper()}_PATHS"] = str(corpus / cell)
        else:
            self.env["BACKUP_CELLS"] = "bench"
            self.env["BACKUP_CELL_BENCH_PATHS"] = str(corpus)
        if not self.verify_after_backup:
            self.env["BACKUP_VERIFY"] = "0"
        if self.verify_level is not None:
            self.env["BACKUP_VERIFY_LEVEL"] = self.verify_level
        src = self.src or CELLVAULT_SRC
        if src is not None:
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(src), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        self._last_backup = 0.0

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cellvault", *args]

    def missing(self) -> str | None:
        out = subprocess.run(
            [sys.executable, "-c", "import cellvault"], capture_output=True, check=False
        )
        return None if out.returncode == 0 else "cellvault is not importable by this python"

    def version(self) -> str:
        where = _first_line(
            [sys.executable, "-c", "import cellvault; print(cellvault.__file__)"], self.env
        )
        return f"{_first_line(self.cli('--version'), self.env)} ({where})"

    def before_backup(self) -> None:
        # Archive ids have whole seconds: a second backup in the same second waits for the
        # next one inside cellvault. Hours apart in real life; not what is measured here.
        wait = self._last_backup + 1.05 - time.time()
        if wait > 0:
            time.sleep(wait)
        self._last_backup = time.time()

    def backup(self, n: int) -> list[Step]:
        return [Step([self.cli("backup", "--type", "full" if n == 0 else "incremental")])]

    def restore(self, dest: Path) -> list[Step]:
        return [Step([self.cli("restore", "--into", str(dest))])]

    def verify(self) -> list[Step]:
        return [Step([self.cli("verify", "--all")])]


class CellvaultNoVerify(Cellvault):
    """cellvault with BACKUP_VERIFY=0: no read-back of each archive after storing it."""

    name = "cellvault-noverify"
    verify_after_backup = False


class CellvaultFullVerify(Cellvault):
    """cellvault with BACKUP_VERIFY_LEVEL=full: every member checked again after storing."""

    name = "cellvault-fullverify"
    verify_level = "full"


class CellvaultBaseline(Cellvault):
    """cellvault at another revision (``--baseline-src``), with its own defaults: before/after."""

    name = "cellvault-baseline"


class TarZstd(Tool):
    """GNU tar with a --listed-incremental snapshot file, piped through zstd -T0 -3."""

    name = "tar"

    def missing(self) -> str | None:
        for tool in ("tar", "zstd"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        if "GNU tar" not in _first_line(["tar", "--version"]):
            return "tar is not GNU tar (needed for --listed-incremental)"
        return None

    def version(self) -> str:
        return f"{_first_line(['tar', '--version'])}; {_first_line(['zstd', '--version'])}"

    def _archive(self, n: int) -> Path:
        return self.base / "repo" / f"{n:02d}.tar.zst"

    def setup(self) -> None:
        (self.base / "repo").mkdir(parents=True, exist_ok=True)
        self.count = 0

    def backup(self, n: int) -> list[Step]:
        self.count = n + 1
        snap = self.base / "repo" / "snapshot.snar"
        tar = [
            "tar",
            f"--listed-incremental={snap}",
            "-cf",
            "-",
            "-C",
            str(self.corpus.parent),
            self.corpus.name,
        ]
        return [Step([tar, ["zstd", "-q", "-T0", "-3", "-o", str(self._archive(n))]])]

    def restore(self, dest: Path) -> list[Step]:
        return [
            Step(
                [
                    ["zstd", "-q", "-dc", str(self._archive(n))],
                    ["tar", "-x", "--listed-incremental=/dev/null", "-f", "-", "-C", str(dest)],
                ]
            )
            for n in range(self.count)
        ]

    def verify(self) -> list[Step]:
        steps = []
        for n in range(self.count):
            steps.append(Step([["zstd", "-q", "-t", str(self._archive(n))]]))
            steps.append(
                Step(
                    [
                        ["zstd", "-q", "-dc", str(self._archive(n))],
                        ["tar", "-t", "--listed-incremental=/dev/null", "-f", "-"],
                    ]
                )
            )
        return steps


class Restic(Tool):
    """restic with a local repository, default settings (compression auto, its cache)."""

    name = "restic"

    def __init__(self, corpus: Path, base: Path, split_cells: bool = False) -> None:
        super().__init__(corpus, base, split_cells)
        self.env["RESTIC_PASSWORD"] = PASSWORD
        self.env["RESTIC_REPOSITORY"] = str(base / "repo")
        # The default cache, kept inside the work directory.
        self.env["RESTIC_CACHE_DIR"] = str(base / "cache")

    def missing(self) -> str | None:
        return (
            None if shutil.which("restic") else "restic is not installed (apt-get install restic)"
        )

    def version(self) -> str:
        return _first_line(["restic", "version"])

    def setup(self) -> None:
        super().setup()
        run_steps([Step([["restic", "init", "-q"]])], self.env)

    def backup(self, n: int) -> list[Step]:
        return [Step([["restic", "backup", "-q", str(self.corpus)]])]

    def restore(self, dest: Path) -> list[Step]:
        return [Step([["restic", "restore", "latest", "-q", "--target", str(dest)]])]

    def verify(self) -> list[Step]:
        return [Step([["restic", "check", "--read-data", "-q"]])]


class Borg(Tool):
    """borg 1.x with a local repokey repository and --compression zstd,3."""

    name = "borg"
    ok_codes = (0, 1)

    def __init__(self, corpus: Path, base: Path, split_cells: bool = False) -> None:
        super().__init__(corpus, base, split_cells)
        self.env["BORG_PASSPHRASE"] = PASSWORD
        # Cache, security and key folders inside the work directory.
        self.env["BORG_BASE_DIR"] = str(base / "home")
        self.env["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        self.repo = str(base / "repo")

    def missing(self) -> str | None:
        return (
            None if shutil.which("borg") else "borg is not installed (apt-get install borgbackup)"
        )

    def version(self) -> str:
        return _first_line(["borg", "--version"])

    def setup(self) -> None:
        super().setup()
        run_steps([Step([["borg", "init", "-e", "repokey", self.repo]])], self.env)
        self.count = 0

    def backup(self, n: int) -> list[Step]:
        self.count = n + 1
        return [
            Step(
                [
                    [
                        "borg",
                        "create",
                        "--compression",
                        "zstd,3",
                        f"{self.repo}::b{n}",
                        str(self.corpus),
                    ]
                ]
            )
        ]

    def restore(self, dest: Path) -> list[Step]:
        return [Step([["borg", "extract", f"{self.repo}::b{self.count - 1}"]], cwd=dest)]

    def verify(self) -> list[Step]:
        return [Step([["borg", "check", "--verify-data", self.repo]])]


TOOL_CLASSES: dict[str, type[Tool]] = {
    "cellvault": Cellvault,
    "cellvault-noverify": CellvaultNoVerify,
    "cellvault-fullverify": CellvaultFullVerify,
    "cellvault-baseline": CellvaultBaseline,
    "tar": TarZstd,
    "restic": Restic,
    "borg": Borg,
}


# -- the machine -----------------------------------------------------------------


def drop_caches() -> bool:
    """Write dirty pages and drop the page cache; False when this process may not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def machine_info(work: Path) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    disk = _first_line(["df", "-h", "--output=source,fstype,size,avail", str(work)], None)
    with contextlib.suppress(Exception):
        out = (
            subprocess.run(
                ["df", "-h", "--output=source,fstype,size,avail", str(work)],
                capture_output=True,
                text=True,
                check=False,
            )
            .stdout.strip()
            .splitlines()
        )
        disk = " ".join(out[-1].split()) if out else disk
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "disk": disk,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_revision() -> str | None:
    repo = HERE.parent
    if not (repo / ".git").exists():
        return None
    rev = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return rev + ("+dirty(src)" if dirty else "")


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def tree_stats(root: Path) -> tuple[int, int]:
    """(regular files, their bytes) under *root*."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_mode & 0o170000) == 0o100000:
                files += 1
                size += st.st_size
    return files, size


def startup_costs(repeat: int = 5) -> dict[str, Any]:
    """Wall time and peak RSS of starting Python, and of cellvault's command line."""
    env = _clean_env()
    if CELLVAULT_SRC is not None:
        env["PYTHONPATH"] = str(CELLVAULT_SRC)
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import cellvault'": [sys.executable, "-c", "import cellvault"],
        "python -m cellvault --version": [sys.executable, "-m", "cellvault", "--version"],
        "python -m cellvault --help": [sys.executable, "-m", "cellvault", "--help"],
    }
    out = {}
    for label, argv in cases.items():
        try:
            run_steps([Step([argv])], env)  # warm up
            ms = [run_steps([Step([argv])], env) for _ in range(repeat)]
        except ToolFailed as exc:
            out[label] = {"error": str(exc)}
            continue
        out[label] = {
            "wall": statistics.median(m.wall for m in ms),
            "peak_kib": max(m.peak_kib for m in ms),
        }
    return out


# -- the run ---------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    repo_bytes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, tool: str, op: str, m: Measurement) -> None:
        self.runs.setdefault(tool, {}).setdefault(op, []).append(
            {"wall": round(m.wall, 4), "peak_kib": m.peak_kib}
        )

    def median(self, tool: str, op: str) -> float | None:
        walls = [r["wall"] for r in self.runs.get(tool, {}).get(op, [])]
        return statistics.median(walls) if walls else None

    def peak(self, tool: str, op: str) -> int | None:
        peaks = [int(r["peak_kib"]) for r in self.runs.get(tool, {}).get(op, [])]
        return max(peaks) if peaks else None


def one_tool(
    tool: Tool,
    corpus: Path,
    work: Path,
    results: Results,
    cold: bool,
    seed: int,
    expect: Callable[[], tuple[int, int]],
    log: Callable[[str], None],
) -> None:
    shutil.rmtree(tool.base, ignore_errors=True)
    tool.setup()

    def measure(op: str, steps_for: Callable[[], list[Step]]) -> None:
        if op.startswith(("full", "incr")):
            tool.before_backup()
        steps = steps_for()
        if cold:
            drop_caches()
        m = run_steps(steps, tool.env, tool.ok_codes)
        results.add(tool.name, op, m)
        log(f"  {tool.name:<19} {OP_LABELS[op]:<24} {m.wall:8.2f} s  {m.peak_kib / 1024:7.1f} MiB")

    mutation = None
    dest = work / "restore" / tool.name
    try:
        measure("full", lambda: tool.backup(0))
        results.repo_bytes.setdefault(tool.name, {}).setdefault("after_full", []).append(
            tool.repo_bytes()
        )
        measure("incr_nochange", lambda: tool.backup(1))
        mutation = corpus_mod.mutate(corpus, 0.01, seed)
        measure("incr_change", lambda: tool.backup(2))
        results.repo_bytes[tool.name].setdefault("after_all", []).append(tool.repo_bytes())
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        measure("restore", lambda: tool.restore(dest))
        got = tree_stats(dest)
        want = expect()
        if got != want:
            raise ToolFailed(
                f"restored tree has {got[0]} files / {got[1]} bytes; the corpus has {want[0]} / {want[1]}"
            )
        measure("verify", tool.verify)
    finally:
        if mutation is not None:
            corpus_mod.undo(mutation)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(tool.base, ignore_errors=True)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return f"{r:5.2f}x" if r is not None else "    -"


def render_table(results: Results, tools: Sequence[str]) -> str:
    lines = []
    head = f"{'operation':<25} {'tool':<19} {'median s':>9} {'min-max s':>13} {'peak MiB':>9} {'vs restic':>9} {'vs tar':>8}"
    lines.append(head)
    lines.append("-" * len(head))
    for op in OPS:
        for tool in tools:
            runs = results.runs.get(tool, {}).get(op)
            if not runs:
                continue
            walls = [r["wall"] for r in runs]
            med = results.median(tool, op)
            peak = results.peak(tool, op) or 0
            lines.append(
                f"{OP_LABELS[op]:<25} {tool:<19} {med:9.2f} {min(walls):6.2f}-{max(walls):<6.2f} "
                f"{peak / 1024:9.1f} {fmt_ratio(ratio(med, results.median('restic', op))):>9} "
                f"{fmt_ratio(ratio(med, results.median('tar', op))):>8}"
            )
        lines.append("")
    return "\n".join(lines)


def targets(results: Results, tool: str = "cellvault") -> list[dict[str, Any]]:
    """The issue's targets for *tool*, each met or missed (by how much)."""
    checks: list[dict[str, Any]] = []

    def against(op: str, other: str, limit: float) -> None:
        r = ratio(results.median(tool, op), results.median(other, op))
        checks.append(
            {
                "target": f"{OP_LABELS[op]} <= {limit}x {other}",
                "ratio": None if r is None else round(r, 3),
                "met": None if r is None else r <= limit,
                "missed_by": None if r is None or r <= limit else round(r / limit, 2),
            }
        )

    against("full", "restic", 0.5)
    against("full", "tar", 1.5)
    against("incr_nochange", "restic", 0.5)
    against("restore", "restic", 0.5)
    peaks = [p for op in OPS if (p := results.peak(tool, op)) is not None]
    peak = max(peaks) / 1024 if peaks else None
    checks.append(
        {
            "target": "peak memory < 200 MiB",
            "peak_mib": None if peak is None else round(peak, 1),
            "met": None if peak is None else peak < 200,
            "missed_by": None if peak is None or peak < 200 else round(peak / 200, 2),
        }
    )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark cellvault against tar+zstd, restic and borg, side by side."
    )
    parser.add_argument("--size", default="500M", help="corpus size (default 500M)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)"
    )
    parser.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"comma-separated, from {', '.join(ALL_TOOLS)} (default: {','.join(DEFAULT_TOOLS)})",
    )
    parser.add_argument("--seed", type=int, default=8, help="corpus seed (default 8)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of the work directory (default: the system temp dir)",
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="use this existing corpus (made by corpus.py) instead of generating one",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--warm", action="store_true", help="do not drop the page cache between runs"
    )
    parser.add_argument(
        "--split-cells",
        action="store_true",
        help="cellvault: one cell per top-level directory of the corpus (default: one cell)",
    )
    parser.add_argument(
        "--cellvault-src",
        type=Path,
        default=None,
        help="import cellvault from this directory (a copy of src/, e.g. from git archive) "
        "instead of the installed package, to measure a fixed revision",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also measure the cellvault in this directory (a copy of src/ of an earlier "
        "revision) as the tool cellvault-baseline, side by side with the current one",
    )
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, flush=True)

    global CELLVAULT_SRC
    CELLVAULT_SRC = args.cellvault_src.resolve() if args.cellvault_src else None
    compile_cellvault(CELLVAULT_SRC)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    if args.baseline_src is not None:
        CellvaultBaseline.src = args.baseline_src.resolve()
        compile_cellvault(CellvaultBaseline.src)  # timed beside it: alike, from bytecode
        if "cellvault-baseline" not in wanted:
            wanted.insert(
                wanted.index("cellvault") + 1 if "cellvault" in wanted else 0, "cellvault-baseline"
            )
    elif "cellvault-baseline" in wanted:
        parser.error("the tool cellvault-baseline needs --baseline-src")
    for t in wanted:
        if t not in TOOL_CLASSES:
            parser.error(f"unknown tool {t!r}; choose from {', '.join(ALL_TOOLS)}")
    size = corpus_mod.parse_size(args.size)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cellvault-bench-", dir=args.workdir))
    started = dt.datetime.now(dt.UTC)
    try:
        uptime_start = _first_line(["uptime"])
        log(f"work directory: {work}")
        log(f"load at start: {uptime_start}")
        if args.corpus is not None:
            corpus = args.corpus.resolve()
            corpus_info: dict[str, Any] = {"path": str(corpus), "reused": True}
        else:
            corpus = work / "corpus"
            t = time.perf_counter()
            corpus_info = corpus_mod.generate(corpus, size, args.seed)
            log(
                f"corpus: {corpus_info['files']} files, {corpus_info['bytes'] / 2**20:.0f} MiB in {time.perf_counter() - t:.1f}s"
            )
        files, total = tree_stats(corpus)
        corpus_info.update(files=files, bytes=total)

        tools: list[Tool] = []
        skipped: dict[str, str] = {}
        for name in wanted:
            tool = TOOL_CLASSES[name](corpus, work / "tools" / name, args.split_cells)
            why = tool.missing()
            if why:
                skipped[name] = why
                log(f"skipped {name}: {why}")
            else:
                tools.append(tool)
        versions = {t.name: t.version() for t in tools}
        for name, v in versions.items():
            log(f"{name}: {v}")

        cold = not args.warm and drop_caches()
        if not args.warm and not cold:
            log(
                "cannot drop the page cache here (not root, or a container): all runs are warm-cache"
            )
        cache = "cold (page cache dropped before each operation)" if cold else "warm"

        expected: dict[str, tuple[int, int]] = {}

        def expect() -> tuple[int, int]:
            # The corpus as it stands after the mutation (the same every time).
            if "mutated" not in expected:
                expected["mutated"] = tree_stats(corpus)
            return expected["mutated"]

        floor = run_steps([Step([["true"]])], _clean_env()).peak_kib
        log(f"memory: {memory_method()}; floor (true): {floor / 1024:.1f} MiB")
        startup = startup_costs() if any(t.name.startswith("cellvault") for t in tools) else {}
        for label, s in startup.items():
            if "wall" in s:
                log(
                    f"start-up: {label:<32} {s['wall'] * 1000:7.0f} ms  {s['peak_kib'] / 1024:6.1f} MiB"
                )

        results = Results()
        for rep in range(args.repeat):
            order = tools[rep % len(tools) :] + tools[: rep % len(tools)] if tools else []
            log(f"repetition {rep + 1}/{args.repeat}: {', '.join(t.name for t in order)}")
            for tool in order:
                try:
                    one_tool(tool, corpus, work, results, cold, args.seed, expect, log)
                except ToolFailed as exc:
                    msg = f"{tool.name} (repetition {rep + 1}): {exc}"
                    results.errors.append(msg)
                    log(f"  FAILED {msg}")
        uptime_end = _first_line(["uptime"])

        names = [t.name for t in tools]
        table = render_table(results, names)
        log("")
        log(
            f"corpus {corpus_info['bytes'] / 2**20:.0f} MiB, {corpus_info['files']} files; "
            f"{args.repeat} repetitions; medians; {cache} cache"
        )
        log(table)
        for label, s in startup.items():
            if "wall" in s:
                log(
                    f"start-up {label:<32} {s['wall'] * 1000:6.0f} ms  {s['peak_kib'] / 1024:6.1f} MiB"
                )
        for name in names:
            sizes = results.repo_bytes.get(name, {})
            if sizes.get("after_full"):
                log(
                    f"stored {name:<19} after full {statistics.median(sizes['after_full']) / 2**20:8.1f} MiB, "
                    f"after both incrementals {statistics.median(sizes.get('after_all', [0])) / 2**20:8.1f} MiB"
                )
        checks = []
        if "cellvault" in names:
            checks = targets(results)
            log("")
            log("targets (cellvault):")
            for c in checks:
                state = (
                    "n/a"
                    if c["met"] is None
                    else ("met" if c["met"] else f"MISSED by {c['missed_by']}x")
                )
                if "ratio" in c:
                    value = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
                else:
                    value = f"{c['peak_mib']} MiB"
                log(f"  {c['target']:<45} {value:>10}  {state}")
        log(f"load at end: {uptime_end}")
        for e in results.errors:
            log(f"error: {e}")
        if skipped:
            log("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))

        medians = {
            t: {op: {"wall": results.median(t, op), "peak_kib": results.peak(t, op)} for op in OPS}
            for t in names
        }
        doc = {
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:] if argv is None else argv,
            "size": size,
            "repeat": args.repeat,
            "seed": args.seed,
            "split_cells": args.split_cells,
            "cache": cache,
            "corpus": corpus_info,
            "machine": machine_info(work),
            "cellvault_revision": git_revision() if CELLVAULT_SRC is None else None,
            "cellvault_src": str(CELLVAULT_SRC) if CELLVAULT_SRC else None,
            "baseline_src": str(CellvaultBaseline.src) if CellvaultBaseline.src else None,
            "load": {"start": uptime_start, "end": uptime_end},
            "versions": versions,
            "skipped": skipped,
            "memory_method": memory_method(),
            "memory_floor_kib": floor,
            "startup": startup,
            "runs": results.runs,
            "medians": medians,
            "ratios": {
                t: {
                    op: {
                        "vs_restic": ratio(results.median(t, op), results.median("restic", op)),
                        "vs_tar": ratio(results.median(t, op), results.median("tar", op)),
                    }
                    for op in OPS
                }
                for t in names
            },
            "stored_bytes": results.repo_bytes,
            "targets": checks,
            "errors": results.errors,
            "table": table,
        }
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"results: {out}")
        return 1 if results.errors else 0
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
