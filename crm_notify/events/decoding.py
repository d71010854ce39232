"""Strict decoding of Tracking API request bodies: bounded gzip, size limits, strict JSON.

Everything wrong with a body becomes an ``EventValidationError`` (HTTP 400) or a
``PayloadTooLargeError`` (HTTP 413), never an unexpected exception. JSON problems that sit
inside the document (``NaN``, a duplicate key, a 200-digit number) name the path of the value,
e.g. ``batch[2].properties.price``.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from crm_notify.errors import EventValidationError, PayloadTooLargeError
from crm_notify.events._json import MAX_DEPTH, MAX_INT_DIGITS, json_type, loads_strict

__all__ = [
    "BATCH_LIMIT_NAME",
    "CALL_LIMIT_NAME",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_CALLS",
    "MAX_CALL_BYTES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "check_batch_items",
    "decode_body",
    "decompress",
    "gzip_wire_limit",
    "json_size",
    "json_type",
    "loads_strict",
]

#: Segment's limit for one call, whether posted alone or inside a batch (bytes).
MAX_CALL_BYTES = 32 * 1024
#: Segment's limit for one ``/v1/batch`` request (bytes).
MAX_BATCH_BYTES = 500 * 1024
#: Human names of the two limits, as carried by ``PayloadTooLargeError.limit_name``.
CALL_LIMIT_NAME = "32 KB per call"
BATCH_LIMIT_NAME = "500 KB per batch request"
#: Segment's documented maximum number of calls in one batch.
MAX_BATCH_CALLS = 2500


def gzip_wire_limit(limit_bytes: int) -> int:
    """Return the most compressed bytes worth reading for ``limit_bytes`` of content.

    Deflate can grow incompressible input slightly (stored blocks and the gzip header), so
    the compressed body may exceed the content limit by a little.

    Parameters:
        limit_bytes: the limit on the decompressed body.

    Returns:
        The bound on the compressed body.
    """
    return limit_bytes + limit_bytes // 64 + 1024


def decompress(
    body: bytes, *, content_encoding: str | None, limit_bytes: int, limit_name: str
) -> bytes:
    """Undo ``Content-Encoding``, refusing to inflate past ``limit_bytes``.

    Parameters:
        body: the request body as received.
        content_encoding: the header value (``None``, ``identity`` or ``gzip``).
        limit_bytes: the largest decompressed body accepted.
        limit_name: the limit's name for the error.

    Raises:
        EventValidationError: unsupported encoding or corrupt gzip data.
        PayloadTooLargeError: the (decompressed) body is over the limit; a gzip bomb stops here
            after inflating at most ``limit_bytes + 1`` bytes.

    Returns:
        The decompressed body.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit_bytes:
            raise PayloadTooLargeError(limit_name, limit_bytes)
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise EventValidationError(
            "Content-Encoding", f"unsupported encoding {encoding!r} (use gzip or none)"
        )
    out = bytearray()
    data = body
    try:
        while True:  # one pass per gzip member
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += inflater.decompress(data, limit_bytes + 1 - len(out))
            while inflater.unconsumed_tail and len(out) <= limit_bytes:
                out += inflater.decompress(inflater.unconsumed_tail, limit_bytes + 1 - len(out))
            if len(out) > limit_bytes:
                raise PayloadTooLargeError(limit_name, limit_bytes)
            if not inflater.eof:
                raise EventValidationError("Content-Encoding", "truncated gzip data")
            data = inflater.unused_data
            if not data.strip(b"\0"):
                return bytes(out)
    except zlib.error as exc:
        raise EventValidationError("Content-Encoding", f"invalid gzip data: {exc}") from exc


def json_size(value: Any) -> int:
    """Return the size in bytes of ``value`` as compact UTF-8 JSON (how call sizes are measured).

    Parameters:
        value: a parsed JSON value.

    Returns:
        The byte count.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return len(text.encode("utf-8"))


def decode_body(body: bytes, *, content_encoding: str | None = None, batch: bool) -> dict[str, Any]:
    """Decode one Tracking API request body into a JSON object.

    Parameters:
        body: the bytes received (possibly gzip-compressed).
        content_encoding: the ``Content-Encoding`` header.
        batch: ``True`` for ``/v1/batch`` (500 KB limit, 32 KB per item), else one call (32 KB).

    Raises:
        PayloadTooLargeError: a size limit was exceeded (``field`` is ``batch[i]`` for an item).
        EventValidationError: the body is not strict JSON or not an object.

    Returns:
        The parsed object.
    """
    limit, name = (
        (MAX_BATCH_BYTES, BATCH_LIMIT_NAME) if batch else (MAX_CALL_BYTES, CALL_LIMIT_NAME)
    )
    data = decompress(body, content_encoding=content_encoding, limit_bytes=limit, limit_name=name)
    value = loads_strict(data)
    if not isinstance(value, dict):
        raise EventValidationError("", f"the body must be a JSON object, not {json_type(value)}")
    if batch:
        check_batch_items(value)
    return value


def check_batch_items(body: dict[str, Any]) -> None:
    """Apply the per-batch count and per-call size limits to ``body["batch"]`` when it is a list.

    Parameters:
        body: a parsed batch body.

    Raises:
        EventValidationError: more than ``MAX_BATCH_CALLS`` items.
        PayloadTooLargeError: an item over 32 KB, naming ``batch[i]``.
    """
    items = body.get("batch")
    if not isinstance(items, list):
        return
    if len(items) > MAX_BATCH_CALLS:
        raise EventValidationError(
            "batch", f"{len(items)} calls in one batch; the limit is {MAX_BATCH_CALLS}"
        )
    for index, item in enumerate(items):
        if json_size(item) > MAX_CALL_BYTES:
            raise PayloadTooLargeError(CALL_LIMIT_NAME, MAX_CALL_BYTES, f"batch[{index}]")
