"""Signed sidecars: the site's Ed25519 key commits each archive, its public keys check it.

A sidecar's sha256 proves that an archive's data are the bytes that were
written, against accidents. Against someone who can write to a target, who
could replace an archive and its sidecar together, the sidecar is signed: at
backup time, every field of it but the signature itself, as canonical JSON
(:meth:`cellvault.archive.Sidecar.canonical`), is signed with the site's
Ed25519 private key (``BACKUP_SIGNING_KEY``). The signature is a field of the
sidecar (see ``docs/format.md``)::

    "signature": {"alg": "ed25519", "key": "<key id>", "sig": "<base64>"}

Through the sidecar it covers the data's sha256 and size, the manifest copy's
sha256, the chain and everything a later version adds.

Whoever reads an archive (restore, verify at every level, ``dr sync``) checks
the sidecar with :meth:`SigningKeys.check` before reading anything else: a
signature by a key that is not trusted (``BACKUP_VERIFY_KEYS``: keys, or files of
keys one a line, plus the public half of the site's own signing key), or one that does not match the
sidecar, is refused with :class:`~cellvault.errors.SignatureError`; an
unsigned sidecar (written before signing was set up) is accepted with a
warning, unless ``BACKUP_REQUIRE_SIGNED=1``.

Keys: a private key is a PEM (PKCS #8) or OpenSSH Ed25519 private key file,
unencrypted, readable by the backup user alone; a public key is written
``ed25519:<base64 of its 32 bytes>`` or as an OpenSSH ``ssh-ed25519 ...``
line. :func:`generate_keypair` (``cellvault keygen``) writes a pair.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .archive import Sidecar
from .errors import ConfigError, SignatureError
from .log import get_logger

__all__ = [
    "ALGORITHM",
    "DOMAIN",
    "KeyPair",
    "SigningKeys",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "parse_public_key",
    "public_key_text",
    "read_public_keys",
]

log = get_logger(__name__)

#: The one signature algorithm (the ``alg`` of a sidecar's signature).
ALGORITHM = "ed25519"
#: Signed before the canonical sidecar, so that no other message a key signs
#: can pass for a sidecar.
DOMAIN = b"cellvault-sidecar-v1\n"
_PREFIX = "ed25519:"
_SSH = "ssh-ed25519"


def key_id(public: Ed25519PublicKey) -> str:
    """A public key's short id: 16 hex digits of the sha256 of its 32 bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """*public* as cellvault writes it: ``ed25519:<base64 of its 32 bytes>``."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str, *, where: str = "BACKUP_VERIFY_KEYS") -> Ed25519PublicKey:
    """A public key written ``ed25519:<base64>`` or ``ssh-ed25519 <base64> [comment]``."""
    text = text.strip()
    try:
        if text.startswith(_PREFIX):
            raw = base64.b64decode(text.removeprefix(_PREFIX), validate=True)
            return Ed25519PublicKey.from_public_bytes(raw)
        if text.startswith(_SSH + " "):
            key = serialization.load_ssh_public_key(" ".join(text.split()[:2]).encode())
            if isinstance(key, Ed25519PublicKey):
                return key
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        pass
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise ConfigError(
        f"{where}: {shown!r} is not an Ed25519 public key",
        hint="write it as ed25519:<base64> (the .pub file 'cellvault keygen' writes) "
        "or as an 'ssh-ed25519 AAAA...' line",
    )


def read_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """The public keys in the file *path*: one a line; blank lines and ``#`` comments skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the public keys file {path} ({exc.strerror or exc})",
            hint="check BACKUP_VERIFY_KEYS: an entry that is not a key is a file of keys",
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the public keys file {path} is not text") from None
    lines = [line.strip() for line in text.splitlines()]
    return [
        parse_public_key(line, where=f"{path} line {n}")
        for n, line in enumerate(lines, 1)
        if line and not line.startswith("#")
    ]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the file *path* (PEM PKCS #8 or OpenSSH, unencrypted)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the signing key {path} ({exc.strerror or exc})",
            hint="check BACKUP_SIGNING_KEY; create a key pair with 'cellvault keygen'",
        ) from None
    key: Any = None
    # The reasons a parse fails are not shown: they could quote the file.
    for loader in (serialization.load_pem_private_key, serialization.load_ssh_private_key):
        try:
            key = loader(raw, password=None)
            break
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"the signing key {path} is not an unencrypted Ed25519 private key",
            hint="create one with 'cellvault keygen' (PEM) or 'ssh-keygen -t ed25519 -N \"\"'",
        )
    if path.stat().st_mode & 0o077:
        log.warning("signing.key_readable_by_others", path=str(path))
    return key


@attrs.frozen
class KeyPair:
    """What :func:`generate_keypair` wrote."""

    private: Path
    public: Path
    #: The public key as ``ed25519:<base64>`` (what goes into BACKUP_VERIFY_KEYS).
    public_key: str
    key_id: str


def generate_keypair(private: Path, public: Path | None = None) -> KeyPair:
    """Write a new Ed25519 key pair: *private* (PEM, mode 0600) and *public* (``<private>.pub``).

    Neither file may exist: a key is never overwritten (archives signed by it
    would no longer be checkable). Raises :class:`ConfigError` otherwise.
    """
    public = public or private.with_name(private.name + ".pub")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    text = public_key_text(key.public_key())
    written: list[Path] = []
    try:
        for path, data, mode in ((private, pem, 0o600), (public, (text + "\n").encode(), 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            written.append(path)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)  # whatever the umask took away or left
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        what = "exists already" if isinstance(exc, FileExistsError) else f"({exc.strerror})"
        raise ConfigError(
            f"cannot write the key pair: {exc.filename} {what}",
            hint="choose another path; an existing key is never overwritten",
        ) from None
    return KeyPair(private, public, text, key_id(key.public_key()))


# What SigningKeys.check warned about already: (target, archive).
_WARNED: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


def _warn_once(event: str, target: str, archive: str, **fields: Any) -> None:
    with _WARNED_LOCK:
        if (target, archive) in _WARNED:
            return
        _WARNED.add((target, archive))
    log.warning(event, target=target, archive=archive, **fields)


@attrs.frozen
class SigningKeys:
    """The site's signing key and the public keys its archives are checked against.

    The empty set (the default) signs nothing and checks nothing: every
    archive is believed as before signing existed.
    """

    #: Signs the sidecars this site writes (``BACKUP_SIGNING_KEY``).
    signer: Ed25519PrivateKey | None = attrs.field(default=None, repr=False)
    #: Key id -> the public keys whose signatures are trusted; the signer's own included.
    trusted: Mapping[str, Ed25519PublicKey] = attrs.field(factory=dict, repr=False)
    #: Refuse unsigned sidecars (``BACKUP_REQUIRE_SIGNED``).
    require: bool = False

    @classmethod
    def load(
        cls,
        *,
        signing_key: Path | None = None,
        verify_keys: Iterable[str] = (),
        require: bool = False,
    ) -> SigningKeys:
        """The keys of a configuration; :class:`ConfigError` for a key that is not one."""
        signer = load_private_key(signing_key) if signing_key is not None else None
        publics: list[Ed25519PublicKey] = []
        for entry in verify_keys:
            # A key, or the path of a file of keys (one a line).
            if entry.startswith((_PREFIX, _SSH)):
                publics.append(parse_public_key(entry))
            else:
                publics += read_public_keys(Path(entry))
        if signer is not None:
            publics.append(signer.public_key())
        if require and not publics:
            raise ConfigError(
                "BACKUP_REQUIRE_SIGNED is on but no key to check signatures with is configured",
                hint="set BACKUP_VERIFY_KEYS (public keys or files of them) or BACKUP_SIGNING_KEY",
            )
        return cls(signer, {key_id(k): k for k in publics}, require)

    @property
    def signs(self) -> bool:
        """Whether sidecars written with these keys are signed."""
        return self.signer is not None

    @property
    def checks(self) -> bool:
        """Whether sidecars read with these keys are checked."""
        return bool(self.trusted) or self.require

    def sign(self, sidecar: Sidecar) -> Sidecar:
        """*sidecar* with its signature (itself when there is no signing key)."""
        if self.signer is None:
            return sidecar
        unsigned = attrs.evolve(sidecar, signature=None)
        sig = self.signer.sign(DOMAIN + unsigned.canonical())
        return attrs.evolve(
            unsigned,
            signature={
                "alg": ALGORITHM,
                "key": key_id(self.signer.public_key()),
                "sig": base64.b64encode(sig).decode(),
            },
        )

    def check(self, sidecar: Sidecar, *, target: str | None = None) -> str:
        """Check *sidecar*'s signature; say how it stands (``signed``, ``unsigned``, ``unchecked``).

        Raises :class:`~cellvault.errors.SignatureError` for a signature that
        does not match, one by an untrusted key, and a missing one when
        signatures are required.
        """
        ident = str(sidecar.id)
        sig = sidecar.signature
        if not self.checks:
            return "unchecked"
        if sig is None:
            if self.require:
                raise SignatureError(
                    "its sidecar is not signed, and BACKUP_REQUIRE_SIGNED is on "
                    "(the signature was stripped, or the archive predates signing)",
                    archive=ident,
                    target=target,
                    hint="restore another archive or from another target; to restore an "
                    "archive written before signing was set up, unset BACKUP_REQUIRE_SIGNED "
                    "for that run",
                )
            _warn_once("archive.unsigned", target or "?", ident)
            return "unsigned"
        public = self.trusted.get(sig.get("key", ""))
        if sig.get("alg") != ALGORITHM or public is None:
            raise SignatureError(
                f"its sidecar is signed by key {sig.get('key')!r} ({sig.get('alg')}), "
                "which is not a trusted key",
                archive=ident,
                target=target,
                hint="if that key is one of your sites', add its public key to "
                "BACKUP_VERIFY_KEYS; otherwise the archive and its sidecar were replaced: "
                "restore another archive or from another target",
            )
        try:
            # The bytes as read, when read: nothing this version does not know is lost.
            body = sidecar.signed_body if sidecar.signed_body is not None else sidecar.canonical()
            public.verify(base64.b64decode(sig.get("sig", ""), validate=True), DOMAIN + body)
        except (InvalidSignature, binascii.Error, ValueError):
            raise SignatureError(
                f"the signature of its sidecar (key {sig['key']}) does not match the sidecar: "
                "the sidecar was altered after it was signed",
                archive=ident,
                target=target,
                hint="the archive and its sidecar are not the ones this site wrote; restore "
                "another archive or from another target",
            ) from None
        return "signed"
