"""Fixtures of the target tests."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from cellvault.log import configure_logging


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("json", logging.DEBUG, stream)
    try:
        yield stream
    finally:
        logging.getLogger("cellvault").removeHandler(handler)
