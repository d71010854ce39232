"""Fetch steps at delivery, against a real HTTP server on 127.0.0.1 and a real SMTP sink:
success, the cache (database and Redis), timeouts, error statuses, deferral, refused
addresses, and every outcome in the decision log and the counters."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from freezegun import freeze_time
from prometheus_client.core import Metric
from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify._net import OutboundPolicy
from crm_notify.fetch.cache import DatabaseFetchCache, FetchCache, RedisFetchCache
from crm_notify.fetch.stats import fetch_counts
from crm_notify.metrics import DatabaseMetrics
from tests.esp._api_server import Answer, ApiServer
from tests.fetch.conftest import ENVIRON, PRODUCTS, MakePipeline, Pipeline, reco_rule, reco_url
from tests.support.servers import SmtpSink


def _text(sink: SmtpSink, index: int = -1) -> str:
    part = sink.messages[index].get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def _fetches(engine: Engine) -> dict[tuple[str, str], dict[str, Any]]:
    with Session(engine) as session:
        return {
            key: {"outcomes": dict(counts.outcomes), "errors": dict(counts.errors)}
            for key, counts in fetch_counts(session).items()
        }


def _fetch_metric(metrics: DatabaseMetrics) -> dict[tuple[str, ...], float]:
    found: list[Metric] = [m for m in metrics.collect() if m.name == "crm_notify_fetches"]
    return {
        tuple(sample.labels[k] for k in ("rule", "fetch", "outcome", "error")): sample.value
        for sample in found[0].samples
        if sample.name.endswith("_total")
    }


def test_fetched_products_are_rendered_and_a_retry_sends_the_same_message(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a rule asking the recommendation service for three products of the cart
    pipeline = make_pipeline(reco_rule(reco_url(api)))
    metrics = DatabaseMetrics(engine=pipeline.engine)
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # And an SMTP server that refuses the first attempt for now
    smtp_sink.reject_with = "451 4.3.0 try again later"
    with freeze_time("2026-11-20 12:00:00", tick=True) as frozen:
        # When the cart is viewed and the email delivered
        pipeline.cart_viewed("C/1?limit=9&x=1")
        assert pipeline.deliver_queued() == ["retrying"]
        # Then the service got the templated URL and the env header; the value was encoded
        # as a whole, so it added no parameter (the server decodes the path)
        (request,) = api.requests
        assert request.method == "GET"
        assert request.path == "/v1/carts/C/1?limit=9&x=1/products"
        assert request.query == {"limit": ["3"], "key": ["k-42"]}
        assert request.headers["authorization"] == "Bearer reco-t0ken"
        assert request.headers["accept"] == "application/json"
        # When the SMTP server accepts again and the retry is due
        smtp_sink.reject_with = None
        frozen.tick(timedelta(minutes=2))
        (row,) = pipeline.rows()
        assert row.id is not None
        assert pipeline.delivery.deliver(row.id).status == "sent"
    # Then the email lists the products, and the retry did not fetch again
    assert len(api.requests) == 1
    text = _text(smtp_sink)
    assert "- Red mug\n- Blue pot\n- Tea towel" in text
    assert "<li>Blue pot</li>" in str(smtp_sink.messages[0].get_body(("html",)).get_content())  # type: ignore[union-attr]
    # And the data is stored with the message, the outcome logged and counted
    (row,) = pipeline.rows()
    assert row.context["fetch"] == {"recommendations": PRODUCTS}
    fetch_entries = [d for d in pipeline.decisions() if d[1].startswith("fetch")]
    assert [(o, r) for o, r, _ in fetch_entries] == [("send", "fetch recommendations: ok")]
    assert fetch_entries[0][2]["fetch"]["outcome"] == "ok"
    assert _fetches(pipeline.engine) == {
        ("cart-reco", "recommendations"): {"outcomes": {"ok": 1}, "errors": {}}
    }
    assert _fetch_metric(metrics) == {("cart-reco", "recommendations", "ok", ""): 1}


def test_a_post_step_sends_its_templated_json_body(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a POST step with a JSON body from the event and contact
    body = {"cart": "{{ event.properties.cart_id }}", "email": "{{ contact.email }}", "n": 3}
    pipeline = make_pipeline(reco_rule(api.url + "/v1/recommend", method="POST", body=body))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the email is delivered
    pipeline.cart_viewed("C1")
    assert pipeline.deliver_queued() == ["sent"]
    # Then the body was rendered, as JSON
    assert api.last.method == "POST"
    assert api.last.headers["content-type"] == "application/json"
    assert api.last.json == {"cart": "C1", "email": "ala@example.com", "n": 3}
    assert "- Red mug" in _text(smtp_sink)


@pytest.fixture(params=["database", "redis"])
def cache(
    request: pytest.FixtureRequest, engine: Engine, redis_server_url: str, redis_namespace: str
) -> Iterator[FetchCache]:
    if request.param == "database":
        yield DatabaseFetchCache(engine)
        return
    client = redis.Redis.from_url(redis_server_url)
    built = RedisFetchCache(client, namespace=redis_namespace)
    yield built
    built.close()


def test_a_cached_answer_is_used_within_the_cache_time(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink, cache: FetchCache
) -> None:
    # Given a step cached for an hour
    pipeline = make_pipeline(reco_rule(reco_url(api), cache="1h"), cache=cache)
    pipeline.identify(email="ala@example.com", first_name="Ala")
    pipeline.identify("u2", email="bob@example.com", first_name="Bob")
    with freeze_time("2026-11-20 12:00:00", tick=True) as frozen:
        # When two emails ask for the same cart within the hour
        pipeline.cart_viewed("C1")
        pipeline.cart_viewed("C1", user_id="u2")
        assert pipeline.deliver_queued() == ["sent", "sent"]
        # Then the service was asked once, and both emails list its products
        assert len(api.requests) == 1
        assert all("- Red mug" in _text(smtp_sink, i) for i in (0, 1))
        # And another cart is another request
        pipeline.cart_viewed("C2")
        assert pipeline.deliver_queued() == ["sent"]
        assert len(api.requests) == 2
        # When the hour has passed, the service is asked again
        frozen.tick(timedelta(minutes=61))
        pipeline.cart_viewed("C1", user_id="u2")
        assert pipeline.deliver_queued() == ["sent"]
    assert len(api.requests) == 3
    # And the decision log says which came from the cache
    reasons = [reason for _, reason, _ in pipeline.decisions() if reason.startswith("fetch")]
    assert reasons == [
        "fetch recommendations: ok",
        "fetch recommendations: cache hit",
        "fetch recommendations: ok",
        "fetch recommendations: ok",
    ]
    assert _fetches(pipeline.engine)[("cart-reco", "recommendations")]["outcomes"] == {
        "ok": 3,
        "cache_hit": 1,
    }


def test_the_cache_keeps_no_credential_in_clear(
    engine: Engine, redis_server_url: str, redis_namespace: str
) -> None:
    from crm_notify.fetch.cache import cache_key

    # Given two requests differing only in a header's credential
    first = cache_key("GET", "https://reco.example/p", b"", {"Authorization": "Bearer one"})
    second = cache_key("GET", "https://reco.example/p", b"", {"Authorization": "Bearer two"})
    # Then their keys differ, and neither holds the credential
    assert first != second
    assert "one" not in first and len(first) == 64
    # And Redis keeps the entry under the namespace, the database in fetch_cache
    client = redis.Redis.from_url(redis_server_url)
    RedisFetchCache(client, namespace=redis_namespace).put(first, {"a": 1}, ttl=timedelta(1))
    assert [k.decode() for k in client.keys(f"{redis_namespace}*")] == [
        f"{redis_namespace}:fetch:{first}"
    ]
    client.close()
    DatabaseFetchCache(engine).put(first, {"a": 1}, ttl=timedelta(hours=1))
    DatabaseFetchCache(engine).put(first, {"a": 2}, ttl=timedelta(hours=1))  # replaced
    assert DatabaseFetchCache(engine).get(first) == {"a": 2}
    assert DatabaseFetchCache(engine).get(second) is None


def test_a_timeout_sends_the_fallback_on_time(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a service slower than the step's 1 second, and a fallback
    api.default = Answer(200, json=PRODUCTS, delay_s=5)
    pipeline = make_pipeline(reco_rule(reco_url(api), fallback={"products": []}))
    metrics = DatabaseMetrics(engine=pipeline.engine)
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the email is delivered
    pipeline.cart_viewed("C1")
    started = time.monotonic()
    assert pipeline.deliver_queued() == ["sent"]
    # Then it went out after the timeout, not the service's 5 seconds, with the fallback content
    assert time.monotonic() - started < 3
    assert "(our bestsellers)" in _text(smtp_sink)
    # And the decision log and the counters say so
    entries = [d for d in pipeline.decisions() if d[1].startswith("fetch")]
    assert [(o, r) for o, r, _ in entries] == [
        ("send", "fetch recommendations failed: timeout after 1s; fallback data used")
    ]
    assert entries[0][2]["fetch"]["error"] == "timeout"
    assert _fetches(pipeline.engine)[("cart-reco", "recommendations")] == {
        "outcomes": {"fallback": 1},
        "errors": {"timeout": 1},
    }
    assert _fetch_metric(metrics) == {("cart-reco", "recommendations", "fallback", "timeout"): 1}
    (row,) = pipeline.rows()
    assert row.context["fetch"] == {"recommendations": {"products": []}}


def test_an_error_status_skips_the_email(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a service answering 500, and a step without fallback (on_error: skip by default)
    api.default = Answer(500, body="upstream down")
    pipeline = make_pipeline(reco_rule(reco_url(api)))
    metrics = DatabaseMetrics(engine=pipeline.engine)
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the email is delivered
    pipeline.cart_viewed("C1")
    # Then it is cancelled with the reason, and nothing is sent
    assert pipeline.deliver_queued() == ["cancelled"]
    assert smtp_sink.messages == []
    (row,) = pipeline.rows()
    assert row.status == "cancelled"
    assert row.message is None
    outcome, reason, details = pipeline.decisions()[-1]
    assert (outcome, reason) == (
        "skip",
        "cancelled at delivery: fetch recommendations failed: status 500",
    )
    assert details == {
        "fetch": {
            "name": "recommendations",
            "outcome": "skip",
            "error": "status 500",
            "status": 500,
            "elapsed_ms": details["fetch"]["elapsed_ms"],
        }
    }
    # And it is counted
    assert _fetch_metric(metrics) == {("cart-reco", "recommendations", "skip", "status 500"): 1}
    # And a retried delivery does nothing more
    assert row.id is not None
    assert pipeline.delivery.deliver(row.id).status == "skipped"
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (Answer(200, body="<html>not json</html>"), "not json", "the answer is not JSON"),
        (Answer(200, json=42), "not json", "the answer is JSON but not an object or a list (int)"),
        (Answer(200, body="[" + "1," * 200_000 + "1]"), "too large", "larger than 256 KiB"),
        (
            Answer(302, headers={"Location": "http://169.254.169.254/"}),
            "status 302",
            "status 302 (redirects are not followed)",
        ),
        (Answer(204), "not json", "the answer is not JSON"),
    ],
)
def test_unusable_answers_use_the_fallback(
    make_pipeline: MakePipeline,
    api: ApiServer,
    smtp_sink: SmtpSink,
    answer: Answer,
    error: str,
    message: str,
) -> None:
    # Given a service answering something that is not usable data
    api.default = answer
    pipeline = make_pipeline(reco_rule(reco_url(api), fallback={"products": []}))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the email is delivered
    pipeline.cart_viewed("C1")
    assert pipeline.deliver_queued() == ["sent"]
    # Then it went out with the fallback, the kind of failure logged
    assert "(our bestsellers)" in _text(smtp_sink)
    (_, reason, details) = next(d for d in pipeline.decisions() if d[1].startswith("fetch"))
    assert message in reason
    assert details["fetch"]["error"] == error
    assert len(api.requests) == 1  # the redirect was not followed


def test_a_refused_address_is_an_error(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given the default outbound policy: public addresses only (the service is on loopback)
    pipeline = make_pipeline(
        reco_rule(reco_url(api), fallback={"products": []}), policy=OutboundPolicy()
    )
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the email is delivered
    pipeline.cart_viewed("C1")
    assert pipeline.deliver_queued() == ["sent"]
    # Then no request reached the service, and the fallback was used
    assert api.requests == []
    assert "(our bestsellers)" in _text(smtp_sink)
    (_, reason, details) = next(d for d in pipeline.decisions() if d[1].startswith("fetch"))
    assert reason.startswith("fetch recommendations failed: refused address 127.0.0.1")
    assert details["fetch"]["error"] == "refused address"


def test_defer_retries_later_then_sends(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a step that defers the email by 15 minutes when the service fails
    api.respond(503, body="maintenance")
    pipeline = make_pipeline(reco_rule(reco_url(api), on_error="defer", retry_after="15m"))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    with freeze_time("2026-11-20 12:00:00", tick=True) as frozen:
        # When the email is delivered while the service is down
        pipeline.cart_viewed("C1")
        assert pipeline.deliver_queued() == ["retrying"]
        (row,) = pipeline.rows()
        assert row.id is not None
        # Then it waits 15 minutes (the retry is scheduled), nothing sent
        assert pipeline.retries == [(row.id, timedelta(minutes=15))]
        assert row.status == "retrying"
        assert row.next_attempt_at is not None
        assert smtp_sink.messages == []
        assert pipeline.delivery.deliver(row.id).status == "skipped"  # not due yet
        # When the 15 minutes have passed and the service is back
        frozen.tick(timedelta(minutes=15, seconds=1))
        assert pipeline.delivery.deliver(row.id).status == "sent"
    # Then the email has the products, and both outcomes are logged
    assert "- Red mug" in _text(smtp_sink)
    reasons = [(o, r) for o, r, _ in pipeline.decisions() if "fetch" in r]
    assert reasons == [
        ("defer", "deferred at delivery: fetch recommendations failed: status 503"),
        ("send", "fetch recommendations: ok"),
    ]
    assert _fetches(pipeline.engine)[("cart-reco", "recommendations")]["outcomes"] == {
        "defer": 1,
        "ok": 1,
    }


def test_defer_past_the_send_window_skips(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a step that defers by an hour, in a rule whose emails must go within 30 minutes
    api.default = Answer(503)
    rule = reco_rule(reco_url(api), on_error="defer", retry_after="1h")
    pipeline = make_pipeline({**rule, "not_after": "30m"})
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the service fails
    pipeline.cart_viewed("C1")
    # Then the email is cancelled instead of deferred past its window
    assert pipeline.deliver_queued() == ["cancelled"]
    assert pipeline.retries == []
    (_, reason, details) = pipeline.decisions()[-1]
    assert reason == (
        "cancelled at delivery: fetch recommendations failed: status 503; a retry would come "
        "after the send window (not_after) or the max age"
    )
    assert details["fetch"]["outcome"] == "skip"


def test_a_missing_value_in_the_url_is_a_request_error(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a URL reading a property the event does not have
    url = api.url + "/v1/carts/{{ event.properties.basket.id }}"
    pipeline = make_pipeline(reco_rule(url, fallback={"products": []}))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the email is delivered
    pipeline.cart_viewed("C1")
    assert pipeline.deliver_queued() == ["sent"]
    # Then no request was made, and the fallback was used
    assert api.requests == []
    (_, reason, details) = next(d for d in pipeline.decisions() if d[1].startswith("fetch"))
    assert details["fetch"]["error"] == "request error"
    assert "basket" in reason


def test_environ_is_read_when_the_request_is_built(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink, monkeypatch: Any
) -> None:
    # Given the token changed in the environment after load (the runner reads it per request)
    pipeline: Pipeline = make_pipeline(reco_rule(reco_url(api)))
    monkeypatch.setitem(ENVIRON, "RECO_TOKEN", "rotated")
    pipeline.identify(email="ala@example.com", first_name="Ala")
    pipeline.cart_viewed("C1")
    assert pipeline.deliver_queued() == ["sent"]
    assert api.last.headers["authorization"] == "Bearer rotated"


def test_an_answer_of_another_shape_uses_the_fallback(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    # Given a service answering JSON without the products the template reads
    api.default = Answer(200, json={"items": [{"name": "Red mug"}]})
    pipeline = make_pipeline(reco_rule(reco_url(api), fallback={"products": []}))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    # When the email is delivered
    pipeline.cart_viewed("C1")
    assert pipeline.deliver_queued() == ["sent"]
    # Then it went out with the fallback, the answer logged as unusable
    assert "(our bestsellers)" in _text(smtp_sink)
    (_, reason, details) = next(d for d in pipeline.decisions() if d[1].startswith("fetch"))
    assert reason.startswith("fetch recommendations failed: the email did not render: ")
    assert details["fetch"]["error"] == "unusable answer"


def test_without_fallback_an_answer_of_another_shape_fails_the_email(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    api.default = Answer(200, json={"items": []})
    pipeline = make_pipeline(reco_rule(reco_url(api)))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    pipeline.cart_viewed("C1")
    assert pipeline.deliver_queued() == ["failed"]
    (row,) = pipeline.rows()
    assert row.last_error is not None and row.last_error.startswith("render: ")
    assert smtp_sink.messages == []
    assert [r for _, r, _ in pipeline.decisions() if r.startswith("fetch")] == [
        "fetch recommendations: ok"
    ]


def test_a_suppression_while_the_service_answers_cancels_the_email(
    make_pipeline: MakePipeline, api: ApiServer, smtp_sink: SmtpSink
) -> None:
    from crm_notify.db import session_scope
    from crm_notify.guards.suppression import suppress

    pipeline = make_pipeline(reco_rule(reco_url(api)))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    pipeline.cart_viewed("C1")

    # Given the address is suppressed (a complaint comes in) while the service is answering
    def suppress_meanwhile(_request: Any) -> None:
        with session_scope(pipeline.engine) as session:
            suppress(session=session, email="ala@example.com", reason="complaint", created_by="esp")

    api.check = suppress_meanwhile
    # When the email is delivered
    assert pipeline.deliver_queued() == ["cancelled"]
    # Then nothing is sent: the guards run again after the fetch
    assert smtp_sink.messages == [] and len(api.requests) == 1
    (row,) = pipeline.rows()
    assert row.status == "cancelled"
    reasons = [reason for _outcome, reason, _details in pipeline.decisions()]
    assert "fetch recommendations: ok" in reasons
    assert any(r.startswith("cancelled at delivery: ") and "suppress" in r for r in reasons)


@pytest.mark.parametrize("cart_id", ["..", "."])
def test_a_dot_segment_value_cannot_climb_the_path(
    make_pipeline: MakePipeline, api: ApiServer, cart_id: str
) -> None:
    # Given a cart id a shop sent as ".." (it would turn /carts/../products into /products)
    pipeline = make_pipeline(reco_rule(reco_url(api), fallback={"products": []}))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    pipeline.cart_viewed(cart_id)
    # When the email is delivered, then no request is made: the value is refused
    assert pipeline.deliver_queued() == ["sent"]
    assert api.requests == []
    (_, reason, details) = next(d for d in pipeline.decisions() if d[1].startswith("fetch"))
    assert details["fetch"]["error"] == "request error"
    assert f"a URL value may not be '{cart_id}'" in reason


def test_an_encoded_value_stays_one_segment(make_pipeline: MakePipeline, api: ApiServer) -> None:
    pipeline = make_pipeline(reco_rule(reco_url(api)))
    pipeline.identify(email="ala@example.com", first_name="Ala")
    pipeline.cart_viewed("C/1?limit=999#x")
    pipeline.deliver_queued()
    assert api.last.path == "/v1/carts/C/1?limit=999#x/products"  # the server decodes it
    assert api.last.query["limit"] == ["3"]
