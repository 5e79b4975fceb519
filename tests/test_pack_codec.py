"""zstd frames carry a content checksum: decompressing an archive to its end proves its bytes.

A check after each backup relies on it: a flipped byte inside a compressed
block must fail decompression, even where the block is stored raw (then zstd
alone would hand back the damaged bytes). Archives written before, without a
checksum, must still read.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import attrs
import pytest
import zstandard

from cellvault.codec import get_codec

from .archive_helpers import archive_files, make_vault, snapshot


def compress(data: bytes) -> bytes:
    out = io.BytesIO()
    writer = get_codec("zstd").writer(out)
    writer.write(data)
    writer.close()
    return out.getvalue()


def decompress_to_end(raw: bytes) -> bytes:
    reader = get_codec("zstd").reader(io.BytesIO(raw))
    return reader.read()


def sample() -> bytes:
    rnd = random.Random(9)
    # Incompressible stretches (stored as raw blocks) between compressible ones.
    return b"".join(rnd.randbytes(300_000) + b"row,value\n" * 30_000 for _ in range(4))


def flipped(raw: bytes, at: int) -> bytes:
    damaged = bytearray(raw)
    damaged[at] ^= 0x01
    return bytes(damaged)


def test_frames_have_a_content_checksum() -> None:
    raw = compress(b"hello" * 1000)
    params = zstandard.get_frame_parameters(raw)
    assert params.has_checksum


def test_flipped_byte_in_the_middle_fails_decompression() -> None:
    data = sample()
    raw = compress(data)
    assert decompress_to_end(raw) == data
    # The middle of the stream, inside an incompressible (raw) stretch of input.
    needle = data[600_000 + 150_000 : 600_000 + 150_064]
    at = raw.find(needle)
    assert at > 0, "expected the incompressible bytes stored verbatim"
    with pytest.raises(zstandard.ZstdError, match="checksum"):
        decompress_to_end(flipped(raw, at + 10))


def test_without_the_checksum_the_same_flip_went_unnoticed() -> None:
    # Why the checksum is needed: the control, as archives were written before.
    data = sample()
    params = zstandard.ZstdCompressionParameters.from_level(3, write_checksum=False)
    raw = zstandard.ZstdCompressor(compression_params=params).compress(data)
    at = raw.find(data[750_000:750_064])
    assert at > 0
    damaged = decompress_to_end(flipped(raw, at + 10))
    assert len(damaged) == len(data)
    assert damaged != data


@pytest.mark.parametrize("at", [0.25, 0.5, 0.75])
def test_any_flip_in_compressed_data_is_an_error(at: float) -> None:
    raw = compress(sample())
    header = 18  # past the frame header, into the blocks
    pos = header + int((len(raw) - header - 4) * at)
    with pytest.raises(zstandard.ZstdError):
        decompress_to_end(flipped(raw, pos))


def test_archives_without_a_checksum_still_verify_and_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    (src / "a.txt").write_text("one\n")
    (src / "blob").write_bytes(random.Random(2).randbytes(200_000))
    real = zstandard.ZstdCompressionParameters.from_level

    def old_params(level: int, **kwargs: object) -> zstandard.ZstdCompressionParameters:
        kwargs["write_checksum"] = False
        return real(level, **kwargs)

    monkeypatch.setattr(zstandard.ZstdCompressionParameters, "from_level", old_params)
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok
    monkeypatch.undo()
    (data,) = archive_files(tmp_path / "backup")
    assert not zstandard.get_frame_parameters(data.read_bytes()).has_checksum
    (src / "b.txt").write_text("two\n")
    assert vault.backup(kind="incremental").ok  # on top of the old archive
    assert vault.verify().ok
    restored = vault.restore(into=tmp_path / "out")
    assert restored.ok
    assert snapshot(tmp_path / "out" / "crm" / "crm") == snapshot(src)


def _text(words: int = 300_000) -> bytes:
    """Compressible, but not trivially: every level gives a different size."""
    rnd = random.Random(5)
    vocabulary = [bytes(rnd.choices(b"abcdefghijklmnop", k=rnd.randint(2, 9))) for _ in range(2000)]
    return b" ".join(rnd.choice(vocabulary) for _ in range(words))


@pytest.mark.parametrize(
    ("name", "low", "default", "high"), [("zstd", 1, 3, 19), ("gzip", 1, 6, 9)]
)
def test_the_compression_level_is_the_one_asked_for(
    name: str, low: int, default: int, high: int
) -> None:
    data = _text()

    def at(level: int | None) -> bytes:
        out = io.BytesIO()
        writer = get_codec(name, level).writer(out)
        writer.write(data)
        writer.close()
        return out.getvalue()

    assert at(None) == at(default)  # no level: the codec's documented default
    assert len(at(low)) > len(at(default))
    if name == "zstd":
        assert len(at(high)) < len(at(default))
    assert get_codec(name, low).reader(io.BytesIO(at(low))).read() == data


def test_the_configured_level_reaches_the_archives(tmp_path: Path) -> None:
    from cellvault import Cell, Config, Vault

    live = tmp_path / "crm"
    live.mkdir()
    (live / "words.txt").write_bytes(_text())
    sizes = {}
    for level in (1, 19):
        config = Config(backup_dir=tmp_path / f"backup-{level}", cells=[Cell("crm", [live])])
        vault = Vault(attrs.evolve(config, level=level), load_entry_points=False)
        assert vault.backup(kind="full").ok
        (data,) = (tmp_path / f"backup-{level}" / "crm").glob("*.tar.zst")
        sizes[level] = data.stat().st_size
    assert sizes[19] < sizes[1]
