"""Reading and writing user-named files without surprises.

``write_atomic`` is the one way the broker writes a file a user named (``--out``, the
scheduled reports): the target must be a regular file or a new name in an existing
folder, never a link, a device, a FIFO or a folder; the text goes to a temporary file
created exclusively under a random name in the same folder (never following a link) and
is renamed over the target, so a reader sees the old file or the new one, nothing else.

``read_bounded`` is the one way it reads a file a user named (specs, catalog imports):
regular files only, opened without blocking (a FIFO cannot hang it), at most ``limit``
bytes (``/dev/zero`` is refused before a byte is read).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from broker.errors import NotFound, UserError


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_target(path: Path, what: str = "--out") -> os.stat_result | None:
    """The target's stat when it is a regular file, None when it is a new name in an
    existing folder; anything else is a ``UserError`` (exit 2) naming ``what``."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    except OSError as exc:
        raise UserError(f"{what}: {path}: cannot inspect ({exc.strerror})") from None
    if found is not None:
        if not stat.S_ISREG(found.st_mode):
            raise UserError(
                f"{what}: {path} is {_describe(found.st_mode)}; give a regular file or a new "
                "file name in an existing folder"
            )
        return found
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{what}: folder {parent} does not exist; create it first")
    return None


def write_atomic(
    path: Path | str, text: str, *, what: str = "--out", mode: int | None = None
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) through an exclusive temporary file; the
    file keeps its mode, a new one gets the umask's, unless ``mode`` is given."""
    target = Path(path)
    existing = check_target(target, what)
    data = text.encode("utf-8")
    folder = target.parent
    tmp = folder / f".{target.name[:100]}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    if mode is None:
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666
    try:
        fd = os.open(tmp, flags, mode)
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {folder} ({exc.strerror})") from None
    try:
        try:
            if existing is not None or mode != 0o666:
                os.fchmod(fd, mode)  # exactly this mode, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        check_target(target, what)  # still a regular file or absent, just before the swap
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"{what}: cannot write {target} ({exc.strerror})") from None
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink(missing_ok=True)


def read_bounded(path: Path | str, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; else a ``UserError`` naming
    ``what`` and the file. A FIFO, a device or a folder is refused without blocking."""
    source = Path(path)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{source}: no such {what}") from None
    except IsADirectoryError:
        raise UserError(f"{what}: {source} is a folder, not a file") from None
    except OSError as exc:
        raise UserError(f"{what}: {source}: cannot read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{what}: {source} is {_describe(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise UserError(f"{what}: {source} is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while read
            raise UserError(f"{what}: {source} is larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise UserError(f"{what}: {source}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
