"""Strict decoding of Tracking API bodies: gzip, size limits, strict JSON."""

from __future__ import annotations

import gzip
import json

import pytest

from crm_notify.errors import EventValidationError, PayloadTooLargeError
from crm_notify.events.decoding import (
    BATCH_LIMIT_NAME,
    CALL_LIMIT_NAME,
    MAX_BATCH_BYTES,
    MAX_BATCH_CALLS,
    MAX_CALL_BYTES,
    MAX_DEPTH,
    decode_body,
    json_size,
    loads_strict,
)


def _padded_call(size: int) -> bytes:
    """A JSON call of exactly ``size`` bytes."""
    skeleton = b'{"userId":"u","event":"e","pad":""}'
    return skeleton[:-2] + b"x" * (size - len(skeleton)) + b'"}'


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (b'{"a": NaN}', "a", "NaN"),
        (b'{"p": {"x": Infinity}}', "p.x", "Infinity"),
        (b'{"p": [1, -Infinity]}', "p[1]", "-Infinity"),
        (b'{"userId": "a", "userId": "b"}', "userId", "duplicate key 'userId'"),
        (b'{"traits": {"email": 1, "email": 2, "email": 3}}', "traits.email", "duplicate"),
        (b'{"n": ' + b"9" * 101 + b"}", "n", "100 digits"),
        (b'{"batch": [{"price": 1e999}]}', "batch[0].price", "out of range"),
        (b'{"a": -1e400}', "a", "out of range"),
    ],
)
def test_value_rejections_name_the_path(body: bytes, field: str, fragment: str) -> None:
    # Given a syntactically valid body with one value strict JSON refuses
    # When it is decoded
    with pytest.raises(EventValidationError) as info:
        loads_strict(body)
    # Then the error names the value's path
    assert info.value.field == field
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"a": 1', "invalid JSON"),
        (b"", "invalid JSON"),
        (b'{"a": "\xff"}', "invalid UTF-8 at byte 7"),
        (b"\xef\xbb\xbf{}", "invalid JSON"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested deeper"),
    ],
)
def test_body_level_rejections(body: bytes, fragment: str) -> None:
    # Given a body that is not strict JSON as a whole
    # When it is decoded
    with pytest.raises(EventValidationError) as info:
        loads_strict(body)
    # Then the error concerns the body (no field) and says what is wrong
    assert info.value.field == ""
    assert fragment in info.value.message


def test_nesting_at_the_limit_and_brackets_inside_strings_are_accepted() -> None:
    # Given nesting exactly at the limit, and a string full of brackets and escaped quotes
    deep = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    tricky = b'{"s": "[[[[{{{{\\"[[[["}'
    # When both are decoded
    # Then both parse
    assert loads_strict(deep) is not None
    assert loads_strict(tricky) == {"s": '[[[[{{{{"[[[['}


def test_numbers_within_bounds_are_kept() -> None:
    # Given a 100-digit integer and a large but finite float
    body = b'{"i": ' + b"9" * 100 + b', "f": 1.5e308}'
    # When decoded
    value = loads_strict(body)
    # Then they keep their values
    assert value == {"i": int("9" * 100), "f": 1.5e308}


def test_top_level_must_be_an_object() -> None:
    # Given a JSON array body
    # When it is decoded as a request body
    with pytest.raises(EventValidationError) as info:
        decode_body(b"[1, 2]", batch=False)
    # Then it is rejected as not an object
    assert "must be a JSON object, not an array" in info.value.message


def test_gzip_body_is_decompressed() -> None:
    # Given a gzip-compressed call
    body = gzip.compress(b'{"userId": "u", "event": "e"}')
    # When decoded with Content-Encoding: gzip
    value = decode_body(body, content_encoding="gzip", batch=False)
    # Then the call comes out
    assert value == {"userId": "u", "event": "e"}


def test_multi_member_gzip_is_decompressed() -> None:
    # Given a body made of two concatenated gzip members
    body = gzip.compress(b'{"userId": ') + gzip.compress(b'"u"}')
    # When decoded
    value = decode_body(body, content_encoding="GZIP", batch=False)
    # Then both members are joined
    assert value == {"userId": "u"}


@pytest.mark.parametrize(
    ("body", "encoding", "fragment"),
    [
        (gzip.compress(b'{"a": 1}')[:-6], "gzip", "truncated"),
        (b"not gzip at all", "gzip", "invalid gzip"),
        (b'{"a": 1}', "br", "unsupported encoding 'br'"),
    ],
)
def test_bad_encodings_name_content_encoding(body: bytes, encoding: str, fragment: str) -> None:
    # Given a body whose encoding is broken or unsupported
    # When decoded
    with pytest.raises(EventValidationError) as info:
        decode_body(body, content_encoding=encoding, batch=False)
    # Then the error names the Content-Encoding header
    assert info.value.field == "Content-Encoding"
    assert fragment in info.value.message


def test_gzip_bomb_stops_at_the_limit() -> None:
    # Given 50 MB of JSON compressed to a few kilobytes
    bomb = gzip.compress(b'{"a": "' + b"0" * 50_000_000 + b'"}')
    assert len(bomb) < 100_000
    # When decoded as a batch
    with pytest.raises(PayloadTooLargeError) as info:
        decode_body(bomb, content_encoding="gzip", batch=True)
    # Then the batch limit is named
    assert info.value.limit_name == BATCH_LIMIT_NAME
    assert info.value.limit_bytes == MAX_BATCH_BYTES


def test_call_limit_is_exact() -> None:
    # Given one call of exactly 32 KB and one a byte larger
    at_limit, over = _padded_call(MAX_CALL_BYTES), _padded_call(MAX_CALL_BYTES + 1)
    # When each is decoded as a single call
    decode_body(at_limit, batch=False)
    with pytest.raises(PayloadTooLargeError) as info:
        decode_body(over, batch=False)
    # Then only the larger one is refused, naming the per-call limit and the whole body
    assert (info.value.limit_name, info.value.limit_bytes) == (CALL_LIMIT_NAME, 32 * 1024)
    assert info.value.field == ""


def test_gzip_call_over_the_limit_after_decompression_is_refused() -> None:
    # Given a small gzip body that inflates past 32 KB
    body = gzip.compress(_padded_call(MAX_CALL_BYTES + 1))
    # When decoded as a single call
    # Then the per-call limit applies to the decompressed size
    with pytest.raises(PayloadTooLargeError):
        decode_body(body, content_encoding="gzip", batch=False)


def test_batch_limit_is_500_kb() -> None:
    # Given a batch body just over 500 KB made of small calls
    item = {"type": "track", "userId": "u", "event": "e", "pad": "x" * 1000}
    count = MAX_BATCH_BYTES // json_size(item) + 1
    body = json.dumps({"batch": [item] * count}).encode()
    assert len(body) > 500 * 1024
    # When decoded as a batch
    with pytest.raises(PayloadTooLargeError) as info:
        decode_body(body, batch=True)
    # Then the batch limit is named
    assert info.value.limit_name == BATCH_LIMIT_NAME


def test_batch_item_over_32_kb_is_named() -> None:
    # Given a batch whose second call alone is over 32 KB
    small = {"type": "track", "userId": "u", "event": "e"}
    big = {**small, "pad": "x" * MAX_CALL_BYTES}
    body = json.dumps({"batch": [small, big]}).encode()
    # When decoded as a batch
    with pytest.raises(PayloadTooLargeError) as info:
        decode_body(body, batch=True)
    # Then the error names batch[1] and the per-call limit
    assert info.value.field == "batch[1]"
    assert info.value.limit_name == CALL_LIMIT_NAME
    assert "batch[1] exceeds" in str(info.value)


def test_batch_call_count_is_bounded() -> None:
    # Given a batch with one call more than Segment's maximum
    body = json.dumps({"batch": [{}] * (MAX_BATCH_CALLS + 1)}).encode()
    # When decoded
    with pytest.raises(EventValidationError) as info:
        decode_body(body, batch=True)
    # Then the error names the batch
    assert info.value.field == "batch"
    assert str(MAX_BATCH_CALLS) in info.value.message
