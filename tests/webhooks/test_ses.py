"""Amazon SES events through SNS: signed envelopes (versions 1 and 2) whose certificate is
served by a real loopback server, topic and host checks, subscription confirmation, no age
check (SNS retries keep the original timestamp), and every SES event type."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError
from crm_notify.webhooks._sns import (
    CertificateStore,
    HostPolicy,
    SnsSignatureError,
    string_to_sign,
    verify_message,
)
from crm_notify.webhooks.ses import SesWebhook
from tests.webhooks._helpers import (
    WebhookContract,
    WebhookServer,
    add_notification,
    consent_records,
    history,
    stored_events,
    suppressions,
)
from tests.webhooks._sns import (
    CERT_PATH,
    TOPIC,
    SnsStandIn,
    body_and_headers,
    confirmation,
    notification,
    sign,
    signing_key,
    sns_stand_in,
)

SES_TIME = "2024-05-01T10:00:01.500Z"


def mail(
    message_id: str, destination: list[str], notification_id: int | None = None
) -> dict[str, Any]:
    """SES's ``mail`` object, with the tags our adapter sends as ``EmailTags``."""
    tags: dict[str, list[str]] = {
        "ses:configuration-set": ["crm-notify"],
        "ses:source-ip": ["192.0.2.10"],
        "crm_notify_rule": ["order_shipped"],
    }
    if notification_id is not None:
        tags["crm_notify_id"] = [str(notification_id)]
    return {
        "timestamp": "2024-05-01T10:00:00.000Z",
        "source": "shop@example.com",
        "sendingAccountId": "123456789012",
        "messageId": message_id,
        "destination": destination,
        "headersTruncated": False,
        "tags": tags,
    }


def ses_event(kind: str, mail_object: dict[str, Any], **detail: Any) -> dict[str, Any]:
    """An SES event record of ``kind`` with its detail object under the documented name."""
    names = {
        "Bounce": "bounce",
        "Complaint": "complaint",
        "Delivery": "delivery",
        "DeliveryDelay": "deliveryDelay",
        "Send": "send",
        "Reject": "reject",
        "Open": "open",
        "Click": "click",
        "Rendering Failure": "failure",
        "Subscription": "subscription",
    }
    event: dict[str, Any] = {"eventType": kind, "mail": mail_object}
    if kind in names:
        event[names[kind]] = detail
    return event


def bounce(recipients: list[str], bounce_type: str = "Permanent") -> dict[str, Any]:
    return {
        "bounceType": bounce_type,
        "bounceSubType": "General",
        "bouncedRecipients": [
            {
                "emailAddress": r,
                "action": "failed",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
            }
            for r in recipients
        ],
        "timestamp": SES_TIME,
        "feedbackId": "0102018f-bounce-feedback-000000",
        "reportingMTA": "dsn; mta.example.com",
    }


@pytest.fixture
def sns() -> Iterator[SnsStandIn]:
    with sns_stand_in() as stand_in:
        yield stand_in


@pytest.fixture
def start(
    webhook_server: Callable[..., WebhookServer], sns: SnsStandIn
) -> Callable[..., WebhookServer]:
    def run(**overrides: Any) -> WebhookServer:
        values: dict[str, Any] = {
            "ses_webhook_topic_arns": TOPIC,
            "sns_certificate_hosts": sns.host,
        }
        values.update(overrides)
        return webhook_server(**values)

    return run


def post(server: WebhookServer, envelope: dict[str, Any]) -> Any:
    body, headers = body_and_headers(envelope)
    return server.post("ses", body, headers)


class TestSesContract(WebhookContract):
    provider = "ses"
    sns: SnsStandIn

    @pytest.fixture
    def server(self, webhook_server: Any, sns: SnsStandIn) -> WebhookServer:
        self.sns = sns
        started: WebhookServer = webhook_server(**self.settings())
        return started

    def settings(self) -> dict[str, object]:
        return {"ses_webhook_topic_arns": TOPIC, "sns_certificate_hosts": self.sns.host}

    def event(
        self, kind: str, *, recipient: str, message_id: str, notification_id: int | None
    ) -> Any:
        mail_object = mail(message_id, [recipient], notification_id)
        if kind == "delivered":
            return ses_event(
                "Delivery",
                mail_object,
                timestamp=SES_TIME,
                recipients=[recipient],
                processingTimeMillis=546,
                smtpResponse="250 2.0.0 OK",
                reportingMTA="a8-70.smtp-out.amazonses.com",
            )
        if kind == "hard_bounce":
            return ses_event("Bounce", mail_object, **bounce([recipient]))
        if kind == "complaint":
            return ses_event(
                "Complaint",
                mail_object,
                complainedRecipients=[{"emailAddress": recipient}],
                timestamp=SES_TIME,
                feedbackId="0102018f-complaint-000000",
                complaintFeedbackType="abuse",
            )
        if kind == "unsubscribe":
            return ses_event(
                "Subscription",
                mail_object,
                contactList="customers",
                timestamp=SES_TIME,
                source="UnsubscribeHeader",
                newTopicPreferences={"unsubscribeAll": True},
                oldTopicPreferences={"unsubscribeAll": False},
            )
        return ses_event("Teleported", mail_object)

    def request(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [event] = events
        return body_and_headers(notification(event, cert_url=self.sns.cert_url))

    def unauthenticated(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [event] = events
        envelope = notification(event, cert_url=self.sns.cert_url)
        del envelope["Signature"], envelope["SigningCertURL"]
        return body_and_headers(envelope)

    def forged(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [event] = events
        # Signed with a key that is not the one of the certificate served
        envelope = notification(event, cert_url=self.sns.cert_url, key=signing_key("forger"))
        return body_and_headers(envelope)


@pytest.mark.parametrize("version", ["1", "2"])
def test_both_signature_versions_verify(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine, version: str
) -> None:
    # Given a notification signed with SHA1withRSA (1) or SHA256withRSA (2)
    server = start()
    event = ses_event("Send", mail("0102-send", ["zoe@example.org"]), **{})
    # When SNS posts it, then it is accepted and stored
    answer = post(server, notification(event, cert_url=sns.cert_url, version=version))
    assert answer.status_code == 200, answer.text
    assert [row.event_type for row in stored_events(engine)] == ["sent"]


def test_every_ses_event_type_maps_onto_the_vocabulary(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    server = start()
    to = ["zoe@example.org"]
    cases: list[tuple[dict[str, Any], list[tuple[Any, ...]]]] = [
        (ses_event("Send", mail("m-send", to)), [("Send", "sent", None, None)]),
        (
            ses_event(
                "Delivery",
                mail("m-del", to),
                timestamp=SES_TIME,
                recipients=to,
                smtpResponse="250 ok",
            ),
            [("Delivery", "delivered", None, None)],
        ),
        (
            ses_event(
                "DeliveryDelay",
                mail("m-delay", to),
                timestamp=SES_TIME,
                delayType="MailboxFull",
                expirationTime="2024-05-02T10:00:00.000Z",
                delayedRecipients=[
                    {"emailAddress": to[0], "status": "4.2.2", "diagnosticCode": "452 full"}
                ],
            ),
            [("DeliveryDelay", "deferred", None, None)],
        ),
        (
            ses_event("Bounce", mail("m-soft", to), **bounce(to, "Transient")),
            [("Bounce", "bounced", "soft", None)],
        ),
        (
            ses_event("Bounce", mail("m-undet", to), **bounce(to, "Undetermined")),
            [("Bounce", "bounced", "soft", None)],
        ),
        (
            ses_event("Reject", mail("m-rej", to), reason="Bad content"),
            [("Reject", "rejected", None, None)],
        ),
        (
            ses_event(
                "Rendering Failure",
                mail("m-render", to),
                errorMessage="Attribute 'name' is not present",
                templateName="order",
            ),
            [("Rendering Failure", "rejected", None, None)],
        ),
        (
            ses_event("Open", mail("m-open", to), timestamp=SES_TIME, userAgent="Mozilla/5.0"),
            [("Open", "opened", None, None)],
        ),
        (
            ses_event(
                "Click",
                mail("m-click", to),
                timestamp=SES_TIME,
                link="https://shop.example.com/orders/7",
                linkTags={"samplekey0": ["samplevalue0"]},
            ),
            [("Click", "clicked", None, "https://shop.example.com/orders/7")],
        ),
        (
            ses_event(
                "Subscription",
                mail("m-sub-in", to),
                contactList="customers",
                timestamp=SES_TIME,
                newTopicPreferences={
                    "unsubscribeAll": False,
                    "topicSubscriptionStatus": [
                        {"topicName": "news", "subscriptionStatus": "OptIn"}
                    ],
                },
                oldTopicPreferences={
                    "unsubscribeAll": False,
                    "topicSubscriptionStatus": [
                        {"topicName": "news", "subscriptionStatus": "OptOut"}
                    ],
                },
            ),
            [("Subscription", "unknown", None, None)],
        ),
        (
            ses_event(
                "Subscription",
                mail("m-sub-out", to),
                contactList="customers",
                timestamp=SES_TIME,
                newTopicPreferences={
                    "unsubscribeAll": False,
                    "topicSubscriptionStatus": [
                        {"topicName": "news", "subscriptionStatus": "OptOut"}
                    ],
                },
            ),
            [("Subscription", "unsubscribed", None, None)],
        ),
    ]
    for event, _expected in cases:
        answer = post(server, notification(event, cert_url=sns.cert_url))
        assert answer.status_code == 200, (event["eventType"], answer.text)
    rows = stored_events(engine)
    assert [(r.provider_event_type, r.event_type, r.bounce_kind, r.url) for r in rows] == [
        row for _event, expected in cases for row in expected
    ]
    by_message = {row.provider_message_id: row for row in rows}
    assert by_message["m-delay"].description == "MailboxFull: 452 full"
    assert by_message["m-soft"].description == "Transient/General: smtp; 550 5.1.1 user unknown"
    assert by_message["m-rej"].description == "Bad content"
    assert by_message["m-render"].description == "Attribute 'name' is not present"
    assert by_message["m-del"].occurred_at == datetime(2024, 5, 1, 10, 0, 1, 500000, tzinfo=UTC)
    # Unsubscribing from a topic is an unsubscribe; opting back in is not (and has no effect)
    assert suppressions(engine) == [] and consent_records(engine) == []


def test_identity_feedback_notifications_use_notification_type(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    # Given the older feedback format (no configuration set: notificationType, no tags)
    server = start()
    event = {
        "notificationType": "Bounce",
        "bounce": bounce(["ann@example.com"]),
        "mail": {"messageId": "m-feedback", "destination": ["ann@example.com"]},
    }
    # When it comes, then it is a hard bounce like any other
    assert post(server, notification(event, cert_url=sns.cert_url)).status_code == 200
    [row] = stored_events(engine)
    assert (row.event_type, row.bounce_kind, row.provider_message_id) == (
        "bounced",
        "hard",
        "m-feedback",
    )
    assert [s.reason for s in suppressions(engine)] == ["hard_bounce"]


def test_one_event_per_bounced_recipient_linked_to_each_notification(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    # Given one SES message to two of our recipients (one per notification row)
    server = start()
    ann = add_notification(engine, to_address="ann@example.com", esp="ses", esp_message_id="m-2")
    bob = add_notification(engine, to_address="bob@example.com", esp="ses", esp_message_id="m-2")
    event = ses_event(
        "Bounce",
        mail("m-2", ["ann@example.com", "bob@example.com", "cid@example.com"]),
        **bounce(["ann@example.com", "bob@example.com"]),
    )
    # When SES reports both bounced
    answer = post(server, notification(event, cert_url=sns.cert_url))
    # Then there is one event per bounced recipient (not for the third), each linked
    assert answer.json() == {"received": 2, "stored": 2, "duplicates": 0, "unmatched": 0}
    assert {r.notification_id for r in stored_events(engine)} == {ann.id, bob.id}
    assert len(suppressions(engine)) == 2
    assert [c.status for c in history(engine, ann.id)] == ["bounced"]


def test_open_and_click_concern_the_destination(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    server = start()
    sent = add_notification(engine, to_address="zoe@example.org", esp="ses", esp_message_id="m-9")
    event = ses_event(
        "Click",
        mail("m-9", ["zoe@example.org"], sent.id),
        timestamp=SES_TIME,
        link="https://shop.example.com/a?b=1",
    )
    assert post(server, notification(event, cert_url=sns.cert_url)).status_code == 200
    [row] = stored_events(engine)
    assert (row.event_type, row.notification_id, row.url) == (
        "clicked",
        sent.id,
        "https://shop.example.com/a?b=1",
    )
    assert history(engine, sent.id)[0].detail == "clicked https://shop.example.com/a?b=1"


def test_a_tampered_message_is_refused(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    # Given a signed notification whose Message was changed afterwards
    server = start()
    envelope = notification(
        ses_event("Bounce", mail("m-t", ["x@example.com"]), **bounce(["x@example.com"])),
        cert_url=sns.cert_url,
    )
    envelope["Message"] = envelope["Message"].replace("x@example.com", "victim@example.com")
    # When it is posted, then it is refused and nothing is stored
    answer = post(server, envelope)
    assert answer.status_code == 403
    assert "does not verify" in answer.json()["message"]
    assert stored_events(engine) == [] and suppressions(engine) == []


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://evil.example.com/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
        # S3 bucket hosts named "sns" (anyone can own the bucket and serve a certificate)
        "https://sns.s3.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.s3-us-west-2.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.s3-accelerate.amazonaws.com/SimpleNotificationService-1.pem",
        # An SNS host, but not SNS's certificate path
        "https://sns.eu-west-1.amazonaws.com/uploads/mine.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem?x=1",
    ],
)
def test_a_certificate_url_on_a_disallowed_host_is_refused_without_fetching(
    webhook_server: Callable[..., WebhookServer], engine: Engine, cert_url: str
) -> None:
    # Given the default SNS host patterns
    server = webhook_server(ses_webhook_topic_arns=TOPIC)
    envelope = notification(ses_event("Send", mail("m", ["x@example.com"])), cert_url=cert_url)
    # When a message names a certificate elsewhere (or over http), then it is refused
    answer = post(server, envelope)
    assert answer.status_code == 403
    assert "CRM_NOTIFY_SNS_CERTIFICATE_HOSTS" in answer.json()["message"]
    assert stored_events(engine) == []


def test_a_loopback_certificate_needs_its_host_and_port_allowed(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    # Given the stand-in's port is not the allowed one
    server = start(sns_certificate_hosts=f"127.0.0.1:{sns.api.port + 1},sns.*.amazonaws.com")
    envelope = notification(ses_event("Send", mail("m", ["x@example.com"])), cert_url=sns.cert_url)
    # Then its certificate is not fetched and the message is refused
    assert post(server, envelope).status_code == 403
    assert sns.certificate_fetches() == []
    # And a URL not ending in .pem is refused even on the allowed host
    server = start()
    other = notification(
        ses_event("Send", mail("m", ["x@example.com"])), cert_url=f"{sns.api.url}/cert.txt"
    )
    assert post(server, other).status_code == 403
    assert sns.certificate_fetches() == [] and stored_events(engine) == []


def test_an_unknown_topic_is_refused(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    server = start()
    envelope = notification(
        ses_event("Send", mail("m", ["x@example.com"])),
        cert_url=sns.cert_url,
        topic="arn:aws:sns:eu-west-1:999999999999:someone-elses",
    )
    answer = post(server, envelope)
    assert answer.status_code == 403
    assert "CRM_NOTIFY_SES_WEBHOOK_TOPIC_ARNS" in answer.json()["message"]
    assert stored_events(engine) == [] and sns.certificate_fetches() == []


def test_the_certificate_is_fetched_once(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    server = start()
    for n in range(3):
        event = ses_event("Send", mail(f"m-{n}", ["x@example.com"]))
        assert post(server, notification(event, cert_url=sns.cert_url)).status_code == 200
    assert len(sns.certificate_fetches()) == 1
    assert len(stored_events(engine)) == 3


def test_an_unreachable_certificate_answers_503_so_sns_retries(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given the certificate host is down (a loopback port nobody listens on)
    with sns_stand_in() as gone:
        host, cert_url = gone.host, gone.cert_url
    server = webhook_server(ses_webhook_topic_arns=TOPIC, sns_certificate_hosts=host)
    envelope = notification(ses_event("Send", mail("m", ["x@example.com"])), cert_url=cert_url)
    answer = post(server, envelope)
    assert answer.status_code == 503
    assert stored_events(engine) == []


def test_subscription_confirmation_fetches_the_subscribe_url(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    # Given SNS asks to confirm the subscription of an accepted topic
    server = start()
    envelope = confirmation(cert_url=sns.cert_url, subscribe_url=sns.subscribe_url("tok-42"))
    # When it is posted
    answer = post(server, envelope)
    # Then the SubscribeURL was fetched (confirming it) and no event is stored
    assert answer.status_code == 200, answer.text
    assert answer.json()["received"] == 0
    [confirm] = sns.confirmations()
    assert (confirm.method, confirm.query["Token"], confirm.query["TopicArn"]) == (
        "GET",
        ["tok-42"],
        [TOPIC],
    )
    assert stored_events(engine) == []


def test_subscription_confirmation_checks_signature_topic_and_host(
    start: Callable[..., WebhookServer], sns: SnsStandIn
) -> None:
    server = start()
    # A SubscribeURL elsewhere is not fetched
    elsewhere = confirmation(
        cert_url=sns.cert_url,
        subscribe_url="https://attacker.example.com/?Action=ConfirmSubscription&Token=t",
    )
    assert post(server, elsewhere).status_code == 403
    # Another topic is not confirmed
    other_topic = confirmation(
        cert_url=sns.cert_url,
        subscribe_url=sns.subscribe_url("t"),
        topic="arn:aws:sns:eu-west-1:999999999999:other",
    )
    assert post(server, other_topic).status_code == 403
    # A changed token breaks the signature
    tampered = confirmation(cert_url=sns.cert_url, subscribe_url=sns.subscribe_url("t"))
    tampered["Token"] = "other"
    assert post(server, tampered).status_code == 403
    assert sns.confirmations() == []
    # A failing confirmation answers 503 so SNS sends it again
    sns.confirm_status = 500
    failing = confirmation(cert_url=sns.cert_url, subscribe_url=sns.subscribe_url("t"))
    assert post(server, failing).status_code == 503


def test_unsubscribe_confirmation_and_the_topic_validation_message_carry_no_events(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    server = start()
    validation = notification(
        "Successfully validated SNS topic for Amazon SES event publishing.",
        cert_url=sns.cert_url,
    )
    assert post(server, validation).json()["received"] == 0
    unsubscribed = confirmation(cert_url=sns.cert_url, subscribe_url=sns.subscribe_url("u"))
    unsubscribed["Type"] = "UnsubscribeConfirmation"
    answer = post(server, sign(unsubscribed))
    assert answer.status_code == 200 and answer.json()["received"] == 0
    assert sns.confirmations() == [] and stored_events(engine) == []


@pytest.mark.parametrize("tolerance_s", [300, 0])
def test_no_age_check_sns_retries_keep_the_original_timestamp(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine, tolerance_s: int
) -> None:
    # Given a bounce SNS signed at 12:00 and could not deliver during an outage
    signed_at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    event = ses_event("Bounce", mail("m-late", ["x@example.com"]), **bounce(["x@example.com"]))
    envelope = notification(event, cert_url=sns.cert_url, when=signed_at)
    server = start(webhook_tolerance_s=tolerance_s)
    # When its last retry arrives an hour later (same Timestamp, whatever the tolerance)
    with freeze_time(signed_at + timedelta(minutes=59), real_asyncio=True):
        answer = post(server, envelope)
    # Then it is accepted and has its effect
    assert answer.status_code == 200, answer.text
    assert [row.event_type for row in stored_events(engine)] == ["bounced"]
    assert [s.reason for s in suppressions(engine)] == ["hard_bounce"]
    # And the same message again (a replay, days later) is a duplicate with no second effect
    with freeze_time(signed_at + timedelta(days=3), real_asyncio=True):
        again = post(server, envelope)
    assert again.json() == {"received": 1, "stored": 0, "duplicates": 1, "unmatched": 0}
    assert len(stored_events(engine)) == 1 and len(suppressions(engine)) == 1


def test_a_not_spam_feedback_report_suppresses_nothing(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    # Given a Complaint whose feedback type says the recipient marked the mail as NOT spam
    server = start()
    sent = add_notification(engine, to_address="ann@example.com", esp="ses", esp_message_id="m-ns")
    event = ses_event(
        "Complaint",
        mail("m-ns", [sent.to_address]),
        complainedRecipients=[{"emailAddress": sent.to_address}],
        timestamp=SES_TIME,
        feedbackId="0102018f-complaint-000001",
        complaintFeedbackType="not-spam",
    )
    # When SES reports it
    answer = post(server, notification(event, cert_url=sns.cert_url))
    # Then it is stored as unknown, linked, and nobody is suppressed
    assert answer.status_code == 200, answer.text
    [row] = stored_events(engine)
    assert (row.event_type, row.notification_id, row.description) == (
        "unknown",
        sent.id,
        "not-spam",
    )
    assert suppressions(engine) == []


def test_malformed_bodies_are_400_and_header_mismatch_403(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    server = start()
    assert server.post("ses", b"not json", {}).status_code == 400
    gossip = server.post("ses", b'{"Type": "Gossip about bob@example.com"}', {})
    assert gossip.status_code == 400
    assert "bob@example.com" not in gossip.text  # errors never quote the body
    envelope = notification("{not an SES event", cert_url=sns.cert_url)
    assert post(server, envelope).status_code == 400
    body, headers = body_and_headers(
        notification(ses_event("Send", mail("m", ["x@example.com"])), cert_url=sns.cert_url)
    )
    headers["x-amz-sns-message-type"] = "SubscriptionConfirmation"
    assert server.post("ses", body, headers).status_code == 403
    assert stored_events(engine) == []


def test_default_host_policy_allows_only_regional_sns_endpoints() -> None:
    # Given the default of CRM_NOTIFY_SNS_CERTIFICATE_HOSTS
    policy = HostPolicy.parse(Settings.model_fields["sns_certificate_hosts"].default)
    cert = "/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
    # Then SNS in any region (GovCloud, China included) is allowed
    for host in (
        "sns.eu-west-1.amazonaws.com",
        "sns.us-gov-west-1.amazonaws.com",
        "sns.ap-southeast-2.amazonaws.com",
        "sns.cn-north-1.amazonaws.com.cn",
        "SNS.EU-WEST-1.AMAZONAWS.COM",
    ):
        assert policy.allows_certificate(f"https://{host}{cert}"), host
    # And S3 bucket hosts named "sns", other services and look-alikes are not
    for host in (
        "sns.s3.amazonaws.com",
        "sns.s3-us-west-2.amazonaws.com",
        "sns.s3-accelerate.amazonaws.com",
        "sns.s3.amazonaws.com.cn",
        "sns.amazonaws.com",
        "sqs.eu-west-1.amazonaws.com",
        "sns.eu-west-1.amazonaws.com.evil.example",
        "sns.eu-west.amazonaws.com",
        "sns.eu-west-1.amazonaws.com.",
    ):
        assert not policy.allows(f"https://{host}{cert}"), host
    # Only SNS's certificate path on the default port, over https
    assert not policy.allows_certificate("https://sns.eu-west-1.amazonaws.com/mine.pem")
    assert not policy.allows_certificate(f"https://sns.eu-west-1.amazonaws.com{cert}?a=b")
    assert not policy.allows_certificate(f"https://sns.eu-west-1.amazonaws.com:8443{cert}")
    assert not policy.allows_certificate(f"http://sns.eu-west-1.amazonaws.com{cert}")
    assert policy.allows_certificate(f"https://sns.eu-west-1.amazonaws.com:443{cert}")
    # And the SubscribeURL (host only) on a regional endpoint
    assert policy.allows("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription")


def test_explicit_patterns_cannot_let_an_s3_host_through() -> None:
    # Given the old default pattern configured explicitly, with a loopback test host
    policy = HostPolicy.parse("sns.*.amazonaws.com, 127.0.0.1:8443")
    # Then an AWS host must still be a regional SNS endpoint, with SNS's certificate path
    assert policy.allows_certificate(
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0abc.pem"
    )
    assert not policy.allows("https://sns.s3.amazonaws.com/SimpleNotificationService-0abc.pem")
    assert not policy.allows_certificate("https://sns.eu-west-1.amazonaws.com/other.pem")
    # While the explicitly allowed loopback host may serve any .pem path
    assert policy.allows_certificate("http://127.0.0.1:8443/cert.pem")
    assert not policy.allows_certificate("http://127.0.0.1:8443/cert.txt")
    # And "aws" combines with explicit hosts
    both = HostPolicy.parse("aws, 127.0.0.1:8443")
    assert both.aws and both.allows("https://sns.us-east-1.amazonaws.com/")
    assert both.allows("http://127.0.0.1:8443/x.pem")
    assert not HostPolicy.parse("127.0.0.1:8443").allows("https://sns.us-east-1.amazonaws.com/")


def test_signature_errors_never_quote_the_message() -> None:
    with pytest.raises(SnsSignatureError) as caught:
        string_to_sign({"Type": "bob@example.com"})
    assert "bob@example.com" not in str(caught.value)
    store = CertificateStore(hosts=HostPolicy.parse("aws"))
    message = {"Signature": "eA==", "SigningCertURL": "x", "SignatureVersion": "bob@example.com"}
    with pytest.raises(SnsSignatureError) as caught:
        verify_message(message, store)
    assert "bob@example.com" not in str(caught.value)


def test_host_patterns_match_one_label_per_star() -> None:
    policy = HostPolicy.parse("sns.*.amazonaws.com, 127.0.0.1:8443")
    assert policy.allows("https://sns.eu-west-1.amazonaws.com/a.pem")
    assert policy.allows("https://sns.eu-west-1.amazonaws.com:443/a.pem")
    assert not policy.allows("https://sns.a.b.amazonaws.com/a.pem")
    assert not policy.allows("https://sns.eu-west-1.amazonaws.com:8443/a.pem")
    assert not policy.allows("http://sns.eu-west-1.amazonaws.com/a.pem")
    assert not policy.allows("https://user:pw@sns.eu-west-1.amazonaws.com/a.pem")
    assert policy.allows("http://127.0.0.1:8443" + CERT_PATH)
    assert not policy.allows("http://127.0.0.1:8444" + CERT_PATH)
    assert not policy.allows("http://127.0.0.1" + CERT_PATH)
    with pytest.raises(ValueError, match="port"):
        HostPolicy.parse("127.0.0.1:http")


def test_configuration_errors_name_the_variable(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_SES_WEBHOOK_TOPIC_ARNS"):
        SesWebhook.from_settings(make_settings(ses_webhook_topic_arns="my-topic"))
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_SNS_CERTIFICATE_HOSTS"):
        SesWebhook.from_settings(
            make_settings(ses_webhook_topic_arns=TOPIC, sns_certificate_hosts=" , ")
        )
    assert SesWebhook.from_settings(make_settings()) is None
    webhook = SesWebhook.from_settings(make_settings(ses_webhook_topic_arns=f"{TOPIC}, {TOPIC}2"))
    assert webhook is not None and webhook.topic_arns == {TOPIC, f"{TOPIC}2"}


def test_message_is_stored_as_the_ses_event(
    start: Callable[..., WebhookServer], sns: SnsStandIn, engine: Engine
) -> None:
    server = start()
    event = ses_event("Send", mail("m-p", ["x@example.com"]))
    post(server, notification(event, cert_url=sns.cert_url))
    [row] = stored_events(engine)
    assert row.payload == json.loads(json.dumps(event))
