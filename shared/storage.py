"""Where the system keeps its files (data sets, bundles, artifacts, checkpoints, logs): one small interface, two
backends.

* ``LocalStore``: a folder (``TUNEFLEET_HOME/objects``), the embedded default. It cannot sign URLs: workloads of
  a single-machine stack keep going through the gateway's signed routes.
* ``S3Store``: any S3-compatible service (AWS S3, MinIO, Ceph, R2 …) through boto3. Workloads upload and
  download through presigned URLs that the storage itself checks, so no gigabytes flow through the gateway;
  uploads of large files are multipart (boto3's transfer manager), with retries on throttling and transient
  errors (botocore's ``standard`` retry mode).

Keys are ``/``-separated relative paths (``datasets/<id>.jsonl``, ``artifacts/<job>/attempt-1.tar.gz``); a key
that could leave its folder (``..``, an absolute path, a backslash, a NUL) is refused.

``store_from_settings`` picks the backend from ``TUNEFLEET_STORAGE_BACKEND`` (``local`` or ``s3``) and the
``TUNEFLEET_S3_*`` settings; credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` …, a profile, an
instance role), never from TuneFleet's settings.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shared.settings import Settings

#: Files larger than this are uploaded in parts of this size (S3's minimum part is 5 MiB).
MULTIPART_BYTES = 16 * 2**20
#: Attempts per request, in botocore's ``standard`` retry mode (throttling, 5xx, connection errors).
S3_ATTEMPTS = 8
#: The longest a Signature V4 presigned URL may live (S3 refuses one that claims longer).
PRESIGN_MAX_S = 7 * 24 * 3600
#: S3's limits on a multipart upload: every part but the last at least 5 MiB, at most 10,000 parts.
MIN_PART_BYTES = 5 * 2**20
MAX_PARTS = 10_000


class StorageError(RuntimeError):
    """A key that is refused, or an object that is not there."""


def check_key(key: str) -> str:
    path = PurePosixPath(key)
    if (not key or key.startswith("/") or "\\" in key or "\x00" in key or any(p in ("..", ".", "") for p in
                                                                               key.split("/"))):
        raise StorageError(f"storage key {key!r} is not a plain relative path")
    return str(path)


class Store(Protocol):
    """What the services need of a storage backend. Every method is a coroutine; file methods read or write
    whole files on this machine."""

    #: Whether the store issues presigned URLs (and takes multipart uploads through them): workloads then send
    #: and fetch their files straight to and from it.
    signs_urls: bool

    async def put_file(self, key: str, path: str | os.PathLike) -> None: ...
    async def get_file(self, key: str, path: str | os.PathLike) -> None: ...
    async def put_bytes(self, key: str, data: bytes) -> None: ...
    async def get_bytes(self, key: str) -> bytes: ...
    async def get_head(self, key: str, size: int) -> bytes: ...
    def copy_to(self, key: str, path: str | os.PathLike) -> None: ...
    def copy_from(self, path: str | os.PathLike, key: str) -> None: ...
    async def exists(self, key: str) -> bool: ...
    async def size(self, key: str) -> int: ...
    def size_of(self, key: str) -> int: ...
    async def keys(self, prefix: str) -> list[str]: ...
    async def delete(self, key: str) -> None: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    def presign_get(self, key: str, expires_s: int) -> str | None: ...
    def presign_put(self, key: str, expires_s: int) -> str | None: ...


class LocalStore:
    """Objects as files under ``root`` (owner-only), written atomically (a temporary file, then a rename)."""

    signs_urls = False

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # the server's files alone

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_from(self, key: str, write) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def copy_from(self, path, key: str) -> None:
        """``put_file`` for synchronous callers."""
        with open(path, "rb") as src:
            self._write_from(key, lambda out: shutil.copyfileobj(src, out, 2**20))

    def local_path(self, key: str) -> Path:
        """Where the object is on this machine's disk (it may not exist)."""
        return self._path(key)

    def copy_to(self, key: str, path) -> None:
        """``get_file`` for synchronous callers."""
        source = self._path(key)
        if not source.is_file():
            raise StorageError(f"no object {key!r}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    async def put_file(self, key: str, path) -> None:
        await asyncio.to_thread(self.copy_from, path, key)

    async def get_file(self, key: str, path) -> None:
        await asyncio.to_thread(self.copy_to, key, path)

    async def get_head(self, key: str, size: int) -> bytes:
        def read() -> bytes:
            with open(self._path(key), "rb") as f:
                return f.read(size)
        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:
            raise StorageError(f"no object {key!r}") from None

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_from, key, lambda out: out.write(data))

    async def get_bytes(self, key: str) -> bytes:
        source = self._path(key)
        try:
            return await asyncio.to_thread(source.read_bytes)
        except FileNotFoundError:
            raise StorageError(f"no object {key!r}") from None

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def size(self, key: str) -> int:
        return self.size_of(key)

    def size_of(self, key: str) -> int:
        """``size`` for synchronous callers."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"no object {key!r}") from None

    def _walk(self, prefix: str) -> Iterator[str]:
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if name.startswith(".incoming-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    async def keys(self, prefix: str) -> list[str]:
        return sorted(await asyncio.to_thread(lambda: list(self._walk(prefix))))

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def delete_prefix(self, prefix: str) -> int:
        found = await self.keys(prefix)
        for key in found:
            self._path(key).unlink(missing_ok=True)
        return len(found)

    def presign_get(self, key: str, expires_s: int) -> None:
        return None  # the gateway's own signed routes serve a single machine's files

    def presign_put(self, key: str, expires_s: int) -> None:
        return None


class S3Store:
    """One bucket (and an optional key prefix) of an S3-compatible service."""

    signs_urls = True

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region: str | None = None,
                 prefix: str = "", client=None, public_endpoint_url: str | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        def make(endpoint: str | None):
            return boto3.client(
                "s3", endpoint_url=endpoint, region_name=region or "us-east-1",
                config=Config(retries={"mode": "standard", "max_attempts": S3_ATTEMPTS}, signature_version="s3v4",
                              s3={"addressing_style": "path" if endpoint else "auto"}))

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = client or make(endpoint_url)
        # A presigned URL is signed for one host: the one the workloads reach, which may not be this service's.
        self.presigner = (make(public_endpoint_url) if public_endpoint_url and public_endpoint_url != endpoint_url
                          else self.client)
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
                                       max_concurrency=4, use_threads=True)

    def _key(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _missing(self, exc, key: str) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    async def put_file(self, key: str, path) -> None:
        await asyncio.to_thread(self.copy_from, path, key)

    def copy_from(self, path, key: str) -> None:
        """``put_file`` for synchronous callers."""
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)

    def copy_to(self, key: str, path) -> None:
        """``get_file`` for synchronous callers: written to ``path.partial``, then renamed."""
        from botocore.exceptions import ClientError

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        partial = Path(f"{path}.partial")
        try:
            self.client.download_file(self.bucket, self._key(key), str(partial), Config=self.transfer)
        except ClientError as exc:
            partial.unlink(missing_ok=True)
            if self._missing(exc, key):
                raise StorageError(f"no object {key!r}") from None
            raise
        os.replace(partial, path)

    async def get_file(self, key: str, path) -> None:
        await asyncio.to_thread(self.copy_to, key, path)

    async def get_head(self, key: str, size: int) -> bytes:
        from botocore.exceptions import ClientError

        try:
            answer = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=self._key(key),
                                             Range=f"bytes=0-{size - 1}")
        except ClientError as exc:
            if self._missing(exc, key):
                raise StorageError(f"no object {key!r}") from None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":  # an empty object
                return b""
            raise
        return await asyncio.to_thread(answer["Body"].read)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    async def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            answer = await asyncio.to_thread(self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc, key):
                raise StorageError(f"no object {key!r}") from None
            raise
        return await asyncio.to_thread(answer["Body"].read)

    async def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc, key):
                return None
            raise

    async def exists(self, key: str) -> bool:
        return await self._head(key) is not None

    async def size(self, key: str) -> int:
        return await asyncio.to_thread(self.size_of, key)

    def size_of(self, key: str) -> int:
        """``size`` for synchronous callers."""
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except ClientError as exc:
            if self._missing(exc, key):
                raise StorageError(f"no object {key!r}") from None
            raise

    def _list(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/")) if prefix.strip("/") else self.prefix
        if full and prefix.endswith("/"):
            full += "/"
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                key = item["Key"]
                out.append(key[len(self.prefix) + 1:] if self.prefix else key)
        return sorted(out)

    async def keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    async def delete_prefix(self, prefix: str) -> int:
        found = await self.keys(prefix)
        for start in range(0, len(found), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self._key(k)} for k in found[start:start + 1000]]
            await asyncio.to_thread(self.client.delete_objects, Bucket=self.bucket,
                                    Delete={"Objects": batch, "Quiet": True})
        return len(found)

    def presign_get(self, key: str, expires_s: int) -> str:
        return self.presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=min(int(expires_s), PRESIGN_MAX_S))

    def presign_put(self, key: str, expires_s: int) -> str:
        return self.presigner.generate_presigned_url(
            "put_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=min(int(expires_s), PRESIGN_MAX_S))

    # A multipart upload by someone holding no credentials (a workload): this side starts and ends it, and signs
    # each part's PUT, which goes straight to the bucket; S3 ties an upload id to its key.

    def start_upload(self, key: str) -> str:
        """Begin a multipart upload of ``key``; its upload id."""
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))["UploadId"]

    def presign_part(self, key: str, upload_id: str, number: int, expires_s: int) -> str:
        return self.presigner.generate_presigned_url(
            "upload_part", Params={"Bucket": self.bucket, "Key": self._key(key), "UploadId": upload_id,
                                   "PartNumber": number}, ExpiresIn=min(int(expires_s), PRESIGN_MAX_S))

    def finish_upload(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Join the parts (number, ETag) into the object."""
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in sorted(parts)]})

    def uploaded_bytes(self, key: str, upload_id: str) -> int:
        """What the upload's parts hold so far, in bytes."""
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=self._key(key),
                                                                 UploadId=upload_id)
        return sum(part["Size"] for page in pages for part in page.get("Parts", []))

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)


def part_bytes(size: int, wanted: int) -> int:
    """The part size for an upload of ``size`` bytes: ``wanted`` (at least S3's minimum), larger where it would
    otherwise take more than S3's 10,000 parts."""
    return max(wanted, MIN_PART_BYTES, -(-size // MAX_PARTS))


#: How a stored object is named where a path used to be (a data set's ``path``, a job's ``dataset_path``): files
#: written before object storage keep their plain paths, which ``copy_out`` still reads.
REF = "store:"


def ref(key: str) -> str:
    return REF + check_key(key)


def key_of(path_or_ref: str) -> str | None:
    """The object key of a ``store:`` reference; None for a plain path."""
    return check_key(path_or_ref[len(REF):]) if path_or_ref.startswith(REF) else None


def copy_out(settings: Settings, path_or_ref: str, dest: str | os.PathLike) -> None:
    """Put the file a reference (or a plain path) names at ``dest`` on this machine."""
    key = key_of(path_or_ref)
    if key is None:
        shutil.copyfile(path_or_ref, dest)
    else:
        store_from_settings(settings).copy_to(key, dest)


def store_from_settings(settings: Settings) -> Store:
    """The store the settings name; one per distinct configuration in a process (a boto3 client is costly to make,
    and safe to share between threads)."""
    if settings.storage_backend == "s3":
        if not settings.s3_bucket:
            raise RuntimeError("TUNEFLEET_STORAGE_BACKEND=s3 needs TUNEFLEET_S3_BUCKET (and TUNEFLEET_S3_ENDPOINT_URL "
                               "for a service other than AWS)")
        return _s3_store(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region, settings.s3_prefix,
                         settings.s3_public_endpoint_url)
    return LocalStore(settings.home / "objects")


@functools.lru_cache(maxsize=8)
def _s3_store(bucket: str, endpoint_url: str | None, region: str | None, prefix: str,
              public_endpoint_url: str | None) -> S3Store:
    return S3Store(bucket, endpoint_url=endpoint_url, region=region, prefix=prefix,
                   public_endpoint_url=public_endpoint_url)
