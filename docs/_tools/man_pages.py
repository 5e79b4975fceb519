"""Write the man pages of the ``cellvault`` command, one per command, from its click commands.

``nox -s docs`` runs it after the HTML build: ``python docs/_tools/man_pages.py build/man``
writes ``cellvault.1``, ``cellvault-backup.1``, ``cellvault-dr-failover.1``, ...
Read one with ``man -l build/man/cellvault.1``; install them by copying to a
``man1`` folder of ``manpath``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from click_man.core import write_man_pages

from cellvault import __version__
from cellvault.cli import cli


def main(target: str) -> None:
    """Write the man pages into the folder *target*."""
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    write_man_pages("cellvault", cli, version=__version__, target_dir=str(folder))
    pages = sorted(p.name for p in folder.glob("*.1"))
    print(f"man pages in {folder}: {', '.join(pages)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/man")
