"""The test servers work with the real clients: ossfs/oss2, s3fs, rsync.

These tests double as documentation of how the clients behave against the
servers, quirks included: where ossfs does something surprising, a test pins
it down, so a change in a new ossfs release shows up here first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from tests.servers.fixtures import OssBucket, S3Bucket, unavailable
from tests.servers.oss import OssServer, crc64ecma
from tests.servers.rsyncd import RsyncDaemon, RsyncModule

MiB = 2**20


def _payload(size: int, seed: int = 0) -> bytes:
    """Incompressible-looking, reproducible bytes (os.urandom is not)."""
    block = bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


# --- the OSS test server with ossfs -------------------------------------------


def test_oss_pipe_cat_and_crc(oss_bucket: OssBucket) -> None:
    import oss2

    fs = oss_bucket.fs()
    data = _payload(100_000)
    fs.pipe(f"{oss_bucket.name}/dir/a.bin", data)

    assert fs.cat(f"{oss_bucket.name}/dir/a.bin") == data
    stored = oss_bucket.server.object(oss_bucket.name, "dir/a.bin")
    assert stored.object_type == "Normal"
    # The server's CRC is what oss2 computes (oss2 also checked it on upload).
    crc = oss2.utils.Crc64()
    crc.update(data)
    assert stored.crc64 == crc.crc == crc64ecma(data)
    assert crc64ecma(b"123456789") == 0x995DC9BBDF1939FA  # the CRC-64/XZ check value


def test_oss_ls_info_and_directories(oss_bucket: OssBucket) -> None:
    fs = oss_bucket.fs()
    b = oss_bucket.name
    for key in ("a/1.txt", "a/2.txt", "a/sub/3.txt", "top.txt"):
        fs.pipe(f"{b}/{key}", key.encode())

    # ossfs names directories with a trailing slash (the CommonPrefix as is).
    assert fs.ls(b, detail=False) == [f"{b}/a/", f"{b}/top.txt"]
    listing = {e["name"]: e["type"] for e in fs.ls(f"{b}/a", detail=True)}
    assert listing == {f"{b}/a/1.txt": "file", f"{b}/a/2.txt": "file", f"{b}/a/sub/": "directory"}
    info = fs.info(f"{b}/a/1.txt")
    assert (info["type"], info["size"]) == ("file", len(b"a/1.txt"))
    assert fs.info(f"{b}/a")["type"] == "directory"
    assert fs.isdir(f"{b}/a/sub")
    assert fs.isfile(f"{b}/top.txt")
    assert sorted(fs.find(b)) == [
        f"{b}/a/1.txt",
        f"{b}/a/2.txt",
        f"{b}/a/sub/3.txt",
        f"{b}/top.txt",
    ]


def test_oss_rm(oss_bucket: OssBucket) -> None:
    fs = oss_bucket.fs()
    b = oss_bucket.name
    for key in ("keep.txt", "gone.txt", "tree/x", "tree/y/z"):
        fs.pipe(f"{b}/{key}", b"x")

    fs.rm(f"{b}/gone.txt")
    fs.rm(f"{b}/tree", recursive=True)

    assert list(oss_bucket.objects()) == ["keep.txt"]
    assert any(oss_bucket.server.requests_matching("POST", "delete"))  # ossfs batch-deletes


def test_oss_pipe_large_value_is_a_multipart_upload(oss_bucket: OssBucket) -> None:
    # ossfs.pipe_file switches to multipart at 2 x 5 MiB (its block size):
    # 5 MiB + 5 MiB + 1 byte.
    fs = oss_bucket.fs()
    data = _payload(10 * MiB + 1)
    fs.pipe(f"{oss_bucket.name}/big.bin", data)

    stored = oss_bucket.server.object(oss_bucket.name, "big.bin")
    assert stored.object_type == "Multipart"
    assert stored.etag.endswith("-3")
    assert len(list(oss_bucket.server.requests_matching("PUT", "partNumber"))) == 3
    assert oss_bucket.server.uploads(oss_bucket.name) == {}
    assert fs.cat(f"{oss_bucket.name}/big.bin") == data
    with fs.open(f"{oss_bucket.name}/big.bin", "rb") as f:  # ranged GETs
        f.seek(5 * MiB - 3)
        assert f.read(10) == data[5 * MiB - 3 : 5 * MiB + 7]


def test_oss_open_for_writing_appends_and_breaks_past_one_block(oss_bucket: OssBucket) -> None:
    # ossfs' file object does not use multipart: every flushed block is an
    # AppendObject on the final key, so a half-written file is visible under
    # its final name. And past one block it breaks: ossfs (2025.5) keeps the
    # append position in fsspec's write cursor ``loc``, which write() has
    # already advanced, so the second append names the wrong position. Real
    # OSS answers the same. cellvault must not stream to OSS with open("wb").
    fs = oss_bucket.fs()
    b = oss_bucket.name
    with fs.open(f"{b}/small.bin", "wb", block_size=5 * MiB) as f:
        f.write(b"one block or less")
    assert oss_bucket.server.object(b, "small.bin").object_type == "Appendable"
    assert fs.cat(f"{b}/small.bin") == b"one block or less"

    data = _payload(11 * MiB, seed=1)
    with (
        pytest.raises(OSError, match="PositionNotEqualToLength"),
        fs.open(f"{b}/stream.bin", "wb", block_size=5 * MiB) as f,
    ):
        for off in range(0, len(data), MiB):
            f.write(data[off : off + MiB])
    assert oss_bucket.objects()["stream.bin"] == data[: 5 * MiB]  # debris


def test_oss_wrong_credentials(oss_bucket: OssBucket) -> None:
    import oss2

    b = oss_bucket.name
    oss_bucket.fs().pipe(f"{b}/x.txt", b"x")

    wrong_secret = oss_bucket.fs(secret="not-the-secret")
    with pytest.raises(OSError, match="SignatureDoesNotMatch"):
        wrong_secret.cat(f"{b}/x.txt")
    with pytest.raises(OSError, match="SignatureDoesNotMatch"):
        wrong_secret.pipe(f"{b}/y.txt", b"y")
    # ossfs.ls iterates oss2's ObjectIterator outside its error translation,
    # so listing raises oss2's own exception, not an OSError.
    with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
        wrong_secret.ls(b)
    # exists() answers False for AccessDenied but raises for other errors.
    with pytest.raises(OSError, match="SignatureDoesNotMatch"):
        wrong_secret.exists(f"{b}/x.txt")

    with pytest.raises(OSError, match="InvalidAccessKeyId"):
        oss_bucket.fs(key="no-such-key-id").cat(f"{b}/x.txt")
    assert oss_bucket.objects() == {"x.txt": b"x"}


def test_oss_missing_bucket_and_key(oss_bucket: OssBucket) -> None:
    import oss2

    fs = oss_bucket.fs()
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{oss_bucket.name}/absent.txt")
    with pytest.raises(FileNotFoundError):
        fs.cat("cv-no-such-bucket/absent.txt")
    with pytest.raises(oss2.exceptions.NoSuchBucket):  # untranslated, see above
        fs.ls("cv-no-such-bucket")
    assert not fs.exists(f"{oss_bucket.name}/absent.txt")


def test_oss_fail_every_3_server_errors_are_not_retried(oss_bucket: OssBucket) -> None:
    # ossfs retries only oss2.RequestError (no HTTP answer at all); an OSS
    # error reply such as 503 ServiceUnavailable surfaces at once as OSError.
    fs = oss_bucket.fs()
    path = f"{oss_bucket.name}/x.txt"
    fs.pipe(path, b"payload")
    oss_bucket.server.fail_every(3)

    outcomes: list[bytes | str] = []
    for _ in range(6):
        try:
            outcomes.append(fs.cat(path))
        except OSError as err:
            outcomes.append("ServiceUnavailable" if "ServiceUnavailable" in str(err) else repr(err))

    assert outcomes == [b"payload", b"payload", "ServiceUnavailable"] * 2  # one GET per cat


def test_oss_dropped_connections_are_retried_by_ossfs(oss_bucket: OssBucket) -> None:
    fs = oss_bucket.fs()
    path = f"{oss_bucket.name}/x.txt"
    fs.pipe(path, b"payload")
    oss_bucket.server.fail_every(2, drop=True)

    assert [fs.cat(path) for _ in range(4)] == [b"payload"] * 4
    assert sum(r.status == 0 for r in oss_bucket.server.request_log) >= 3


def test_oss_lost_reply_after_the_write_took_effect(oss_bucket: OssBucket) -> None:
    import oss2

    bucket = oss_bucket.oss2_bucket()
    oss_bucket.server.fail_next(1, drop=True, after=True)
    with pytest.raises(oss2.exceptions.RequestError):
        bucket.put_object("x.txt", b"stored anyway")
    assert oss_bucket.objects() == {"x.txt": b"stored anyway"}

    oss_bucket.server.fail_next(1, status=500, methods={"PUT"})
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket.put_object("y.txt", b"refused")
    assert (caught.value.status, caught.value.code) == (500, "InternalError")
    assert "y.txt" not in oss_bucket.objects()


def test_oss_conditional_create_is_refused_when_the_key_exists(oss_bucket: OssBucket) -> None:
    import oss2

    fs = oss_bucket.fs()
    path = f"{oss_bucket.name}/marker.json"
    forbid = {"x-oss-forbid-overwrite": "true"}
    # ossfs.pipe_file passes extra keyword arguments on to oss2.put_object.
    fs.pipe_file(path, b"first", headers=forbid)
    with pytest.raises(OSError, match="FileAlreadyExists"):
        fs.pipe_file(path, b"second", headers=forbid)
    assert fs.cat(path) == b"first"

    bucket = oss_bucket.oss2_bucket()
    upload_id = bucket.init_multipart_upload("late.bin").upload_id
    part = bucket.upload_part("late.bin", upload_id, 1, b"late")
    bucket.put_object("late.bin", b"early")
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket.complete_multipart_upload(
            "late.bin", upload_id, [oss2.models.PartInfo(1, part.etag)], headers=forbid
        )
    assert (caught.value.status, caught.value.code) == (409, "FileAlreadyExists")
    assert oss_bucket.objects()["late.bin"] == b"early"


def test_oss_stop_and_restart_keep_data(oss_bucket: OssBucket) -> None:
    fs = oss_bucket.fs()
    path = f"{oss_bucket.name}/x.txt"
    fs.pipe(path, b"kept")
    port = oss_bucket.server.port

    oss_bucket.server.stop()
    with pytest.raises(OSError, match="RequestError"):  # refused, after ossfs' 3 tries
        fs.cat(path)
    oss_bucket.server.restart()

    assert oss_bucket.server.port == port
    assert fs.cat(path) == b"kept"


def test_oss_ranges(oss_bucket: OssBucket) -> None:
    import oss2

    bucket = oss_bucket.oss2_bucket()
    bucket.put_object("r.bin", b"0123456789")
    standard = {"x-oss-range-behavior": "standard"}

    assert bucket.get_object("r.bin", byte_range=(2, 4)).read() == b"234"
    assert bucket.get_object("r.bin", byte_range=(None, 3)).read() == b"789"
    assert bucket.get_object("r.bin", byte_range=(8, 99), headers=standard).read() == b"89"
    # Without the standard behaviour OSS ignores an overlong range.
    assert bucket.get_object("r.bin", byte_range=(8, 99)).read() == b"0123456789"
    with pytest.raises(oss2.exceptions.ServerError) as caught:
        bucket.get_object("r.bin", byte_range=(10, 12), headers=standard)
    assert caught.value.status == 416

    # ossfs hands fsspec's exclusive end to OSS's inclusive one: cat_file
    # returns one byte more than asked (read() through a file is right).
    fs = oss_bucket.fs()
    assert fs.cat_file(f"{oss_bucket.name}/r.bin", 0, 5) == b"012345"


def test_oss2_listing_pages_copy_meta_and_bucket_info(oss_bucket: OssBucket) -> None:
    import oss2

    bucket = oss_bucket.oss2_bucket()
    keys = ["a/1", "a/2", "b/1", "c", "d e+f/ü"]
    for key in keys:
        bucket.put_object(key, key.encode(), headers={"x-oss-meta-origin": "test"})

    assert [o.key for o in oss2.ObjectIterator(bucket, max_keys=2)] == keys
    assert [o.key for o in oss2.ObjectIteratorV2(bucket, max_keys=2)] == keys
    bucket.put_object("b/", b"")  # a "directory marker" still rolls up into b/
    top = list(oss2.ObjectIterator(bucket, delimiter="/", max_keys=1))
    assert [(o.key, o.is_prefix()) for o in top] == [
        ("a/", True),
        ("b/", True),
        ("c", False),
        ("d e+f/", True),
    ]
    assert [o.key for o in oss2.ObjectIterator(bucket, prefix="b/", delimiter="/")] == ["b/", "b/1"]
    bucket.delete_object("b/")
    assert all(o.type == "Normal" for o in oss2.ObjectIterator(bucket))

    bucket.copy_object(oss_bucket.name, "c", "c-copy")
    head = bucket.head_object("c-copy")
    assert head.headers["x-oss-meta-origin"] == "test"
    assert head.content_length == 1
    assert head.object_type == "Normal"
    assert bucket.get_object_meta("d e+f/ü").content_length == len("d e+f/ü".encode())

    info = bucket.get_bucket_info()
    assert info.name == oss_bucket.name
    assert info.storage_class == "Standard"
    assert oss_bucket.name in [
        b.name for b in oss2.BucketIterator(oss2.Service(bucket.auth, oss_bucket.endpoint))
    ]

    upload_id = bucket.init_multipart_upload("pending").upload_id
    assert [u.upload_id for u in oss2.MultipartUploadIterator(bucket)] == [upload_id]
    bucket.abort_multipart_upload("pending", upload_id)
    assert oss_bucket.server.uploads(oss_bucket.name) == {}

    result = bucket.batch_delete_objects(["a/1", "a/2"])
    assert sorted(result.deleted_keys) == ["a/1", "a/2"]


def test_oss2_resumable_upload_and_crc_check_on_download(
    oss_bucket: OssBucket, tmp_path: Path
) -> None:
    import oss2

    bucket = oss_bucket.oss2_bucket()
    source = tmp_path / "source.bin"
    data = _payload(600 * 1024, seed=2)
    source.write_bytes(data)
    oss2.resumable_upload(
        bucket,
        "resumable.bin",
        str(source),
        store=oss2.ResumableStore(root=str(tmp_path)),
        multipart_threshold=200 * 1024,
        part_size=200 * 1024,
    )
    assert oss_bucket.server.object(oss_bucket.name, "resumable.bin").object_type == "Multipart"
    assert oss_bucket.objects()["resumable.bin"] == data

    # Bit rot on the server side: oss2 notices through the CRC header.
    oss_bucket.server.corrupt(oss_bucket.name, "resumable.bin", offset=1000)
    with pytest.raises(oss2.exceptions.InconsistentError):
        bucket.get_object_to_file("resumable.bin", str(tmp_path / "back.bin"))


def test_oss_aio_filesystem_reads(oss_bucket: OssBucket) -> None:
    # AioOSSFileSystem (aiooss2 on aiohttp) reads, lists and deletes fine.
    # Its uploads are broken with aiohttp >= 3.10 whatever the server: aiooss2
    # 0.2.11 hands aiohttp a payload class aiohttp can no longer instantiate.
    import ossfs

    oss_bucket.server.put(oss_bucket.name, "aio/x.txt", b"async data")
    fs = ossfs.AioOSSFileSystem(skip_instance_cache=True, **oss_bucket.storage_options)
    assert fs.cat(f"{oss_bucket.name}/aio/x.txt") == b"async data"
    assert fs.ls(oss_bucket.name, detail=False) == [f"{oss_bucket.name}/aio/"]
    fs.rm(f"{oss_bucket.name}/aio", recursive=True)
    assert oss_bucket.objects() == {}


def test_oss_server_checks_signature_and_clock(oss_server: OssServer) -> None:
    import requests

    def signed_get(date: str) -> requests.Response:
        to_sign = f"GET\n\n\n{date}\n/".encode()
        mac = hmac.new(oss_server.access_key_secret.encode(), to_sign, hashlib.sha1)
        signature = base64.b64encode(mac.digest()).decode()
        auth = f"OSS {oss_server.access_key_id}:{signature}"
        return requests.get(
            f"{oss_server.endpoint}/", headers={"Authorization": auth, "Date": date}, timeout=5
        )

    assert signed_get(formatdate(time.time(), usegmt=True)).status_code == 200
    stale = signed_get(formatdate(time.time() - 3600, usegmt=True))
    assert stale.status_code == 403
    assert b"<Code>RequestTimeTooSkewed</Code>" in stale.content

    anonymous = requests.get(f"{oss_server.endpoint}/", timeout=5)
    assert anonymous.status_code == 403
    assert b"<Code>AccessDenied</Code>" in anonymous.content
    v4 = requests.get(
        f"{oss_server.endpoint}/",
        headers={"Authorization": "OSS4-HMAC-SHA256 Credential=x", "Date": "now"},
        timeout=5,
    )
    assert v4.status_code == 400
    assert b"OSS signature v1" in v4.content


def test_oss_chunked_request_body(oss_bucket: OssBucket) -> None:
    # oss2 sends an iterable body with Transfer-Encoding: chunked.
    bucket = oss_bucket.oss2_bucket()
    bucket.put_object("chunked.bin", (bytes([i]) * 1000 for i in range(5)))
    assert oss_bucket.objects()["chunked.bin"] == b"".join(bytes([i]) * 1000 for i in range(5))


# --- moto S3 with s3fs --------------------------------------------------------


def test_s3_basics(s3_bucket: S3Bucket) -> None:
    fs = s3_bucket.fs()
    b = s3_bucket.name
    fs.pipe(f"{b}/a/1.txt", b"one")
    fs.pipe(f"{b}/top.txt", b"top")

    assert fs.cat(f"{b}/a/1.txt") == b"one"
    assert fs.ls(b, detail=False) == [f"{b}/a", f"{b}/top.txt"]
    assert fs.info(f"{b}/a")["type"] == "directory"
    assert fs.info(f"{b}/top.txt")["size"] == 3
    fs.rm(f"{b}/a", recursive=True)
    assert s3_bucket.objects() == {"top.txt": b"top"}


def test_s3_multipart_upload(s3_bucket: S3Bucket) -> None:
    fs = s3_bucket.fs()
    path = f"{s3_bucket.name}/big.bin"
    data = _payload(11 * MiB, seed=3)
    with fs.open(path, "wb", block_size=5 * MiB) as f:
        for off in range(0, len(data), MiB):
            f.write(data[off : off + MiB])
        # Parts in flight are invisible: nothing at the key before close().
        assert s3_bucket.objects() == {}

    etag = s3_bucket.client().head_object(Bucket=s3_bucket.name, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # a part per full block: 5 + 5 + 1 MiB
    assert fs.cat(path) == data


def test_s3_conditional_create(s3_bucket: S3Bucket) -> None:
    fs = s3_bucket.fs()
    path = f"{s3_bucket.name}/marker.json"
    with fs.open(path, "xb") as f:  # s3fs: PUT with If-None-Match: *
        f.write(b"first")
    with pytest.raises(FileExistsError), fs.open(path, "xb") as f:
        f.write(b"second")
    assert fs.cat(path) == b"first"


def test_s3_server_going_away_mid_upload(s3_bucket: S3Bucket) -> None:
    # Stop the server between two parts: the next part fails with
    # "connection refused", nothing appears at the key, and the started
    # multipart upload stays behind as debris. s3fs raises botocore's
    # EndpointConnectionError as is (it is not an OSError). Retries are
    # turned down so the failure is quick (s3fs and botocore would otherwise
    # back off for seconds).
    from botocore.exceptions import EndpointConnectionError

    fs = s3_bucket.fs(config_kwargs={"retries": {"max_attempts": 1}})
    fs.retries = 1  # s3fs' own retry loop: a class attribute, not an argument
    server = s3_bucket.server
    data = _payload(6 * MiB, seed=4)
    f = fs.open(f"{s3_bucket.name}/cut.bin", "wb", block_size=5 * MiB)
    f.write(data)  # > block size: the upload starts and part 1 is sent
    server.stop()
    started = time.monotonic()
    try:
        with pytest.raises(EndpointConnectionError):
            f.write(data)
            f.close()
    finally:
        server.restart()
    assert time.monotonic() - started < 10
    assert s3_bucket.objects() == {}
    assert list(server.uploads(s3_bucket.name).values()) == ["cut.bin"]
    # The handle still holds the part it could not send: left open, its garbage
    # collection would send it and complete the upload, in whatever test runs then
    # (as the S3 target's put_stream does on a failure: aborted, marked closed).
    f.discard()
    f.closed = True


# --- the rsync daemon ---------------------------------------------------------


def _rsync(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rsync", *args], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def test_rsync_push_list_and_fetch(rsync_module: RsyncModule, tmp_path: Path) -> None:
    source = tmp_path / "cell_crm_20250101_020000.tar.zst"
    source.write_bytes(_payload(300_000))

    pushed = _rsync("-a", str(source), rsync_module.url_for("crm/"))
    assert pushed.returncode == 0, pushed.stderr
    assert (rsync_module.root / "crm" / source.name).read_bytes() == source.read_bytes()

    listed = _rsync("--list-only", rsync_module.url_for("crm/"))
    assert listed.returncode == 0, listed.stderr
    assert source.name in listed.stdout

    back = tmp_path / "back"
    fetched = _rsync("-a", rsync_module.url_for(f"crm/{source.name}"), f"{back}/")
    assert fetched.returncode == 0, fetched.stderr
    assert (back / source.name).read_bytes() == source.read_bytes()


def test_rsync_host_module_form(rsync_module: RsyncModule, tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("via host::module")
    target, port_args = rsync_module.host_module_for("f.txt")
    result = _rsync(*port_args, str(source), target)
    assert result.returncode == 0, result.stderr
    assert (rsync_module.root / "f.txt").read_text() == "via host::module"


def test_rsync_read_only_module_refuses_uploads(rsync_module: RsyncModule, tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("x")
    rsync_module.set_read_only()
    refused = _rsync(str(source), rsync_module.url_for("f.txt"))
    assert refused.returncode != 0
    assert "read only" in refused.stderr
    assert not (rsync_module.root / "f.txt").exists()

    rsync_module.set_read_only(False)
    assert _rsync(str(source), rsync_module.url_for("f.txt")).returncode == 0


def test_rsync_module_with_password(rsync_daemon: RsyncDaemon, tmp_path: Path) -> None:
    module = rsync_daemon.add_module("secured", user="backup", password="s3cret")
    try:
        source = tmp_path / "f.txt"
        source.write_text("x")
        assert _rsync(str(source), module.url_for("f.txt"), env=module.env()).returncode == 0
        wrong = dict(module.env(), RSYNC_PASSWORD="wrong")
        denied = _rsync(str(source), module.url_for("g.txt"), env=wrong)
        assert denied.returncode != 0
        assert "auth failed" in denied.stderr
    finally:
        rsync_daemon.remove_module("secured")


def test_rsync_daemon_stop_and_restart(rsync_module: RsyncModule, tmp_path: Path) -> None:
    daemon = rsync_module.daemon
    source = tmp_path / "f.txt"
    source.write_text("x")
    daemon.stop()
    try:
        down = _rsync(str(source), rsync_module.url_for("f.txt"))
        assert down.returncode == 10, down.stderr  # rsync's "error in socket I/O"
    finally:
        daemon.start()
    assert _rsync(str(source), rsync_module.url_for("f.txt")).returncode == 0


# --- the fixtures' own rules --------------------------------------------------


def test_missing_dependency_skips_on_a_laptop_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        unavailable("no such thing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        unavailable("no such thing")


def test_servers_bind_loopback_only(
    oss_server: OssServer, s3_bucket: S3Bucket, rsync_daemon: RsyncDaemon
) -> None:
    assert oss_server.endpoint.startswith("http://127.0.0.1:")
    assert s3_bucket.endpoint.startswith("http://127.0.0.1:")
    assert rsync_daemon.url_for().startswith(f"rsync://127.0.0.1:{rsync_daemon.port}/")
