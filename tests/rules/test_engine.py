"""RuleSet: lookups by trigger return only the matching, enabled rules, in load order."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from crm_notify.rules import (
    EventTrigger,
    IdentifyTrigger,
    IdleTrigger,
    OrderStatusTrigger,
    Purpose,
    Rule,
    RuleSet,
    Trigger,
)


def make_rule(
    name: str, trigger: Trigger, *, enabled: bool = True, cancel_on: frozenset[str] = frozenset()
) -> Rule:
    return Rule(
        name=name,
        enabled=enabled,
        trigger=trigger,
        template=name,
        cancel_on=cancel_on,
        purpose=Purpose.TRANSACTIONAL,
        source_path=Path("rules.yaml"),
        source_line=1,
    )


def statuses(to: set[str], from_: set[str] | None = None) -> OrderStatusTrigger:
    return OrderStatusTrigger(
        to=frozenset(to), from_=frozenset(from_) if from_ is not None else None
    )


@pytest.fixture
def rule_set() -> RuleSet:
    return RuleSet(
        [
            make_rule("completed", EventTrigger("Order Completed")),
            make_rule("viewed", EventTrigger("Product Viewed")),
            make_rule("completed-off", EventTrigger("Order Completed"), enabled=False),
            make_rule("shipped-any", statuses({"shipped"})),
            make_rule("shipped-from-paid", statuses({"shipped", "delivered"}, {"paid"})),
            make_rule("cancelled", statuses({"cancelled"}, {"pending", "paid"})),
            make_rule("shipped-again", statuses({"shipped"})),
            make_rule("welcome", IdentifyTrigger(first=True)),
            make_rule("profile", IdentifyTrigger(first=False)),
        ]
    )


def names(rules: tuple[Rule, ...]) -> list[str]:
    return [rule.name for rule in rules]


def test_for_event_returns_only_enabled_rules_for_that_event(rule_set: RuleSet) -> None:
    # Given rules for two events, one disabled; when looking up each event name
    # Then only the enabled rules for that exact name come back
    assert names(rule_set.for_event("Order Completed")) == ["completed"]
    assert names(rule_set.for_event("Product Viewed")) == ["viewed"]
    assert rule_set.for_event("order completed") == ()
    assert rule_set.for_event("Cart Viewed") == ()


def test_for_order_status_matches_to_and_from_in_load_order(rule_set: RuleSet) -> None:
    # Given rules on status changes with and without `from`
    # When an order goes from paid to shipped
    found = rule_set.for_order_status("paid", "shipped")

    # Then the `from: paid` rule and the any-origin rules match, in load order
    assert names(found) == ["shipped-any", "shipped-from-paid", "shipped-again"]


def test_for_order_status_respects_from(rule_set: RuleSet) -> None:
    # Given the same rules; when the previous status is not in a rule's `from`
    # Then that rule does not match
    assert names(rule_set.for_order_status("pending", "shipped")) == [
        "shipped-any",
        "shipped-again",
    ]
    assert names(rule_set.for_order_status("paid", "delivered")) == ["shipped-from-paid"]
    assert names(rule_set.for_order_status("shipped", "cancelled")) == []
    assert names(rule_set.for_order_status("pending", "cancelled")) == ["cancelled"]


def test_for_order_status_new_order_matches_only_rules_without_from(rule_set: RuleSet) -> None:
    # Given the same rules; when a new order (no previous status) arrives as shipped
    found = rule_set.for_order_status(None, "shipped")

    # Then only rules without `from` match
    assert names(found) == ["shipped-any", "shipped-again"]


def test_for_order_status_without_change_matches_nothing(rule_set: RuleSet) -> None:
    # Given the same rules; when the status did not change, then nothing matches
    assert rule_set.for_order_status("shipped", "shipped") == ()


def test_for_identify_first_only_on_creation(rule_set: RuleSet) -> None:
    # Given a first-only identify rule and an any-identify rule
    # When the call created the contact, then both match; otherwise only the any-identify one
    assert names(rule_set.for_identify(True)) == ["welcome", "profile"]
    assert names(rule_set.for_identify(False)) == ["profile"]


def test_disabled_rules_are_kept_and_named(rule_set: RuleSet) -> None:
    # Given a disabled rule; when listing and looking up by name
    # Then it is still there
    assert len(rule_set.rules) == len(rule_set) == 9
    disabled = rule_set.by_name("completed-off")
    assert disabled is not None
    assert not disabled.enabled
    assert rule_set.by_name("nope") is None


def test_duplicate_names_are_refused() -> None:
    # Given two rules with one name; when indexing them, then it fails
    with pytest.raises(ValueError, match="duplicate rule name 'a'"):
        RuleSet([make_rule("a", EventTrigger("x")), make_rule("a", EventTrigger("y"))])


def test_order_status_trigger_matches() -> None:
    # Given a trigger from paid to shipped; then only that change matches
    trigger = statuses({"shipped"}, {"paid"})
    assert trigger.matches("paid", "shipped")
    assert not trigger.matches("pending", "shipped")
    assert not trigger.matches(None, "shipped")
    assert not statuses({"shipped"}).matches("shipped", "shipped")


def idle(*activity: str) -> IdleTrigger:
    return IdleTrigger(entity="cart", after=timedelta(hours=48), activity=frozenset(activity))


@pytest.fixture
def timed_set() -> RuleSet:
    completed = frozenset({"Order Completed"})
    return RuleSet(
        [
            make_rule("cart", idle("Product Added", "Cart Viewed"), cancel_on=completed),
            make_rule("cart-off", idle("Product Added"), enabled=False, cancel_on=completed),
            make_rule("checkout", idle("Checkout Started", "Product Added")),
            make_rule("review", EventTrigger("Order Shipped"), cancel_on=frozenset({"Refunded"})),
            make_rule("viewed", EventTrigger("Cart Viewed"), cancel_on=completed),
        ]
    )


def test_for_idle_returns_enabled_idle_rules_by_activity(timed_set: RuleSet) -> None:
    # Given idle rules on different activity, one disabled, and an event rule on Cart Viewed
    # When looking up an activity event, then only enabled idle rules counting it come back
    assert names(timed_set.for_idle("Product Added")) == ["cart", "checkout"]
    assert names(timed_set.for_idle("Cart Viewed")) == ["cart"]
    assert names(timed_set.for_idle("Checkout Started")) == ["checkout"]
    assert timed_set.for_idle("Order Completed") == ()
    assert timed_set.for_idle("product added") == ()

    # And idle rules are not event rules
    assert names(timed_set.for_event("Cart Viewed")) == ["viewed"]
    assert timed_set.for_event("Product Added") == ()


def test_cancelled_by_returns_enabled_rules_listing_the_event(timed_set: RuleSet) -> None:
    # Given rules with cancel_on, one disabled; when looking up a cancelling event
    # Then the enabled rules listing it come back, in load order, whatever their trigger
    assert names(timed_set.cancelled_by("Order Completed")) == ["cart", "viewed"]
    assert names(timed_set.cancelled_by("Refunded")) == ["review"]
    assert timed_set.cancelled_by("Product Added") == ()


def test_idle_trigger_defaults_to_cart_activity() -> None:
    # Given an idle trigger built without activity; then it counts the cart events
    trigger = IdleTrigger(entity="cart", after=timedelta(hours=1))
    assert trigger.activity == {
        "Product Added",
        "Product Removed",
        "Cart Viewed",
        "Checkout Started",
    }
