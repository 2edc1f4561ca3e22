"""Unpacking a tar.gz that a workload sent, without trusting it.

Python's extraction filters have had bypasses (CVE-2025-4517 and its kin on 3.11.7), so nothing here relies on
them: every member is checked by hand and written by this code. Only folders and plain files with plain relative
names are taken; a link, a device, a FIFO, an absolute name or one with ``..`` refuses the whole archive. The
decompressed size and the member count are capped while reading, so a small gzip bomb cannot fill the disk.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.errors import PayloadTooLarge, ValidationFailed

CHUNK = 1024 * 1024


def _plain_name(name: str) -> str | None:
    parts = name.replace("\\", "/").split("/")
    cleaned = [p for p in parts if p not in ("", ".")]
    if name.startswith(("/", "\\")) or not cleaned or any(p == ".." or "\x00" in p for p in cleaned):
        return None
    return "/".join(cleaned)


#: Decompressed bytes allowed beyond the members' content: tar headers, pax and long-name records.
HEADER_ALLOWANCE = 64 * 2**20


class _CappedStream(io.RawIOBase):
    """A decompressing reader that refuses to produce more than ``cap`` bytes: tarfile reads a pax or long-name
    header whole into memory, so a small archive could otherwise declare a header of gigabytes."""

    def __init__(self, compressed: BinaryIO, cap: int):
        self.inner, self.cap, self.produced = gzip.GzipFile(fileobj=compressed), cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.inner.readinto(buffer)
        self.produced += n
        if self.produced > self.cap:
            raise PayloadTooLarge(f"the archive is over {self.cap // 2**20} MiB decompressed")
        return n


@contextlib.contextmanager
def open_capped(source: BinaryIO, cap: int) -> Iterator[tarfile.TarFile]:
    """A tar.gz opened for one pass (``r|``) through a decompressor capped at ``cap`` bytes."""
    stream = io.BufferedReader(_CappedStream(source, cap), buffer_size=CHUNK)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        yield tar


def extract_tar_gz(archive: Path, into: Path, *, max_bytes: int, max_members: int) -> None:
    """Extract ``archive`` into the new folder ``into``. Raises ValidationFailed (a member that is not a plain file
    or folder with a plain name, or not a tar.gz) or PayloadTooLarge (over ``max_bytes`` decompressed or
    ``max_members`` members); ``into`` is removed then."""
    written, members = 0, 0
    into.mkdir(parents=True)
    try:
        with open(archive, "rb") as raw, open_capped(raw, max_bytes + HEADER_ALLOWANCE) as tar:
            for member in tar:
                members += 1
                if members > max_members:
                    raise PayloadTooLarge(f"the archive has more than {max_members} members")
                name = _plain_name(member.name)
                if name is None:
                    raise ValidationFailed(f"archive member {member.name!r} does not have a plain relative name",
                                           field="body")
                target = into / name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    kind = "a link" if member.issym() or member.islnk() else "not a plain file or folder"
                    raise ValidationFailed(f"archive member {member.name!r} is {kind}", field="body")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with source, os.fdopen(fd, "wb") as out:
                    while chunk := source.read(CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise PayloadTooLarge(f"the archive is over {max_bytes // 2**20} MiB decompressed")
                        out.write(chunk)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(into, ignore_errors=True)
        raise ValidationFailed(f"artifacts must be a tar.gz archive of plain files: {exc}", field="body") from exc
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)
        raise
