"""Structured events, and the redaction that keeps secrets out of them.

The library logs through :func:`get_logger`: structlog bound loggers that hand
their events to the standard :mod:`logging` module (logger names under
``cellvault``). A host application keeps control: nothing is printed unless it
configures logging, and a structlog ``ProcessorFormatter`` renders the events
as structlog would. The command line configures this with
:func:`configure_logging`. Secrets are removed before an event leaves the
library, so no handler can print them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import IO, Any, Protocol

import structlog

__all__ = [
    "RunSink",
    "add_run_sink",
    "configure_logging",
    "get_logger",
    "redact",
    "redact_text",
    "remove_run_sink",
    "run_sink",
    "summarize_exc_info",
    "tee",
]

_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|credential|signature|api[_-]?key|access[_-]?key)", re.I
)
# The password runs to the last '@' before the host: an unencoded '@' in it is not a way out.
# The lookbehind starts a match only where a scheme can start: without it, a long
# run of letters (a big error text) is rescanned from every position.
_URL_USERINFO = re.compile(
    r"(?<![a-z0-9+.-])(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^/\s]+)@",
    re.I,
)
# Query parameters that carry a credential: signatures, tokens (DingTalk's
# access_token), keys (WeCom's webhook key), passwords.
_QUERY_SECRET = re.compile(
    r"(?P<k>[?&][a-z0-9_.-]*(?:signature|credential|token|secret|password|passwd|sign|key|keyid)=)"
    r"[^&#\s]+",
    re.I,
)
# NAME=value and libpq's keyword=value (``host=db password=...``), quoted values whole;
# a URL's query parameters are _QUERY_SECRET's.
_ENV_SECRET = re.compile(
    r"(?<![?&\w])(?P<k>[A-Z0-9_]*(?:SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY)[A-Z0-9_]*=)"
    r"(?:'[^']*'|\"[^\"]*\"|\S+)",
    re.I,
)
# age identities (AGE-SECRET-KEY-1..., case-insensitive as bech32 is) and private key blocks.
_KEY_MATERIAL = re.compile(
    r"AGE-SECRET-KEY-1[0-9A-Z]+|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    re.I | re.S,
)
MASK = "***"


def redact_text(text: str) -> str:
    """Mask credentials inside *text*: URL passwords, signed query strings, ``X_SECRET=...``, keys."""
    text = _KEY_MATERIAL.sub(MASK, text)
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)
    return _ENV_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)


def redact(value: Any, key: str = "") -> Any:
    """Return *value* with secrets masked, recursing into mappings and lists."""
    if key and _SECRET_KEY.search(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, BaseException):
        return redact_text(str(value))
    return value


def _redact_processor(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = redact(event_dict[key], key)
    return event_dict


# -- run logs ------------------------------------------------------------------
#
# A run's events also go to that run's own log file (cellvault.runlog.RunLog),
# whatever the host application configured. The run log registers itself here
# under the run's id; tee, a processor of every cellvault logger, copies each
# event whose ``run`` key names a registered run to it.


class RunSink(Protocol):
    """Where the events of one run are copied (a :class:`cellvault.runlog.RunLog`)."""

    def emit(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> None:
        """Write one event (already redacted)."""


_LEVELS = {"info", "warning", "error", "critical", "exception"}
_sinks: dict[str, RunSink] = {}
_sinks_lock = threading.Lock()


def add_run_sink(run: str, sink: RunSink) -> None:
    """Copy the events of the run *run* to *sink* from now on."""
    with _sinks_lock:
        _sinks[run] = sink


def remove_run_sink(run: str) -> None:
    """Stop copying the events of the run *run* (nothing if none are copied)."""
    with _sinks_lock:
        _sinks.pop(run, None)


def run_sink(run: str) -> RunSink | None:
    """The sink the events of the run *run* are copied to, if any."""
    with _sinks_lock:
        return _sinks.get(run)


def tee(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: copy an event of an open run to that run's log.

    Runs after redaction and before the level filter, so run logs hold the
    info events even when the host logs only warnings.
    """
    run = event_dict.get("run")
    if run and method_name in _LEVELS:
        with _sinks_lock:
            sink = _sinks.get(str(run))
        if sink is not None:
            # A run log must never break the run it logs.
            with contextlib.suppress(Exception):
                sink.emit(logger, method_name, event_dict)
    return event_dict


_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    _redact_processor,
    # Run logs get their run's events whatever level the host logs at, so
    # the level filter comes after them (and after redaction).
    tee,
    structlog.stdlib.filter_by_level,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger for module *name* whose events go to :mod:`logging`."""
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        logging.getLogger(name),
        processors=_PROCESSORS,
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def summarize_exc_info(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace a traceback by one line naming the exception (``error=...``)."""
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("stack_info", None)
    if not exc_info:
        return event_dict
    if isinstance(exc_info, BaseException):
        exc: BaseException | None = exc_info
    elif isinstance(exc_info, tuple):
        exc = exc_info[1]
    else:
        exc = sys.exc_info()[1]
    if exc is not None:
        event_dict.setdefault("error", redact_text(f"{type(exc).__name__}: {exc}"))
    return event_dict


def configure_logging(
    fmt: str = "console",
    level: int = logging.INFO,
    stream: IO[str] | None = None,
    *,
    tracebacks: bool = True,
) -> logging.Handler:
    """Send cellvault's events to *stream* (stderr), rendered for people or as JSON lines.

    For applications and the command line; the library never calls it itself.
    With *tracebacks* false, an event logged with an exception shows a
    one-line ``error`` instead of the traceback (the command line does this
    unless ``--debug``). Returns the handler so that a caller can remove it again.
    """
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info if tracebacks else summarize_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger("cellvault")
    root.addHandler(handler)
    root.setLevel(level)
    return handler
