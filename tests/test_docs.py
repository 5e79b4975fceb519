"""Docs that cannot rot: pages run as written, variables match the code, pages parse.

* docs/quickstart.md runs as written: its ``console`` blocks in one shell (as
  tests/test_docs_runbook.py runs the runbook's), then its ``python`` blocks in
  one namespace, each one's printed lines checked against the ``text`` block
  that follows it. A block after ``<!-- docs-test: skip -->`` is not run.
* Every variable of :data:`cellvault.config.KNOWN_ENV` is documented in
  docs/configuration.md, and every variable documented there is known.
* No page has a fenced code block inside an inline-code span or a heading
  (how docs/plugins.md was once corrupted, with ``mkdocs build --strict``
  passing all the same).
* The README's commands are the ones CI runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from pathlib import Path

import pytest

from cellvault.config import KNOWN_ENV, unknown_env
from cellvault.demo import make_sample_cells
from tests.helpers import make_vault
from tests.test_docs_runbook import SKIP_MARKS, Command, match, parse, run_console

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), REPO / "README.md", REPO / "examples" / "README.md"]
QUICKSTART = DOCS / "quickstart.md"
#: The quickstart's absolute paths, moved under the test's folder.
QUICKSTART_PREFIXES = ("/tmp/paas", "/tmp/cellvault-demo")
#: What the quickstart's first command installs is already installed here.
INSTALL = "python3 -m pip install . && "


# -- the quickstart runs as written ---------------------------------------------------------


def python_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """Each ``python`` block not marked to skip: (line, code, the next ``text`` block's lines)."""
    lines = text.splitlines()
    out: list[tuple[int, str, list[str]]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        skip = i > 0 and lines[i - 1].strip() in SKIP_MARKS
        start = i + 1
        end = lines.index("```", start)
        code = "\n".join(lines[start:end])
        expected: list[str] = []
        j = end + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if j < len(lines) and lines[j].strip() == "```text":
            expected = lines[j + 1 : lines.index("```", j + 1)]
        if not skip:
            out.append((start, code, expected))
        i = end + 1
    return out


def _bytes(line: str) -> str:
    # Compressed sizes vary with the zstd library; the documented ones are examples.
    return re.sub(r"\b\d+ bytes\b", "N bytes", line)


def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    text = QUICKSTART.read_text()
    root = tmp_path / "root"
    cwd = root / "tmp"  # "here run from /tmp"
    cwd.mkdir(parents=True)
    # The quickstart's two cells are the demo's sample cells, written a while ago: a
    # file changed in the second a backup scans it is read again by the next
    # incremental (git's "racy" case), which is not what the page shows.
    cells = root / "tmp" / "paas" / "cells"
    make_sample_cells(cells)
    an_hour_ago = time.time() - 3600
    for path in [cells, *cells.rglob("*")]:
        os.utime(path, (an_hour_ago, an_hour_ago), follow_symlinks=False)
    commands = parse(text)
    assert commands[0].text.startswith(INSTALL), "the quickstart no longer starts with the install"
    commands[0].text = commands[0].text.removeprefix(INSTALL)
    assert len(commands) >= 15, "the quickstart lost its commands"
    stamps = run_console(commands, tmp_path, root, cwd, QUICKSTART_PREFIXES, record=False)

    blocks = python_blocks(text)
    assert len(blocks) >= 2, "the quickstart lost its Python"
    namespace: dict[str, object] = {"__name__": "__quickstart__"}
    for line, code, expected in blocks:
        for prefix in QUICKSTART_PREFIXES:
            code = code.replace(prefix, f"{root}{prefix}")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{QUICKSTART.name}:{line}", "exec"), namespace)  # noqa: S102 - the page's own code
        printed = [_bytes(x.replace(str(root), "")) for x in out.getvalue().splitlines()]
        command = Command(f"python block at line {line}", [_bytes(x) for x in expected], line)
        problem = match(command, printed, stamps)
        assert problem is None, problem


def test_a_skip_mark_keeps_a_block_from_running() -> None:
    page = (
        "```python\nprint(1)\n```\n\n<!-- docs-test: skip -->\n```python\nraise SystemExit\n```\n"
    )
    assert [code for _, code, _ in python_blocks(page)] == ["print(1)"]
    assert parse("<!-- docs-test: skip -->\n```console\n$ false\n```\n") == []


# -- configuration.md and KNOWN_ENV -----------------------------------------------------------


def documented_variables() -> set[str]:
    """The variables named in the first column of the tables of configuration.md's
    "Environment variables" section."""
    text = (DOCS / "configuration.md").read_text()
    section = text[text.index("## Environment variables") :]
    section = section[: section.index("\n## ", 1)]
    names: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.M):
        names.update(re.findall(r"`([A-Z][A-Z0-9_<>]*)`", row))
    return names


def _family_example(name: str) -> str:
    return re.sub(r"<[A-Z]+>", "X", name)


def test_every_known_variable_is_documented() -> None:
    documented = documented_variables()
    missing = sorted(set(KNOWN_ENV) - documented)
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_every_documented_variable_is_known() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "src" / "cellvault").rglob("*.py"))
    unknown = []
    for name in sorted(documented_variables()):
        if name.startswith(("BACKUP_", "RESTORE_", "DR_")):
            if "<" in name:
                known = not unknown_env({_family_example(name): ""})
            else:
                known = name in KNOWN_ENV
        else:
            # Another tool's variable that cellvault reads (AWS_*, OSS_*, CELLVAULT_*).
            known = f'"{name}"' in source
        if not known:
            unknown.append(name)
    assert not unknown, f"documented but not read by cellvault: {unknown}"


# -- fenced code blocks only where they belong --------------------------------------------------


def misplaced_fences(text: str) -> list[str]:
    """Problems of *text*: a fence or code block inside an inline-code span or a heading."""
    problems: list[str] = []
    paragraph: list[tuple[int, str]] = []

    def check_paragraph() -> None:
        if not paragraph:
            return
        body = "\n".join(line for _, line in paragraph)
        first = paragraph[0][0]
        for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", body, re.S):
            if re.search(r"^\s*```", m[2], re.M) or "\n\n" in m[2]:
                problems.append(f"line {first}: a code block inside an inline-code span")
        rest = re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", "", body, flags=re.S)
        if "`" in rest:
            problems.append(
                f"line {first}: an inline-code span that never closes "
                "(a code block pasted into it?)"
            )
        paragraph.clear()

    fence: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is not None:
            if stripped == fence:
                fence = None
            continue
        opener = re.match(r"(`{3,}|~{3,})", stripped)
        if opener:
            check_paragraph()
            fence = opener[1]
            continue
        if line.startswith("#"):
            check_paragraph()
            if "```" in line or line.count("`") % 2:
                problems.append(f"line {n}: a code fence or an open code span in a heading")
            continue
        if not stripped or stripped.startswith(("|", "<!--")):
            check_paragraph()
            continue
        paragraph.append((n, line))
    check_paragraph()
    if fence is not None:
        problems.append(f"a code block ({fence}) that never closes")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_block_inside_inline_code_or_a_heading(page: Path) -> None:
    assert misplaced_fences(page.read_text()) == []


def test_the_check_finds_the_old_corruption_of_the_plugin_guide() -> None:
    module = '"""A plugin."""\n\nimport os\n\n\nclass X:\n    pass\n'
    corrupted = (
        f"**`CELLVAULT_LOAD_{module}S`** chooses which entry points load "
        f"(`CELLVAULT_LOAD_{module}S=simpledir`).\n"
    )
    assert misplaced_fences(corrupted)
    assert misplaced_fences("## The `x\n```python\nx\n```\n")
    assert misplaced_fences("a span `with\n```\ncode\n```\n` inside\n")
    assert misplaced_fences("fine `code` and ``a ` tick``, over\n`two lines`.\n") == []


# -- the README's commands are CI's -------------------------------------------------------------


def test_ci_runs_the_readme_test_command_as_written() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    test_line = next(b.strip() for b in blocks if "nox -s tests" in b)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_line in ci.splitlines()
    # Beyond the services it starts, .ci/run installs nothing itself.
    assert "apt-get" not in ci
    # ...and it runs the suite as CI, where nothing may skip (tests/test_skip_policy.py).
    lines = ci.splitlines()
    assert lines.index("export CI=true") < lines.index(test_line)


def test_the_quickstart_says_what_the_code_does_about_latest() -> None:
    text = QUICKSTART.read_text()
    assert "would pick it" not in text
    assert "skip safety backups" in text


def test_the_api_reference_s_python_runs(tmp_path: Path) -> None:
    """The reference's snippets run as written (``vault`` is a vault of the demo's cells)."""
    page = DOCS / "api.md"
    blocks = python_blocks(page.read_text())
    assert len(blocks) >= 4, "the API reference lost its Python"
    make_sample_cells(tmp_path / "cells")
    vault = make_vault(
        tmp_path / "backup",
        {name: [tmp_path / "cells" / name] for name in ("crm", "billing")},
        extra={"BACKUP_ALERT_LOG": "off"},
    )
    namespace: dict[str, object] = {"__name__": "__api__", "vault": vault}
    for line, code, _ in blocks:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102 - the page's own code
