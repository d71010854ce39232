"""The gate protocol end to end: a real HTTP server on 127.0.0.1 plays the integration (its
signature checked with the ``standardwebhooks`` package), the gate URIs are called with httpx
against the routes under uvicorn, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import logging
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from standardwebhooks import Webhook

from crm_notify.gates.model import GateAuth, GateDelivery, GateStatus, OnTimeout
from crm_notify.gates.runner import GateRunner
from crm_notify.gates.tokens import GateAction, gate_token
from crm_notify.outbox.models import DecisionOutcome
from tests.esp._api_server import Answer
from tests.gates._support import (
    ENVIRON,
    GATE_SECRET,
    KEY,
    SECRET,
    decisions,
    follow_ups,
    gate_config,
    gate_row,
    gate_world,
    history,
    notification,
    open_gate,
    statuses,
)

#: A moment to freeze time at.
START = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_batch_accept_all(engine: Engine) -> None:
    with gate_world(engine) as world:
        # Given a batch gate holding three sends
        opened = open_gate(engine, gate_config(world.endpoint))
        # When the runner passes
        done = world.runner.run_once()
        # Then the integration got one signed, authenticated gate notification
        assert done.notified == 1
        seen = world.api.last
        assert (seen.method, seen.path, seen.query) == (
            "POST",
            "/crm-gate",
            {"key": ["query-key-7"]},
        )
        Webhook(SECRET).verify(seen.body, seen.headers)
        assert seen.headers["authorization"] == _basic("crm:s3cr3t:pass")
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["webhook-id"] == f"msg_{opened.public_id}"
        body = seen.json
        assert {k: body[k] for k in ("type", "gateId", "rule", "send", "batch", "itemCount")} == {
            "type": "gate.opened",
            "gateId": opened.public_id,
            "rule": "abandoned-cart",
            "send": "reminder",
            "batch": True,
            "itemCount": 3,
        }
        assert body["onTimeout"] == "release"
        assert body["actions"] == [
            {"id": "check-stock"},
            {"id": "add-promo", "field": "promo_code"},
        ]
        assert (
            datetime.fromisoformat(body["deadline"]) == gate_row(engine, opened.public_id).deadline
        )
        assert "items" not in body
        assert body["finishUri"].startswith(f"{world.base_url}/v1/gates/{opened.public_id}/finish?")
        gate = gate_row(engine, opened.public_id)
        assert (gate.delivery, gate.delivery_attempts, gate.response_status) == ("notified", 1, 200)
        # When it downloads the items
        listed = httpx.get(body["itemDownloadUri"])
        assert listed.status_code == 200
        items = listed.json()["items"]
        assert [item["id"] for item in items] == [str(i) for i in opened.items]
        assert items[0]["email"] == opened.emails[0]
        assert items[0]["data"] == {"cart": {"total": 10, "sku": "SKU-0"}}
        assert isinstance(items[0]["contactId"], int)
        assert items[0]["cancelUri"].startswith(
            f"{world.base_url}/v1/gates/{opened.public_id}/items/{opened.items[0]}/cancel?token="
        )
        assert listed.json()["next"] is None
        # And finishes
        answer = httpx.post(body["finishUri"])
        # Then every item is released and handed to the broker
        assert answer.status_code == 200
        assert answer.json() == {"gateId": opened.public_id, "status": "finished", "released": 3}
        assert statuses(engine, opened.items) == ["pending"] * 3
        assert world.enqueued == opened.items
        assert history(engine, opened.items[0])[-1] == (
            "pending",
            f"released by gate {opened.public_id}",
        )
        gate = gate_row(engine, opened.public_id)
        assert gate.status == GateStatus.FINISHED and gate.finished_at is not None
        # And a later pass sends nothing more
        world.runner.run_once()
        assert len(world.api.requests) == 1


def test_batch_reject_some_and_attach_data(engine: Engine) -> None:
    with gate_world(engine) as world:
        # Given a batch gate with a header token, its own secret and an on_rejected template
        config = gate_config(
            world.endpoint,
            auth=GateAuth(header="X-Gate-Token", token="${GATE_TOKEN}"),
            secret_variable="GATE_SECRET",
            on_rejected="cart_rejected_alt",
        )
        opened = open_gate(engine, config, items=4)
        world.runner.run_once()
        seen = world.api.last
        Webhook(GATE_SECRET).verify(seen.body, seen.headers)
        assert seen.headers["x-gate-token"] == "tok-42"
        assert "authorization" not in seen.headers
        items = httpx.get(seen.json["itemDownloadUri"]).json()["items"]
        first, second, third, fourth = items
        # When it rejects one with a JSON reason and one with a text reason
        answer = httpx.post(first["cancelUri"], json={"reason": "out of stock"})
        assert answer.status_code == 200
        assert answer.json() == {
            "gateId": opened.public_id,
            "id": first["id"],
            "status": "cancelled",
            "changed": True,
        }
        assert httpx.post(second["cancelUri"], content="no consent\r\nfor email").status_code == 200
        # And repeats one (nothing changes)
        again = httpx.post(first["cancelUri"], json={"reason": "something else"})
        assert again.status_code == 200 and again.json()["changed"] is False
        # Then the rejected items are cancelled, the reasons in the decision log
        assert statuses(engine, opened.items) == ["cancelled", "cancelled", "gated", "gated"]
        logged = decisions(engine, opened.items[0])
        assert [(d.outcome, d.reason) for d in logged] == [
            (DecisionOutcome.SKIP, "rejected by the gate: out of stock")
        ]
        assert logged[0].details == {"gate": opened.public_id, "action": "cancel"}
        assert decisions(engine, opened.items[1])[0].reason == (
            "rejected by the gate: no consent for email"
        )
        # And each rejected one has its follow-up with the other template, enqueued
        alternates = follow_ups(engine, "#gate-rejected")
        assert [(n.template, n.to_address, str(n.status)) for n in alternates] == [
            ("cart_rejected_alt", opened.emails[0], "pending"),
            ("cart_rejected_alt", opened.emails[1], "pending"),
        ]
        assert alternates[0].context == {"cart": {"total": 10, "sku": "SKU-0"}}
        assert world.enqueued == [n.id for n in alternates]
        # When it finishes with a promo code for one item (and data for a rejected one)
        answer = httpx.post(
            seen.json["finishUri"],
            json={
                "items": [
                    {"id": third["id"], "data": {"promo_code": "SAVE10"}},
                    {"id": first["id"], "data": {"promo_code": "IGNORED"}},
                ]
            },
        )
        # Then the rest is released, the data kept for the rendering
        assert answer.status_code == 200 and answer.json()["released"] == 2
        assert statuses(engine, opened.items) == ["cancelled", "cancelled", "pending", "pending"]
        assert notification(engine, int(third["id"])).gate_data == {"promo_code": "SAVE10"}
        assert notification(engine, int(fourth["id"])).gate_data is None
        assert notification(engine, int(first["id"])).gate_data is None
        assert world.enqueued[-2:] == [int(third["id"]), int(fourth["id"])]


def test_single_send_has_its_items_inline(engine: Engine) -> None:
    with gate_world(engine) as world:
        # Given a single send's gate (one item)
        opened = open_gate(engine, gate_config(world.endpoint), batch=False, items=1)
        world.runner.run_once()
        body = world.api.last.json
        # Then the item is in the notification, with its reject URI
        assert body["batch"] is False and "itemDownloadUri" not in body
        assert body["itemCount"] == 1
        [item] = body["items"]
        assert item["id"] == str(opened.items[0]) and item["email"] == opened.emails[0]
        assert "cancelUri" not in item
        # When the integration rejects it, then finishes
        assert (
            httpx.post(item["rejectUri"], content=b'{"reason": "fraud score 97"}').status_code
            == 200
        )
        answer = httpx.post(body["finishUri"])
        # Then nothing is released
        assert answer.json()["released"] == 0
        assert statuses(engine, opened.items) == ["cancelled"]
        assert (
            decisions(engine, opened.items[0])[0].reason == "rejected by the gate: fraud score 97"
        )
        assert decisions(engine, opened.items[0])[0].details == {
            "gate": opened.public_id,
            "action": "reject",
        }
        assert world.enqueued == []


def test_forged_and_misdirected_tokens_are_refused(engine: Engine) -> None:
    with gate_world(engine) as world:
        config = gate_config(world.endpoint)
        opened = open_gate(engine, config)
        other = open_gate(engine, config)
        base = f"{world.base_url}/v1/gates/{opened.public_id}"
        item = opened.items[0]

        def token(public_id: str, action: GateAction, item_id: int | None = None) -> str:
            return gate_token(KEY, public_id=public_id, action=action, item_id=item_id)

        refused = [
            # a forged token, no token, another gate's token
            httpx.post(f"{base}/finish", params={"token": "0" * 64}),
            httpx.post(f"{base}/finish"),
            httpx.post(
                f"{base}/finish", params={"token": token(other.public_id, GateAction.FINISH)}
            ),
            # another action's token (the download's, a cancel's)
            httpx.post(
                f"{base}/finish", params={"token": token(opened.public_id, GateAction.ITEMS)}
            ),
            httpx.get(
                f"{base}/items", params={"token": token(opened.public_id, GateAction.FINISH)}
            ),
            # another item's cancel token, another gate's item token, a token signed elsewhere
            httpx.post(
                f"{base}/items/{item}/cancel",
                params={"token": token(opened.public_id, GateAction.CANCEL, opened.items[1])},
            ),
            httpx.post(
                f"{base}/items/{item}/cancel",
                params={"token": token(other.public_id, GateAction.CANCEL, item)},
            ),
            httpx.post(
                f"{base}/items/{item}/cancel",
                params={
                    "token": gate_token(
                        b"another key", public_id=opened.public_id, action="cancel", item_id=item
                    )
                },
            ),
            httpx.post(
                f"{base}/items/{item}/reject",
                params={"token": token(opened.public_id, GateAction.CANCEL, item)},
            ),
        ]
        for answer in refused:
            assert answer.status_code == 403, answer.text
            assert answer.json()["code"] == "forbidden"
            assert answer.json()["field"] == "token"
        # An item of another gate, with a token made for it under this gate: no such item
        stray = other.items[0]
        answer = httpx.post(
            f"{base}/items/{stray}/cancel",
            params={"token": token(opened.public_id, GateAction.CANCEL, stray)},
        )
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
        # A gate that does not exist (with a valid token for its id)
        ghost = "gt_" + "0" * 32
        answer = httpx.post(
            f"{world.base_url}/v1/gates/{ghost}/finish",
            params={"token": token(ghost, GateAction.FINISH)},
        )
        assert answer.status_code == 404
        # Nothing changed
        assert statuses(engine, opened.items + other.items) == ["gated"] * 6
        assert gate_row(engine, opened.public_id).status == GateStatus.OPEN
        assert world.enqueued == []


def test_answer_twice_and_calls_after_finish(engine: Engine) -> None:
    with gate_world(engine) as world:
        opened = open_gate(engine, gate_config(world.endpoint))
        world.runner.run_once()
        body = world.api.last.json
        items = httpx.get(body["itemDownloadUri"]).json()["items"]
        assert httpx.post(body["finishUri"]).status_code == 200
        # When it finishes again, cancels, or downloads after finishing
        second = httpx.post(body["finishUri"], json={"items": [{"id": items[0]["id"], "data": {}}]})
        late_cancel = httpx.post(items[0]["cancelUri"], json={"reason": "too late"})
        download = httpx.get(body["itemDownloadUri"])
        # Then each is refused with 409 and nothing changes
        for answer in (second, late_cancel, download):
            assert answer.status_code == 409
            assert answer.json()["code"] == "gate_finished"
        assert statuses(engine, opened.items) == ["pending"] * 3
        assert decisions(engine, opened.items[0]) == []
        assert world.enqueued == opened.items


def test_never_answered_gate_is_released_at_the_deadline(engine: Engine) -> None:
    with freeze_time(START, tick=True) as frozen, gate_world(engine) as world:
        # Given a gate (release on timeout) whose integration never calls back
        opened = open_gate(engine, gate_config(world.endpoint, timeout=timedelta(minutes=30)))
        world.runner.run_once()
        body = world.api.last.json
        items = httpx.get(body["itemDownloadUri"]).json()["items"]
        # When its deadline passes
        frozen.move_to(START + timedelta(minutes=31))
        done = world.runner.run_once()
        # Then the gate timed out and its items were released, recorded as such
        assert done.timed_out == 1
        gate = gate_row(engine, opened.public_id)
        assert gate.status == GateStatus.TIMED_OUT
        assert gate.delivery == GateDelivery.NOTIFIED
        assert statuses(engine, opened.items) == ["pending"] * 3
        assert world.enqueued == opened.items
        assert [(d.outcome, d.reason) for d in decisions(engine, opened.items[0])] == [
            (DecisionOutcome.SEND, "gate timed out: released (on_timeout: release)")
        ]
        assert history(engine, opened.items[0])[-1][1] == (
            f"released: gate {opened.public_id} timed out (on_timeout: release)"
        )
        # When the integration answers late
        late = [
            httpx.post(body["finishUri"]),
            httpx.post(items[0]["cancelUri"]),
            httpx.get(body["itemDownloadUri"]),
        ]
        # Then it is told the gate expired and nothing changes
        assert [answer.status_code for answer in late] == [410, 410, 410]
        assert late[0].json()["code"] == "gate_expired"
        assert statuses(engine, opened.items) == ["pending"] * 3
        assert gate_row(engine, opened.public_id).status == GateStatus.TIMED_OUT


def test_never_answered_gate_is_dropped_with_a_follow_up(engine: Engine) -> None:
    with freeze_time(START, tick=True) as frozen, gate_world(engine) as world:
        # Given a gate that drops on timeout and sends another template to the dropped items
        config = gate_config(
            world.endpoint,
            on_timeout=OnTimeout.DROP,
            on_timed_out="cart_later",
            on_rejected="cart_rejected_alt",
        )
        opened = open_gate(engine, config)
        world.runner.run_once()
        items = httpx.get(world.api.last.json["itemDownloadUri"]).json()["items"]
        # One item was rejected before the deadline
        assert httpx.post(items[0]["cancelUri"], json={"reason": "blocked"}).status_code == 200
        # When the deadline passes with no finish
        frozen.move_to(START + timedelta(hours=1, seconds=1))
        world.runner.run_once()
        # Then the others are dropped, recorded as timed out
        assert statuses(engine, opened.items) == ["cancelled"] * 3
        assert [d.reason for d in decisions(engine, opened.items[1])] == ["gate timed out"]
        assert history(engine, opened.items[1])[-1] == (
            "cancelled",
            f"gate {opened.public_id} timed out (on_timeout: drop)",
        )
        # And each outcome has its own follow-up: the rejected one, the two timed out
        rejected = follow_ups(engine, "#gate-rejected")
        timed_out = follow_ups(engine, "#gate-timed-out")
        assert [n.to_address for n in rejected] == opened.emails[:1]
        assert [n.to_address for n in timed_out] == opened.emails[1:]
        assert {n.template for n in timed_out} == {"cart_later"}
        assert {str(n.status) for n in timed_out} == {"pending"}
        assert world.enqueued == [n.id for n in rejected + timed_out]
        # And a later pass does nothing twice
        world.runner.run_once()
        assert len(follow_ups(engine, "#gate-timed-out")) == 2


def test_answer_after_the_deadline_before_the_runner_noticed(engine: Engine) -> None:
    with freeze_time(START, tick=True) as frozen, gate_world(engine) as world:
        opened = open_gate(engine, gate_config(world.endpoint, on_timeout=OnTimeout.DROP))
        world.runner.run_once()
        body = world.api.last.json
        frozen.move_to(START + timedelta(hours=2))
        # When the finish call comes after the deadline, the gate still open
        answer = httpx.post(body["finishUri"])
        # Then it is refused and nothing changed: the timeout policy still decides
        assert answer.status_code == 410
        assert gate_row(engine, opened.public_id).status == GateStatus.OPEN
        assert statuses(engine, opened.items) == ["gated"] * 3
        world.runner.run_once()
        assert statuses(engine, opened.items) == ["cancelled"] * 3
        assert world.enqueued == []


def test_endpoint_answering_500_then_200_is_retried(engine: Engine) -> None:
    with freeze_time(START, tick=True) as frozen, gate_world(engine) as world:
        opened = open_gate(engine, gate_config(world.endpoint))
        world.api.respond(500, body="maintenance")
        # When the first attempt gets a 500
        done = world.runner.run_once()
        # Then the gate waits for its next try, the answer kept
        assert done.retrying == 1
        gate = gate_row(engine, opened.public_id)
        assert (gate.delivery, gate.delivery_attempts, gate.response_status) == ("pending", 1, 500)
        assert gate.last_error == "endpoint answered 500: maintenance"
        assert gate.next_delivery_at is not None
        assert gate.next_delivery_at - START >= timedelta(seconds=15)
        # And a pass before then sends nothing
        world.runner.run_once()
        assert len(world.api.requests) == 1
        # When the time comes, the endpoint answers 200
        frozen.move_to(gate.next_delivery_at + timedelta(seconds=1))
        done = world.runner.run_once()
        # Then the gate is notified, under the same webhook-id, signed anew
        assert done.notified == 1
        first, second = world.api.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.headers["webhook-timestamp"] != second.headers["webhook-timestamp"]
        Webhook(SECRET).verify(second.body, second.headers)
        gate = gate_row(engine, opened.public_id)
        assert (gate.delivery, gate.delivery_attempts, gate.last_error) == ("notified", 2, None)


def test_endpoint_answering_400_fails_and_nothing_is_released_at_the_deadline(
    engine: Engine,
) -> None:
    with freeze_time(START, tick=True) as frozen, gate_world(engine) as world:
        opened = open_gate(engine, gate_config(world.endpoint))
        world.api.respond(400, json={"error": "unknown rule"})
        # When the endpoint refuses the notification
        done = world.runner.run_once()
        # Then it is not tried again
        assert done.failed == 1
        gate = gate_row(engine, opened.public_id)
        assert (gate.delivery, gate.response_status) == ("failed", 400)
        assert gate.last_error is not None and gate.last_error.startswith(
            "endpoint refused with 400"
        )
        frozen.move_to(START + timedelta(minutes=20))
        world.runner.run_once()
        assert len(world.api.requests) == 1
        assert statuses(engine, opened.items) == ["gated"] * 3
        # And at the deadline nothing is released: the integration never approved anything
        frozen.move_to(START + timedelta(hours=1, seconds=1))
        world.runner.run_once()
        assert statuses(engine, opened.items) == ["cancelled"] * 3


def test_retries_stop_at_the_deadline(engine: Engine) -> None:
    with freeze_time(START, tick=True) as frozen, gate_world(engine) as world:
        # Given an endpoint that keeps answering 503, and a gate of 2 minutes
        config = gate_config(world.endpoint, timeout=timedelta(minutes=2))
        opened = open_gate(engine, config)
        world.api.default = Answer(503, json={})
        for _ in range(10):
            world.runner.run_once()
            gate = gate_row(engine, opened.public_id)
            if gate.next_delivery_at is None:
                break
            frozen.move_to(gate.next_delivery_at + timedelta(seconds=1))
        # Then it stops trying before the deadline, saying why
        gate = gate_row(engine, opened.public_id)
        assert gate.delivery == GateDelivery.FAILED
        assert gate.last_error is not None and gate.last_error.endswith(
            "no attempt left before the deadline"
        )
        assert 2 <= len(world.api.requests) <= 4


def test_network_error_is_retried(engine: Engine) -> None:
    with gate_world(engine) as world:
        # Given an endpoint nobody listens on
        opened = open_gate(engine, gate_config("http://127.0.0.1:9/crm-gate"))
        done = world.runner.run_once()
        assert done.retrying == 1
        gate = gate_row(engine, opened.public_id)
        assert gate.delivery == GateDelivery.PENDING and gate.response_status is None
        assert gate.last_error == "network error (ConnectError)"


def test_missing_variable_fails_without_a_request(engine: Engine) -> None:
    with gate_world(engine) as world:
        config = gate_config(world.endpoint, auth=GateAuth(basic="${NOT_SET}:x"))
        opened = open_gate(engine, config)
        done = world.runner.run_once()
        assert done.failed == 1 and world.api.requests == []
        gate = gate_row(engine, opened.public_id)
        assert gate.last_error == "configuration: environment variable NOT_SET is not set"


def test_bodies_are_checked_and_bounded(engine: Engine) -> None:
    with gate_world(engine) as world:
        opened = open_gate(engine, gate_config(world.endpoint))
        world.runner.run_once()
        body = world.api.last.json
        items = httpx.get(body["itemDownloadUri"]).json()["items"]
        finish = body["finishUri"]
        too_big = httpx.post(finish, content=b"{" + b" " * (16 * 1024 * 1024) + b"}")
        assert too_big.status_code == 413
        assert httpx.post(items[0]["cancelUri"], content=b"x" * (64 * 1024 + 1)).status_code == 413
        big_data = {"items": [{"id": items[0]["id"], "data": {"note": "x" * 16 * 1024}}]}
        refused = httpx.post(finish, json=big_data)
        assert refused.status_code == 422 and refused.json()["field"] == "items[0].data"
        assert httpx.post(finish, content=b"not json").status_code == 400
        assert httpx.post(finish, json=[1]).status_code == 400
        for payload, field in [
            ({"items": {}}, "items"),
            ({"items": ["x"]}, "items[0]"),
            ({"items": [{"data": {}}]}, "items[0].id"),
            ({"items": [{"id": "abc"}]}, "items[0].id"),
            ({"items": [{"id": items[0]["id"], "data": "promo"}]}, "items[0].data"),
            ({"items": [{"id": items[0]["id"]}, {"id": items[0]["id"]}]}, "items[1].id"),
            ({"items": [{"id": items[0]["id"]}, {"id": "999999"}]}, "items[1].id"),
        ]:
            answer = httpx.post(finish, json=payload)
            assert answer.status_code == 422, payload
            assert answer.json()["field"] == field
            assert answer.json()["code"] == "invalid_request"
        # Nothing changed by any of them
        assert statuses(engine, opened.items) == ["gated"] * 3
        assert gate_row(engine, opened.public_id).status == GateStatus.OPEN
        # A long reason with control characters is kept on one line, cut
        httpx.post(items[0]["cancelUri"], content=("a\x00b " * 500).encode())
        reason = decisions(engine, opened.items[0])[0].reason
        assert reason.startswith("rejected by the gate: a b a b")
        assert len(reason) == len("rejected by the gate: ") + 1000


def test_download_is_paged(engine: Engine) -> None:
    with gate_world(engine) as world:
        opened = open_gate(engine, gate_config(world.endpoint), items=5)
        world.runner.run_once()
        uri = world.api.last.json["itemDownloadUri"]
        seen: list[str] = []
        page = httpx.get(f"{uri}&limit=2").json()
        while True:
            seen += [item["id"] for item in page["items"]]
            if page["next"] is None:
                break
            page = httpx.get(page["next"]).json()
        assert seen == [str(i) for i in opened.items]
        assert httpx.get(f"{uri}&limit=0").json()["field"] == "limit"
        assert httpx.get(f"{uri}&after=x").status_code == 422


def test_two_runners_notify_each_gate_once(engine: Engine) -> None:
    with gate_world(engine) as world:
        gates = [open_gate(engine, gate_config(world.endpoint), items=1) for _ in range(6)]
        world.api.default = Answer(200, json={}, delay_s=0.2)
        other = GateRunner(
            engine=engine, notifier=world.notifier, enqueue=None, interval_s=0.1, batch_size=2
        )
        first = GateRunner(
            engine=engine, notifier=world.notifier, enqueue=None, interval_s=0.1, batch_size=2
        )
        threads = [threading.Thread(target=runner.run_once) for runner in (first, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        ids = sorted(request.json["gateId"] for request in world.api.requests)
        assert ids == sorted(gate.public_id for gate in gates)
        for gate in gates:
            assert gate_row(engine, gate.public_id).delivery_attempts == 1


def test_logs_hold_no_address_or_secret(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with gate_world(engine) as world:
        opened = open_gate(engine, gate_config(world.endpoint))
        world.api.respond(500, body=f"bad {opened.emails[0]}")
        world.runner.run_once()
        assert opened.public_id in caplog.text
        assert "/crm-gate" in caplog.text  # httpx's own request line, without the query
        hidden = [v for k, v in ENVIRON.items() if k != "GATE_USER"]
        for secret in (*opened.emails, *hidden, base64.b64encode(b"crm:s3cr3t:pass").decode()):
            assert secret not in caplog.text
