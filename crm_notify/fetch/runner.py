"""Running a rule's fetch steps for one email: build each request, use the cache, call the
service, and decide each step's outcome (:mod:`crm_notify.fetch.outcomes`).

The delivery service calls :meth:`FetchRunner.run` with no database transaction open (the claim
is committed first), so a slow service holds up only its own email. A request is bounded by
its step's ``timeout`` (connecting, and each read; an answer complete later than that counts as
a timeout too), by :data:`~crm_notify.fetch.model.MAX_ANSWER_BYTES`, and by the outbound address
policy (:class:`crm_notify._net.OutboundPolicy`). Only a 2xx answer holding a JSON object or
list counts; redirects are not followed. Logs name rules and steps, never URLs or answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import redis
from sqlalchemy.engine import Engine

from crm_notify._net import (
    OutboundPolicy,
    ResponseTooLargeError,
    blocked_reason,
    outbound_client,
    read_bounded,
)
from crm_notify.errors import RenderError
from crm_notify.fetch.cache import DatabaseFetchCache, FetchCache, RedisFetchCache, cache_key
from crm_notify.fetch.model import MAX_ANSWER_BYTES, FetchStep, OnError
from crm_notify.fetch.outcomes import FetchError, FetchFailure, FetchOutcome, FetchResult
from crm_notify.fetch.spec import MAX_TIMEOUT
from crm_notify.rules.durations import format_duration

if TYPE_CHECKING:
    from crm_notify.config import Settings

logger = logging.getLogger(__name__)

#: Seconds a cache lookup or write may wait for Redis (then the step goes on without it).
CACHE_TIMEOUT_S = 1.0
#: ``User-Agent`` of every request.
USER_AGENT = "crm-notify"


@dataclass(frozen=True, slots=True)
class FetchRun:
    """The fetch steps of one delivery attempt.

    ``data`` maps each step's name to what the template gets (the answer, or the fallback);
    ``results`` has one entry per step tried, in order. When a step said ``skip`` or ``defer``,
    it is the last one tried and :attr:`stopped` is its result.
    """

    data: dict[str, Any]
    results: tuple[FetchResult, ...]

    @property
    def stopped(self) -> FetchResult | None:
        """The result that stops the email (``skip`` or ``defer``), if any."""
        last = self.results[-1] if self.results else None
        if last is not None and last.outcome in (FetchOutcome.SKIP, FetchOutcome.DEFER):
            return last
        return None

    def with_fallbacks(self, steps: Sequence[FetchStep], message: str) -> FetchRun | None:
        """This run with the fallback of every step that got an answer and has one, for an
        email that did not render with the answers (``unusable answer``: ``message``);
        ``None`` when no step has a fallback to use."""
        fallbacks = {
            step.name: step.fallback for step in steps if step.on_error is OnError.FALLBACK
        }
        failure = FetchFailure(FetchError.UNUSABLE, message)
        data, results, changed = dict(self.data), [], False
        for result in self.results:
            if result.outcome in (FetchOutcome.OK, FetchOutcome.CACHE_HIT) and (
                result.name in fallbacks
            ):
                data[result.name] = fallbacks[result.name]
                elapsed = result.elapsed_ms
                result = FetchResult.failed(result.name, FetchOutcome.FALLBACK, failure, elapsed)
                changed = True
            results.append(result)
        return FetchRun(data=data, results=tuple(results)) if changed else None


class FetchRunner:
    """Makes the requests of fetch steps (see the module docstring).

    Parameters:
        environ: where ``${NAME}`` references are read from (the process environment).
        policy: the addresses requests may connect to.
        cache: where steps with ``cache:`` keep answers (``None``: not cached).
        max_answer_bytes: the largest answer read.
        transport: an ``httpx`` transport (replaces the policy's; tests of other layers).
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str],
        policy: OutboundPolicy,
        cache: FetchCache | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._environ = environ
        self._cache = cache
        self._max_bytes = max_answer_bytes
        self._client = outbound_client(
            timeout_s=MAX_TIMEOUT.total_seconds(),
            user_agent=USER_AGENT,
            policy=policy,
            transport=transport,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, engine: Engine, environ: Mapping[str, str]
    ) -> FetchRunner:
        """The runner ``settings`` configure: answers cached in Redis when
        ``CRM_NOTIFY_REDIS_URL`` is set, else in the database; addresses allowed by
        ``CRM_NOTIFY_OUTBOUND_ALLOW_NETWORKS``."""
        cache: FetchCache
        if settings.redis_url:
            client = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=CACHE_TIMEOUT_S,
                socket_connect_timeout=CACHE_TIMEOUT_S,
            )
            cache = RedisFetchCache(client, namespace=settings.redis_namespace)
        else:
            cache = DatabaseFetchCache(engine)
        policy = OutboundPolicy.from_settings(settings)
        return cls(environ=environ, policy=policy, cache=cache)

    def close(self) -> None:
        """Close the connection pool and the cache's connections."""
        self._client.close()
        if self._cache is not None:
            self._cache.close()

    def run(
        self, steps: Sequence[FetchStep], context: Mapping[str, Any], *, rule: str = ""
    ) -> FetchRun:
        """Run ``steps`` in order for one email, stopping at one that skips or defers it.

        Parameters:
            steps: the rule's fetch steps.
            context: what the URLs and bodies render with (``event``, ``contact``, ``order``,
                ``cart``, ``gate``).
            rule: the rule's name, for logs.

        Returns:
            The data for the template and each step's result.
        """
        data: dict[str, Any] = {}
        results: list[FetchResult] = []
        for step in steps:
            result, value = self.run_step(step, context)
            results.append(result)
            if result.outcome in (FetchOutcome.SKIP, FetchOutcome.DEFER):
                logger.warning(
                    "rule %s: fetch %s failed (%s): %s",
                    rule,
                    step.name,
                    result.error,
                    result.outcome.value,
                )
                break
            if result.outcome is FetchOutcome.FALLBACK:
                logger.warning(
                    "rule %s: fetch %s failed (%s): fallback used", rule, step.name, result.error
                )
            data[step.name] = value
        return FetchRun(data=data, results=tuple(results))

    def run_step(self, step: FetchStep, context: Mapping[str, Any]) -> tuple[FetchResult, Any]:
        """One step: its result, and the data the template gets (``None`` unless ``ok``,
        ``cache_hit`` or ``fallback``)."""
        try:
            request = self._request(step, context)
        except FetchFailure as failure:
            return self._failed(step, failure, None)
        key = None
        if step.cache is not None and self._cache is not None:
            # The step's own headers (credentials) are part of the key, only hashed.
            own = {name: request.headers[name] for name, _ in step.headers}
            key = cache_key(request.method, str(request.url), request.content, own)
            cached = self._cache.get(key)
            if cached is not None:
                return FetchResult(step.name, FetchOutcome.CACHE_HIT), cached
        started = time.monotonic()  # the request's own time: not the cache lookup's
        try:
            data = self._send(step, request, started)
        except FetchFailure as failure:
            return self._failed(step, failure, _elapsed_ms(started))
        if key is not None and step.cache is not None and self._cache is not None:
            self._cache.put(key, data, ttl=step.cache)
        return FetchResult(step.name, FetchOutcome.OK, elapsed_ms=_elapsed_ms(started)), data

    def _request(self, step: FetchStep, context: Mapping[str, Any]) -> httpx.Request:
        """The request of ``step`` for ``context``.

        Raises:
            FetchFailure: ``request error``: the URL or body did not render, a variable is not
                set, or httpx refuses the URL or a header.
        """
        try:
            url = step.url.render(context, self._environ)
            headers = step.resolved_headers(self._environ)
            content = b""
            if step.body is not None:
                rendered = step.body.render(context)
                headers["Content-Type"] = rendered.content_type
                content = rendered.data
            headers.setdefault("Accept", "application/json")
            timeout = httpx.Timeout(step.timeout.total_seconds())
            return self._client.build_request(
                step.method, url, headers=headers, content=content or None, timeout=timeout
            )
        except (RenderError, LookupError, ValueError, httpx.InvalidURL) as exc:
            # MissingVariableError is a LookupError; a header httpx cannot encode a ValueError
            raise FetchFailure(FetchError.REQUEST, _first_line(exc)) from exc

    def _send(self, step: FetchStep, request: httpx.Request, started: float) -> Any:
        """Send ``request`` and return its JSON answer.

        Raises:
            FetchFailure: see :class:`~crm_notify.fetch.outcomes.FetchError`.
        """
        took = f"timeout after {format_duration(step.timeout)}"
        try:
            response = self._client.send(request, stream=True)
            timeout_s = step.timeout.total_seconds()
            body = read_bounded(response, self._max_bytes, timeout_s=timeout_s)
        except httpx.TimeoutException as exc:
            raise FetchFailure(FetchError.TIMEOUT, took) from exc
        except ResponseTooLargeError as exc:
            message = f"the answer is larger than {self._max_bytes // 1024} KiB"
            raise FetchFailure(FetchError.TOO_LARGE, message) from exc
        except httpx.TransportError as exc:
            refused = blocked_reason(exc)
            if refused is not None:
                raise FetchFailure(FetchError.REFUSED_ADDRESS, refused) from exc
            raise FetchFailure(FetchError.NETWORK, f"network error: {_first_line(exc)}") from exc
        except (httpx.HTTPError, UnicodeEncodeError) as exc:
            raise FetchFailure(FetchError.REQUEST, _first_line(exc)) from exc
        if time.monotonic() - started > step.timeout.total_seconds():
            raise FetchFailure(FetchError.TIMEOUT, took)
        status = response.status_code
        if not 200 <= status < 300:
            redirect = " (redirects are not followed)" if 300 <= status < 400 else ""
            raise FetchFailure(FetchError.STATUS, f"status {status}{redirect}", status=status)
        try:
            data = json.loads(body)
        except ValueError as exc:
            message = "the answer is not JSON"
            raise FetchFailure(FetchError.NOT_JSON, message, status=status) from exc
        if not isinstance(data, dict | list):
            message = f"the answer is JSON but not an object or a list ({type(data).__name__})"
            raise FetchFailure(FetchError.NOT_JSON, message, status=status)
        return data

    @staticmethod
    def _failed(
        step: FetchStep, failure: FetchFailure, elapsed_ms: int | None
    ) -> tuple[FetchResult, Any]:
        if step.on_error is OnError.FALLBACK:
            result = FetchResult.failed(step.name, FetchOutcome.FALLBACK, failure, elapsed_ms)
            return result, step.fallback
        outcome = FetchOutcome.DEFER if step.on_error is OnError.DEFER else FetchOutcome.SKIP
        return FetchResult.failed(step.name, outcome, failure, elapsed_ms), None


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
