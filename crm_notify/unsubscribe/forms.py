"""Reading small HTML form posts (urlencoded or multipart) without python-multipart."""

from __future__ import annotations

import email.parser
import email.policy
from urllib.parse import parse_qsl

from starlette.requests import Request

#: Largest form body read; the preference form is a few hundred bytes.
MAX_FORM_BYTES = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a form post (the last value of each name), without NUL characters (no
    database column may hold one); ``{}`` for a body that is too large, of another type or
    unreadable."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        fields = _multipart(content_type, bytes(body))
    elif media_type in ("application/x-www-form-urlencoded", ""):
        text = bytes(body).decode("utf-8", "replace")
        fields = dict(parse_qsl(text, keep_blank_values=True))
    else:
        return {}
    return {name: value.replace("\x00", "") for name, value in fields.items()}


def _multipart(content_type: str, body: bytes) -> dict[str, str]:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(head + body)
    fields: dict[str, str] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8", "replace")
    return fields
