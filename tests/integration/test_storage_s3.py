"""Storage on moto's S3: uploads, checkpoint discovery, downloads.

moto's ``ThreadedMotoServer`` serves every service on one port, S3 included (path-style
requests, which pyarrow makes whenever an endpoint is overridden). Ray Train writing its
checkpoints there, and a job resuming from them, is tested end to end on the test cloud
(tests/integration/test_cloud_hosts.py).
"""

# ruff: noqa: F811
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.moto_server import MotoServer, moto_aws, moto_server  # noqa: F401
from workloads import storage

BUCKET = "gpubroker-ckpt"


@pytest.fixture
def bucket(moto_aws: MotoServer) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


def write_checkpoint(folder: Path, step: int, state: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.pt").write_bytes(state)
    (folder / "meta.json").write_text(json.dumps({"step": step, "tokens": step * 64}))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_latest_checkpoint_and_download_on_s3(bucket: str, tmp_path: Path) -> None:
    import boto3

    run = f"s3://{bucket}/runs/job-1"
    assert storage.exists(f"s3://{bucket}")
    assert not storage.exists(run)
    assert storage.latest_checkpoint(run) is None

    local = tmp_path / "local"
    write_checkpoint(local / "checkpoint_000020", 20, os.urandom(3000))
    write_checkpoint(local / "attempt-2" / "checkpoint_000060", 60, os.urandom(300_000))
    write_checkpoint(local / "checkpoint_000099", 99, b"no meta")  # no meta.json: ignored
    (local / "checkpoint_000099" / "meta.json").unlink()
    storage.upload(local, run)
    # A neighbour whose name extends ours is not under ours.
    other = tmp_path / "other"
    write_checkpoint(other / "checkpoint_000500", 500, b"x")
    storage.upload(other, f"s3://{bucket}/runs/job-10")
    # A malformed meta.json written straight to S3 (no state.pt check saves it).
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="runs/job-1/bad/state.pt", Body=b"x")
    s3.put_object(Bucket=bucket, Key="runs/job-1/bad/meta.json", Body=b'{"step": "900"}')

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/job-1/")["Contents"]}
    assert "runs/job-1/attempt-2/checkpoint_000060/state.pt" in keys

    found = storage.latest_checkpoint(run)
    assert found == (f"{run}/attempt-2/checkpoint_000060", 60)
    assert storage.latest_checkpoint(f"s3://{bucket}/runs") == (
        f"s3://{bucket}/runs/job-10/checkpoint_000500",
        500,
    )

    back = tmp_path / "back"
    storage.download(found[0], back)
    assert tree(back) == tree(local / "attempt-2" / "checkpoint_000060")
    storage.download(run, tmp_path / "all")
    assert tree(tmp_path / "all") == tree(local) | {
        "bad/state.pt": b"x",
        "bad/meta.json": b'{"step": "900"}',
    }
    with pytest.raises(storage.NotFound):
        storage.download(f"{run}/missing", tmp_path / "none")


def test_latest_checkpoint_lists_once(
    bucket: str, moto_aws: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One listing request, then only reads of each checkpoint folder's meta.json."""
    import boto3
    import requests

    monkeypatch.chdir(tmp_path)  # moto's in-process recorder writes ./moto_recording

    s3 = boto3.client("s3")
    for step in range(1, 6):
        for name, body in [("state.pt", b"w"), ("meta.json", json.dumps({"step": step}))]:
            s3.put_object(Bucket=bucket, Key=f"runs/j/t/checkpoint_{step:06d}/{name}", Body=body)
    fs, _ = storage.filesystem(f"s3://{bucket}")  # the SDK's start-up outside the count
    del fs
    api = f"{moto_aws.url}/moto-api/recorder"
    requests.post(f"{api}/reset-recording", timeout=10)
    requests.post(f"{api}/start-recording", timeout=10)
    try:
        found = storage.latest_checkpoint(f"s3://{bucket}/runs/j")
    finally:
        requests.post(f"{api}/stop-recording", timeout=10)
    recorded = requests.get(f"{api}/download-recording", timeout=10).text
    calls = [json.loads(line) for line in recorded.splitlines() if line.strip()]
    assert found == (f"s3://{bucket}/runs/j/t/checkpoint_000005", 5)
    lists = [c for c in calls if "list-type=2" in c["url"]]
    assert len(lists) == 1, calls
    # pyarrow opens an S3 object with a HEAD (its size), then GETs it: two per folder.
    others = sorted((c["method"], c["url"].split(f"/{bucket}/", 1)[1]) for c in calls[1:])
    assert calls[0] is lists[0]
    assert others == sorted(
        (method, f"runs/j/t/checkpoint_{step:06d}/meta.json")
        for step in range(1, 6)
        for method in ("GET", "HEAD")
    )
