"""The object store (claim checks, code packages, code.run inputs/outputs) behind one interface.

``S3BlobStore`` talks to any S3-compatible server (s3proxy locally, MinIO or AWS elsewhere);
``FileBlobStore`` keeps blobs in a local folder for the embedded single-process mode.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

from foundation.errors import NonRetryableError
from foundation.settings import Settings


class BlobNotFoundError(NonRetryableError):
    error_class = "BlobNotFound"


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = ...) -> str:
        """Stores ``data`` under ``key``; returns the blob's URI."""

    def get(self, uri: str) -> bytes: ...


def s3_client(settings: Settings, *, connect_timeout: float = 2, read_timeout: float = 30) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"},
            # Flexible checksums (boto3 >= 1.36) send headers that several S3-compatible
            # servers, s3proxy included, reject; send them only where the API requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


class S3BlobStore:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.client = s3_client(settings)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return f"s3://{self.bucket}/{key}"

    def get(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey as exc:
            raise BlobNotFoundError(f"No blob at {uri}") from exc
        return body


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise NonRetryableError(f"Blob key {key!r} escapes the store", error_class="BadKey")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"file://{path}"

    def get(self, uri: str) -> bytes:
        path = self._path(str(Path(uri.removeprefix("file://")).relative_to(self.root.resolve())))
        if not path.exists():
            raise BlobNotFoundError(f"No blob at {uri}")
        return path.read_bytes()


def content_key(data: bytes, prefix: str = "payloads") -> str:
    """A content-addressed key: identical payloads are stored once."""
    return f"{prefix}/{hashlib.sha256(data).hexdigest()}"
