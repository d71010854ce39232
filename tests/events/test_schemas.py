"""Parsing of Segment calls, batches and event files into ``SegmentCall``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic
import pytest

from crm_notify.errors import EventValidationError
from crm_notify.events import (
    SegmentCall,
    normalise_email,
    parse_batch,
    parse_call,
    parse_calls_document,
)

RECEIVED = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _track(**fields: Any) -> dict[str, Any]:
    return {"userId": "u1", "event": "Order Completed", **fields}


def _reject(obj: Any, type_hint: Any = "track", prefix: str = "") -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        parse_call(obj, type_hint=type_hint, field_prefix=prefix, received_at=RECEIVED)
    return info.value


def test_track_is_normalised() -> None:
    # Given a track call as a Segment SDK sends it
    obj = _track(
        messageId="m-1",
        properties={"total": 12.5},
        context={"ip": "10.0.0.1"},
        timestamp="2024-01-02T03:04:05.123Z",
    )
    # When parsed
    call = parse_call(obj, type_hint="track", received_at=RECEIVED)
    # Then every field is mapped
    assert call.type == "track"
    assert (call.message_id, call.user_id, call.event) == ("m-1", "u1", "Order Completed")
    assert call.properties == {"total": 12.5}
    assert call.context == {"ip": "10.0.0.1"}
    assert call.timestamp == datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    assert call.raw == obj


def test_numeric_ids_become_strings() -> None:
    # Given numeric userId, anonymousId and an integral float messageId
    obj = _track(userId=42, anonymousId=7.5, messageId=3.0)
    # When parsed
    call = parse_call(obj, type_hint="track", received_at=RECEIVED)
    # Then they are strings, as Segment stores them
    assert (call.user_id, call.anonymous_id, call.message_id) == ("42", "7.5", "3")


def test_extra_fields_are_kept_in_raw_but_write_key_is_not() -> None:
    # Given a call with unknown fields and the write key in the body
    obj = _track(channel="server", nested={"a": [1, 2]}, writeKey="secret")
    # When parsed
    call = parse_call(obj, type_hint="track", received_at=RECEIVED)
    # Then the unknown fields are kept and the credential is dropped
    assert call.raw["channel"] == "server"
    assert call.raw["nested"] == {"a": [1, 2]}
    assert "writeKey" not in call.raw


def test_missing_timestamp_and_message_id_are_filled_in() -> None:
    # Given a call with neither timestamp nor messageId
    # When parsed
    call = parse_call(_track(), type_hint="track", received_at=RECEIVED)
    # Then the received time and a fresh uuid4 are used
    assert call.timestamp == RECEIVED
    assert uuid.UUID(call.message_id).version == 4


def test_original_timestamp_is_the_fallback() -> None:
    # Given a call carrying only originalTimestamp
    obj = _track(originalTimestamp="2024-01-02T03:04:05+02:00")
    # When parsed
    call = parse_call(obj, type_hint="track", received_at=RECEIVED)
    # Then it is used, converted to UTC
    assert call.timestamp == datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert call.timestamp.tzinfo == UTC


def test_naive_timestamp_is_utc() -> None:
    # Given a timestamp without offset
    # When parsed
    call = parse_call(
        _track(timestamp="2024-01-02T03:04:05"), type_hint="track", received_at=RECEIVED
    )
    # Then it is taken as UTC
    assert call.timestamp == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("obj", "type_hint", "field", "fragment"),
    [
        ({"event": "e"}, "track", "userId", "anonymousId"),
        ({"userId": "", "anonymousId": None, "event": "e"}, "track", "userId", "required"),
        ({"userId": "u"}, "track", "event", "required for track"),
        ({"userId": "u", "event": ""}, "track", "event", "required for track"),
        (_track(event=5), "track", "event", "must be a string, not a number"),
        (_track(event="e" * 256), "track", "event", "255"),
        (_track(userId="u" * 256), "track", "userId", "255"),
        (_track(userId=True), "track", "userId", "not a boolean"),
        (_track(userId={"id": 1}), "track", "userId", "not an object"),
        (_track(properties="x"), "track", "properties", "must be an object, not a string"),
        (_track(properties=[1]), "track", "properties", "not an array"),
        (_track(context=1), "track", "context", "must be an object"),
        (_track(timestamp="2015-2-02T00:30:08.276Z"), "track", "timestamp", "ISO 8601"),
        (_track(timestamp=1700000000), "track", "timestamp", "ISO 8601 string"),
        (_track(originalTimestamp="yesterday"), "track", "originalTimestamp", "ISO 8601"),
        (_track(timestamp="0001-01-01T00:00:00+01:00"), "track", "timestamp", "ISO 8601"),
        (_track(type="identify"), "track", "type", "route takes 'track'"),
        ({"userId": "u", "traits": "x"}, "identify", "traits", "must be an object"),
        ({"userId": "u"}, "group", "groupId", "required for group"),
        ({"userId": "u"}, "alias", "previousId", "required for alias"),
        ({"anonymousId": "a", "previousId": "p"}, "alias", "userId", "required for alias"),
        ({"userId": "u", "name": 3}, "page", "name", "must be a string"),
        (_track(), None, "type", "is required"),
        (_track(type="purchase"), None, "type", "'purchase'"),
        ("a string", "track", "", "must be a JSON object"),
    ],
)
def test_rejections_name_the_field(obj: Any, type_hint: Any, field: str, fragment: str) -> None:
    # Given a call with one invalid or missing field
    # When parsed
    error = _reject(obj, type_hint)
    # Then the error names that field
    assert error.field == field
    assert fragment in error.message


def test_field_prefix_is_joined_with_a_dot() -> None:
    # Given a bad call parsed with a prefix
    # When parsed
    error = _reject({"userId": "u"}, "track", prefix="batch[3]")
    # Then the path includes the prefix
    assert error.field == "batch[3].event"


@pytest.mark.parametrize(
    ("type_hint", "obj", "expected"),
    [
        ("identify", {"userId": "u", "traits": {"plan": "pro"}}, {"traits": {"plan": "pro"}}),
        ("page", {"anonymousId": "a", "name": "Home"}, {"name": "Home"}),
        (
            "screen",
            {"userId": "u", "name": "Cart", "properties": {"n": 1}},
            {"properties": {"n": 1}},
        ),
        ("group", {"userId": "u", "groupId": 99, "traits": {"n": 1}}, {"group_id": "99"}),
        ("alias", {"userId": "u", "previousId": "anon-1"}, {"previous_id": "anon-1"}),
    ],
)
def test_other_call_types(type_hint: Any, obj: dict[str, Any], expected: dict[str, Any]) -> None:
    # Given a valid call of each non-track type
    # When parsed
    call = parse_call(obj, type_hint=type_hint, received_at=RECEIVED)
    # Then its type-specific fields are set and track-only fields are not
    assert call.type == type_hint
    assert call.event is None
    for key, value in expected.items():
        assert getattr(call, key) == value


def test_fields_of_other_types_are_not_normalised() -> None:
    # Given an identify call that also carries an event name and properties
    obj = {"userId": "u", "event": "x", "properties": {"a": 1}, "groupId": "g"}
    # When parsed
    call = parse_call(obj, type_hint="identify", received_at=RECEIVED)
    # Then they stay in raw only
    assert (call.event, call.properties, call.group_id) == (None, {}, None)
    assert call.raw["properties"] == {"a": 1}


def test_identify_traits_in_context_are_used() -> None:
    # Given an identify call as the RudderStack SDK sends it (traits inside context)
    obj = {"userId": "u", "context": {"traits": {"email": "a@example.com", "plan": "free"}}}
    # When parsed, also with top-level traits that win
    call = parse_call(obj, type_hint="identify", received_at=RECEIVED)
    both = parse_call(
        {**obj, "traits": {"plan": "pro"}}, type_hint="identify", received_at=RECEIVED
    )
    # Then the traits are found
    assert call.traits == {"email": "a@example.com", "plan": "free"}
    assert both.traits == {"email": "a@example.com", "plan": "pro"}


def test_batch_context_is_merged_under_each_call() -> None:
    # Given a batch with a batch-level context and calls with their own contexts
    body: dict[str, Any] = {
        "batch": [
            {"type": "identify", "userId": "u", "context": {"device": {"type": "ios"}, "ip": "1"}},
            {"type": "track", "userId": "u", "event": "e"},
        ],
        "context": {"device": {"type": "phone", "name": "iPhone"}, "locale": "de-DE"},
        "writeKey": "k",
    }
    # When parsed
    first, second = parse_batch(body, received_at=RECEIVED)
    # Then each call's own values win and nested objects merge
    assert first.context == {
        "device": {"type": "ios", "name": "iPhone"},
        "locale": "de-DE",
        "ip": "1",
    }
    assert second.context == body["context"]
    assert first.raw == body["batch"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"batch": [{"type": "track", "userId": "u", "event": "e"}, {"userId": "u"}]},
            "batch[1].type",
        ),
        ({"batch": [{"type": "track", "event": "e"}]}, "batch[0].userId"),
        ({"batch": [{"type": "track", "userId": "u", "event": 5}]}, "batch[0].event"),
        ({"batch": [1]}, "batch[0]"),
        ({"batch": {"type": "track"}}, "batch"),
        ({}, "batch"),
        ({"batch": [], "context": "x"}, "context"),
        ([], ""),
    ],
)
def test_batch_rejections_name_the_field(body: Any, field: str) -> None:
    # Given an invalid batch
    # When parsed
    with pytest.raises(EventValidationError) as info:
        parse_batch(body, received_at=RECEIVED)
    # Then the error names the field inside the batch
    assert info.value.field == field


def test_calls_document_formats() -> None:
    # Given the same two calls as an object per call, a batch, an array and JSON Lines
    calls = [
        {"type": "identify", "userId": "u", "traits": {"email": "a@example.com"}},
        {"type": "track", "userId": "u", "event": "e", "messageId": "m2"},
    ]
    documents = [
        json.dumps({"batch": calls}, indent=2),
        json.dumps(calls),
        "\n".join(json.dumps(call) for call in calls) + "\n\n",
    ]
    # When each is parsed
    parsed = [parse_calls_document(text, received_at=RECEIVED) for text in documents]
    single = parse_calls_document(json.dumps(calls[1], indent=1), received_at=RECEIVED)
    # Then all agree
    for result in parsed:
        assert [call.type for call in result] == ["identify", "track"]
        assert result[1].message_id == "m2"
    assert [call.message_id for call in single] == ["m2"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            '{"type": "track", "userId": "u", "event": "e"}\n{"type": "track", "userId": "u"}',
            "line[2].event",
        ),
        ('{"type": "track", "userId": "u", "event": "e"}\n{"type": NaN}', "line[2].type"),
        ('{"type": "track", "userId": "u", "event": "e"}\n{"type": ', "line[2]"),
        ('[{"type": "track", "userId": "u"}]', "[0].event"),
        ('{"type": "track", "userId": "u", "event": "e"', ""),
        ("", ""),
        ('"a string"', ""),
    ],
)
def test_calls_document_errors_name_the_place(text: str, field: str) -> None:
    # Given an events file with one bad call
    # When parsed
    with pytest.raises(EventValidationError) as info:
        parse_calls_document(text, received_at=RECEIVED)
    # Then the error says where
    assert info.value.field == field


def test_segment_call_is_frozen_and_utc() -> None:
    # Given a call built directly with a timestamp in another zone
    zone = timezone(timedelta(hours=-5))
    call = SegmentCall(type="track", message_id="m", timestamp=datetime(2024, 1, 1, tzinfo=zone))
    # When it is modified
    with pytest.raises(pydantic.ValidationError):
        call.event = "changed"  # type: ignore[misc]
    # Then it refused, and its timestamp was converted to UTC
    assert call.timestamp.tzinfo == UTC
    assert call.timestamp.hour == 5


def test_normalise_email() -> None:
    # Given a valid address with an upper-case domain
    # When normalised
    # Then the domain is lower-cased
    assert normalise_email("Ann@Example.COM") == "Ann@example.com"


@pytest.mark.parametrize("value", ["not-an-email", "a@@b.com", "", 5, None])
def test_normalise_email_rejects_names_traits_email(value: Any) -> None:
    # Given an invalid email value
    # When normalised
    with pytest.raises(EventValidationError) as info:
        normalise_email(value)
    # Then the error names traits.email
    assert info.value.field == "traits.email"
