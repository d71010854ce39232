"""The in-process Python API."""

from __future__ import annotations

import pytest

from crm_notify import CrmNotify, emit
from crm_notify.db import make_engine
from crm_notify.errors import EventValidationError
from crm_notify.migrations import upgrade
from tests.support.servers import SmtpSink


@pytest.fixture
def settings(make_settings, smtp_sink: SmtpSink):  # type: ignore[no-untyped-def]
    settings = make_settings(esp_url=smtp_sink.url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    return settings


def test_identify_and_track_deliver_in_process(settings, smtp_sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    # Given a client on the embedded default
    with CrmNotify(settings) as crm:
        # When a customer is identified and their order ships
        crm.identify(user_id="u1", traits={"email": "carol@example.com", "first_name": "Carol"})
        result = crm.track(
            "Order Updated", user_id="u1", properties={"order_id": "Z9", "status": "shipped"}
        )
    # Then both emails were delivered before the calls returned
    assert len(result.notification_ids) == 1
    subjects = sorted(m["Subject"] for m in smtp_sink.messages)
    assert subjects == ["Welcome, Carol! Your account is ready", "Your order Z9 is on its way"]


def test_emit_accepts_raw_segment_calls_and_validates_them(settings) -> None:  # type: ignore[no-untyped-def]
    result = emit({"type": "track", "userId": "u1", "event": "Cart Viewed"}, settings=settings)
    assert result.accepted == 1
    with pytest.raises(EventValidationError) as excinfo:
        emit({"type": "track", "userId": "u1"}, settings=settings)
    assert excinfo.value.field == "event"
