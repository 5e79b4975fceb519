"""Configuration: from Python, from a TOML file, or from the seed's environment variables.

The seed's ``backup_config.env`` is read as it is (``--env-file``); the process
environment wins over the file, as in the seed's cron line
``. backup_config.env; BACKUP_TYPE=full backup_runner.sh``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, overload

import attrs

from .archive import Kind, to_kind
from .cell import Cell, validate_cell_name
from .codec import get_codec
from .envnames import FLEET_ENV, KNOWN_ENV
from .errors import ConfigError
from .retention import RetentionPolicy
from .specs import DEFAULT_TTL, DumperSpec, TargetSpec

__all__ = [
    "FLEET_ENV",
    "KNOWN_ENV",
    "Config",
    "env_flag",
    "load_env",
    "load_toml",
    "parse_flag",
    "parse_names",
    "unknown_env",
    "with_restore_env",
]

# Per-cell and per-target families: BACKUP_CELL_<NAME>_PATHS, BACKUP_TARGET_<NAME>_URL,
# and a cell's dumpers: BACKUP_CELL_<NAME>_DUMPERS, BACKUP_CELL_<NAME>_DUMPER_<DUMPER>_<OPTION>.
_FAMILY = re.compile(
    r"BACKUP_CELL_[A-Z0-9_]+_(PATHS|EXCLUDE|DUMPERS)|BACKUP_CELL_[A-Z0-9_]+_DUMPER_[A-Z0-9_]+"
    r"|BACKUP_TARGET_[A-Z0-9_]+_URL"
)
_FAMILY_EXAMPLES = (
    "BACKUP_CELL_<NAME>_PATHS",
    "BACKUP_CELL_<NAME>_EXCLUDE",
    "BACKUP_TARGET_<NAME>_URL",
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigError(f"{attribute.name} must be at least 1, not {value}")


def _after_backup_level(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("quick", "read", "full"):
        raise ConfigError(
            f"{attribute.name} (BACKUP_VERIFY_LEVEL) must be quick, read or full, not {value!r}",
            hint="a drill after every backup is too slow; schedule 'cellvault verify --level drill'",
        )


def _more_than_zero(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name} must be more than 0, not {value}")


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{attribute.name} must be 0 or more seconds, not {value}")


def _abspath(value: str | os.PathLike[str]) -> Path:
    return Path(value).expanduser().absolute()


def _cells(value: Iterable[Cell]) -> tuple[Cell, ...]:
    return tuple(value)


def _targets(value: Iterable[TargetSpec]) -> tuple[TargetSpec, ...]:
    return tuple(value)


def parse_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """Target names: a comma-separated string (``DR_TARGET=s3,oss``) or a list."""
    if isinstance(value, str):
        value = value.replace(" ", ",").split(",")
    names = tuple(value)
    if not all(isinstance(n, str) for n in names):
        raise ConfigError(f"target names must be strings, not {names!r}")
    return tuple(n.strip() for n in names if n.strip())


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else _abspath(value)


def _key_lines(value: str | Iterable[str]) -> tuple[str, ...]:
    """Public keys: one a line or comma-separated (SSH keys hold spaces), or a list."""
    if isinstance(value, str):
        value = value.replace(",", "\n").splitlines()
    keys = tuple(value)
    if not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"encrypt_recipients must be strings, not {keys!r}")
    return tuple(k.strip() for k in keys if k.strip())


@attrs.frozen
class Config:
    """Everything a :class:`~cellvault.Vault` needs.

    *targets* default to one local target, ``local``, in *backup_dir*. The
    first target is the primary: restores look there first.
    """

    #: The local backup directory: the spool, run logs, and the default local target.
    backup_dir: Path = attrs.field(converter=_abspath)
    #: The cells to back up.
    cells: tuple[Cell, ...] = attrs.field(default=(), converter=_cells)
    #: Where archives are stored, the primary first.
    targets: tuple[TargetSpec, ...] = attrs.field(default=(), converter=_targets)
    codec: str = "zstd"
    level: int | None = None
    #: Cells backed up (and restored) at once.
    jobs: int = attrs.field(default=2, validator=_positive)
    #: Read every stored copy back and check it after each backup.
    verify_after_backup: bool = True
    #: Incrementals in a row before the next backup is full again.
    max_chain: int = attrs.field(default=30, validator=_positive)
    #: Hash every file at incremental time, to catch changes that keep size and mtime.
    checksum: bool = False
    lock_ttl: float = DEFAULT_TTL
    #: Defaults for the command line, from BACKUP_TYPE and RESTORE_*.
    backup_type: Kind = attrs.field(
        default="full", validator=attrs.validators.in_(("full", "incremental"))
    )
    restore_date: str | None = None
    restore_cell: str | None = None
    restore_skip_prebackup: bool = False
    restore_into: Path | None = None
    #: Settings read but owned by plugins (alerts, ...), name -> value.
    extra: Mapping[str, str] = attrs.field(factory=dict)
    #: The fleet's settings (``cellvault.fleet``): a TOML ``[fleet]`` table, or the
    #: ``CELLVAULT_*`` variables of :data:`FLEET_ENV` under the same keys.
    fleet: Mapping[str, Any] = attrs.field(factory=dict)
    #: What ``prune`` keeps on every target (the seed's 7 days full, 3 days incremental).
    retention: RetentionPolicy = attrs.field(factory=RetentionPolicy)
    #: Target name -> its own policy, instead of *retention*.
    target_retention: Mapping[str, RetentionPolicy] = attrs.field(factory=dict)
    #: The verify after each backup: ``read`` (the default) reads every stored
    #: copy once and decompresses it to its end, ``full`` also checks every
    #: member against the manifest, ``quick`` compares size and the store's
    #: checksum without reading (see :mod:`cellvault.ops.verify`).
    verify_level: str = attrs.field(default="read", validator=_after_backup_level)
    #: A Prometheus textfile rewritten after every run (node_exporter's textfile collector).
    metrics_file: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(_abspath)
    )
    #: Hours: ``status`` fails a cell whose newest archive on a target is older.
    max_age: float = attrs.field(default=26.0, validator=_more_than_zero)
    #: Days run logs are kept (the newest ten of each kind are always kept).
    log_keep_days: float = attrs.field(default=14.0, validator=_more_than_zero)
    #: Seconds between the progress lines a run writes to its log (0: none).
    progress_interval: float = attrs.field(default=60.0, validator=_not_negative)
    #: Folder of hook scripts (``before_backup_<cell>.sh``, ``after_backup_<cell>.sh``,
    #: and, unless *restore_hooks_dir* is set, the restore ones); see ``docs/dumpers.md``.
    hooks_dir: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(_abspath)
    )
    #: Folder of ``restore_hook_<cell>.sh`` and ``health_check_<cell>.sh`` (default: *hooks_dir*).
    restore_hooks_dir: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(_abspath)
    )
    #: Seconds a hook script may run before it is killed and its step fails.
    hook_timeout: float = attrs.field(default=600.0, validator=_more_than_zero)
    #: Disaster recovery (``cellvault.dr``): this site's id (``DR_SITE_ID``;
    #: default: the host name).
    dr_site_id: str | None = None
    #: ``cellvault sync`` pulls from the object storage instead of pushing
    #: (``DR_PULL_ONLY``): the standby's mode.
    dr_pull_only: bool = False
    #: The object-storage targets of the DR pair (``DR_TARGET``; default: every
    #: target but the first).
    dr_targets: tuple[str, ...] = attrs.field(default=(), converter=parse_names)
    #: ``cellvault dr watch`` (:mod:`cellvault.dr.watch`): the site watched
    #: (``DR_WATCH_PRIMARY``), its health URLs (``DR_WATCH_URLS``), how many
    #: failed probes over how many seconds mean it is gone, the seconds
    #: between probes, and the age past which its heartbeat is stale.
    dr_watch_primary: str | None = None
    dr_watch_urls: tuple[str, ...] = attrs.field(default=(), converter=parse_names)
    dr_watch_probes: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    dr_watch_window: float = attrs.field(default=180.0, validator=_more_than_zero)
    dr_watch_interval: float = attrs.field(default=30.0, validator=_more_than_zero)
    dr_watch_heartbeat_age: float = attrs.field(default=300.0, validator=_more_than_zero)
    #: The traffic switch (``cellvault_switch_traffic``): a command run with the
    #: new site's id (``DR_SWITCH_COMMAND``), a Kubernetes Service or Ingress
    #: to patch (``DR_SWITCH_K8S``, ``service/<namespace>/<name>`` or
    #: ``ingress/<namespace>/<name>/<service name, {site} for the site>``).
    dr_switch_command: str | None = None
    dr_switch_k8s: str | None = None
    #: Encryption (:mod:`cellvault.crypt`): age recipients, ``age1...`` or SSH public keys.
    encrypt_recipients: tuple[str, ...] = attrs.field(default=(), converter=_key_lines)
    encrypt_recipients_file: Path | None = attrs.field(default=None, converter=_optional_path)
    #: The age identity file that reads encrypted archives (restore, full verify, drill).
    age_identity: Path | None = attrs.field(default=None, converter=_optional_path)
    #: Signed sidecars (:mod:`cellvault.signing`): the site's private key, trusted public keys.
    signing_key: Path | None = attrs.field(default=None, converter=_optional_path)
    verify_keys: tuple[str, ...] = attrs.field(default=(), converter=parse_names)
    require_signed: bool = False
    #: Object Lock on S3 (:mod:`cellvault.immutability`): governance, compliance or None.
    object_lock: str | None = None
    #: The file this configuration was read from (``--env-file`` or
    #: ``--config``), or ``None``. Relative paths of plugins' settings (the
    #: alert log) are taken from its folder. Not part of a config's value.
    source: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(_abspath), eq=False
    )

    def retention_for(self, target: str) -> RetentionPolicy:
        """The retention policy of the target called *target*."""
        return self.target_retention.get(target, self.retention)

    def __attrs_post_init__(self) -> None:
        get_codec(self.codec, self.level)
        names = [c.name for c in self.cells]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"cell {sorted(dupes)[0]} is configured twice")
        tnames = [t.name for t in self.targets]
        tdupes = {n for n in tnames if tnames.count(n) > 1}
        if tdupes:
            raise ConfigError(f"target {sorted(tdupes)[0]} is configured twice")

    @property
    def target_specs(self) -> tuple[TargetSpec, ...]:
        """The targets, or the default local one in the backup directory."""
        return self.targets or (TargetSpec("local", str(self.backup_dir)),)

    def cell(self, name: str) -> Cell:
        """The configured cell *name*; :class:`ConfigError` listing the known ones otherwise."""
        for cell in self.cells:
            if cell.name == name:
                return cell
        validate_cell_name(name)
        known = ", ".join(c.name for c in self.cells) or "none"
        raise ConfigError(f"unknown cell {name!r}", hint=f"configured cells: {known}")


# -- environment -------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """Read a shell-style env file (``export X=...``, quotes, ``${VAR}``, comments)."""
    from dotenv import dotenv_values

    if not path.is_file():
        raise ConfigError(f"env file {path} does not exist", hint="check --env-file")
    return {k: v for k, v in dotenv_values(path, interpolate=True).items() if v is not None}


def unknown_env(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Variables that look like cellvault's but are not, each with a suggestion."""
    out: list[tuple[str, str | None]] = []
    for key in sorted(environ):
        if not key.startswith(("BACKUP_", "RESTORE_")) or key in KNOWN_ENV:
            continue
        if _FAMILY.fullmatch(key):
            continue
        if key.startswith("BACKUP_CELL_"):
            out.append((key, _FAMILY_EXAMPLES[1] if "EXCL" in key else _FAMILY_EXAMPLES[0]))
            continue
        if key.startswith("BACKUP_TARGET_"):
            out.append((key, _FAMILY_EXAMPLES[2]))
            continue
        # Compare what follows the shared BACKUP_/RESTORE_ prefix, which would
        # otherwise make every pair look alike.
        prefix, _, rest = key.partition("_")
        known = {k.partition("_")[2]: k for k in KNOWN_ENV if k.startswith(prefix + "_")}
        match = difflib.get_close_matches(rest, list(known), n=1, cutoff=0.75)
        out.append((key, known[match[0]] if match else None))
    return out


def parse_flag(key: str, raw: str) -> bool:
    """The yes/no value *raw* of variable *key* (``1``/``0``, ``true``/``false``, ``yes``/``no``, ``on``/``off``)."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{key}={raw!r} is not a yes/no value", hint="use 1 or 0")


def env_flag(environ: Mapping[str, str], key: str, default: bool) -> bool:
    """Variable *key* of *environ* as a yes/no value; *default* when unset."""
    raw = environ.get(key)
    return default if raw is None else parse_flag(key, raw)


@overload
def _int(environ: Mapping[str, str], key: str, default: int) -> int: ...
@overload
def _int(environ: Mapping[str, str], key: str, default: None) -> int | None: ...
def _int(environ: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a whole number") from None


def _float(environ: Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{key}={raw!r} is not a finite number")
    return value


def _env_key(cell: str) -> str:
    return cell.upper().replace("-", "_")


def load_env(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> Config:
    """Build a :class:`Config` from the seed's variables (and an optional env file)."""
    env: dict[str, str] = {}
    if env_file is not None:
        env.update(read_env_file(env_file))
    env.update(os.environ if environ is None else environ)

    backup_dir = env.get("BACKUP_DIR", "").strip()
    if not backup_dir:
        raise ConfigError(
            "BACKUP_DIR is not set", hint="set it to the local backup directory, e.g. /backup/paas"
        )

    cells = []
    names = env.get("BACKUP_CELLS", "").replace(",", " ").split()
    root = env.get("BACKUP_CELLS_ROOT", "").strip()
    common_exclude = tuple(env.get("BACKUP_EXCLUDE", "").split())
    for name in names:
        validate_cell_name(name)
        key = _env_key(name)
        raw_paths = env.get(f"BACKUP_CELL_{key}_PATHS", "").strip()
        if raw_paths:
            paths = [p for p in raw_paths.split(":") if p]
        elif root:
            paths = [str(Path(root) / name)]
        else:
            raise ConfigError(
                f"cell {name}: no data path",
                hint=f"set BACKUP_CELLS_ROOT (cell {name} is then $BACKUP_CELLS_ROOT/{name}) "
                f"or BACKUP_CELL_{key}_PATHS",
            )
        exclude = common_exclude + tuple(env.get(f"BACKUP_CELL_{key}_EXCLUDE", "").split())
        cells.append(Cell(name, paths, exclude=exclude, dumpers=_env_dumpers(env, name, key)))

    targets = [_env_target(t, env, backup_dir) for t in _split(env.get("BACKUP_TARGETS", "local"))]
    backup_type = to_kind(env.get("BACKUP_TYPE", "full").strip() or "full", "BACKUP_TYPE")
    into = env.get("RESTORE_INTO", "").strip()
    return Config(
        backup_dir=backup_dir,
        cells=cells,
        targets=targets,
        codec=env.get("BACKUP_CODEC", "zstd").strip() or "zstd",
        level=_int(env, "BACKUP_COMPRESSION_LEVEL", None),
        jobs=_int(env, "BACKUP_JOBS", 2),
        verify_after_backup=env_flag(env, "BACKUP_VERIFY", True),
        max_chain=_int(env, "BACKUP_MAX_CHAIN", 30),
        checksum=env_flag(env, "BACKUP_CHECKSUM", False),
        backup_type=backup_type,
        restore_date=env.get("RESTORE_DATE", "").strip() or None,
        restore_cell=env.get("RESTORE_CELL", "").strip() or None,
        restore_skip_prebackup=env_flag(env, "RESTORE_SKIP_PREBACKUP", False),
        restore_into=Path(into) if into else None,
        extra={k: v for k, v in env.items() if k.startswith("BACKUP_ALERT")},
        fleet={key: env[var] for var, key in FLEET_ENV.items() if env.get(var, "").strip()},
        verify_level=env.get("BACKUP_VERIFY_LEVEL", "read").strip().lower() or "read",
        metrics_file=env.get("BACKUP_METRICS_FILE", "").strip() or None,
        max_age=_float(env, "BACKUP_MAX_AGE_HOURS", 26.0),
        log_keep_days=_float(env, "BACKUP_LOG_KEEP_DAYS", 14.0),
        progress_interval=_float(env, "BACKUP_PROGRESS_INTERVAL", 60.0),
        retention=_env_retention(env),
        hooks_dir=env.get("BACKUP_HOOKS_DIR", "").strip() or None,
        restore_hooks_dir=env.get("RESTORE_HOOKS_DIR", "").strip() or None,
        hook_timeout=_float(env, "BACKUP_HOOK_TIMEOUT", 600.0),
        dr_site_id=env.get("DR_SITE_ID", "").strip() or None,
        dr_pull_only=env_flag(env, "DR_PULL_ONLY", False),
        dr_targets=env.get("DR_TARGET", ""),
        dr_watch_primary=env.get("DR_WATCH_PRIMARY", "").strip() or None,
        dr_watch_urls=env.get("DR_WATCH_URLS", ""),
        dr_watch_probes=_int(env, "DR_WATCH_PROBES", 3),
        dr_watch_window=_float(env, "DR_WATCH_WINDOW", 180.0),
        dr_watch_interval=_float(env, "DR_WATCH_INTERVAL", 30.0),
        dr_watch_heartbeat_age=_float(env, "DR_WATCH_HEARTBEAT_AGE", 300.0),
        dr_switch_command=env.get("DR_SWITCH_COMMAND", "").strip() or None,
        dr_switch_k8s=env.get("DR_SWITCH_K8S", "").strip() or None,
        encrypt_recipients=env.get("BACKUP_ENCRYPT_RECIPIENTS", ""),
        encrypt_recipients_file=env.get("BACKUP_ENCRYPT_RECIPIENTS_FILE", "").strip() or None,
        age_identity=env.get("BACKUP_AGE_IDENTITY", "").strip() or None,
        **_env_protection(env),
        source=env_file,
    )


def _env_protection(env: Mapping[str, str]) -> dict[str, Any]:
    """Signed sidecars and locked archives (docs/security.md), from ``BACKUP_*``."""
    return {
        "signing_key": env.get("BACKUP_SIGNING_KEY", "").strip() or None,
        "verify_keys": env.get("BACKUP_VERIFY_KEYS", ""),
        "require_signed": env_flag(env, "BACKUP_REQUIRE_SIGNED", False),
        "object_lock": env.get("BACKUP_OBJECT_LOCK"),
    }


def _env_dumpers(env: Mapping[str, str], cell: str, key: str) -> list[DumperSpec]:
    """``BACKUP_CELL_<CELL>_DUMPERS`` and each dumper's ``BACKUP_CELL_<CELL>_DUMPER_<NAME>_*``.

    ``DUMPERS`` lists dumper names; a name's type is its ``_TYPE`` variable,
    else the name itself (``DUMPERS=postgres`` needs no ``_TYPE``). Every
    other ``..._DUMPER_<NAME>_<OPTION>`` sets an option (lower-cased).
    """
    specs = []
    for name in _split(env.get(f"BACKUP_CELL_{key}_DUMPERS", "")):
        prefix = f"BACKUP_CELL_{key}_DUMPER_{_env_key(name)}_"
        options = {
            k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix) and v
        }
        kind = options.pop("type", name).strip()
        try:
            specs.append(DumperSpec(kind, name, options))
        except ConfigError as exc:
            raise ConfigError(
                f"cell {cell}: BACKUP_CELL_{key}_DUMPERS: {exc.message}", hint=exc.hint
            ) from None
    return specs


def _env_retention(env: Mapping[str, str]) -> RetentionPolicy:
    """``BACKUP_KEEP_*``: an empty value switches a rule off."""
    values: dict[str, float | int | None] = {}
    for field in attrs.fields(RetentionPolicy):
        key = "BACKUP_" + field.name.upper()
        if key not in env:
            continue
        raw = env[key].strip()
        if not raw:
            values[field.name] = None
            continue
        try:
            value = float(raw) if field.name.endswith("_days") else int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"{key}={raw!r} is not a finite number of 0 or more",
                hint="NaN, infinite and negative retention values would switch the rule off "
                "or delete everything; leave the variable empty to switch a rule off",
            )
        values[field.name] = value
    return RetentionPolicy(**values)  # type: ignore[arg-type]


def with_restore_env(config: Config, environ: Mapping[str, str]) -> Config:
    """*config* with the seed's ``RESTORE_*`` variables of *environ* applied over it."""
    changes: dict[str, Any] = {}
    if environ.get("RESTORE_DATE", "").strip():
        changes["restore_date"] = environ["RESTORE_DATE"].strip()
    if environ.get("RESTORE_CELL", "").strip():
        changes["restore_cell"] = environ["RESTORE_CELL"].strip()
    if "RESTORE_SKIP_PREBACKUP" in environ:
        changes["restore_skip_prebackup"] = env_flag(environ, "RESTORE_SKIP_PREBACKUP", False)
    if environ.get("RESTORE_INTO", "").strip():
        changes["restore_into"] = Path(environ["RESTORE_INTO"].strip())
    return attrs.evolve(config, **changes) if changes else config


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.replace(" ", ",").split(",") if t.strip()]


def _env_target(name: str, env: Mapping[str, str], backup_dir: str) -> TargetSpec:
    if name == "local":
        return TargetSpec("local", backup_dir)
    if name == "s3":
        bucket = _required(env, "BACKUP_S3_BUCKET", "s3")
        url = f"s3://{bucket}/{env.get('BACKUP_S3_PREFIX', '').strip('/')}".rstrip("/")
        options: dict[str, Any] = {}
        if env.get("AWS_ACCESS_KEY_ID"):
            options["key"] = env["AWS_ACCESS_KEY_ID"]
            options["secret"] = env.get("AWS_SECRET_ACCESS_KEY", "")
        client: dict[str, str] = {}
        if env.get("BACKUP_S3_ENDPOINT"):
            client["endpoint_url"] = env["BACKUP_S3_ENDPOINT"]
        region = (
            env.get("BACKUP_S3_REGION") or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
        )
        if region:
            client["region_name"] = region
        if client:
            options["client_kwargs"] = client
        return TargetSpec("s3", url, options)
    if name == "oss":
        bucket = _required(env, "BACKUP_OSS_BUCKET", "oss")
        url = f"oss://{bucket}/{env.get('BACKUP_OSS_PREFIX', '').strip('/')}".rstrip("/")
        options = {"endpoint": _required(env, "BACKUP_OSS_ENDPOINT", "oss")}
        if env.get("OSS_ACCESS_KEY_ID"):
            options["key"] = env["OSS_ACCESS_KEY_ID"]
            options["secret"] = env.get("OSS_ACCESS_KEY_SECRET", "")
        return TargetSpec("oss", url, options)
    if name == "nas":
        if env.get("BACKUP_NAS_PATH"):
            return TargetSpec("nas", env["BACKUP_NAS_PATH"])
        if env.get("BACKUP_NAS_RSYNC"):
            return TargetSpec("nas", _rsync_url(env["BACKUP_NAS_RSYNC"]))
        raise ConfigError("target nas needs BACKUP_NAS_PATH or BACKUP_NAS_RSYNC")
    key = name.upper().replace("-", "_")
    custom = env.get(f"BACKUP_TARGET_{key}_URL")
    if not custom:
        raise ConfigError(
            f"unknown target {name!r} in BACKUP_TARGETS",
            hint=f"use local, s3, oss or nas, or give its URL in BACKUP_TARGET_{key}_URL",
        )
    return TargetSpec(name, custom)


def _rsync_url(dest: str) -> str:
    """``host::module/path`` and ``user@host:path`` as URLs the rsync target reads."""
    if "://" in dest:
        return dest
    if "::" in dest:
        host, _, rest = dest.partition("::")
        return f"rsync://{host}/{rest}"
    return f"rsync+ssh://{dest.replace(':', '/', 1)}"


def _required(env: Mapping[str, str], key: str, target: str) -> str:
    value = env.get(key, "").strip()
    if not value:
        raise ConfigError(
            f"target {target} needs {key}", hint=f"set {key} or remove {target} from BACKUP_TARGETS"
        )
    return value


# -- TOML -------------------------------------------------------------------

_TOP_KEYS = {f.name for f in attrs.fields(Config)} - {
    "cells",
    "targets",
    "extra",
    "target_retention",
    "source",
    "fleet",
} | {
    "fleet",
    "cells",
    "targets",
    "alerts",
}
_CELL_KEYS = {"paths", "exclude", "dumpers"}
_TARGET_KEYS = {"url", "options", "retention"}


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            match = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = (
                f"did you mean {match[0]!r}?"
                if match
                else f"known keys: {', '.join(sorted(allowed))}"
            )
            raise ConfigError(f"{where}: unknown key {key!r}", hint=hint)


#: The type each top-level scalar of a TOML file must have.
_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "backup_dir": (str,),
    "codec": (str,),
    "level": (int,),
    "jobs": (int,),
    "verify_after_backup": (bool,),
    "max_chain": (int,),
    "checksum": (bool,),
    "lock_ttl": (int, float),
    "backup_type": (str,),
    "restore_date": (str,),
    "restore_cell": (str,),
    "restore_skip_prebackup": (bool,),
    "restore_into": (str,),
    "verify_level": (str,),
    "metrics_file": (str,),
    "max_age": (int, float),
    "log_keep_days": (int, float),
    "progress_interval": (int, float),
    "hooks_dir": (str,),
    "restore_hooks_dir": (str,),
    "hook_timeout": (int, float),
    "dr_site_id": (str,),
    "dr_pull_only": (bool,),
    "dr_targets": (str, list),
    "dr_watch_primary": (str,),
    "dr_watch_urls": (str, list),
    "dr_watch_probes": (int,),
    "dr_watch_window": (int, float),
    "dr_watch_interval": (int, float),
    "dr_watch_heartbeat_age": (int, float),
    "dr_switch_command": (str,),
    "dr_switch_k8s": (str,),
    "encrypt_recipients": (str, list),
    "encrypt_recipients_file": (str,),
    "age_identity": (str,),
    "signing_key": (str,),
    "verify_keys": (str, list),
    "require_signed": (bool,),
    "object_lock": (str,),
}
_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


def _check_type(where: str, key: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python, but `jobs = true` is a mistake, not 1.
    ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
    if not ok:
        wanted = (
            "a number"
            if float in types
            else " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        )
        raise ConfigError(f"{where}: {key} must be {wanted}, not {value!r}")


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, not {value!r}")
    return value


def _strings(where: str, key: str, value: Any) -> list[str]:
    """A list of strings; a single string is a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings, not {value!r}")
    return value


def load_toml(path: Path) -> Config:
    """Build a :class:`Config` from a TOML file (see ``docs/configuration.md``)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", hint="check --config") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory", hint="check --config") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _check_keys(str(path), data, _TOP_KEYS)
    if "backup_dir" not in data:
        raise ConfigError(f"{path}: backup_dir is missing")
    cells = []
    for name, body in _table(f"{path}: [cells]", data.get("cells", {})).items():
        where = f"{path} [cells.{name}]"
        body = _table(f"{path}: [cells.{name}]", body)
        _check_keys(where, body, _CELL_KEYS)
        dumpers = body.get("dumpers", ())
        if not isinstance(dumpers, list | tuple):
            raise ConfigError(f"{where}: dumpers must be a list, not {dumpers!r}")
        dumpers = [
            DumperSpec.from_mapping(d, where=f"{where} dumpers[{i}]") for i, d in enumerate(dumpers)
        ]
        cells.append(
            Cell(
                name,
                _strings(where, "paths", body.get("paths", [])),
                exclude=_strings(where, "exclude", body.get("exclude", [])),
                dumpers=dumpers,
            )
        )
    targets = []
    target_retention: dict[str, RetentionPolicy] = {}
    for name, body in _table(f"{path}: [targets]", data.get("targets", {})).items():
        if not isinstance(body, dict) or "url" not in body:
            raise ConfigError(f"{path}: [targets.{name}] needs a url")
        where = f"{path} [targets.{name}]"
        _check_keys(where, body, _TARGET_KEYS)
        _check_type(where, "url", body["url"], (str,))
        options = _table(f"{path}: [targets.{name}.options]", body.get("options", {}))
        targets.append(TargetSpec(name, body["url"], dict(options)))
        if "retention" in body:
            where_r = f"{path} [targets.{name}.retention]"
            target_retention[name] = RetentionPolicy.from_mapping(
                _table(where_r, body["retention"]), where=where_r
            )
    alerts = _table(f"{path}: [alerts]", data.get("alerts", {}))
    retention = RetentionPolicy.from_mapping(
        _table(f"{path}: [retention]", data.get("retention", {})), where=f"{path} [retention]"
    )
    fleet = _table(f"{path}: [fleet]", data.get("fleet", {}))
    scalars = {
        k: v
        for k, v in data.items()
        if k not in ("cells", "targets", "alerts", "retention", "fleet")
    }
    for key, value in scalars.items():
        _check_type(str(path), key, value, _SCALAR_TYPES[key])
    if "restore_into" in scalars:
        scalars["restore_into"] = Path(scalars["restore_into"])
    try:
        return Config(
            cells=cells,
            targets=targets,
            extra=dict(alerts),
            fleet=dict(fleet),
            retention=retention,
            target_retention=target_retention,
            source=path,
            **scalars,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
