"""Disaster recovery (see :mod:`cellvault.dr.site`)."""

from __future__ import annotations

from .site import *  # noqa: F403
from .site import MARKER_KEY, __all__  # noqa: F401
