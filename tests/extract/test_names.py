"""Member names: a hostile one is refused naming the archive it came from."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from cellvault import UnsafeArchive
from cellvault.extract import safe_member_path
from cellvault.extract.names import checked_name


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "data//x", ""])
def test_a_refused_name_names_its_archive_and_member(name: str) -> None:
    with pytest.raises(UnsafeArchive) as info:
        safe_member_path(name, archive="cell_crm_20210304_050607")
    assert (info.value.archive, info.value.member) == ("cell_crm_20210304_050607", name)


def test_a_directory_name_loses_its_trailing_slash() -> None:
    assert safe_member_path("data/crm/d/", archive="a") == PurePosixPath("data", "crm", "d")


def test_a_name_keeps_every_character_but_its_trailing_slashes() -> None:
    for name, checked in (
        ("data/crm/fX", "data/crm/fX"),
        ("data/crm/X/", "data/crm/X"),
        ("data/crm/d//", "data/crm/d"),
        ("data/crm/ f ", "data/crm/ f "),
    ):
        assert checked_name(name, "cell_crm_20250101_020000") == checked
