"""The object store port (``foundation.objectstore.BlobStore``) behaves the same on every adapter.

- ``s3``: :class:`S3BlobStore` on the local S3 server (s3proxy), under a key prefix of its own
  that is deleted afterwards;
- ``file``: :class:`FileBlobStore` on a folder of the test (the embedded single-process mode).

Every test runs against both with the same body. Callers only ever hand ``get`` a URI that
``put`` returned; what a URI looks like is the adapter's business.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation.errors import NonRetryableError
from foundation.objectstore import (
    BlobNotFoundError,
    BlobStore,
    FileBlobStore,
    S3BlobStore,
    content_key,
)
from foundation.settings import Settings
from node_workers.claimcheck import PayloadCorruptError, encode_json, load_json, store_json

pytestmark = pytest.mark.integration


@dataclass
class Adapter:
    store: BlobStore
    prefix: str
    """Every key of the test starts with it, so tests never share a blob."""

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"


def _s3(settings: Settings, prefix: str) -> Iterator[BlobStore]:
    store = S3BlobStore(settings)
    try:
        yield store
    finally:
        listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"{prefix}/")
        # Deepest first: s3proxy's filesystem backend lists folders as "a/" keys, and deleting
        # one that still holds a file stalls for 10 s.
        for key in sorted((item["Key"] for item in listed.get("Contents", [])), reverse=True):
            store.client.delete_object(Bucket=store.bucket, Key=key)
        left = store.client.list_objects_v2(Bucket=store.bucket, Prefix=f"{prefix}/")
        assert left.get("KeyCount", 0) == 0, left


def _file(root: Path) -> Iterator[BlobStore]:
    yield FileBlobStore(root)


@pytest.fixture(params=["s3", "file"])
def adapter(
    request: pytest.FixtureRequest, local_services: Settings, tmp_path: Path
) -> Iterator[Adapter]:
    prefix = f"contract-tests/{uuid.uuid4().hex}"
    stores: dict[str, Callable[[], Iterator[BlobStore]]] = {
        "s3": lambda: _s3(local_services, prefix),
        "file": lambda: _file(tmp_path / "blobs"),
    }
    opened = stores[request.param]()
    yield Adapter(next(opened), prefix)
    for _ in opened:  # the adapter's cleanup (and its check)
        pass


ALL_BYTES = bytes(range(256)) * 4


@pytest.mark.parametrize(
    "data",
    [b"", ALL_BYTES, os.urandom(3 * 1024 * 1024)],
    ids=["empty", "every-byte-value", "3-MiB"],
)
def test_put_returns_a_uri_that_get_answers_with_the_same_bytes(
    adapter: Adapter, data: bytes
) -> None:
    uri = adapter.store.put(adapter.key("blob.bin"), data)
    assert isinstance(uri, str) and uri
    assert adapter.store.get(uri) == data


def test_keys_with_folders_and_content_types_are_stored(adapter: Adapter) -> None:
    uri = adapter.store.put(adapter.key("a/b/c.json"), b'{"ok": true}', "application/json")
    assert adapter.store.get(uri) == b'{"ok": true}'


def test_blobs_under_different_keys_are_independent(adapter: Adapter) -> None:
    first = adapter.store.put(adapter.key("one"), b"1")
    second = adapter.store.put(adapter.key("two"), b"2")
    assert first != second
    assert (adapter.store.get(first), adapter.store.get(second)) == (b"1", b"2")


def test_put_on_a_key_replaces_its_blob_under_the_same_uri(adapter: Adapter) -> None:
    before = adapter.store.put(adapter.key("same"), b"old")
    after = adapter.store.put(adapter.key("same"), b"new")
    assert before == after
    assert adapter.store.get(after) == b"new"


def test_a_content_key_stores_identical_payloads_once(adapter: Adapter) -> None:
    data = b'{"big": "payload"}'
    key = content_key(data, prefix=adapter.prefix)
    assert key == content_key(data, prefix=adapter.prefix)
    assert adapter.store.put(key, data) == adapter.store.put(key, data)
    assert adapter.store.get(adapter.store.put(key, data)) == data


def test_a_missing_blob_is_blob_not_found(adapter: Adapter) -> None:
    present = adapter.store.put(adapter.key("present"), b"here")
    missing = present.replace("present", "absent")
    assert missing != present
    with pytest.raises(BlobNotFoundError, match="No blob at") as caught:
        adapter.store.get(missing)
    assert missing in str(caught.value)
    assert isinstance(caught.value, NonRetryableError)
    assert caught.value.error_class == "BlobNotFound"


def test_claim_checks_round_trip_and_catch_a_swapped_blob(adapter: Adapter) -> None:
    """The store's main caller: params and outputs above the claim-check threshold."""
    value = {"rows": [{"n": i, "text": "é" * i} for i in range(50)], "none": None}
    key = adapter.key("claim.json")
    ref = store_json(adapter.store, key, encode_json(value))
    assert load_json(adapter.store, ref) == value
    adapter.store.put(key, encode_json({"rows": []}))  # the blob changed behind the reference
    with pytest.raises(PayloadCorruptError, match="sha256"):
        load_json(adapter.store, ref)
