"""The official Segment and RudderStack Python SDKs against the real server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from rudderstack.analytics.client import Client as RudderClient
from rudderstack.analytics.request import APIError as RudderAPIError
from segment.analytics.client import Client as SegmentClient
from segment.analytics.request import APIError as SegmentAPIError

if TYPE_CHECKING:
    from tests.events.conftest import LiveService

WHEN = datetime(2024, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
SDKS: dict[str, tuple[Callable[..., Any], type[Exception]]] = {
    "segment": (SegmentClient, SegmentAPIError),
    "rudderstack": (RudderClient, RudderAPIError),
}


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
def test_identify_and_track_arrive(live: LiveService, sdk: str, use_gzip: bool) -> None:
    # Given an SDK client in sync mode pointed at the service
    client_class, _ = SDKS[sdk]
    client = client_class("wk_shop_a", host=live.url, sync_mode=True, gzip=use_gzip)
    # When it sends an identify and a track, then flushes
    _, identify = client.identify(
        user_id=42, traits={"email": "ann@example.com", "plan": "pro"}, timestamp=WHEN
    )
    _, track = client.track(
        user_id="42",
        event="Order Completed",
        properties={"order_id": "o-1", "total": 99.5, "items": [{"sku": "A", "qty": 2}]},
        context={"ip": "203.0.113.9"},
        message_id="order-o-1",
    )
    client.flush()
    # Then ingest got both calls, with their ids, timestamps, traits and properties
    calls = live.ingest.calls()
    assert [call.type for call in calls] == ["identify", "track"]
    got_identify, got_track = calls
    assert got_identify.message_id == identify["messageId"]
    assert got_identify.user_id == "42"
    assert got_identify.traits == {"email": "ann@example.com", "plan": "pro"}
    assert got_identify.timestamp == datetime.fromisoformat(identify["timestamp"])
    assert abs(got_identify.timestamp - WHEN).total_seconds() < 0.001
    assert got_track.message_id == "order-o-1"
    assert got_track.event == "Order Completed"
    assert got_track.properties == track["properties"]
    assert got_track.context["ip"] == "203.0.113.9"
    assert got_track.context["library"]["name"] == "analytics-python"
    assert got_track.timestamp == datetime.fromisoformat(track["timestamp"])
    assert live.ingest.key_names() == {"shop-a"}


@pytest.mark.parametrize("sdk", SDKS)
def test_queued_calls_arrive_as_one_batch(live: LiveService, sdk: str) -> None:
    # Given an SDK client with its background consumer
    client_class, _ = SDKS[sdk]
    client = client_class("wk_shop_b", host=live.url, upload_interval=0.2)
    try:
        # When several calls are queued and flushed
        ids = [
            client.track(user_id=f"u{i}", event="Viewed", properties={"i": i})[1]["messageId"]
            for i in range(5)
        ]
        client.page(anonymous_id="anon-1", name="Home")
        client.flush()
    finally:
        client.join()
    # Then all arrive, in order, under the key's name
    calls = live.ingest.calls()
    assert [call.message_id for call in calls[:5]] == ids
    assert [call.properties for call in calls[:5]] == [{"i": i} for i in range(5)]
    assert (calls[5].type, calls[5].name, calls[5].anonymous_id) == ("page", "Home", "anon-1")
    assert live.ingest.key_names() == {"shop-b"}


@pytest.mark.parametrize("sdk", SDKS)
def test_invalid_write_key_fires_on_error(live: LiveService, sdk: str) -> None:
    # Given an SDK client with an unknown write key and an on_error callback
    client_class, api_error = SDKS[sdk]
    errors: list[Exception] = []
    fired = threading.Event()

    def on_error(error: Exception, batch: list[dict[str, Any]]) -> None:
        errors.append(error)
        fired.set()

    client = client_class(
        "wk_unknown", host=live.url, on_error=on_error, max_retries=1, upload_interval=0.1
    )
    try:
        # When it sends a call
        client.track(user_id="u", event="Viewed")
        client.flush()
    finally:
        client.join()
    # Then the callback gets the SDK's APIError for a 401 (no retries), and nothing is ingested
    assert fired.wait(5)
    [error] = errors
    assert isinstance(error, api_error)
    assert (error.status, error.code) == (401, "unauthorized")  # type: ignore[attr-defined]
    assert live.ingest.calls() == []


@pytest.mark.parametrize("sdk", SDKS)
def test_rejected_call_raises_in_sync_mode(live: LiveService, sdk: str) -> None:
    # Given a sync-mode client
    client_class, api_error = SDKS[sdk]
    client = client_class("wk_shop_a", host=live.url, sync_mode=True)
    # When it sends an identify with an invalid email (refused by ingest)
    with pytest.raises(api_error) as info:
        client.identify(user_id="u", traits={"email": "not-an-email"})
    # Then the SDK reports our 400 and its field in the message
    assert info.value.status == 400  # type: ignore[attr-defined]
    assert "traits.email" in info.value.message  # type: ignore[attr-defined]
