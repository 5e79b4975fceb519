"""Each check of cellvault.trust at its edges: what passes, and what is refused with which message.

test_hostile_store.py feeds whole hostile objects through the parsers; these
check the rules one by one (the mutation group of trust.py runs them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cellvault.errors import ArchiveCorrupt
from cellvault.trust import (
    BASE_MANIFEST_BYTES,
    MAX_COUNT,
    MAX_MANIFEST_BYTES,
    MAX_RECORD_BYTES,
    PER_FILE_BYTES,
    bounded_zstd,
    check_archive_of,
    check_cell_archives,
    check_count,
    check_data_name,
    check_digest,
    check_encryption,
    check_holder,
    check_member_path,
    check_mode,
    check_name,
    check_root_name,
    check_roots,
    load_record,
    manifest_limit,
    zstd_content_size,
)

STEM = "cell_crm_20250101_020000"
ALTERED = "the sidecar or meta.json was altered; restore from another target or archive"
IGNORED = "the sidecar was altered; it is ignored (restore from another target)"


def refused(call: Any, *args: Any, **kwargs: Any) -> ArchiveCorrupt:
    with pytest.raises(ArchiveCorrupt) as info:
        call(*args, **kwargs)
    return info.value


def test_the_limits_are_what_the_docs_say() -> None:
    assert (MAX_COUNT, MAX_MANIFEST_BYTES, MAX_RECORD_BYTES) == (2**62, 4 * 2**30, 4 * 2**20)
    assert (PER_FILE_BYTES, BASE_MANIFEST_BYTES) == (16 * 2**10, 64 * 2**20)


@pytest.mark.parametrize("name", ["app", "a.b", "...", " x", "a" * 255, "é", "a\\b", ".hidden"])
def test_a_root_name_is_one_plain_name(name: str) -> None:
    assert check_root_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/a", "a\x00", "a" * 256, 7, None])
def test_a_root_name_that_is_not_plain_is_refused(name: Any) -> None:
    error = refused(check_root_name, name, archive=STEM)
    assert error.detail == f"root name {name!r} is not a plain name inside the cell"
    assert (error.archive, error.hint) == (STEM, ALTERED)
    assert refused(check_root_name, name).archive == "?"


def test_roots_map_plain_names_to_absolute_paths() -> None:
    assert check_roots(None) == {}
    assert check_roots({}) == {}
    assert check_roots({"app": "/srv/app", "db": "/"}) == {"app": "/srv/app", "db": "/"}
    error = refused(check_roots, ["app"], archive=STEM)
    assert (error.detail, error.archive) == ("roots is a list, not an object", STEM)
    assert refused(check_roots, "x").detail == "roots is a string, not an object"
    for path in ("srv/app", "", "/srv/\x00", 3, None):
        error = refused(check_roots, {"app": path}, archive=STEM)
        assert error.detail == f"root 'app' names {path!r}, not an absolute path"
        assert error.archive == STEM
    error = refused(check_roots, {"..": "/srv"}, archive=STEM)
    assert (error.detail, error.archive) == (
        "root name '..' is not a plain name inside the cell",
        STEM,
    )


@pytest.mark.parametrize(
    "suffix",
    [
        ".tar.zst",
        ".tar.gz",
        ".tar.zst.age",
        ".tar.gz.age",
        ".k1.tar.zst.age",
        ".k999999.tar.gz.age",
        ".k10.tar.zst.age",
    ],
)
def test_a_data_name_is_the_archive_id_and_a_known_suffix(suffix: str) -> None:
    assert check_data_name(STEM + suffix, STEM) == STEM + suffix


@pytest.mark.parametrize(
    "name",
    [
        STEM + ".tar",
        STEM + ".tar.zst.bak",
        "../" + STEM + ".tar.zst",
        "cell_crm_20250101_020001.tar.zst",
        STEM + ".k0.tar.zst.age",
        STEM + ".k1000000.tar.zst.age",
        STEM + ".k01.tar.zst.age",
        STEM + ".k1.tar.zst",
        STEM + ".k1.tar.xz.age",
        "x" + STEM + ".k1.tar.zst.age",
        STEM + ".k1.tar.zst.agex",
        None,
        7,
    ],
)
def test_a_data_name_that_is_not_the_archives_own_is_refused(name: Any) -> None:
    error = refused(check_data_name, name, STEM)
    assert error.detail == (
        f"data name {name!r} is not {STEM}.tar.zst or {STEM}.tar.gz (or .age after either)"
    )
    assert (error.archive, error.hint) == (STEM, IGNORED)


def test_encryption_is_age_with_recipients_exactly_when_the_data_is_sealed() -> None:
    sealed = STEM + ".tar.zst.age"
    assert check_encryption(None, STEM + ".tar.zst", STEM) is None
    assert check_encryption(None, None, STEM) is None
    assert check_encryption({"scheme": "age", "recipients": ["k"]}, sealed, STEM) == ("k",)
    good = {"scheme": "age", "recipients": ["a" * 200, "b"]}
    assert check_encryption(good, sealed, STEM) == ("a" * 200, "b")
    many = {"scheme": "age", "recipients": [f"k{n}" for n in range(64)]}
    assert len(check_encryption(many, sealed, STEM) or ()) == 64
    cases = [
        (None, sealed, "the data name and the encryption field disagree"),
        (good, STEM + ".tar.zst", "the data name and the encryption field disagree"),
        (good, None, "the data name and the encryption field disagree"),
        ("age", sealed, "encryption 'age' is not the age scheme"),
        ({"scheme": "gpg"}, sealed, "encryption {'scheme': 'gpg'} is not the age scheme"),
        ({"recipients": ["a"]}, sealed, "encryption {'recipients': ['a']} is not the age scheme"),
    ]
    not_list = "encryption recipients are not a list of key fingerprints"
    for names in (None, "a", [], [f"k{n}" for n in range(65)], ["a" * 201], [""], [7], ("a",)):
        cases.append(({"scheme": "age", "recipients": names}, sealed, not_list))
    for value, data, message in cases:
        error = refused(check_encryption, value, data, STEM)
        assert (error.detail, error.archive, error.hint) == (message, STEM, IGNORED), value


@pytest.mark.parametrize(
    ("value", "whole"), [(0, 0), (7, 7), (3.0, 3), (MAX_COUNT, MAX_COUNT), (float(2**61), 2**61)]
)
def test_a_count_is_a_whole_number_up_to_the_bound(value: Any, whole: int) -> None:
    out = check_count(value, "files")
    assert out == whole and type(out) is int


@pytest.mark.parametrize(
    "value", [-1, MAX_COUNT + 1, 1.5, math.inf, math.nan, -0.5, True, False, "3", None, [1]]
)
def test_a_count_that_is_not_whole_and_bounded_is_refused(value: Any) -> None:
    error = refused(check_count, value, "files", archive=STEM)
    assert (error.detail, error.archive) == (f"files {value!r} is not a whole number >= 0", STEM)


def test_a_missing_count_takes_its_default_only_when_it_has_one() -> None:
    assert check_count(None, "size", default=0) == 0
    assert check_count(None, "size", default=5) == 5
    assert check_count(4, "size", default=5) == 4
    assert refused(check_count, None, "size").detail == "size None is not a whole number >= 0"


def test_a_digest_is_64_lower_case_hex_digits() -> None:
    good = "0123456789abcdef" * 4
    assert check_digest(good) == good
    for bad in (good.upper(), good[:-1], good + "0", "g" * 64, None, 7, "\u0660" * 64):
        error = refused(check_digest, bad, archive=STEM)
        assert (error.detail, error.archive) == (f"sha256 {bad!r} is not 64 hex digits", STEM)


def test_a_mode_is_permission_bits_only() -> None:
    assert [check_mode(m) for m in (0, 0o644, 0o7777)] == [0, 0o644, 0o7777]
    for bad in (-1, 0o10000, True, 0.0, "644", None):
        error = refused(check_mode, bad, archive=STEM)
        assert error.detail == f"mode {bad!r} is not one a manifest records (0 to 0o7777)"
        assert error.archive == STEM


def test_a_holder_is_an_archive_of_the_same_cell_not_newer() -> None:
    assert check_holder("cell_crm_20250101_010000", STEM) == "cell_crm_20250101_010000"
    assert check_holder(STEM, STEM) == STEM
    assert check_holder("anything", "not an id") == "anything"
    for bad in (
        "cell_crm_20250101_020001",
        "cell_web_20250101_010000",
        "cell_crm_2025",
        "../cell_crm_20250101_010000",
        "cell_crm_20250101_010000x",
    ):
        error = refused(check_holder, bad, STEM)
        assert error.detail == (f"names archive {bad!r}, which is not an older archive of cell crm")
        assert (error.archive, error.hint) == (
            STEM,
            "the manifest or sidecar was altered; it is ignored",
        )


def test_a_member_path_stays_inside_the_cell() -> None:
    for good in ("a", "a/b.txt", "...", "a/.b", "a b/c"):
        assert check_member_path(good) == good
    for bad in ("", "/a", "a//b", "a/", "./a", "a/../b", "..", "a/.", "a\x00b"):
        error = refused(check_member_path, bad, archive=STEM)
        assert (error.detail, error.archive) == (f"manifest path {bad!r} leaves the cell", STEM)


def test_the_bound_of_a_manifest_copy() -> None:
    assert manifest_limit(10, 1234) == 1234
    assert manifest_limit(10, 0) == 0
    assert manifest_limit(10, MAX_MANIFEST_BYTES + 1) == MAX_MANIFEST_BYTES
    assert manifest_limit(0) == BASE_MANIFEST_BYTES
    assert manifest_limit(3) == BASE_MANIFEST_BYTES + 3 * PER_FILE_BYTES
    assert manifest_limit(10**9) == MAX_MANIFEST_BYTES


def test_the_content_size_a_zstd_frame_records(tmp_path: Path) -> None:
    path = tmp_path / "a.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"x" * 1000))
    assert zstd_content_size(path) == 1000
    path.write_bytes(zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 10))
    assert zstd_content_size(path) is None
    path.write_bytes(b"not zstd at all, and long enough")
    assert zstd_content_size(path) is None
    path.write_bytes(zstandard.ZstdCompressor().compress(b""))
    assert zstd_content_size(path) == 0


def test_decompression_stops_at_the_declared_size() -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: several reads of 1 MiB
    raw = zstandard.ZstdCompressor().compress(data)
    assert bounded_zstd(raw, len(data)) == data
    error = refused(bounded_zstd, raw, len(data) - 1, archive=STEM)
    assert error.detail == f"manifest copy expands past the {len(data) - 1} bytes declared for it"
    assert (error.archive, error.hint) == (STEM, "the object was altered or damaged; it is ignored")
    small = zstandard.ZstdCompressor().compress(b"abc")
    assert bounded_zstd(small, 3) == b"abc"
    error = refused(bounded_zstd, small, 2, what="lease")
    assert (error.detail, error.archive) == ("lease expands past the 2 bytes declared for it", "?")
    assert bounded_zstd(zstandard.ZstdCompressor().compress(b""), 0) == b""
    error = refused(bounded_zstd, b"\x28\xb5\x2f\xfdgarbage", 100, archive=STEM)
    assert error.detail.startswith("manifest copy does not decompress (")
    assert error.archive == STEM


def test_a_record_is_a_bounded_json_object() -> None:
    assert load_record(b'{"a": 1}', "site record") == {"a": 1}
    big = json.dumps({"a": "x" * (MAX_RECORD_BYTES - 9)}).encode()
    assert len(big) == MAX_RECORD_BYTES
    assert load_record(big, "site record")["a"] == "x" * (MAX_RECORD_BYTES - 9)
    for raw, message in [
        (big + b" ", f"the site record is over {MAX_RECORD_BYTES} bytes"),
        (b"[1]", "the site record is a list, not an object"),
        (b"null", "the site record is null, not an object"),
        (
            b"{",
            "the site record is not JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1))",
        ),
    ]:
        with pytest.raises(ValueError) as info:
            load_record(raw, "site record")
        assert str(info.value) == message


def test_a_name_in_a_record_is_a_plain_site_or_cell_name() -> None:
    for good in ("a", "0", "a_b-c", "a" * 64):
        assert check_name(good, "site") == good
    for bad in ("", "A", "-a", "_a", "a b", "a/b", "a" * 65, "é", 7, None, "a\n"):
        with pytest.raises(ValueError) as info:
            check_name(bad, "site")
        assert str(info.value) == f"site {bad!r} is not a plain name"


def test_a_records_cell_archive_map_names_archives_of_those_cells() -> None:
    assert check_cell_archives(None, "marker") == {}
    assert check_cell_archives({}, "marker") == {}
    ok = {"crm": STEM, "web": "cell_web_20250101_020000"}
    assert check_cell_archives(ok, "marker") == ok
    for value, message in [
        (["crm"], "marker is not an object of at most 100000 cells"),
        ({"Crm": STEM}, "marker: cell 'Crm' is not a plain name"),
        ({"web": STEM}, f"marker names {STEM!r} for cell web: not an archive of that cell"),
        ({"crm": 7}, "marker names 7 for cell crm: not an archive of that cell"),
        (
            {"crm": STEM + "x"},
            f"marker names {STEM + 'x'!r} for cell crm: not an archive of that cell",
        ),
        (
            {f"c{n}": f"cell_c{n}_20250101_020000" for n in range(100_001)},
            "marker is not an object of at most 100000 cells",
        ),
    ]:
        with pytest.raises(ValueError) as info:
            check_cell_archives(value, "marker")
        assert str(info.value) == message
    assert (
        len(
            check_cell_archives(
                {f"c{n}": f"cell_c{n}_20250101_020000" for n in range(100_000)}, "m"
            )
        )
        == 100_000
    )


def test_a_records_archive_of_one_cell() -> None:
    assert check_archive_of(None, "crm", "marker") is None
    assert check_archive_of(STEM, "crm", "marker") == STEM
    with pytest.raises(ValueError) as info:
        check_archive_of(STEM, "web", "marker")
    assert str(info.value) == f"marker names {STEM!r} for cell web: not an archive of that cell"


def test_an_error_without_its_archive_says_so() -> None:
    """Checks called without the archive's name (tools, tests) report it as '?'."""
    assert refused(check_digest, "x").archive == "?"
    assert refused(check_member_path, "/x").archive == "?"
    assert refused(check_mode, -1).archive == "?"
    assert refused(check_count, -1, "files").archive == "?"
    assert refused(check_roots, []).archive == "?"
    assert refused(bounded_zstd, b"x", 10).archive == "?"
