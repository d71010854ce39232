"""``RuleSet``: loaded rules indexed by trigger, so matching is a dict lookup, not a scan."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from crm_notify.rules.model import Rule
from crm_notify.rules.triggers import (
    EventTrigger,
    IdentifyTrigger,
    IdleTrigger,
    OrderStatusTrigger,
)

_NO_RULES: tuple[Rule, ...] = ()


class RuleSet:
    """Rules indexed by trigger. Disabled rules are kept in :attr:`rules` but never matched.

    Every lookup returns rules in load order (file order, then order within a file).

    Parameters:
        rules: the rules, with unique names.

    Raises:
        ValueError: two rules share a name (``load_rules`` reports that with file and line).
    """

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules = tuple(rules)
        self._by_name: dict[str, Rule] = {}
        for rule in self._rules:
            if self._by_name.setdefault(rule.name, rule) is not rule:
                raise ValueError(f"duplicate rule name {rule.name!r}")
        events: defaultdict[str, list[Rule]] = defaultdict(list)
        # (new status, old status or None for "from any") -> rules
        statuses: defaultdict[tuple[str, str | None], list[tuple[int, Rule]]] = defaultdict(list)
        identify_any: list[Rule] = []
        identify_all: list[Rule] = []
        # activity event name -> idle rules it restarts; cancelling event name -> rules
        idle: defaultdict[str, list[Rule]] = defaultdict(list)
        cancels: defaultdict[str, list[Rule]] = defaultdict(list)
        for position, rule in enumerate(self._rules):
            if not rule.enabled:
                continue
            for event_name in sorted(rule.cancel_on):
                cancels[event_name].append(rule)
            trigger = rule.trigger
            if isinstance(trigger, EventTrigger):
                events[trigger.event].append(rule)
            elif isinstance(trigger, OrderStatusTrigger):
                olds: Iterable[str | None] = trigger.from_ if trigger.from_ is not None else (None,)
                for new in trigger.to:
                    for old in olds:
                        statuses[(new, old)].append((position, rule))
            elif isinstance(trigger, IdentifyTrigger):
                identify_all.append(rule)
                if not trigger.first:
                    identify_any.append(rule)
            elif isinstance(trigger, IdleTrigger):
                for event_name in sorted(trigger.activity):
                    idle[event_name].append(rule)
        self._events = {name: tuple(found) for name, found in events.items()}
        self._statuses = {key: tuple(found) for key, found in statuses.items()}
        self._identify = {True: tuple(identify_all), False: tuple(identify_any)}
        self._idle = {name: tuple(found) for name, found in idle.items()}
        self._cancels = {name: tuple(found) for name, found in cancels.items()}

    @property
    def rules(self) -> tuple[Rule, ...]:
        """All rules, enabled or not, in load order."""
        return self._rules

    def __len__(self) -> int:
        return len(self._rules)

    def by_name(self, name: str) -> Rule | None:
        """Return the rule called ``name``, or ``None``.

        Parameters:
            name: the rule's ``name``.

        Returns:
            The rule (enabled or not), or ``None`` when there is none.
        """
        return self._by_name.get(name)

    def for_event(self, name: str) -> tuple[Rule, ...]:
        """Return the enabled rules triggered by the track event ``name`` (exact, case-sensitive).

        Parameters:
            name: the Segment ``track`` event name.

        Returns:
            The matching rules, possibly none.
        """
        return self._events.get(name, _NO_RULES)

    def for_order_status(self, old: str | None, new: str) -> tuple[Rule, ...]:
        """Return the enabled rules triggered by an order's status changing from ``old`` to ``new``.

        Parameters:
            old: the previous status; ``None`` for a new order (only rules without ``from``).
            new: the status now.

        Returns:
            Rules whose ``to`` holds ``new`` and whose ``from`` is absent or holds ``old``; none
            when ``old == new``.
        """
        if old == new:
            return _NO_RULES
        from_any = self._statuses.get((new, None), ())
        from_old = self._statuses.get((new, old), ()) if old is not None else ()
        if not from_old:
            return tuple(rule for _, rule in from_any)
        if not from_any:
            return tuple(rule for _, rule in from_old)
        return tuple(rule for _, rule in sorted((*from_any, *from_old), key=lambda pair: pair[0]))

    def for_identify(self, first: bool) -> tuple[Rule, ...]:
        """Return the enabled rules triggered by an identify call.

        Parameters:
            first: whether this call created the contact.

        Returns:
            Rules with ``identify: {first: false}`` always, and those with ``first: true`` only
            when ``first`` is true.
        """
        return self._identify[first]

    def for_idle(self, event_name: str) -> tuple[Rule, ...]:
        """Return the enabled ``idle_for`` rules for which ``event_name`` counts as activity.

        Each such event restarts the rule's idle period for its entity (e.g. the cart).

        Parameters:
            event_name: a Segment ``track`` event name (exact, case-sensitive).

        Returns:
            Rules whose ``activity`` holds ``event_name``, possibly none.
        """
        return self._idle.get(event_name, _NO_RULES)

    def cancelled_by(self, event_name: str) -> tuple[Rule, ...]:
        """Return the enabled rules whose pending steps the track event ``event_name`` cancels.

        Parameters:
            event_name: a Segment ``track`` event name (exact, case-sensitive).

        Returns:
            Rules listing ``event_name`` in ``cancel_on``, possibly none.
        """
        return self._cancels.get(event_name, _NO_RULES)
