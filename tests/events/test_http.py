"""The Tracking API over real HTTP: success, every rejection, auth, limits and OpenAPI."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.events.conftest import LiveService

AUTH = ("wk_shop_a", "")
TRACK = {"userId": "u1", "event": "Order Completed", "properties": {"total": 10}}
ROUTES = ["track", "identify", "page", "screen", "group", "alias", "batch", "import"]


@pytest.fixture
def client(live: LiveService) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, auth=AUTH, timeout=10) as http:
        yield http


def _still_answers(client: httpx.Client, live: LiveService) -> None:
    live.ingest.clear()
    response = client.post("/v1/track", json={**TRACK, "messageId": "after-error"})
    assert response.status_code == 200, response.text
    assert [call.message_id for call in live.ingest.calls()] == ["after-error"]


def test_track_is_accepted_with_segments_body(client: httpx.Client, live: LiveService) -> None:
    # Given a valid track call
    # When it is posted with Basic auth
    response = client.post("/v1/track", json={**TRACK, "messageId": "m-1"})
    # Then Segment's success body comes back and ingest got the call and the key name
    assert response.status_code == 200
    assert response.json() == {"success": True}
    [call] = live.ingest.calls()
    assert (call.type, call.message_id, call.properties) == ("track", "m-1", {"total": 10})
    assert live.ingest.key_names() == {"shop-a"}


@pytest.mark.parametrize(
    ("route", "body", "expected_type"),
    [
        ("identify", {"userId": "u", "traits": {"email": "a@example.com"}}, "identify"),
        ("page", {"anonymousId": "a", "name": "Home"}, "page"),
        ("screen", {"userId": "u", "name": "Cart"}, "screen"),
        ("group", {"userId": "u", "groupId": "g"}, "group"),
        ("alias", {"userId": "u", "previousId": "p"}, "alias"),
        ("import", {"batch": [{"type": "track", **TRACK}]}, "track"),
    ],
)
def test_each_route_accepts_its_call(
    client: httpx.Client, live: LiveService, route: str, body: dict[str, Any], expected_type: str
) -> None:
    # Given a valid body for the route
    # When it is posted
    response = client.post(f"/v1/{route}", json=body)
    # Then it is accepted as the route's type
    assert response.status_code == 200, response.text
    assert [call.type for call in live.ingest.calls()] == [expected_type]


def test_gzip_batch_with_missing_content_type(live: LiveService) -> None:
    # Given a gzip batch sent without a Content-Type header
    body = gzip.compress(json.dumps({"batch": [{"type": "track", **TRACK}] * 3}).encode())
    headers = {"Content-Encoding": "gzip"}
    # When posted
    response = httpx.post(f"{live.url}/v1/batch", content=body, headers=headers, auth=AUTH)
    # Then all three calls arrive
    assert response.status_code == 200
    assert len(live.ingest.calls()) == 3


def test_text_plain_is_accepted(client: httpx.Client, live: LiveService) -> None:
    # Given a call sent as text/plain (what analytics.js does)
    headers = {"Content-Type": "text/plain;charset=UTF-8"}
    # When posted
    response = client.post("/v1/track", content=json.dumps(TRACK), headers=headers)
    # Then it is accepted
    assert response.status_code == 200
    assert len(live.ingest.calls()) == 1


def _big_track(size: int) -> bytes:
    return json.dumps({**TRACK, "pad": "x" * size}).encode()


@pytest.mark.parametrize(
    ("route", "content", "headers", "status", "field", "fragment"),
    [
        ("track", b'{"userId": "u", "event": ', {}, 400, None, "invalid JSON"),
        (
            "track",
            b'{"userId": "u", "event": "e", "properties": {"p": NaN}}',
            {},
            400,
            "properties.p",
            "NaN",
        ),
        ("track", b'{"userId": "u", "userId": "v", "event": "e"}', {}, 400, "userId", "duplicate"),
        ("track", b'{"p":' * 100 + b"1" + b"}" * 100, {}, 400, None, "nested deeper"),
        (
            "track",
            b'{"userId": "u", "event": "e", "n": 1' + b"0" * 1000 + b"}",
            {},
            400,
            "n",
            "digits",
        ),
        ("track", b'{"userId": "u", "event": "\xff"}', {}, 400, None, "UTF-8"),
        ("track", b"[]", {}, 400, None, "JSON object"),
        ("track", b'{"event": "e"}', {}, 400, "userId", "anonymousId"),
        ("track", b'{"userId": "u"}', {}, 400, "event", "required"),
        (
            "track",
            b'{"userId": "u", "event": "e", "properties": "x"}',
            {},
            400,
            "properties",
            "object",
        ),
        (
            "batch",
            b'{"batch": [{"type": "track", "userId": "u"}]}',
            {},
            400,
            "batch[0].event",
            "required",
        ),
        (
            "track",
            b'{"userId": "u", "event": "e"}',
            {"Content-Encoding": "gzip"},
            400,
            "Content-Encoding",
            "gzip",
        ),
        (
            "track",
            b"userId=u",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "Content-Type",
            "Content-Type",
        ),
        (
            "identify",
            b'{"userId": "u", "traits": {"email": "nope"}}',
            {},
            400,
            "traits.email",
            "email",
        ),
        ("track", _big_track(40_000), {}, 413, None, "32 KB per call"),
        (
            "batch",
            json.dumps({"batch": [{**TRACK, "pad": "x" * 1000}] * 600}).encode(),
            {},
            413,
            None,
            "500 KB per batch",
        ),
        (
            "batch",
            b'{"batch": [' + _big_track(40_000) + b"]}",
            {},
            413,
            "batch[0]",
            "32 KB per call",
        ),
        (
            "batch",
            gzip.compress(b'{"batch": "' + b"0" * 30_000_000 + b'"}'),
            {"Content-Encoding": "gzip"},
            413,
            None,
            "500 KB per batch",
        ),
    ],
)
def test_rejections(
    client: httpx.Client,
    live: LiveService,
    route: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    field: str | None,
    fragment: str,
) -> None:
    # Given an invalid request
    headers = {"Content-Type": "application/json", **headers}
    # When it is posted
    response = client.post(f"/v1/{route}", content=content, headers=headers)
    # Then it gets the status, names the field, speaks the SDKs' error format, ingests nothing
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field
    assert fragment in body["error"]
    assert body["message"] == body["error"] and body["code"]
    assert live.ingest.calls() == []
    # And the service keeps answering
    _still_answers(client, live)


def _basic(credentials: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}


@pytest.mark.parametrize(
    ("headers", "body", "fragment"),
    [
        ({}, TRACK, "missing write key"),
        (_basic(b"wk_unknown:"), TRACK, "invalid write key"),
        (_basic(b":"), TRACK, "missing write key"),
        ({"Authorization": "Basic !!!"}, TRACK, "malformed"),
        ({}, {**TRACK, "writeKey": "wk_unknown"}, "invalid write key"),
        ({}, {**TRACK, "writeKey": 5}, "missing write key"),
        ({"Authorization": "Bearer token"}, TRACK, "missing write key"),
    ],
)
def test_unauthenticated_requests_get_401(
    live: LiveService, headers: dict[str, str], body: dict[str, Any], fragment: str
) -> None:
    # Given a request without a known write key
    # When it is posted
    response = httpx.post(f"{live.url}/v1/track", json=body, headers=headers)
    # Then it is refused with a Basic challenge and nothing is ingested
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert fragment in response.json()["error"]
    assert live.ingest.calls() == []


def test_bad_header_key_is_refused_before_the_body_is_read(live: LiveService) -> None:
    # Given an unknown Basic write key with a body that is not even JSON
    headers = {**_basic(b"wk_unknown:"), "Content-Type": "application/json"}
    # When posted
    response = httpx.post(f"{live.url}/v1/track", content=b"{{{", headers=headers)
    # Then authentication answers first
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("track", {**TRACK, "writeKey": "wk_shop_b"}),
        ("batch", {"batch": [{"type": "track", **TRACK}], "writeKey": "wk_shop_b"}),
    ],
)
def test_write_key_in_body_authenticates(
    live: LiveService, route: str, body: dict[str, Any]
) -> None:
    # Given a call carrying writeKey in its body and no Authorization header
    # When posted
    response = httpx.post(f"{live.url}/v1/{route}", json=body)
    # Then it is accepted under that key's name, and the key is not stored
    assert response.status_code == 200
    assert live.ingest.key_names() == {"shop-b"}
    assert all("writeKey" not in call.raw for call in live.ingest.calls())


def test_write_key_without_colon_is_accepted(live: LiveService) -> None:
    # Given Basic credentials encoding the key without the trailing colon
    # When posted
    response = httpx.post(f"{live.url}/v1/track", json=TRACK, headers=_basic(b"wk_shop_a"))
    # Then the key is recognised
    assert response.status_code == 200


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    # Given the running service
    # When its OpenAPI document is fetched
    document = client.get("/openapi.json").json()
    # Then every route is a POST with a self-contained request body schema and its responses
    for route in ROUTES:
        operation = document["paths"][f"/v1/{route}"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert "#/$defs/" not in json.dumps(schema)
        assert {"200", "400", "401", "413"} <= set(operation["responses"])
    track = document["paths"]["/v1/track"]["post"]["requestBody"]["content"]
    assert "event" in track["application/json"]["schema"]["required"]
    batch = document["paths"]["/v1/batch"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["properties"]["batch"]["items"]["required"] == [
        "type"
    ]


def test_chunked_body_over_the_limit_is_cut_off(client: httpx.Client, live: LiveService) -> None:
    # Given a chunked body (no Content-Length) that grows past 32 KB
    def chunks() -> Iterator[bytes]:
        yield b'{"userId": "u", "event": "e", "pad": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    # When it is streamed to a single-call route
    response = client.post("/v1/track", content=chunks())
    # Then reading stops at the limit with 413
    assert response.status_code == 413
    assert "32 KB per call" in response.json()["error"]
    _still_answers(client, live)


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"writeKey": "wk_shop_a", "event": "e"}, 400),
        ({}, {"writeKey": "wk_unknown", "event": "e"}, 401),
        ({}, {"event": "e"}, 401),
        (_basic(b"wk_shop_a:"), {**TRACK, "writeKey": "wk_unknown"}, 200),
    ],
)
def test_calls_are_validated_only_for_known_keys(
    live: LiveService, headers: dict[str, str], body: dict[str, Any], status: int
) -> None:
    # Given a call whose credentials and validity vary
    # When posted
    response = httpx.post(f"{live.url}/v1/track", json=body, headers=headers)
    # Then an unknown key is refused before the call is checked, and a Basic header wins
    assert response.status_code == status, response.text
