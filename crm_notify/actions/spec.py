"""The rule-file format of one action (an item of a rule's ``actions:`` list).

::

    actions:
      - type: webhook                  # required; the only type so far
        name: sms                      # optional, default webhook-1, webhook-2...; unique
        url: https://api.sms.example/v1/messages   # required, static: https (http: loopback
                                       #   only); ${NAME} allowed in the query string only
        method: POST                   # optional: POST (default), PUT, PATCH, GET (no body)
        headers:                       # optional; values may hold ${NAME} (environment variables)
          Authorization: Bearer ${SMS_API_TOKEN}
        content_type: json             # optional: json (default) | form
        body:                          # optional: json: a mapping/list whose string leaves are
          to: "{{ contact.traits.phone }}"   # templates ("{{ expr }}" alone keeps the value's
          text: "Order {{ order.order_id }} shipped"   # JSON type), or one template string that
                                       #   renders JSON; form: a flat mapping field -> template
        secret: ${SMS_WEBHOOK_SECRET}  # optional: the Standard Webhooks signing secret (whsec_...);
                                       #   default CRM_NOTIFY_WEBHOOK_SECRET; neither: unsigned

What the values mean and how they are checked is in :mod:`crm_notify.actions.compile`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

#: What an action name must look like (as a rule name).
ACTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
#: The HTTP methods a webhook action may use.
WEBHOOK_METHODS = ("POST", "PUT", "PATCH", "GET")
#: Longest URL accepted.
MAX_URL_CHARS = 2048


def _upper(value: Any) -> Any:
    """Pydantic before-validator: ``post`` is ``POST``."""
    return value.upper() if isinstance(value, str) else value


class WebhookActionSpec(BaseModel):
    """``actions[i]`` with ``type: webhook``: an HTTP request to another tool."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, title="WebhookAction")

    type: Literal["webhook"]
    name: Annotated[str, Field(pattern=ACTION_NAME_PATTERN, max_length=64)] | None = None
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]
    method: Annotated[Literal["POST", "PUT", "PATCH", "GET"], BeforeValidator(_upper)] = "POST"
    headers: dict[str, str] | None = None
    content_type: Literal["json", "form"] = "json"
    body: Any = None
    secret: Annotated[str, Field(min_length=1)] | None = None
