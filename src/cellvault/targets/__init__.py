"""Storage targets: where archives are kept.

:class:`Target` is the interface; :class:`LocalTarget` keeps archives in a
directory (or a mounted NAS); :class:`FsspecTarget` serves any fsspec URL.
Target types are plugins: :func:`cellvault.hookspecs.cellvault_make_target`.
"""

from __future__ import annotations

from ..specs import TargetSpec
from .base import ObjectInfo, ObjectStat, Target
from .fsspec import FsspecTarget
from .local import LocalTarget

__all__ = ["FsspecTarget", "LocalTarget", "ObjectInfo", "ObjectStat", "Target", "TargetSpec"]
