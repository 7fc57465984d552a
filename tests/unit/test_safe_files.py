"""``broker.files``: writes that never replace what is not a regular file nor follow a
link, reads that never hang or run unbounded."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from broker.errors import NotFound, UserError
from broker.files import read_bounded, write_atomic


def test_a_new_file_and_a_regular_file_are_written(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    write_atomic(target, "a\n")
    assert target.read_text() == "a\n"
    target.chmod(0o640)
    write_atomic(target, "b\n")
    assert target.read_text() == "b\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]  # no temporary left


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "folder", "device"])
def test_what_is_not_a_regular_file_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "dangling":
        target.symlink_to(tmp_path / "nowhere")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target = Path("/dev/full")
    before = os.lstat(target)
    with pytest.raises(UserError, match="--out") as caught:
        write_atomic(target, "x")
    assert caught.value.exit_code == 2
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert victim.read_text() == "keep"
    assert not (tmp_path / "nowhere").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_new_name_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        write_atomic(tmp_path / "no" / "such" / "out.csv", "x")
    assert not (tmp_path / "no").exists()


def test_planted_temporary_names_are_not_followed(tmp_path: Path) -> None:
    """The old writer used ``.<name>.<pid>.tmp``; links planted at every such name (and at
    the fixed suffixes) change nothing, because the temporary name is random and exclusive."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target = tmp_path / "out.json"
    for pid in {os.getpid(), *range(1, 50)}:
        (tmp_path / f".out.json.{pid}.tmp").symlink_to(victim)
    write_atomic(target, "{}")
    assert target.read_text() == "{}" and victim.read_text() == "keep"
    assert not target.is_symlink()


def test_proc_file_is_refused_in_one_line() -> None:
    with pytest.raises(UserError) as caught:
        write_atomic(Path("/proc/self/comm"), "x")
    assert "\n" not in str(caught.value)


def test_reads_are_bounded_and_never_block(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_bytes(b"x" * 10)
    assert read_bounded(spec, 10, "spec file") == b"x" * 10
    with pytest.raises(UserError, match="larger than 9 bytes"):
        read_bounded(spec, 9, "spec file")
    with pytest.raises(UserError, match="device"):
        read_bounded("/dev/zero", 1 << 20, "spec file")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done: list[BaseException] = []

    def read_fifo() -> None:
        try:
            read_bounded(fifo, 10, "spec file")
        except UserError as exc:
            done.append(exc)

    reader = threading.Thread(target=read_fifo)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive() and "FIFO" in str(done[0])
    with pytest.raises(UserError, match="folder"):
        read_bounded(tmp_path, 10, "spec file")
    with pytest.raises(NotFound, match="no such spec file"):
        read_bounded(tmp_path / "missing.yaml", 10, "spec file")
