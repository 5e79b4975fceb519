"""A deterministic benchmark corpus, and a deterministic 1% change to it.

The same ``--seed`` and ``--size`` always give the same bytes, names and
modification times, to the nanosecond as real files have them (only inodes,
ctimes and the umask's file modes differ).
What is in it, as shares of the requested size:

==========================  =====  ==========================================
part                        share  what
==========================  =====  ==========================================
``app/``                    15 %   thousands of small text files (0.2-32 KiB,
                                   ~4 KiB average) in nested directories,
                                   some empty files, a few symbolic links
``media/*.bin``             20 %   medium binaries (256 KiB-4 MiB), compressible
``media/*.dat``             15 %   medium binaries, incompressible (random)
``db/dump.sql``             40 %   one large SQL-like dump, very compressible
``blobs/snapshot.img``      10 %   one large incompressible file
==========================  =====  ==========================================

:func:`mutate` changes 1% of the small and medium files (text files get a
line appended, binaries get 4 KiB overwritten in place, so their size stays
the same) and gives each a new modification time; the two large files are left
alone. :func:`undo` puts the corpus back as it was (bytes and mtimes).

Command line::

    python benchmarks/corpus.py generate DIR --size 500M [--seed 8]
    python benchmarks/corpus.py mutate DIR --record changes.json [--fraction 0.01]
    python benchmarks/corpus.py undo DIR --record changes.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["Mutation", "generate", "mutate", "parse_size", "undo"]

#: 2024-01-01T00:00:00Z: corpus files are dated in the half year after it.
BASE_MTIME = 1_704_067_200
#: Directories and the large files: a time with nanoseconds, as file systems keep them.
BASE_NS = BASE_MTIME * 10**9 + 123_456_789
#: 2025-01-01T00:00:00Z: the new modification time of mutated files (plus their index).
MUTATION_MTIME = 1_735_689_600
SHARES = {"app": 0.15, "bin": 0.20, "dat": 0.15, "dump": 0.40, "blob": 0.10}
FILES_PER_DIR = 40
FANOUT = 8

_WORD_TEXT = (
    "the of and to in is was for that with as on by at from this are be or it an were which "
    "have not has had but all their one been more also its other new can first two after when "
    "there time into only some would year may could these than over such most used made like "
    "between through where during many however both each state under while well since later "
    "system number known city part because world until including people then around being "
    "customer order invoice billing account payment service region tenant cell backup restore "
    "status pending shipped refunded error warning info debug request response latency queue "
    "worker cluster node replica primary standby volume snapshot archive manifest config"
)
_WORDS = _WORD_TEXT.split()
_STATUSES = ("pending", "paid", "shipped", "delivered", "refunded", "cancelled")
_CITIES = ("Beijing", "Shanghai", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan", "Xian", "Nanjing")


def parse_size(text: str) -> int:
    """``500M``, ``1G``, ``100MB``, ``2.5GiB`` or a number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 500M, 1G)")
    unit = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * unit)


def _rng(seed: int, part: str) -> random.Random:
    return random.Random(f"cellvault-bench:{seed}:{part}")


def _write(path: Path, data: bytes, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _mtime_ns(rng: random.Random) -> int:
    """A time in the half year after BASE_MTIME, to the nanosecond (as real files have)."""
    return (BASE_MTIME + rng.randrange(180 * 86400)) * 10**9 + rng.randrange(10**9)


def _text(rng: random.Random, size: int) -> bytes:
    out: list[str] = []
    n = 0
    while n < size:
        line = " ".join(rng.choices(_WORDS, k=rng.randint(4, 16)))
        if rng.random() < 0.2:
            line = f"{rng.randint(0, 99999):05d} {line} = {rng.random():.6f}"
        out.append(line)
        n += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:size]


def _small_files(root: Path, rng: random.Random, budget: int) -> tuple[int, int]:
    """Small text files in nested directories; returns (files, bytes)."""
    sizes = (256, 512, 1024, 2048, 3072, 4096, 6144, 8192, 12288, 32768)
    weights = (6, 8, 12, 14, 14, 14, 12, 10, 6, 4)
    written = files = 0
    i = 0
    while written < budget:
        leaf = i // FILES_PER_DIR
        parts = []
        for _ in range(3):
            parts.append(f"{'abc'[len(parts)]}{leaf % FANOUT}")
            leaf //= FANOUT
        if leaf:
            parts.insert(0, f"z{leaf}")
        folder = root / "app" / Path(*parts)
        mtime = _mtime_ns(rng)
        if i % 997 == 5:
            size = 0  # a few empty files
        else:
            size = min(rng.choices(sizes, weights)[0] + rng.randrange(256), budget - written)
        suffix = rng.choice((".txt", ".log", ".json", ".cfg", ".md"))
        _write(folder / f"f{i:06d}{suffix}", _text(rng, size), mtime)
        if i % 1000 == 7:
            # A relative link to a sibling, inside the tree.
            link = folder / f"link{i:06d}"
            os.symlink(f"f{i:06d}{suffix}", link)
            os.utime(link, ns=(mtime, mtime), follow_symlinks=False)
        written += size
        files += 1
        i += 1
    return files, written


def _medium_files(
    root: Path, rng: random.Random, budget: int, compressible: bool
) -> tuple[int, int]:
    # Compressible binaries: blocks of a small pool (4-bit alphabet) with random bytes sprinkled in.
    pool = [bytes(rng.choices(range(16), k=4096)) for _ in range(64)] if compressible else []
    written = files = 0
    i = 0
    while written < budget:
        size = min(rng.randrange(256 << 10, 4 << 20), budget - written)
        if compressible:
            blocks = []
            for _ in range((size + 4095) // 4096):
                blocks.append(rng.choice(pool) if rng.random() < 0.85 else rng.randbytes(4096))
            data = b"".join(blocks)[:size]
            name = f"media/m{i:04d}.bin"
        else:
            data = rng.randbytes(size)
            name = f"media/r{i:04d}.dat"
        _write(root / name, data, _mtime_ns(rng))
        written += size
        files += 1
        i += 1
    return files, written


def _dump(path: Path, rng: random.Random, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    row = 0
    with open(path, "wb") as f:
        header = b"-- cellvault benchmark dump\nBEGIN;\nCREATE TABLE orders (id bigint primary key, customer_id int, amount numeric(12,2), status text, city text, created_at timestamp, note text);\n"
        f.write(header)
        written += len(header)
        while written < size:
            lines = []
            for _ in range(2000):
                row += 1
                day = rng.randrange(365)
                lines.append(
                    f"INSERT INTO orders VALUES ({row}, {rng.randrange(1, 200000)}, "  # noqa: S608 - text for a file
                    f"{rng.randrange(100, 10_000_000) / 100:.2f}, '{rng.choice(_STATUSES)}', "
                    f"'{rng.choice(_CITIES)}', '2024-{1 + day // 31 % 12:02d}-{1 + day % 28:02d} "
                    f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}', "
                    f"'{' '.join(rng.choices(_WORDS, k=rng.randint(2, 8)))}');\n"
                )
            chunk = "".join(lines).encode()[: size - written]
            f.write(chunk)
            written += len(chunk)
    os.utime(path, ns=(BASE_NS, BASE_NS))


def _blob(path: Path, rng: random.Random, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 8 << 20)
            f.write(rng.randbytes(n))
            left -= n
    os.utime(path, ns=(BASE_NS, BASE_NS))


def generate(
    root: str | os.PathLike[str], size: int | str = "500M", seed: int = 8
) -> dict[str, Any]:
    """Write the corpus of *size* bytes into *root* (which must not exist or be empty)."""
    total = parse_size(size) if isinstance(size, str) else int(size)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    budget = {k: int(total * v) for k, v in SHARES.items()}
    small_files, small_bytes = _small_files(root, _rng(seed, "app"), budget["app"])
    bin_files, bin_bytes = _medium_files(root, _rng(seed, "bin"), budget["bin"], True)
    dat_files, dat_bytes = _medium_files(root, _rng(seed, "dat"), budget["dat"], False)
    _dump(root / "db" / "dump.sql", _rng(seed, "dump"), budget["dump"])
    _blob(root / "blobs" / "snapshot.img", _rng(seed, "blob"), budget["blob"])
    # Directory times last (writing into a directory changes its mtime), deepest first.
    dirs = sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True)
    for d in [*dirs, root]:
        os.utime(d, ns=(BASE_NS, BASE_NS))
    info = {
        "seed": seed,
        "size": total,
        "files": small_files + bin_files + dat_files + 2,
        "dirs": len(dirs) + 1,
        "bytes": small_bytes + bin_bytes + dat_bytes + budget["dump"] + budget["blob"],
        "small_files": small_files,
        "medium_files": bin_files + dat_files,
    }
    return info


class Mutation:
    """What :func:`mutate` changed, so that :func:`undo` can put it back."""

    def __init__(self, root: Path, changes: list[dict[str, Any]]) -> None:
        self.root = root
        self.changes = changes

    def __len__(self) -> int:
        return len(self.changes)

    def to_json(self) -> str:
        return json.dumps({"root": str(self.root), "changes": self.changes})

    @classmethod
    def from_json(cls, text: str) -> Mutation:
        data = json.loads(text)
        return cls(Path(data["root"]), data["changes"])


def _candidates(root: Path) -> list[str]:
    out = []
    for sub in ("app", "media"):
        for dirpath, dirnames, filenames in os.walk(root / sub):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    out.append(os.path.relpath(path, root))
    return sorted(out)


def mutate(root: str | os.PathLike[str], fraction: float = 0.01, seed: int = 8) -> Mutation:
    """Change *fraction* of the small and medium files of the corpus, deterministically."""
    root = Path(root)
    rng = _rng(seed, "mutate")
    files = _candidates(root)
    chosen = sorted(rng.sample(files, max(1, round(len(files) * fraction))))
    changes = []
    for i, rel in enumerate(chosen):
        path = root / rel
        st = os.stat(path)
        change: dict[str, Any] = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if rel.startswith("app/") or st.st_size < 8192:
            with open(path, "ab") as f:
                f.write(f"changed {i}: {rng.getrandbits(64):016x}\n".encode())
        else:
            offset = rng.randrange(0, st.st_size - 4096)
            with open(path, "r+b") as f:
                f.seek(offset)
                change["offset"] = offset
                change["old"] = f.read(4096).hex()
                f.seek(offset)
                f.write(rng.randbytes(4096))
        mtime = (MUTATION_MTIME + i) * 10**9 + 500_000_000
        os.utime(path, ns=(mtime, mtime))
        changes.append(change)
    return Mutation(root, changes)


def undo(mutation: Mutation) -> None:
    """Put back the bytes and times that *mutation* changed."""
    for change in mutation.changes:
        path = mutation.root / change["path"]
        with open(path, "r+b") as f:
            if "offset" in change:
                f.seek(change["offset"])
                f.write(bytes.fromhex(change["old"]))
            else:
                f.truncate(change["size"])
        os.utime(path, ns=(change["mtime_ns"], change["mtime_ns"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a corpus into DIR")
    gen.add_argument("dir", type=Path)
    gen.add_argument(
        "--size", default="500M", help="total size, e.g. 100M, 500M, 1G (default 500M)"
    )
    gen.add_argument("--seed", type=int, default=8)
    mut = sub.add_parser("mutate", help="change 1%% of the files of the corpus in DIR")
    mut.add_argument("dir", type=Path)
    mut.add_argument("--fraction", type=float, default=0.01)
    mut.add_argument("--seed", type=int, default=8)
    mut.add_argument("--record", type=Path, required=True, help="where to write what changed")
    und = sub.add_parser("undo", help="revert a mutation recorded with mutate --record")
    und.add_argument("dir", type=Path)
    und.add_argument("--record", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "generate":
        info = generate(args.dir, args.size, args.seed)
        print(json.dumps(info))
    elif args.command == "mutate":
        m = mutate(args.dir, args.fraction, args.seed)
        args.record.write_text(m.to_json())
        print(f"changed {len(m)} files; record in {args.record}")
    else:
        m = Mutation.from_json(args.record.read_text())
        m.root = args.dir
        undo(m)
        print(f"reverted {len(m)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
