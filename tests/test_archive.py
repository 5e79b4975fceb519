"""Archive ids, selectors, meta.json and sidecars."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellvault import ArchiveCorrupt, ArchiveId, ArchiveMeta, ConfigError, Selector, Sidecar
from cellvault.archive import FORMAT_VERSION, format_stamp, iso_time, parse_stamp
from cellvault.cli import _instant

from .archive_helpers import make_vault

UTC = dt.UTC
#: "2025" in Arabic-Indic digits, which a bare \d would accept.
ARABIC_2025 = "\u0662\u0660\u0662\u0665"


def at(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)


def ident(cell: str, stamp: str) -> ArchiveId:
    return ArchiveId(cell, at(stamp))


# -- ids --------------------------------------------------------------------


def test_id_formats_as_the_seed_names_packages() -> None:
    assert str(ident("crm", "20250101_020000")) == "cell_crm_20250101_020000"


def test_id_parse_round_trip() -> None:
    parsed = ArchiveId.parse("cell_crm_20250101_020000")
    assert parsed.cell == "crm"
    assert parsed.when == dt.datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
    assert parsed.stamp == "20250101_020000"
    assert str(parsed) == "cell_crm_20250101_020000"


@pytest.mark.parametrize("cell", ["my_cell", "my-cell", "a_1-b_2", "db_2025", "x", "0cell"])
def test_id_cell_names_with_underscores_and_dashes(cell: str) -> None:
    text = f"cell_{cell}_20250101_020000"
    parsed = ArchiveId.parse(text)
    assert parsed.cell == cell
    assert str(parsed) == text
    assert ArchiveId.is_id(text)


def test_id_whose_cell_name_looks_like_a_stamp() -> None:
    parsed = ArchiveId.parse("cell_x_20240101_010101_20250101_020000")
    assert parsed.cell == "x_20240101_010101"
    assert parsed.stamp == "20250101_020000"


#: Ids of the right shape whose stamp is no real instant: is_id says yes, parse refuses.
SHAPED_BUT_IMPOSSIBLE = {
    "cell_crm_20251301_020000",
    "cell_crm_20250101_250000",
    "cell_crm_20250230_020000",
}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cell_crm",
        "crm_20250101_020000",
        "cell__20250101_020000",
        "cell_CRM_20250101_020000",
        "cell_crm_20250101_0200",
        "cell_crm_20250101020000",
        "cell_crm_20250101_020000.tar.zst",
        "cell_crm_20251301_020000",  # month 13
        "cell_crm_20250101_250000",  # hour 25
        "cell_crm_20250230_020000",  # 30 February
        "cell_-crm_20250101_020000",
        f"cell_crm_{ARABIC_2025}0101_020000",  # Unicode digits are not stamp digits
        " cell_crm_20250101_020000",
    ],
)
def test_malformed_ids_are_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        ArchiveId.parse(text)
    assert "malformed archive" in str(info.value)
    # is_id checks the shape only: exactly the impossible stamps pass it.
    assert ArchiveId.is_id(text) is (text in SHAPED_BUT_IMPOSSIBLE)


def test_is_id_rejects_shapes() -> None:
    assert ArchiveId.is_id("cell_crm_20250101_020000")
    assert not ArchiveId.is_id("cell_crm_20250101_020000.json")
    assert not ArchiveId.is_id(f"cell_crm_{ARABIC_2025}0101_020000")


def test_ids_need_aware_whole_second_instants() -> None:
    with pytest.raises(ValueError):
        ArchiveId("crm", dt.datetime(2025, 1, 1, 2, 0))  # naive
    with pytest.raises(ValueError):
        ArchiveId("crm", dt.datetime(2025, 1, 1, 2, 0, 0, 5, tzinfo=UTC))
    with pytest.raises(ConfigError):
        ArchiveId("CRM", at("20250101_020000"))
    with pytest.raises(ConfigError):
        ArchiveId("logs", at("20250101_020000"))


def test_id_stamp_is_utc_whatever_the_zone() -> None:
    east = dt.timezone(dt.timedelta(hours=8))
    a = ArchiveId("crm", dt.datetime(2025, 1, 1, 10, 0, tzinfo=east))
    assert str(a) == "cell_crm_20250101_020000"
    assert a == ident("crm", "20250101_020000")


def test_ids_order_by_cell_then_time() -> None:
    ids = [
        ident("crm", "20250102_000000"),
        ident("billing", "20250103_000000"),
        ident("crm", "20250101_235959"),
        ident("billing", "20250101_000000"),
    ]
    assert [str(i) for i in sorted(ids)] == [
        "cell_billing_20250101_000000",
        "cell_billing_20250103_000000",
        "cell_crm_20250101_235959",
        "cell_crm_20250102_000000",
    ]
    # Within a cell the string order is the time order (the stamp is fixed width).
    crm = [i for i in ids if i.cell == "crm"]
    assert sorted(crm) == sorted(crm, key=str)


def test_stamp_helpers() -> None:
    assert format_stamp(dt.datetime(2025, 1, 1, 2, 3, 4, tzinfo=UTC)) == "20250101_020304"
    assert parse_stamp("20250101_020304") == dt.datetime(2025, 1, 1, 2, 3, 4, tzinfo=UTC)
    with pytest.raises(ValueError):
        format_stamp(dt.datetime(2025, 1, 1))
    with pytest.raises(ConfigError):
        parse_stamp("2025-01-01")
    # Years before 1000 keep four digits, so the id still parses.
    old = ArchiveId("crm", dt.datetime(999, 1, 2, tzinfo=UTC))
    assert str(old) == "cell_crm_09990102_000000"
    assert ArchiveId.parse(str(old)) == old


cell_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True).filter(
    lambda n: n != "logs"
)
instants = st.datetimes(
    min_value=dt.datetime(1, 1, 1),
    max_value=dt.datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
).map(lambda d: d.replace(microsecond=0))


@settings(max_examples=40, deadline=None)
@given(cell=cell_names, when=instants)
def test_id_round_trip_property(cell: str, when: dt.datetime) -> None:
    a = ArchiveId(cell, when)
    text = str(a)
    assert len(text) == len(f"cell_{cell}_") + 15
    assert ArchiveId.is_id(text)
    assert ArchiveId.parse(text) == a
    assert str(ArchiveId.parse(text)) == text


@settings(max_examples=40, deadline=None)
@given(cell=cell_names, a=instants, b=instants)
def test_id_order_matches_time_order_property(cell: str, a: dt.datetime, b: dt.datetime) -> None:
    ia, ib = ArchiveId(cell, a), ArchiveId(cell, b)
    assert (ia < ib) == (a < b)
    assert (str(ia) < str(ib)) == (a < b)


# -- selectors --------------------------------------------------------------

ARCHIVES = [
    ident("crm", "20241231_230000"),
    ident("crm", "20250101_020000"),
    ident("crm", "20250101_020030"),
    ident("crm", "20250101_080000"),
    ident("crm", "20250102_020000"),
]


def pick(selector: Selector, ids: list[ArchiveId] = ARCHIVES) -> str | None:
    matching = sorted(i for i in ids if selector.matches(i))
    return str(matching[-1]) if matching else None


def test_selector_latest() -> None:
    sel = Selector.parse("latest")
    assert sel.kind == "latest"
    assert pick(sel) == "cell_crm_20250102_020000"
    assert Selector.parse("  latest ").kind == "latest"


def test_selector_exact_id() -> None:
    sel = Selector.parse("cell_crm_20250101_020000")
    assert sel.kind == "id"
    assert pick(sel) == "cell_crm_20250101_020000"
    assert pick(Selector.parse("cell_crm_20250101_020001")) is None
    assert not sel.matches(ident("billing", "20250101_020000"))


def test_selector_prefix_matches_full_stamp() -> None:
    sel = Selector.parse("20250101_0200")
    assert sel.kind == "prefix"
    assert sel.matches(ident("crm", "20250101_020000"))
    assert not sel.matches(ident("crm", "20250101_021000"))
    # The newest match wins.
    assert pick(sel) == "cell_crm_20250101_020030"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20250101", "cell_crm_20250101_080000"),
        ("20250101_02", "cell_crm_20250101_020030"),
        ("20250101_020000", "cell_crm_20250101_020000"),
        ("20241231", "cell_crm_20241231_230000"),
        ("20250103", None),
    ],
)
def test_selector_prefixes(text: str, expected: str | None) -> None:
    assert pick(Selector.parse(text)) == expected


def test_selector_iso_time_at_or_before_utc() -> None:
    sel = Selector.parse("2025-01-01T05:00:00Z")
    assert sel.kind == "before"
    assert sel.before == dt.datetime(2025, 1, 1, 5, 0, tzinfo=UTC)
    assert pick(sel) == "cell_crm_20250101_020030"
    # "At": an archive stamped exactly then is a match.
    assert pick(Selector.parse("2025-01-01T08:00:00Z")) == "cell_crm_20250101_080000"
    assert pick(Selector.parse("2025-01-01T07:59:59Z")) == "cell_crm_20250101_020030"
    assert pick(Selector.parse("2024-01-01T00:00:00Z")) is None


def test_selector_iso_time_with_a_lowercase_z_is_utc() -> None:
    # RFC 3339 allows "z" (and "t"); an operator may type either.
    for text in ("2025-01-01T05:00:00z", "2025-01-01t05:00:00z"):
        sel = Selector.parse(text)
        assert sel.before == dt.datetime(2025, 1, 1, 5, 0, tzinfo=UTC)
        assert pick(sel) == "cell_crm_20250101_020030"
    with pytest.raises(ConfigError, match="malformed restore date"):
        Selector.parse("2025-01-01T05:00:00zz")


def test_selector_iso_time_with_zone() -> None:
    sel = Selector.parse("2025-01-01T10:00:15+08:00")
    assert sel.before == dt.datetime(2025, 1, 1, 2, 0, 15, tzinfo=UTC)
    assert pick(sel) == "cell_crm_20250101_020000"


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2025-01-01", dt.datetime(2025, 1, 1, tzinfo=UTC)),
        ("2025-01-01 02:00", dt.datetime(2025, 1, 1, 2, tzinfo=UTC)),
        ("2025-01-01T10:00:15+0800", dt.datetime(2025, 1, 1, 2, 0, 15, tzinfo=UTC)),
        ("2025-01-01T02:00:00.250Z", dt.datetime(2025, 1, 1, 2, 0, 0, 250000, tzinfo=UTC)),
        ("2025-01-01T02:00:00,5-01:00", dt.datetime(2025, 1, 1, 3, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_selector_iso_time_shapes(text: str, utc: dt.datetime) -> None:
    assert Selector.parse(text).before == utc


def test_selector_iso_time_without_zone_is_utc() -> None:
    sel = Selector.parse("2025-01-01T02:00:29")
    assert sel.before == dt.datetime(2025, 1, 1, 2, 0, 29, tzinfo=UTC)
    assert pick(sel) == "cell_crm_20250101_020000"


@pytest.fixture
def far_east(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is UTC+8: a time without a zone is still UTC."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_time_without_a_zone_is_utc_whatever_the_local_zone(far_east: None) -> None:
    sel = Selector.at_or_before(dt.datetime(2025, 1, 1, 2, 0, 29))
    assert (sel.text, sel.kind) == ("2025-01-01T02:00:29", "before")
    assert sel.before == dt.datetime(2025, 1, 1, 2, 0, 29, tzinfo=UTC)
    assert sel.before is not None and sel.before.utcoffset() == dt.timedelta(0)
    assert pick(sel) == "cell_crm_20250101_020000"
    parsed = Selector.parse("2025-01-01T02:00:29")
    assert parsed == sel
    with pytest.raises(ConfigError) as info:
        Selector.at_or_before(dt.datetime(1, 1, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    assert info.value.message == (
        "restore date '0001-01-01T00:00:00+01:00' is outside the range of dates "
        "(year 1 to 9999 in UTC)"
    )
    assert info.value.hint == "give a date between 0001-01-02 and 9999-12-30"


def test_selector_at_or_before() -> None:
    sel = Selector.at_or_before(dt.datetime(2025, 1, 1, 9, 0))
    assert pick(sel) == "cell_crm_20250101_080000"
    east = dt.timezone(dt.timedelta(hours=8))
    sel = Selector.at_or_before(dt.datetime(2025, 1, 1, 10, 0, 30, tzinfo=east))
    assert pick(sel) == "cell_crm_20250101_020030"


@pytest.mark.parametrize(
    "text",
    [
        "2025-13-01",
        "20251301",
        "20250101_25",
        "20250132",
        "20250230",
        "20250101_0260",
        "20250101_020060",
        "20250101_",
        "20250101_0200000",
        "2025010102",
        "yesterday",
        "",
        "now",
        "2025-01-01T25:00:00",
        f"{ARABIC_2025}0101",
        # What fromisoformat reads but is no RFC 3339 time: a zone after a "z",
        # week and ordinal dates, a time without its date's dashes.
        "2025-01-01T05:00:00z+00:00",
        "2025-01-01T05:00:00Z+08:00",
        "2025-W01-1",
        "2025-001",
        "20250101T050000",
    ],
)
def test_malformed_dates_are_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        Selector.parse(text)
    message = str(info.value)
    assert "malformed restore date" in message
    assert repr(text.strip()) in message
    assert info.value.hint  # says what a good date looks like
    assert info.value.exit_code == 2


def test_malformed_prefix_message_says_no_such_date() -> None:
    with pytest.raises(ConfigError, match="no such date or time"):
        Selector.parse("20251301")
    with pytest.raises(ConfigError, match=r"YYYYMMDD"):
        Selector.parse("20250101_25")


def test_malformed_id_selector() -> None:
    with pytest.raises(ConfigError, match="malformed archive id"):
        Selector.parse("cell_crm_2025")


# -- meta and sidecar --------------------------------------------------------


def sample_meta(**over: object) -> ArchiveMeta:
    fields: dict[str, object] = dict(
        id=ident("crm", "20250101_020000"),
        kind="incremental",
        backed_at=dt.datetime(2025, 1, 1, 2, 0, 0, 123456, tzinfo=UTC),
        host="node-1",
        version="0.1.0",
        codec="zstd",
        parent=ident("crm", "20241231_020000"),
        chain=(ident("crm", "20241230_020000"), ident("crm", "20241231_020000")),
        roots={"crm": "/srv/crm"},
        reason="scheduled",
    )
    fields.update(over)
    return ArchiveMeta(**fields)  # type: ignore[arg-type]


def test_meta_json_round_trip() -> None:
    meta = sample_meta()
    data = json.loads(meta.to_json())
    assert data["format"] == FORMAT_VERSION
    assert data["id"] == "cell_crm_20250101_020000"
    assert data["cell"] == "crm"
    assert data["kind"] == "incremental"
    assert data["parent"] == "cell_crm_20241231_020000"
    assert data["backed_at"] == "2025-01-01T02:00:00.123456Z"
    assert data["host"] == "node-1"
    assert data["cellvault_version"] == "0.1.0"
    assert data["codec"] == "zstd"
    assert ArchiveMeta.from_dict(data) == meta


def test_meta_backed_at_in_another_zone_is_stored_as_utc() -> None:
    east = dt.timezone(dt.timedelta(hours=8))
    meta = sample_meta(backed_at=dt.datetime(2025, 1, 1, 10, 0, tzinfo=east), parent=None, chain=())
    data = meta.to_dict()
    assert data["backed_at"] == "2025-01-01T02:00:00Z"
    assert data["parent"] is None
    back = ArchiveMeta.from_dict(data)
    assert back.backed_at == meta.backed_at
    assert back.backed_at.tzinfo == UTC


@pytest.mark.parametrize(
    "change",
    [
        {"backed_at": None},
        {"kind": "weekly"},
        {"id": "cell_crm_garbage"},
        {"backed_at": "not a time"},
        {"parent": "nope"},
        {"backed_at": "2025-01-01T02:00:00z"},  # the zone is "Z", as fromisoformat reads it
    ],
)
def test_unusable_meta_is_archive_corrupt(change: dict[str, object]) -> None:
    data = sample_meta().to_dict()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(ArchiveCorrupt) as info:
        ArchiveMeta.from_dict(data)
    assert info.value.member == "meta.json"


def test_sidecar_json_round_trip() -> None:
    sidecar = Sidecar(
        meta=sample_meta(),
        data_name="cell_crm_20250101_020000.tar.zst",
        size=1234,
        sha256="ab" * 32,
        files=7,
        bytes_read=99,
    )
    data = json.loads(sidecar.to_json())
    assert data["data"] == "cell_crm_20250101_020000.tar.zst"
    assert data["size"] == 1234
    assert data["sha256"] == "ab" * 32
    assert data["backed_at"] == "2025-01-01T02:00:00.123456Z"
    back = Sidecar.from_json(sidecar.to_json())
    assert back == sidecar
    assert back.id == sidecar.meta.id


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b'{"id": "cell_crm_20250101_020000"}'],
)
def test_unusable_sidecar_is_archive_corrupt(raw: bytes) -> None:
    with pytest.raises(ArchiveCorrupt) as info:
        Sidecar.from_json(raw, name="cell_crm_20250101_020000")
    assert "cell_crm_20250101_020000" in str(info.value)


def test_sidecar_without_size_is_archive_corrupt() -> None:
    body = json.loads(
        Sidecar(sample_meta(), "cell_crm_20250101_020000.tar.zst", 1, "00" * 32).to_json()
    )
    del body["size"]
    with pytest.raises(ArchiveCorrupt, match="sidecar is unusable"):
        Sidecar.from_json(json.dumps(body).encode(), name="x")


# -- selectors through a vault ----------------------------------------------------------------


def test_restore_picks_the_archive_the_selector_names(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    vault = make_vault(tmp_path / "backup", [src])  # stamps 20250101_020000, _020001, ...
    ids = []
    for version in range(3):
        (src / "v").write_text(str(version))
        ids.append(vault.backup().cells[0].archive)
    assert ids == [f"cell_crm_20250101_02000{i}" for i in range(3)]

    def restored(select: str) -> str:
        out = tmp_path / "out" / select.replace(":", "-")
        report = vault.restore(select, into=out)
        assert report.ok, report.error
        assert report.cells[0].archive is not None
        return (out / "crm" / "crm" / "v").read_text()

    assert restored("latest") == "2"
    assert restored("cell_crm_20250101_020001") == "1"
    assert restored("20250101_0200") == "2"  # the newest match wins
    assert restored("20250101_020000") == "0"
    assert restored("2025-01-01T02:00:01Z") == "1"
    assert restored("2025-01-01T10:00:01+08:00") == "1"
    assert restored("2025-01-01T02:00:00.5") == "0"


@pytest.mark.parametrize("text", ["2025-13-01", "20251301", "20250101_25", "yesterday"])
def test_restore_with_a_malformed_date_touches_nothing(tmp_path: Path, text: str) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    (src / "f").write_text("live")
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    with pytest.raises(ConfigError, match="malformed restore date"):
        vault.restore(text)
    assert (src / "f").read_text() == "live"
    assert len(vault.list()) == 1  # not even a safety backup was taken


# -- what the parsers say, and when -------------------------------------------------------------


def test_now_is_utc_to_the_second() -> None:
    from cellvault.archive import utcnow

    before = dt.datetime.now(UTC)
    now = utcnow()
    assert now.tzinfo is UTC and now.microsecond == 0
    assert before.replace(microsecond=0) <= now <= dt.datetime.now(UTC)


def test_malformed_dates_say_what_a_good_one_looks_like() -> None:
    with pytest.raises(ConfigError) as info:
        Selector.parse("yesterday")
    assert info.value.hint == (
        "use 'latest', an archive id, a date prefix such as 20250101_0200, "
        "or an ISO time such as 2025-01-01T02:00:00Z"
    )
    with pytest.raises(ConfigError) as info:
        Selector.parse("20250132")
    assert info.value.message == "malformed restore date '20250132': no such date or time"
    assert info.value.hint == (
        "a date prefix is YYYYMMDD, optionally followed by _HH, _HHMM or _HHMMSS"
    )
    with pytest.raises(ConfigError) as info:
        Selector.parse(" 0001-01-01T00:30:00+01:00 ")
    assert info.value.message == (
        "restore date '0001-01-01T00:30:00+01:00' is outside the range of dates "
        "(year 1 to 9999 in UTC)"
    )


def test_a_selector_is_what_the_operator_typed() -> None:
    for text in ("latest", "cell_crm_20250101_020000", "20250101_02", "2025-01-01T02:00:00Z"):
        selector = Selector.parse(f"  {text}\n")
        assert selector.text == str(selector) == text


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"parent": 5}, "TypeError: an archive id is a number, not a string"),
        (
            {"chain": ["cell_crm_20241230_020000", None]},
            "TypeError: an archive id is null, not a string",
        ),
        ({"chain": "cell_crm_20241230_020000"}, "TypeError: chain is a string, not a list"),
        ({"epoch": 0}, "ValueError: epoch 0 is not a positive integer"),
        ({"epoch": True}, "ValueError: epoch True is not a positive integer"),
        ({"backed_at": 5}, "TypeError: backed_at is a number, not a string"),
        ({"backed_at": ["2025"]}, "TypeError: backed_at is an array, not a string"),
        ({"kind": "weekly"}, "ValueError: kind 'weekly' is neither full nor incremental"),
        ({"kind": ["full"]}, "ValueError: kind ['full'] is neither full nor incremental"),
        ({"host": ["a"]}, "TypeError: host is an array, not a string"),
        ({"cellvault_version": {}}, "TypeError: cellvault_version is an object, not a string"),
        ({"codec": True}, "TypeError: codec is true or false, not a string"),
        ({"reason": None}, "TypeError: reason is null, not a string"),
        ({"host": 1.5}, "TypeError: host is a number, not a string"),
        # from_dict is also called with Python values, not only parsed JSON.
        ({"host": b"bytes"}, "TypeError: host is not JSON, not a string"),
    ],
)
def test_unusable_meta_says_which_value(change: dict[str, object], why: str) -> None:
    data = {**sample_meta().to_dict(), **change}
    with pytest.raises(ArchiveCorrupt) as info:
        ArchiveMeta.from_dict(data)
    assert info.value.detail == f"meta.json is unusable ({why})"
    assert info.value.archive == "cell_crm_20250101_020000"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(
        ["id", "kind", "backed_at", "host", "cellvault_version", "codec", "parent", "chain",
         "roots", "reason", "format", "epoch", "site", "data", "size", "sha256", "files",
         "bytes_read", "checksums", "manifest_size", "lease", "encryption", "manifest_sha256",
         "signature"]
    ),
    value=_JSON,
)  # fmt: skip
def test_any_json_value_in_meta_or_a_sidecar_is_read_or_refused_as_corrupt(
    key: str, value: object
) -> None:
    """Whatever a crafted meta.json or sidecar holds, the error is ArchiveCorrupt, never another."""
    sidecar = json.loads(full_sidecar().to_json())
    sidecar[key] = value
    meta = {**sample_meta().to_dict(), key: value}
    for read in (
        lambda: ArchiveMeta.from_dict(meta),
        lambda: Sidecar.from_json(json.dumps(sidecar).encode(), name=NAME, cell="crm"),
    ):
        with contextlib.suppress(ArchiveCorrupt):
            read()


def test_a_signature_covers_the_fields_as_read_unknown_ones_too() -> None:
    from cellvault.archive import canonical_json

    sidecar = Sidecar(sample_meta(), "cell_crm_20250101_020000.tar.zst", 1, "00" * 32)
    assert sidecar.canonical() == canonical_json(sidecar.body())
    assert json.loads(sidecar.canonical())["data"] == "cell_crm_20250101_020000.tar.zst"
    body = {**json.loads(sidecar.to_json()), "future": {"é": 1}}
    read = Sidecar.from_json(json.dumps(body).encode(), name="cell_crm_20250101_020000")
    assert json.loads(read.canonical()) == body
    assert read.canonical() == canonical_json(body)
    assert json.loads(read.to_json()) == body  # written back as read
    # Changed since it was read: written from its fields, the unknown one gone.
    import attrs

    changed = attrs.evolve(read, size=2)
    assert changed.canonical() == canonical_json(changed.body())
    assert "future" not in json.loads(changed.to_json())


def test_canonical_json_is_sorted_compact_utf8() -> None:
    from cellvault.archive import canonical_json

    # The bytes a signature covers: any change here breaks every signature made before.
    value = {"size": 2, "data": "é.tar.zst", "roots": {"b": "/b", "a": "/a"}, "chain": [1, None]}
    assert canonical_json(value) == (
        '{"chain":[1,null],"data":"é.tar.zst","roots":{"a":"/a","b":"/b"},"size":2}'.encode()
    )


def test_meta_fields_left_out_take_their_defaults() -> None:
    data = {"id": "cell_crm_20250101_020000", "kind": "full", "backed_at": "2025-01-01T02:00:00Z"}
    meta = ArchiveMeta.from_dict(data)
    assert (meta.host, meta.version, meta.codec, meta.reason) == ("", "", "", "scheduled")
    assert (meta.parent, meta.chain, dict(meta.roots)) == (None, (), {})
    assert (meta.format, meta.epoch, meta.site) == (FORMAT_VERSION, None, None)
    nulls = {**data, "chain": None, "parent": None, "roots": None, "epoch": None, "site": None}
    assert ArchiveMeta.from_dict(nulls) == meta
    assert ArchiveMeta.from_dict({**data, "format": "2"}).format == 2


def test_a_fenced_meta_round_trips_its_epoch_and_site() -> None:
    meta = sample_meta(epoch=3, site="east", reason="pre-restore", roots={"a": "/a", "b": "/b"})
    data = json.loads(meta.to_json())
    assert (data["epoch"], data["site"], data["reason"]) == (3, "east", "pre-restore")
    assert data["chain"] == ["cell_crm_20241230_020000", "cell_crm_20241231_020000"]
    assert data["roots"] == {"a": "/a", "b": "/b"}
    assert ArchiveMeta.from_dict(data) == meta
    assert "epoch" not in sample_meta().to_dict() and "site" not in sample_meta().to_dict()
    assert ArchiveMeta.from_dict({**data, "site": 7}).site == "7"


def test_meta_json_is_written_sorted_and_indented() -> None:
    meta = sample_meta(parent=None, chain=(), roots={})
    assert meta.to_json() == (
        b"{\n"
        b'  "backed_at": "2025-01-01T02:00:00.123456Z",\n'
        b'  "cell": "crm",\n'
        b'  "cellvault_version": "0.1.0",\n'
        b'  "chain": [],\n'
        b'  "codec": "zstd",\n'
        b'  "format": 1,\n'
        b'  "host": "node-1",\n'
        b'  "id": "cell_crm_20250101_020000",\n'
        b'  "kind": "incremental",\n'
        b'  "parent": null,\n'
        b'  "reason": "scheduled",\n'
        b'  "roots": {}\n'
        b"}\n"
    )


@pytest.mark.parametrize(
    ("data", "archive", "why"),
    [
        ([], "?", "a list, not an object"),
        ({"kind": "full", "backed_at": "2025-01-01T02:00:00Z"}, "?", "KeyError: 'id'"),
        (
            {"id": 5, "kind": "full", "backed_at": "2025-01-01T02:00:00Z"},
            "5",
            "TypeError: id is a number, not a string",
        ),
        ({"id": "cell_crm_20250101_020000", "kind": "full"}, None, "KeyError: 'backed_at'"),
        (
            {"id": "cell_crm_2025", "kind": "full", "backed_at": "2025-01-01T02:00:00Z"},
            "cell_crm_2025",
            "ConfigError: malformed archive id 'cell_crm_2025' "
            "(archive ids look like cell_crm_20250101_020000)",
        ),
        (
            {"id": "cell_crm_20250101_020000", "kind": "full", "backed_at": "2025-01-01T02:00:00Z",
             "roots": {"a": "rel"}},
            None,
            "root 'a' names 'rel', not an absolute path",
        ),
        (
            {"id": "cell_crm_20250101_020000", "kind": "full", "backed_at": "2025-01-01T02:00:00Z",
             "parent": "cell_crm_20250102_020000"},
            None,
            "names archive 'cell_crm_20250102_020000', which is not an older archive of cell crm",
        ),
    ],
)  # fmt: skip
def test_unusable_meta_names_the_archive_and_why(
    data: object, archive: str | None, why: str
) -> None:
    with pytest.raises(ArchiveCorrupt) as info:
        ArchiveMeta.from_dict(data)  # type: ignore[arg-type]
    assert info.value.detail == f"meta.json is unusable ({why})"
    assert info.value.archive == (archive or "cell_crm_20250101_020000")
    assert info.value.member == "meta.json"


NAME = "cell_crm_20250101_020000"


def full_sidecar(**over: object) -> Sidecar:
    fields: dict[str, object] = dict(
        meta=sample_meta(),
        data_name=f"{NAME}.tar.zst",
        size=1234,
        sha256="ab" * 32,
        files=7,
        bytes_read=99,
        checksums={"md5": "00" * 16, "crc64ecma": "1" * 16},
        manifest_size=555,
        lease="token-1",
        manifest_sha256="cd" * 32,
        signature={"alg": "ed25519", "key": "k1", "sig": "c2ln"},
    )
    fields.update(over)
    return Sidecar(**fields)  # type: ignore[arg-type]


def test_every_sidecar_field_round_trips() -> None:
    sidecar = full_sidecar()
    raw = sidecar.to_json()
    # Sorted and indented by two, as meta.json.
    assert raw.startswith(b'{\n  "backed_at": "2025-01-01T02:00:00.123456Z",\n  "bytes_read": 99,')
    assert raw.endswith(
        b'\n  "signature": {\n    "alg": "ed25519",\n    "key": "k1",\n    "sig": "c2ln"\n  },'
        b'\n  "size": 1234\n}\n'
    )
    data = json.loads(raw)
    assert data["checksums"] == {"md5": "00" * 16, "crc64ecma": "1" * 16}
    assert (data["manifest_size"], data["lease"]) == (555, "token-1")
    assert data["manifest_sha256"] == "cd" * 32
    assert data["signature"] == {"alg": "ed25519", "key": "k1", "sig": "c2ln"}
    assert (data["files"], data["bytes_read"]) == (7, 99)
    back = Sidecar.from_json(sidecar.to_json(), name=NAME, cell="crm")
    assert back == sidecar
    assert back.signed_body == canonical(data)
    sealed = full_sidecar(data_name=f"{NAME}.tar.zst.age", encryption=("fp1", "fp2"))
    data = json.loads(sealed.to_json())
    assert data["encryption"] == {"scheme": "age", "recipients": ["fp1", "fp2"]}
    assert Sidecar.from_json(sealed.to_json(), name=NAME) == sealed
    bare = Sidecar(sample_meta(), f"{NAME}.tar.gz", 0, "00" * 32)
    data = json.loads(bare.to_json())
    for absent in ("checksums", "manifest_size", "lease", "encryption", "manifest_sha256"):
        assert absent not in data
    assert "signature" not in data
    back = Sidecar.from_json(bare.to_json(), name=NAME)
    assert back == bare and back.signature is None and back.encryption is None
    del data["files"], data["bytes_read"]
    nulls = {**data, "checksums": None, "manifest_size": None, "lease": None}
    nulls |= {"manifest_sha256": None, "signature": None, "encryption": None}
    assert Sidecar.from_json(json.dumps(nulls).encode(), name=NAME) == bare
    odd = {**data, "checksums": {"md5": 5}, "lease": 12, "manifest_size": 0}
    back = Sidecar.from_json(json.dumps(odd).encode(), name=NAME)
    assert (dict(back.checksums), back.lease, back.manifest_size) == ({"md5": "5"}, "12", 0)


def canonical(data: dict[str, object]) -> bytes:
    from cellvault.archive import canonical_json

    return canonical_json({k: v for k, v in data.items() if k != "signature"})


def test_a_sidecar_up_to_its_size_limit_is_read() -> None:
    from cellvault.trust import MAX_SIDECAR_BYTES

    raw = Sidecar(sample_meta(), f"{NAME}.tar.zst", 1, "00" * 32).to_json()
    padded = raw + b" " * (MAX_SIDECAR_BYTES - len(raw))
    assert Sidecar.from_json(padded, name=NAME).size == 1
    with pytest.raises(ArchiveCorrupt) as info:
        Sidecar.from_json(padded + b" ", name=NAME)
    assert info.value.detail == (
        f"sidecar is unusable (ValueError: {MAX_SIDECAR_BYTES + 1} bytes, "
        "more than a sidecar ever holds)"
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"checksums": ["md5"]}, "sidecar is unusable (TypeError: checksums is a list, not an object)"),
        ({"data": None}, "data name None is not"),
        ({"size": -1}, "size -1 is not a whole number >= 0"),
        ({"files": 1.5}, "files 1.5 is not a whole number >= 0"),
        ({"bytes_read": "9"}, "bytes_read '9' is not a whole number >= 0"),
        ({"manifest_size": True}, "manifest_size True is not a whole number >= 0"),
        ({"sha256": "AB" * 32}, "sha256 'ABAB"),
        ({"manifest_sha256": "xy"}, "sha256 'xy' is not 64 hex digits"),
        ({"encryption": {"scheme": "age", "recipients": ["f"]}}, "disagree"),
        ({"signature": {"alg": "a", "key": "k"}}, "signature is not an object of alg, key and sig"),
        ({"signature": {"alg": "a", "key": "k", "sig": 5}}, "signature is not an object of alg"),
        ({"signature": {"alg": "a", "key": "k", "sig": "s" * 513}}, "signature is not an object"),
        ({"signature": ["alg", "key", "sig"]}, "signature is not an object of alg, key and sig"),
        ({"id": "cell_crm_20250101_020001"}, f"sidecar stored as {NAME} says it is archive "
         "cell_crm_20250101_020001"),
        ({"id": "cell_web_20250101_020000", "cell": "web", "parent": None, "chain": []},
         f"sidecar stored as {NAME} says it is archive cell_web_20250101_020000"),
    ],
)  # fmt: skip
def test_an_altered_sidecar_says_what_is_wrong(change: dict[str, object], why: str) -> None:
    data = {**json.loads(Sidecar(sample_meta(), f"{NAME}.tar.zst", 1, "00" * 32).to_json())}
    data.update(change)
    with pytest.raises(ArchiveCorrupt) as info:
        Sidecar.from_json(json.dumps(data).encode(), name=NAME, cell="crm")
    assert why in info.value.detail
    assert info.value.archive in (NAME, str(data["id"]))


def test_a_sidecar_in_another_cells_folder_is_refused() -> None:
    raw = Sidecar(sample_meta(), f"{NAME}.tar.zst", 1, "00" * 32).to_json()
    assert Sidecar.from_json(raw, name="?", cell="crm").id == ident("crm", "20250101_020000")
    assert Sidecar.from_json(raw, name="not-an-id", cell=None).size == 1
    with pytest.raises(ArchiveCorrupt) as info:
        Sidecar.from_json(raw, name=NAME, cell="web")
    assert (
        info.value.detail == f"sidecar in the folder of cell web names archive {NAME} of cell crm"
    )
    assert info.value.hint == "the sidecar was altered or misplaced; it is ignored"
    assert info.value.archive == NAME
    with pytest.raises(ArchiveCorrupt) as info:
        Sidecar.from_json(raw, name="cell_crm_20250101_020001")
    assert info.value.hint == "the sidecar was altered or misplaced; it is ignored"
    assert info.value.archive == "cell_crm_20250101_020001"


def test_a_signature_of_up_to_512_characters_a_value_is_read() -> None:
    body = json.loads(Sidecar(sample_meta(), f"{NAME}.tar.zst", 1, "00" * 32).to_json())
    signature = {"alg": "a" * 512, "key": "k", "sig": "s" * 512, "more": ""}
    read = Sidecar.from_json(json.dumps({**body, "signature": signature}).encode(), name=NAME)
    assert read.signature == signature


def test_a_backup_kind_is_full_or_incremental() -> None:
    from cellvault.archive import to_kind

    assert (to_kind("full"), to_kind("incremental")) == ("full", "incremental")
    with pytest.raises(ConfigError) as info:
        to_kind("weekly")
    assert info.value.message == "backup kind 'weekly' is neither full nor incremental"
    with pytest.raises(ConfigError) as info:
        to_kind(None, "BACKUP_TYPE")
    assert info.value.message == "BACKUP_TYPE None is neither full nor incremental"


def test_malformed_stamps_say_why() -> None:
    with pytest.raises(ConfigError) as info:
        parse_stamp("2025")
    assert (info.value.message, info.value.hint) == (
        "malformed archive stamp '2025'",
        "expected YYYYMMDD_HHMMSS",
    )
    with pytest.raises(ConfigError) as info:
        parse_stamp("20251301_000000")
    assert info.value.message.startswith("malformed archive stamp '20251301_000000': ")
    assert info.value.hint is None
    with pytest.raises(
        ValueError, match=r"^archive stamps are made from timezone-aware datetimes$"
    ):
        format_stamp(dt.datetime(2025, 1, 1))


def test_epochs_are_positive_integers() -> None:
    data = sample_meta().to_dict()
    assert ArchiveMeta.from_dict({**data, "epoch": 1, "site": "s"}).epoch == 1
    for bad in (0, -1, 1.0, "1", False):
        with pytest.raises(ArchiveCorrupt, match="is not a positive integer"):
            ArchiveMeta.from_dict({**data, "epoch": bad})


def test_meta_times_are_utc_whatever_the_local_zone(far_east: None) -> None:
    meta = sample_meta()
    assert meta.to_dict()["backed_at"] == "2025-01-01T02:00:00.123456Z"
    back = ArchiveMeta.from_dict(meta.to_dict())
    assert back.backed_at.utcoffset() == dt.timedelta(0)
    assert back.backed_at.tzinfo is UTC
    east = {**meta.to_dict(), "backed_at": "2025-01-01T10:00:00+08:00"}
    assert ArchiveMeta.from_dict(east).backed_at.tzinfo is UTC


def test_an_altered_signature_is_ignored_with_the_sidecar() -> None:
    body = json.loads(Sidecar(sample_meta(), f"{NAME}.tar.zst", 1, "00" * 32).to_json())
    raw = json.dumps({**body, "signature": {"alg": "a"}}).encode()
    with pytest.raises(ArchiveCorrupt) as info:
        Sidecar.from_json(raw, name=NAME)
    assert info.value.detail == "signature is not an object of alg, key and sig"
    assert info.value.hint == "the sidecar was altered; it is ignored"
    assert info.value.archive == NAME
    # Read without the name it is stored as, an unusable sidecar says so.
    with pytest.raises(ArchiveCorrupt) as info:
        Sidecar.from_json(b"[]")
    assert info.value.archive == "?"
    assert info.value.detail == "sidecar is unusable (TypeError: a list, not an object)"


def test_iso_time_is_what_find_and_the_selector_read() -> None:
    assert iso_time("2025-01-31") == dt.datetime(2025, 1, 31)
    assert iso_time("2025-01-31T02:00z") == dt.datetime(2025, 1, 31, 2, tzinfo=UTC)
    assert _instant("2025-01-31T02:00", "--since") == dt.datetime(2025, 1, 31, 2, tzinfo=UTC)
    for text in ("2025-01-31T02:00:00z+00:00", "2025-W05-5", "yesterday", ""):
        with pytest.raises(ValueError, match="not an ISO date or time"):
            iso_time(text)
        with pytest.raises(ConfigError, match="is not a date or time") as info:
            _instant(text, "--since")
        assert info.value.hint == "give an ISO date or time, e.g. 2025-01-31 or 2025-01-31T02:00"
