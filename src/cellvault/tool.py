"""Running a tool (``pg_dump``, ``redis-cli``, a hook script): never through a shell.

:func:`run_tool` streams the tool's stdin and stdout, keeps its stderr in a
temporary file, kills it and everything it started after a timeout, and
turns a failure into a :class:`~cellvault.CellvaultError` that quotes the
end of its stderr with secrets masked. Dumpers (through their contexts)
and hook scripts use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import attrs

from .errors import BackupError, DumpError, RestoreError
from .log import redact_text

__all__ = ["DEFAULT_TIMEOUT", "StdinSource", "ToolResult", "run_tool"]

#: Default seconds a tool may take before it is stopped (a dump, a load).
DEFAULT_TIMEOUT = 3600.0
#: Bytes copied at a time between a tool's pipes and files.
BLOCK = 1 << 20
# How much of a failing tool's stderr an error message quotes.
_STDERR_TAIL = 1500

#: What a tool's stdin can be fed from: bytes, a reader, an iterable of blocks, a file.
StdinSource = bytes | IO[bytes] | Iterable[bytes] | Path | None
ToolError = type[BackupError] | type[RestoreError]


@attrs.frozen
class ToolResult:
    """A finished tool: its exit code and what it printed (stdout only when captured)."""

    returncode: int
    stdout: bytes
    stderr: str


def _mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return redact_text(text)


def _tail(raw: bytes, secrets: Iterable[str]) -> str:
    text = raw[-8 * _STDERR_TAIL :].decode("utf-8", "replace")
    text = _mask(text, secrets).strip()
    return text[-_STDERR_TAIL:]


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    error: ToolError = DumpError,
    env: Mapping[str, str] | None = None,
    stdin: StdinSource = None,
    stdout: IO[bytes] | Literal["capture", "discard"] = "capture",
    timeout: float | None = DEFAULT_TIMEOUT,
    secrets: Iterable[str] = (),
    cwd: Path | None = None,
    check: bool = True,
    hint: str | None = None,
) -> ToolResult:
    """Run *argv* (never through a shell), streaming its stdin and stdout.

    *stdin* is fed from bytes, a file, a reader or an iterable of blocks, by
    a thread; *stdout* goes to a writer as it comes, or is captured (and
    returned), or discarded. stderr is kept in a temporary file and its tail,
    with *secrets* and anything credential-like masked, goes into the error.
    After *timeout* seconds the tool and everything it started (its process
    group) are killed. A non-zero exit raises *error* (unless not *check*);
    *what* names the tool for messages ("cell crm, dumper pg: pg_dump").
    """
    secrets = [s for s in secrets if s]
    with contextlib.ExitStack() as stack:
        err_file = stack.enter_context(tempfile.TemporaryFile())
        out_file: IO[bytes] | None = None
        out_arg: Any = subprocess.PIPE
        if stdout == "capture":
            out_file = out_arg = stack.enter_context(tempfile.TemporaryFile())
        elif stdout == "discard":
            out_arg = subprocess.DEVNULL
        in_arg = _stdin_arg(stack, stdin)
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=in_arg,
                stdout=out_arg,
                stderr=err_file,
                env=dict(os.environ if env is None else env),
                cwd=cwd,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except FileNotFoundError:
            raise error(
                f"{what}: the program {argv[0]!r} is not installed or not on PATH",
                hint=hint or "install it on this host (see docs/dumpers.md)",
            ) from None
        except OSError as exc:
            raise error(f"{what}: cannot start {argv[0]!r}: {exc.strerror}") from None
        watch = _Watch(proc, timeout)
        watch.run(stdin, None if isinstance(stdout, str) else stdout)
        stderr = _tail(_read_all(err_file), secrets)
        captured = b"" if out_file is None else _read_all(out_file)
    _raise_failure(watch, what=what, error=error, secrets=secrets, stderr=stderr, hint=hint)
    if check and proc.returncode != 0:
        code = (
            f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        )
        raise error(
            f"{what}: failed with {code}" + (f": {stderr}" if stderr else " and said nothing"),
            hint=hint,
        )
    return ToolResult(proc.returncode, captured, stderr)


def _stdin_arg(stack: contextlib.ExitStack, stdin: StdinSource) -> Any:
    """What Popen's stdin is: the file itself, nothing, or a pipe a thread feeds."""
    if isinstance(stdin, Path):
        return stack.enter_context(open(stdin, "rb"))
    if stdin is None:
        return subprocess.DEVNULL
    return subprocess.PIPE


def _read_all(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()


class _Watch:
    """A started tool's supervision: its timeout, its stdin feeder, its stdout copy."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float | None) -> None:
        self.proc = proc
        self.timeout = timeout
        self.timed_out = threading.Event()
        #: What feeding the tool's stdin raised (raised again by run_tool).
        self.feed_error: list[BaseException] = []

    def _kill(self) -> None:
        self.timed_out.set()
        _kill_group(self.proc)

    def run(self, stdin: StdinSource, stdout: IO[bytes] | None) -> None:
        """Feed, copy and wait for the tool; kill it on a timeout or an interruption."""
        proc = self.proc
        timer = threading.Timer(self.timeout, self._kill) if self.timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        feeder: threading.Thread | None = None
        if proc.stdin is not None:
            feeder = threading.Thread(
                target=_feed, args=(proc, stdin, self.feed_error), name="tool-stdin", daemon=True
            )
            feeder.start()
        try:
            if proc.stdout is not None:
                assert stdout is not None
                for block in iter(lambda: proc.stdout.read(BLOCK), b""):  # type: ignore[union-attr]
                    stdout.write(block)
                proc.stdout.close()
            proc.wait()
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if feeder is not None:
                feeder.join()


def _raise_failure(
    watch: _Watch,
    *,
    what: str,
    error: ToolError,
    secrets: Iterable[str],
    stderr: str,
    hint: str | None,
) -> None:
    """Raise what went wrong around the tool: its input failed, or it timed out."""
    if watch.feed_error:
        failure = watch.feed_error[0]
        if isinstance(failure, BackupError | RestoreError):
            raise failure
        raise error(f"{what}: feeding its input failed: {_mask(str(failure), secrets)}") from None
    if watch.timed_out.is_set():
        assert watch.timeout is not None
        raise error(
            f"{what}: timed out after {watch.timeout:g} s and was stopped"
            + (f"; it said: {stderr}" if stderr else ""),
            hint=hint or "raise the dumper's timeout, or find out why it is slow",
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill *proc* and every process of its group (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _feed(proc: subprocess.Popen[bytes], source: StdinSource, errors: list[BaseException]) -> None:
    assert proc.stdin is not None
    sink = proc.stdin
    try:
        if isinstance(source, bytes | bytearray):
            sink.write(source)
        elif hasattr(source, "read"):
            reader: IO[bytes] = source  # type: ignore[assignment]
            for block in iter(lambda: reader.read(BLOCK), b""):
                sink.write(block)
        else:
            assert source is not None and not isinstance(source, Path)
            for block in source:
                sink.write(block)
    except BrokenPipeError:
        pass  # the tool exited early; its exit code tells why
    except BaseException as exc:  # noqa: BLE001 - handed to run_tool, which raises it
        errors.append(exc)
        _kill_group(proc)
    finally:
        with contextlib.suppress(OSError):
            sink.close()
