"""The cellvault that benchmarks time: its bytecode compiled, as an installed copy has it.

``pip install`` compiles a package's modules to bytecode (``__pycache__``)
when it installs them; an editable checkout has none until Python writes it
on first import, and never where ``PYTHONDONTWRITEBYTECODE`` is set (it is
on some machines of this project). Each timed ``python -m cellvault`` then
compiled cellvault's 134 modules again before doing anything: 0.45 s of a
run on a slow day, a cost no operator's installed copy pays. The benchmarks
that time the command line call :func:`compile_cellvault` first.
"""

from __future__ import annotations

import compileall
import sys
from pathlib import Path


def compile_cellvault(src: Path | None = None) -> Path:
    """Compile cellvault's modules to bytecode (idempotent); the package's folder.

    *src*: the ``src`` folder of the checkout timed (``None``: the cellvault
    this Python imports).
    """
    if src is None:
        import cellvault

        folder = Path(cellvault.__file__).resolve().parent
    else:
        folder = src / "cellvault"
    if not compileall.compile_dir(folder, quiet=1):
        raise SystemExit(f"could not compile {folder} to bytecode")
    print(f"cellvault's bytecode compiled in {folder} (as pip install does)", file=sys.stderr)
    return folder
