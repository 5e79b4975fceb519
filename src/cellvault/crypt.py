"""Encryption at rest with age: recipients, identities, and streams sealed and opened.

A backup host holds only *recipients* (age X25519 public keys ``age1...`` and
SSH public keys); the archive it packs, ``zstd(tar)``, is sealed into
``age(zstd(tar))`` and stored as ``<id>.tar.zst.age``, and its manifest copy
is sealed the same way (under its usual name). A stock tool restores it::

    age -d -i key.txt cell_crm_20250101_020000.tar.zst.age | zstd -d | tar -x

Reading needs *identities* (the private keys): a :class:`Keyring` holds them,
from ``BACKUP_AGE_IDENTITY`` or from the ``cellvault_age_identities`` hook (a
secret store). The vault makes the keyring the current one while an
operation runs (:func:`using`), so that every reader below it finds it. The
sidecar records the sealed object's size and sha256 (what ``verify --level
quick`` and ``read`` compare, without any key) and the fingerprints of the
recipients it was sealed to, so that a missing identity is named before
anything is read.

The age format (https://age-encryption.org/v1) is written and read by
``pyrage`` (the Rust ``age`` crate), through its streaming ``encrypt_io``
and ``decrypt_io``: no archive is ever held whole in memory. Identities never
appear in an exception, an event or a report: errors name the archive and the
recipient fingerprint an identity would match.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
import structlog

from .archive import Sidecar
from .codec import HashingReader, HashingWriter
from .errors import ArchiveCorrupt, ConfigError, KeyMissing
from .integrity import Scan, scan
from .manifest import Manifest
from .modes import private_dirs
from .trust import bounded_zstd, manifest_limit

__all__ = [
    "SCHEME",
    "SUFFIX",
    "Keyring",
    "Opened",
    "Recipients",
    "Sealer",
    "can_open",
    "current",
    "digest_only",
    "fingerprint",
    "keep_manifest",
    "kept_manifest",
    "load_recipients",
    "missing_key",
    "open_small",
    "opened",
    "parse_identities",
    "parse_recipients",
    "require_all",
    "reseal",
    "reseal_small",
    "resealed_name",
    "scan_stored",
    "seal_file",
    "using",
]

log = structlog.get_logger(__name__)

#: The value of a sidecar's ``encryption.scheme``.
SCHEME = "age"
#: What sealing appends to a data file's name.
SUFFIX = ".age"
#: The largest recipients or identity file read (a real one is a few KiB).
MAX_KEY_FILE = 1 << 20

_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_PEM = re.compile(
    r"-----BEGIN OPENSSH PRIVATE KEY-----.*?-----END OPENSSH PRIVATE KEY-----", re.DOTALL
)


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError:
        raise ConfigError(
            "encryption needs the pyrage package",
            hint="pip install 'cellvault[crypt]'",
        ) from None
    return pyrage


def fingerprint(line: str) -> str:
    """How a recipient is named in sidecars and errors: never anything secret.

    An age X25519 recipient is its own ``age1...`` string; an SSH key is
    ``<type> SHA256:<base64>``, as ``ssh-keygen -l`` prints it.
    """
    parts = line.split()
    if parts and parts[0] in _SSH_TYPES and len(parts) >= 2:
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            return parts[0] + " (malformed)"
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return f"{parts[0]} SHA256:{digest}"
    return line.strip()


@attrs.frozen
class Recipients:
    """The public keys new archives are sealed to, and their fingerprints."""

    keys: tuple[Any, ...] = attrs.field(repr=False)
    fingerprints: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.keys)


def parse_recipients(lines: Iterable[str], where: str) -> Recipients:
    """Parse recipient lines (``age1...``, ``ssh-ed25519 ...``, ``ssh-rsa ...``).

    Blank lines and ``#`` comments are skipped, as in ``age -R`` files. A line
    that is none of these is a :class:`ConfigError` naming *where* and the line.
    """
    pyrage = _pyrage()
    keys: list[Any] = []
    names: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("age1"):
                keys.append(pyrage.x25519.Recipient.from_str(line))
            elif line.split()[0] in _SSH_TYPES:
                keys.append(pyrage.ssh.Recipient.from_str(line))
            else:
                raise ValueError("not an age1... or ssh-ed25519/ssh-rsa public key")
        except (ValueError, pyrage.RecipientError) as exc:
            raise ConfigError(
                f"{where}: recipient {number} ({line[:24]}...) is unusable: {exc}",
                hint="give age X25519 public keys (age-keygen -y) or SSH public keys",
            ) from None
        name = fingerprint(line)
        if name not in names:
            names.append(name)
    return Recipients(tuple(keys), tuple(names))


def load_recipients(values: Sequence[str], path: Path | None) -> Recipients:
    """The recipients of a configuration: *values* and the lines of the file *path*."""
    lines = [v for value in values for v in value.splitlines()]
    recipients = parse_recipients(lines, "BACKUP_ENCRYPT_RECIPIENTS")
    if path is None:
        return recipients
    text = _read_key_file(path, "recipients file (BACKUP_ENCRYPT_RECIPIENTS_FILE)")
    more = parse_recipients(text.splitlines(), f"recipients file {path}")
    names = recipients.fingerprints + tuple(
        n for n in more.fingerprints if n not in recipients.fingerprints
    )
    return Recipients(recipients.keys + more.keys, names)


def _read_key_file(path: Path, what: str) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(raw) > MAX_KEY_FILE:
        raise ConfigError(f"the {what} {path} is larger than {MAX_KEY_FILE} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} {path} is not UTF-8 text") from None


def _ssh_public(pem: str) -> str | None:
    """The public key line an OpenSSH private key carries in clear, or ``None``."""
    body = "".join(pem.splitlines()[1:-1])
    try:
        blob = base64.b64decode(body)
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic):
            return None
        pos = len(magic)
        for _ in range(3):  # cipher name, kdf name, kdf options
            pos += 4 + int.from_bytes(blob[pos : pos + 4], "big")
        pos += 4  # the number of keys
        size = int.from_bytes(blob[pos : pos + 4], "big")
        public = blob[pos + 4 : pos + 4 + size]
        kind = public[4 : 4 + int.from_bytes(public[:4], "big")].decode()
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return f"{kind} {base64.b64encode(public).decode()}"


def parse_identities(text: str, where: str) -> tuple[list[Any], set[str]]:
    """The identities in *text* (an age identity file or an OpenSSH private key).

    Returns them and the fingerprints of their recipients. Errors name
    *where* and a line number, never the key.
    """
    pyrage = _pyrage()
    identities: list[Any] = []
    publics: set[str] = set()
    for pem in _PEM.findall(text):
        try:
            identities.append(pyrage.ssh.Identity.from_buffer(pem.encode()))
        except (ValueError, pyrage.IdentityError):
            raise ConfigError(
                f"{where}: the SSH private key is unusable (passphrase-protected keys are not "
                "supported)"
            ) from None
        public = _ssh_public(pem)
        if public is not None:
            publics.add(fingerprint(public))
    for number, raw in enumerate(_PEM.sub("", text).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identity = pyrage.x25519.Identity.from_str(line)
        except (ValueError, pyrage.IdentityError):
            raise ConfigError(
                f"{where}: line {number} is not an age identity (AGE-SECRET-KEY-1...)"
            ) from None
        identities.append(identity)
        publics.add(str(identity.to_public()))
    return identities, publics


@attrs.define
class Keyring:
    """The identities a process may open sealed archives with, loaded on first need.

    *files* are identity files (``BACKUP_AGE_IDENTITY``); *fetch*, if given,
    returns more identity texts (the ``cellvault_age_identities`` hook). Nothing
    is read until an encrypted archive is: a backup host never needs them.
    """

    files: tuple[Path, ...] = ()
    fetch: Callable[[], Sequence[str]] | None = attrs.field(default=None, repr=False)
    _loaded: dict[str, tuple[list[Any], set[str]]] = attrs.field(
        init=False, factory=dict, repr=False
    )
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)

    def _load(self, source: str) -> tuple[list[Any], set[str]]:
        with self._lock:
            if source not in self._loaded:
                found: list[Any] = []
                publics: set[str] = set()
                if source == "files":
                    texts = [
                        (
                            f"identity file {p}",
                            _read_key_file(p, "identity file (BACKUP_AGE_IDENTITY)"),
                        )
                        for p in self.files
                    ]
                else:
                    fetched = self.fetch() if self.fetch is not None else ()
                    texts = [
                        (f"identity {n} from the secret store hook", t)
                        for n, t in enumerate(fetched, 1)
                    ]
                for where, text in texts:
                    ids, pubs = parse_identities(text, where)
                    found += ids
                    publics |= pubs
                self._loaded[source] = (found, publics)
            return self._loaded[source]

    def identities(self, *, fetch: bool = True) -> tuple[list[Any], set[str]]:
        """Every identity and the fingerprints of those whose public key is known.

        Read once, when first asked for; the hook (*fetch*) only when asked to
        be used: a read verify after a backup does not call a secret store.
        """
        found, publics = self._load("files")
        if fetch and self.fetch is not None:
            more, more_publics = self._load("hook")
            return found + more, publics | more_publics
        return found, publics

    def known(self) -> frozenset[str]:
        """The fingerprints of the recipients the identities match, where known."""
        return frozenset(self.identities()[1])

    def require(self, sidecar: Sidecar, *, fetch: bool = True) -> list[Any]:
        """The identities for *sidecar*; :class:`KeyMissing` naming the key it needs otherwise.

        When an identity's public key is unknown, the archive is only refused
        when there is no identity at all: opening it tells.
        """
        identities, publics = self.identities(fetch=fetch)
        needed = sidecar.encryption or ()
        if not identities or (len(publics) >= len(identities) and not publics.intersection(needed)):
            raise missing_key(sidecar, given=bool(identities))
        return identities


def missing_key(sidecar: Sidecar, *, given: bool) -> KeyMissing:
    """The error for an archive none of the given identities opens."""
    keys = ", ".join(sidecar.encryption or ()) or "an unrecorded key"
    why = "none of the identities given matches" if given else "no identity is given"
    return KeyMissing(
        f"archive {sidecar.id} is encrypted to {keys}; {why}",
        hint="give the identity that matches (BACKUP_AGE_IDENTITY=<file>, or the "
        "cellvault_age_identities hook of a secret-store plugin)",
    )


_CURRENT: contextvars.ContextVar[Keyring | None] = contextvars.ContextVar(
    "cellvault_keyring", default=None
)


def current() -> Keyring:
    """The keyring of the operation running in this context (an empty one outside any)."""
    return _CURRENT.get() or Keyring()


@contextlib.contextmanager
def using(keyring: Keyring) -> Iterator[Keyring]:
    """Make *keyring* the current one for the calls inside (worker threads carry it)."""
    token = _CURRENT.set(keyring)
    try:
        yield keyring
    finally:
        _CURRENT.reset(token)


def seal_file(source: Path, recipients: Recipients) -> tuple[Path, int, str]:
    """Seal the spool file *source* into ``<source>.age``; remove *source*.

    Returns the sealed path, its size and its sha256 (what the sidecar records).
    """
    pyrage = _pyrage()
    sealed = source.with_name(source.name + SUFFIX)
    partial = sealed.with_name(sealed.name + ".partial")
    try:
        with source.open("rb") as plain, open(partial, "xb", opener=_private) as out:
            hashing = HashingWriter(out)
            pyrage.encrypt_io(plain, hashing, list(recipients.keys))
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, sealed)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    source.unlink()
    return sealed, hashing.count, hashing.hexdigest()


def _pipe() -> tuple[int, int]:
    """A pipe with a 1 MiB buffer where Linux allows it (fewer wake-ups than 64 KiB)."""
    r, w = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        import fcntl

        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    return r, w


class Sealer:
    """A file object that encrypts what is written to it into *raw*, on a thread.

    The packer compresses into it, so the archive is sealed as it is written,
    in one pass (no plain copy of the compressed archive is written first).
    :meth:`close` ends the age stream and waits for the thread; what the
    thread met (a full disk) is raised there, and by the next write.
    """

    def __init__(self, raw: Any, recipients: Recipients) -> None:
        self.raw = raw
        self._error: BaseException | None = None
        r, w = _pipe()
        # pyrage reads 8 KiB at a time: served from a 1 MiB buffer, one system call
        # per MiB (encrypting 220 MiB: 0.46 -> 0.30 s of CPU).
        self._out = os.fdopen(r, "rb", buffering=1 << 20)
        self._in = os.fdopen(w, "wb")
        self._closed = False
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(
            target=ctx.run,
            args=(self._run, list(recipients.keys)),
            name="cellvault-seal",
            daemon=True,
        )
        self._thread.start()

    def _run(self, keys: list[Any]) -> None:
        try:
            _pyrage().encrypt_io(self._out, self.raw, keys)
        except BaseException as exc:  # noqa: BLE001 - raised by close() in the writer's thread
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                self._out.close()  # a writer still writing gets EPIPE, not a hang

    def write(self, data: Any) -> int:
        try:
            return self._in.write(data)
        except BrokenPipeError:
            self.close()
            raise

    def flush(self) -> None:
        self._in.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """End the stream (idempotent); raise what the encrypting thread met."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                self._in.close()
            self._thread.join()
        if self._error is not None:
            raise OSError(f"cannot encrypt the archive ({self._error})")


class Opened:
    """The plaintext of a sealed stream, decrypted on a thread as it is read.

    Only authenticated plaintext is handed out (age checks each 64 KiB chunk
    before releasing it); a stream cut short or altered ends in an
    :class:`OSError` at the damaged chunk, and the sidecar's size and sha256
    are still compared by the reader of *raw*.
    """

    def __init__(self, raw: Any, identities: list[Any], sidecar: Sidecar) -> None:
        self.raw = raw
        self.sidecar = sidecar
        self._error: BaseException | None = None
        r, w = _pipe()
        self._out = os.fdopen(r, "rb")
        self._in = os.fdopen(w, "wb")
        self._ended = False
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(
            target=ctx.run, args=(self._run, identities), name="cellvault-age", daemon=True
        )
        self._thread.start()

    def _run(self, identities: list[Any]) -> None:
        try:
            _pyrage().decrypt_io(self.raw, self._in, identities)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                self._in.close()

    def _end(self) -> None:
        """The stream ended: wait for the thread, raise what it met."""
        self._thread.join()
        self._ended = True
        if self._error is None:
            return
        text = str(self._error)
        if "no matching keys" in text.lower():
            raise missing_key(self.sidecar, given=True)
        raise OSError(f"the age stream does not decrypt ({text}): truncated or altered")

    def read(self, size: int = -1) -> bytes:
        data = self._out.read(size) if size is not None and size >= 0 else self._out.read()
        if not data and size != 0:
            self._end()
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self, block: int = 1 << 20) -> None:
        """Read to the end (the rest of the plaintext, then of *raw*, for its digest)."""
        while self.read(block):
            pass
        drain = getattr(self.raw, "drain", None)
        if drain is not None:
            drain(block)

    def close(self) -> None:
        """Stop the thread (a reader that stops early closes the pipe under it)."""
        with contextlib.suppress(OSError):
            self._out.close()
        self._thread.join()


def opened(raw: HashingReader, sidecar: Sidecar, keyring: Keyring | None = None) -> Any:
    """What to decompress from *raw*: itself, or its plaintext when *sidecar* is sealed.

    :class:`KeyMissing` when no identity of the current keyring (or *keyring*)
    can open it, before anything is read.
    """
    if sidecar.encryption is None:
        return raw
    identities = (keyring or current()).require(sidecar)
    return Opened(raw, identities, sidecar)


def open_small(data: bytes, sidecar: Sidecar, keyring: Keyring | None = None) -> bytes:
    """The plaintext of a small sealed object of *sidecar* (its manifest copy)."""
    if sidecar.encryption is None:
        return data
    identities = (keyring or current()).require(sidecar)
    pyrage = _pyrage()
    try:
        return bytes(pyrage.decrypt(data, identities))
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            raise missing_key(sidecar, given=True) from None
        raise ArchiveCorrupt(
            f"the manifest copy does not decrypt ({exc})", archive=str(sidecar.id)
        ) from None


def can_open(sidecar: Sidecar, keyring: Keyring | None = None) -> bool:
    """Whether *sidecar*'s data can be read here: plain, or an identity file opens it.

    The secret-store hook is not asked: what only checks when it can (a read
    verify, a sync's manifest check) does not fetch keys.
    """
    if sidecar.encryption is None:
        return True
    try:
        (keyring or current()).require(sidecar, fetch=False)
    except KeyMissing:
        return False
    return True


def require_all(sidecars: Iterable[Sidecar], keyring: Keyring | None = None) -> None:
    """Refuse, naming the first archive and its key, unless every sealed one can be opened."""
    ring = keyring or current()
    for sidecar in sidecars:
        if sidecar.encryption is not None:
            ring.require(sidecar)


def scan_stored(sidecar: Sidecar, raw: IO[bytes]) -> Scan:
    """:func:`cellvault.integrity.scan` of a stored archive, sealed or not.

    The count and sha256 are of the stored bytes; a sealed archive's
    plaintext is decompressed and scanned as a plain one's is.
    :class:`KeyMissing` when no identity here opens it (see :func:`can_open`
    and :func:`digest_only`).
    """
    if sidecar.encryption is None:
        return scan(sidecar.data_name, raw)
    hashing = HashingReader(raw)
    plain = Opened(hashing, current().require(sidecar), sidecar)
    try:
        found = scan(sidecar.data_name.removesuffix(SUFFIX), plain)  # type: ignore[arg-type]
        plain.drain()
    except OSError as exc:
        raise EOFError(str(exc)) from None  # a damaged or cut age stream: it does not decompress
    finally:
        plain.close()
    return attrs.evolve(found, count=hashing.count, sha256=hashing.hexdigest())


def digest_only(raw: IO[bytes]) -> Scan:
    """The size and sha256 of *raw*, read to its end (a sealed archive read without a key)."""
    hashing = HashingReader(raw)
    hashing.drain()
    return Scan(hashing.count, hashing.hexdigest(), b"", b"")


#: Plain manifest copies kept per cell for the incrementals of a host without identities.
KEEP_MANIFESTS = 4


def keep_manifest(folder: Path, ident: str, plain: Path) -> None:
    """Keep the plain manifest copy *plain* of archive *ident* in *folder* (0600, 0700).

    A backup host holds no identity, so it cannot read the sealed manifest
    copy of the archive an incremental builds on: it keeps its own copy of the
    newest few instead (their content is the file list and digests, which
    this host can read anyway, from the cell itself).
    """
    private_dirs(folder)
    final = folder / f"{ident}.manifest.json.zst"
    partial = final.with_name(final.name + ".partial")
    with plain.open("rb") as src, open(partial, "xb", opener=_private) as out:
        while block := src.read(1 << 20):
            out.write(block)
    os.replace(partial, final)
    kept = sorted(folder.glob("cell_*.manifest.json.zst"))
    for old in kept[:-KEEP_MANIFESTS]:
        with contextlib.suppress(OSError):
            old.unlink()


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def kept_manifest(folder: Path, sidecar: Sidecar) -> Manifest | None:
    """The plain manifest copy of *sidecar* this host kept (:func:`keep_manifest`), if any."""
    try:
        raw = (folder / f"{sidecar.id}.manifest.json.zst").read_bytes()
    except OSError:
        return None
    limit = manifest_limit(sidecar.files, sidecar.manifest_size)
    try:
        body = bounded_zstd(raw, limit, archive=str(sidecar.id))
        manifest = Manifest.from_json(body, archive=str(sidecar.id))
    except (ArchiveCorrupt, ValueError):
        return None
    return manifest if manifest.archive == str(sidecar.id) else None


_GENERATION = re.compile(r"\.k(?P<n>[1-9]\d{0,5})(?=\.tar\.)")


def resealed_name(data_name: str) -> str:
    """The data name an archive gets when :func:`reseal` writes it anew.

    ``<id>.tar.zst`` becomes ``<id>.tar.zst.age``; a sealed ``<id>.tar.zst.age``
    becomes ``<id>.k1.tar.zst.age``, then ``.k2``...: a new object beside the
    old one, so that the sidecar alone says which one counts.
    """
    if not data_name.endswith(SUFFIX):
        return data_name + SUFFIX
    found = _GENERATION.search(data_name)
    if found is None:
        stem, _, rest = data_name.partition(".tar.")
        return f"{stem}.k1.tar.{rest}"
    return _GENERATION.sub(f".k{int(found['n']) + 1}", data_name, count=1)


def reseal(raw: IO[bytes], sidecar: Sidecar, out: Path, recipients: Recipients) -> tuple[int, str]:
    """Re-encrypt the stored data *raw* of *sidecar* to *recipients* into the file *out*.

    age to age (or plain to age), never decompressed: the plaintext passes
    from the decrypting thread to the encrypting one through a pipe. The
    stored bytes' size and sha256 are compared with the sidecar's, and age
    authenticates every chunk, before the result counts. Returns the new
    object's size and sha256.
    """
    pyrage = _pyrage()
    hashing = HashingReader(raw)
    source: Any = hashing
    if sidecar.encryption is not None:
        source = Opened(hashing, current().require(sidecar), sidecar)
    try:
        with open(out, "xb", opener=_private) as f:
            written = HashingWriter(f)
            try:
                pyrage.encrypt_io(source, written, list(recipients.keys))
            except pyrage.EncryptError as exc:
                raise ArchiveCorrupt(
                    f"cannot re-encrypt ({exc})", archive=str(sidecar.id)
                ) from None
            f.flush()
            os.fsync(f.fileno())
        source.drain()
    except BaseException:
        with contextlib.suppress(OSError):
            out.unlink()
        raise
    finally:
        if source is not hashing:
            source.close()
    if hashing.count != sidecar.size or hashing.hexdigest() != sidecar.sha256:
        out.unlink()
        raise ArchiveCorrupt(
            f"the stored data ({hashing.count} bytes) does not match its sidecar; not re-encrypted",
            archive=str(sidecar.id),
            hint="verify the archive; restore it from another target",
        )
    return written.count, written.hexdigest()


def reseal_small(data: bytes, sidecar: Sidecar, recipients: Recipients) -> bytes:
    """A small stored object of *sidecar* (its manifest copy) sealed to *recipients*."""
    return bytes(_pyrage().encrypt(open_small(data, sidecar), list(recipients.keys)))
