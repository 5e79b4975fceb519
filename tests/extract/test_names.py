"""Member names: a hostile one is refused naming the archive it came from."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from cellvault import UnsafeArchive
from cellvault.extract import safe_member_path


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "data//x", ""])
def test_a_refused_name_names_its_archive_and_member(name: str) -> None:
    with pytest.raises(UnsafeArchive) as info:
        safe_member_path(name, archive="cell_crm_20210304_050607")
    assert (info.value.archive, info.value.member) == ("cell_crm_20210304_050607", name)


def test_a_directory_name_loses_its_trailing_slash() -> None:
    assert safe_member_path("data/crm/d/", archive="a") == PurePosixPath("data", "crm", "d")
