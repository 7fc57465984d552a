"""Storage URIs: parsing, refusals, joins, and file:// copies and checkpoint discovery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker.errors import ConfigError, NotFound, SpecError
from workloads import storage
from workloads.storage import StorageUri, join, parse

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


def refusal(uri: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(uri)
    assert info.value.field == "storage"
    return str(info.value)


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected", "canonical"),
    [
        ("s3://bucket/runs/job-1", StorageUri("s3", "bucket", "runs/job-1"), None),
        ("s3://bucket", StorageUri("s3", "bucket", ""), None),
        ("s3://bucket/", StorageUri("s3", "bucket", ""), "s3://bucket"),
        ("S3://my.bucket//a/./b/", StorageUri("s3", "my.bucket", "a/b"), "s3://my.bucket/a/b"),
        ("gs://b_1/x", StorageUri("gs", "b_1", "x"), None),
        ("file:///data/ckpt", StorageUri("file", "", "/data/ckpt"), None),
        ("file://localhost/data/", StorageUri("file", "", "/data"), "file:///data"),
        ("/data//ckpt/", StorageUri("file", "", "/data/ckpt"), "file:///data/ckpt"),
        ("  /data  ", StorageUri("file", "", "/data"), "file:///data"),
        ("/", StorageUri("file", "", "/"), "file:///"),
    ],
)
def test_parse_gives_canonical_uris(uri: str, expected: StorageUri, canonical: str | None) -> None:
    parsed = parse(uri)
    assert parsed == expected
    assert str(parsed) == (canonical or uri)
    assert parse(str(parsed)) == parsed


def test_fs_path_is_bucket_and_prefix_or_the_local_path() -> None:
    assert parse("s3://bk1/x/y").fs_path == "bk1/x/y"
    assert parse("gs://bk1").fs_path == "bk1"
    assert parse("file:///x/y").fs_path == "/x/y"


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("http://example.com/x", "unsupported scheme"),
        ("azure://container/x", "unsupported scheme"),
        ("runs/job-1", "relative path"),
        ("./runs", "relative path"),
        ("~/runs", "relative path"),
        ("s3://", "bucket is missing"),
        ("s3:///prefix", "bucket is missing"),
        ("gs:///x", "bucket is missing"),
        ("s3://Bucket/x", "bucket name"),
        ("s3://b/x", "bucket name"),
        ("s3://bad..name/x", "bucket name"),
        ("file://host/x", "names no host"),
        ("s3://bucket/a/../b", "'..'"),
        ("/data/../etc", "'..'"),
        ("s3://bucket/x\nfoo", "control characters"),
        ("s3://bucket/x?region=us-east-1", "query"),
        ("s3://bucket/x#frag", "fragments"),
    ],
)
def test_bad_uris_are_refused_naming_what_is_allowed(uri: str, words: str) -> None:
    message = refusal(uri)
    assert message.startswith("storage: ")
    assert words in message


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@bucket/x",
        f"s3://{SECRET}@bucket/x",
        f"gs://user:{SECRET}@bucket",
        f"file://me:{SECRET}@localhost/x",
        f"s3://bucket/x?secret_key={SECRET}",
    ],
)
def test_credentials_in_a_uri_are_refused_without_echoing_them(uri: str) -> None:
    message = refusal(uri)
    assert SECRET not in message
    assert "AKIAEXAMPLE" not in message


def test_join_appends_parts_canonically() -> None:
    assert join("s3://bk1/runs", "job-1") == "s3://bk1/runs/job-1"
    assert join("s3://bk1/runs/", "/job-1/", "checkpoint_000001") == (
        "s3://bk1/runs/job-1/checkpoint_000001"
    )
    assert join("s3://bk1", "a/b") == "s3://bk1/a/b"
    assert join("gs://bk1/x") == "gs://bk1/x"
    assert join("/data", "job") == "file:///data/job"
    assert join("file:///", "job") == "file:///job"
    with pytest.raises(SpecError, match=r"'\.\.'"):
        join("s3://bk1/runs", "../other")


def test_importing_the_module_imports_no_pyarrow() -> None:
    code = (
        "import sys, workloads.storage as s; s.parse('s3://bk1/x'); s.join('/a', 'b'); "
        "print('pyarrow' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"


# --- filesystems ----------------------------------------------------------------------------


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "STORAGE_EMULATOR_HOST",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage._bucket_region.cache_clear()
    return monkeypatch


def _s3_options(fs: object) -> dict[str, object]:
    reduced = fs.__reduce__()  # type: ignore[attr-defined]
    options = reduced[1][0]
    assert isinstance(options, dict)
    return options


def test_s3_endpoint_region_and_no_credentials_in_the_filesystem(
    no_aws: pytest.MonkeyPatch,
) -> None:
    no_aws.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/")
    no_aws.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    no_aws.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    fs, path = storage.filesystem("s3://bk1/runs")
    assert path == "bk1/runs"
    assert type(fs).__name__ == "S3FileSystem"
    options = _s3_options(fs)
    assert options["endpoint_override"] == "127.0.0.1:5000"
    assert options["scheme"] == "http"
    assert options["region"] == "eu-west-1"
    # The SDK's default chain reads the keys; a pickled copy carries none of them.
    assert options["access_key"] is None and options["secret_key"] is None
    assert SECRET.encode() not in __import__("pickle").dumps(fs)

    no_aws.setenv("AWS_ENDPOINT_URL_S3", "https://s3.internal:9000")  # the S3 one wins
    no_aws.setenv("AWS_REGION", "us-west-2")  # AWS_DEFAULT_REGION first, as boto3
    options = _s3_options(storage.filesystem("s3://bk1")[0])
    assert (options["endpoint_override"], options["scheme"]) == ("s3.internal:9000", "https")
    assert options["region"] == "eu-west-1"


def test_s3_without_an_endpoint_or_region_asks_the_bucket(no_aws: pytest.MonkeyPatch) -> None:
    import pyarrow.fs

    asked: list[str] = []

    def resolve(bucket: str) -> str:
        asked.append(bucket)
        return "ap-south-1"

    no_aws.setattr(pyarrow.fs, "resolve_s3_region", resolve)
    no_aws.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    no_aws.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    for _ in range(2):
        options = _s3_options(storage.filesystem("s3://bk1/x")[0])
        assert options["region"] == "ap-south-1"
        assert options["endpoint_override"] == ""
    assert asked == ["bk1"]  # once per bucket and process

    no_aws.setenv("AWS_REGION", "us-west-2")
    assert _s3_options(storage.filesystem("s3://bk2")[0])["region"] == "us-west-2"
    assert asked == ["bk1"]


def test_a_bad_endpoint_is_a_config_error_without_its_text(no_aws: pytest.MonkeyPatch) -> None:
    no_aws.setenv("AWS_ENDPOINT_URL", f"http://user:{SECRET}@127.0.0.1:5000")
    with pytest.raises(ConfigError) as info:
        storage.filesystem("s3://bk1")
    assert "AWS_ENDPOINT_URL" in str(info.value)
    assert SECRET not in str(info.value)
    no_aws.setenv("AWS_ENDPOINT_URL", "ftp://127.0.0.1")
    with pytest.raises(ConfigError):
        storage.filesystem("s3://bk1")


def test_gcs_and_its_emulator(no_aws: pytest.MonkeyPatch) -> None:
    no_aws.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    fs, path = storage.filesystem("gs://bk1/runs")
    assert type(fs).__name__ == "GcsFileSystem"
    assert path == "bk1/runs"
    options = fs.__reduce__()[1][0]
    assert options["endpoint_override"] == "127.0.0.1:4443"
    assert options["scheme"] == "http"
    assert options["anonymous"] is True


def test_file_uris_get_the_local_filesystem(tmp_path: Path) -> None:
    fs, path = storage.filesystem(f"file://{tmp_path}")
    assert type(fs).__name__ == "LocalFileSystem"
    assert path == str(tmp_path)
    assert storage.filesystem(str(tmp_path))[1] == str(tmp_path)


# --- file:// round trips ------------------------------------------------------------------


def write_checkpoint(folder: Path, step: object, state: bytes = b"weights") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.pt").write_bytes(state)
    (folder / "meta.json").write_text(json.dumps({"step": step, "tokens": 1}))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_upload_download_and_latest_checkpoint_on_file_uris(tmp_path: Path) -> None:
    local = tmp_path / "local"
    write_checkpoint(local / "checkpoint_000010", 10, b"ten")
    write_checkpoint(local / "TorchTrainer_x" / "checkpoint_000030", 30, b"thirty")
    write_checkpoint(local / "checkpoint_000090", 90)  # no state.pt: ignored
    (local / "checkpoint_000090" / "state.pt").unlink()
    write_checkpoint(local / "checkpoint_000099", 99)  # malformed meta.json: ignored
    (local / "checkpoint_000099" / "meta.json").write_text("{not json")
    for name, meta in [
        ("c_str", '{"step": "77"}'),
        ("c_float", '{"step": 80.0}'),
        ("c_bool", '{"step": true}'),
        ("c_list", "[1]"),
        ("c_neg", '{"step": -5}'),
        ("c_bytes", b"\xff\xfe"),
    ]:
        write_checkpoint(local / name, 0)
        path = local / name / "meta.json"
        path.write_bytes(meta if isinstance(meta, bytes) else meta.encode())
    (local / "notes.txt").write_text("not a checkpoint")

    remote = f"file://{tmp_path}/remote/runs/job-1"
    assert not storage.exists(remote)
    assert storage.latest_checkpoint(remote) is None
    storage.upload(local, remote)
    assert storage.exists(remote)
    assert storage.exists(join(remote, "notes.txt"))
    assert not storage.exists(join(remote, "missing"))

    found = storage.latest_checkpoint(remote)
    assert found == (join(remote, "TorchTrainer_x", "checkpoint_000030"), 30)
    # A plain path gives the same folder; the root itself may be the checkpoint.
    assert storage.latest_checkpoint(f"{tmp_path}/remote/runs") == found
    assert storage.latest_checkpoint(found[0]) == found

    back = tmp_path / "back"
    storage.download(found[0], back)
    assert tree(back) == tree(local / "TorchTrainer_x" / "checkpoint_000030")
    storage.download(remote, tmp_path / "all")
    assert tree(tmp_path / "all") == tree(local)

    # A higher step in a newer upload wins; the older folders stay.
    newer = tmp_path / "newer"
    write_checkpoint(newer / "checkpoint_000040", 40, b"forty")
    storage.upload(newer, remote)
    assert storage.latest_checkpoint(remote) == (join(remote, "checkpoint_000040"), 40)
    assert storage.exists(join(remote, "checkpoint_000010", "state.pt"))


def test_equal_steps_pick_the_folder_that_sorts_last(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "checkpoint_2024-01-01", 5)
    write_checkpoint(tmp_path / "checkpoint_2024-01-02", 5)
    assert storage.latest_checkpoint(str(tmp_path)) == (
        f"file://{tmp_path}/checkpoint_2024-01-02",
        5,
    )


def test_missing_folders_are_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        storage.download(f"file://{tmp_path}/nothing", tmp_path / "dest")
    with pytest.raises(NotFound):
        storage.upload(tmp_path / "nothing", f"file://{tmp_path}/dest")
    assert storage.latest_checkpoint(f"file://{tmp_path}/nothing") is None
