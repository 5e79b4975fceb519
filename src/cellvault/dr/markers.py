"""Where DR keeps its markers and site records: the object storage, and this site's state.

The failover marker is written to every object-storage target
(:data:`~cellvault.dr.records.MARKER_KEY`) and to this site's
``<backup_dir>/.cellvault/dr/failover.json`` (the marker as this site last
wrote or saw it); finished markers move to the history beside it. Each site
records what it holds under :data:`~cellvault.dr.records.SITES_FOLDER`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..errors import DrError, TargetError
from ..log import get_logger
from ..modes import private_dirs, private_opener
from ..targets.base import Target
from ..trust import MAX_RECORD_BYTES
from .records import HISTORY_FOLDER, MARKER_KEY, SITES_FOLDER, FailoverMarker, SiteRecord

__all__ = ["MarkerStore"]

log = get_logger(__name__)


def _write_local(path: Path, data: bytes) -> None:
    """Write *path* whole or not at all (a temporary file, synced, renamed)."""
    private_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb", opener=private_opener) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@attrs.frozen
class MarkerStore:
    """The failover marker and the site records of one site: on *storage* and in *state_dir*."""

    #: The object-storage targets, in order: for the marker, the first that answers
    #: decides; the site records of all that answer are merged (:meth:`records`).
    storage: Sequence[Target]
    #: This site's DR state folder (``<backup_dir>/.cellvault/dr``).
    state_dir: Path

    @property
    def local_path(self) -> Path:
        """``<backup_dir>/.cellvault/dr/failover.json``."""
        return self.state_dir / "failover.json"

    def local(self) -> FailoverMarker | None:
        """The marker as this site last wrote or saw it, or ``None``."""
        try:
            raw = self.local_path.read_bytes()
        except FileNotFoundError:
            return None
        return FailoverMarker.from_json(raw, where=f"failover marker {self.local_path}")

    def remote(self) -> tuple[FailoverMarker | None, str | None, list[str]]:
        """The marker on the object storage: (marker, target it was read from, errors).

        Every storage target is asked; the first that answers decides. When
        none answers, the errors say why.
        """
        errors: list[str] = []
        for target in self.storage:
            try:
                with target.guard("read the failover marker", missing_ok=True):
                    raw = target.retrying(target.read_bounded, MARKER_KEY, MAX_RECORD_BYTES)
            except FileNotFoundError:
                return None, target.name, errors
            except TargetError as exc:
                errors.append(str(exc))
                continue
            return (
                FailoverMarker.from_json(raw, where=f"failover marker on target {target.name}"),
                target.name,
                errors,
            )
        return None, None, errors

    def current(self) -> tuple[FailoverMarker | None, str | None]:
        """The marker in effect and where it was read (a target name or ``local``).

        The object storage decides when it can be read; this site's own copy
        only when it cannot (the object storage is down, or there is none).
        """
        remote, where, _ = self.remote()
        if where is not None:
            return remote, (where if remote else None)
        local = self.local()
        return local, ("local" if local else None)

    def publish(self, marker: FailoverMarker) -> tuple[list[str], list[str]]:
        """Write *marker* to every storage target and locally: (where written, errors)."""
        written, errors = [], []
        for target in self.storage:
            try:
                with target.guard("write the failover marker"):
                    target.retrying(target.put_bytes, MARKER_KEY, marker.to_json())
                written.append(target.name)
            except TargetError as exc:
                errors.append(str(exc))
        try:
            _write_local(self.local_path, marker.to_json())
            written.append("local")
        except OSError as exc:
            errors.append(f"cannot write {self.local_path} ({exc.strerror})")
        return written, errors

    def retire(self, marker: FailoverMarker, *, everywhere: bool) -> list[str]:
        """Move *marker* into the history (on the storage too if *everywhere*); return errors."""
        errors = []
        name = marker.history_name
        if everywhere:
            for target in self.storage:
                try:
                    with target.guard("clear the failover marker"):
                        target.retrying(
                            target.put_bytes, f"{HISTORY_FOLDER}/{name}", marker.to_json()
                        )
                        target.retrying(target.delete, MARKER_KEY)
                except TargetError as exc:
                    errors.append(str(exc))
        try:
            _write_local(self.state_dir / "history" / name, marker.to_json())
            with contextlib.suppress(FileNotFoundError):
                self.local_path.unlink()
        except OSError as exc:
            errors.append(f"cannot clear {self.local_path} ({exc.strerror})")
        return errors

    def reconcile(self) -> FailoverMarker | None:
        """Drop this site's copy of a marker the object storage no longer has; return it.

        A failback on the other site ended that failover; ``None`` when there
        was nothing to drop.
        """
        local = self.local()
        if local is None:
            return None
        remote, where, _ = self.remote()
        if where is None or remote is not None:
            return None
        self.retire(local, everywhere=False)
        return local

    def write_record(self, record: SiteRecord) -> list[str]:
        """Write a site's record to every storage target; return warnings (never raises)."""
        warnings = []
        for target in self.storage:
            try:
                with target.guard("write the site record"):
                    target.retrying(
                        target.put_bytes, f"{SITES_FOLDER}/{record.site_id}.json", record.to_json()
                    )
            except TargetError as exc:
                warnings.append(f"site record not written: {exc}")
        return warnings

    def records(self) -> list[SiteRecord]:
        """What every site recorded at its last DR step: each site's newest, over the storage.

        A site writes its record to every storage target, and one that was
        down then keeps the record before it: each readable target is read,
        and of a site's records the newest (by its time) is kept. A target
        that cannot be listed or read is passed over with a
        ``dr.records_unreadable`` warning; none readable gives ``[]``.
        """
        newest: dict[str, SiteRecord] = {}
        for target in self.storage:
            try:
                found = self._records_on(target)
            except TargetError as exc:
                log.warning("dr.records_unreadable", target=target.name, error=str(exc))
                continue
            for record in found:
                kept = newest.get(record.site_id)
                if kept is None or record.at > kept.at:
                    newest[record.site_id] = record
        return [newest[site] for site in sorted(newest)]

    def _records_on(self, target: Target) -> list[SiteRecord]:
        with target.guard("list site records"):
            entries = target.retrying(target.list, SITES_FOLDER)
        out = []
        for entry in entries:
            if entry.is_dir or not entry.name.endswith(".json"):
                continue
            key = f"{SITES_FOLDER}/{entry.name}"
            with target.guard("read a site record"):
                raw = target.retrying(target.read_bounded, key, MAX_RECORD_BYTES)
            try:
                out.append(SiteRecord.from_json(raw, name=entry.name))
            except DrError as exc:
                # Reported once per target, key and error; otherwise left alone.
                target.distrust(key, exc.message, "dr.record_unreadable")
        return sorted(out, key=lambda r: r.site_id)
