"""Profile cellvault's command line on a benchmark corpus, with cProfile.

cProfile only sees the thread that starts it, and the vault packs cells and
stores archives on worker threads; so the vault's thread pools are replaced by
an inline executor here (zstd's own compression threads are C threads and
keep running). Each operation runs in this process through the real command
line entry point, ``cellvault.cli.main``, with the seed's environment
variables, and its profile is written to ``<out>/<op>.prof`` with a summary
(top functions by own time and by cumulative time) in ``<out>/<op>.txt``.

    python benchmarks/profile_cli.py --size 200M --out /tmp/cv-prof
    python -m pstats /tmp/cv-prof/full.prof

Operations: ``full`` (backup), ``incr`` (incremental, nothing changed),
``restore`` (latest, into an empty directory), ``verify`` (all archives).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus as corpus_mod  # noqa: E402 - the sibling module, found through HERE


class InlineExecutor:
    """A stand-in for ThreadPoolExecutor that runs everything in the calling thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        return iter([fn(*args) for args in zip(*iterables, strict=False)])

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        pass


def run_cli(args: list[str]) -> int:
    from cellvault.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def profile(op: str, args: list[str], out: Path, top: int) -> float:
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    code = run_cli(args)
    prof.disable()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"cellvault {' '.join(args)} exited {code}")
    prof.dump_stats(out / f"{op}.prof")
    text = io.StringIO()
    text.write(f"cellvault {' '.join(args)}: {wall:.2f} s under cProfile\n\n")
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    (out / f"{op}.txt").write_text(text.getvalue())
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Profile cellvault's command line.")
    parser.add_argument("--corpus", type=Path, help="an existing corpus (default: generate one)")
    parser.add_argument("--size", default="200M", help="size of a generated corpus (default 200M)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "cv-prof")
    parser.add_argument("--ops", default="full,incr,restore,verify")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--no-verify-after-backup", action="store_true", help="set BACKUP_VERIFY=0")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus
    if corpus is None:
        corpus = args.out / "corpus"
        if not corpus.exists():
            corpus_mod.generate(corpus, args.size)
    repo = args.out / "repo"
    dest = args.out / "restored"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    for key in [k for k in os.environ if k.startswith(("BACKUP_", "RESTORE_"))]:
        del os.environ[key]
    os.environ.update(
        BACKUP_DIR=str(repo), BACKUP_CELLS="bench", BACKUP_CELL_BENCH_PATHS=str(corpus.resolve())
    )
    if args.no_verify_after_backup:
        os.environ["BACKUP_VERIFY"] = "0"

    import cellvault.vault

    cellvault.vault.ThreadPoolExecutor = InlineExecutor  # type: ignore[misc,assignment]

    commands = {
        "full": ["backup", "--type", "full"],
        "incr": ["backup", "--type", "incremental"],
        "restore": ["restore", "--into", str(dest)],
        "verify": ["verify", "--all"],
    }
    wanted = [op.strip() for op in args.ops.split(",") if op.strip()]
    if "full" not in wanted:
        run_cli(commands["full"])  # the other operations need an archive
    for op in ("full", "incr", "restore", "verify"):
        if op not in wanted:
            continue
        time.sleep(1.05)  # archive ids have whole seconds
        wall = profile(op, commands[op], args.out, args.top)
        print(f"{op:<8} {wall:6.2f} s  -> {args.out / (op + '.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
