"""AWS Signature Version 4 (header form), with ``hmac`` and ``hashlib`` only.

The four documented steps
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html):

1. a canonical request: method, canonical URI, canonical query string, canonical headers,
   signed header names and the hex SHA-256 of the payload, one per line;
2. the string to sign: ``AWS4-HMAC-SHA256``, the request time, the credential scope
   (``date/region/service/aws4_request``) and the hex SHA-256 of the canonical request;
3. the signing key: HMAC-SHA256 chained over ``"AWS4" + secret``, date, region, service and
   ``aws4_request``;
4. the ``Authorization`` header naming the access key, scope, signed headers and signature.

Canonical URIs are encoded the way every service but S3 expects (each segment of the already
encoded path is encoded again). Checked against AWS's published examples in
``tests/esp/test_ses.py``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote

#: The signing algorithm named in the string to sign and the ``Authorization`` header.
ALGORITHM = "AWS4-HMAC-SHA256"
#: Characters RFC 3986 leaves unreserved, which SigV4 never percent-encodes.
_UNRESERVED = "-_.~"


@dataclass(frozen=True)
class Credentials:
    """An AWS access key, and the session token of temporary credentials (if any)."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


def amz_date(when: datetime) -> str:
    """``when`` (UTC) in the ``X-Amz-Date`` form, e.g. ``20150830T123600Z``."""
    return when.strftime("%Y%m%dT%H%M%SZ")


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_uri(raw_path: str) -> str:
    """The path with each segment URI-encoded (again, for services other than S3)."""
    if not raw_path:
        return "/"
    return quote(raw_path, safe="/" + _UNRESERVED)


def canonical_query(raw_query: str) -> str:
    """Parameters URI-encoded and sorted by name, then value."""
    if not raw_query:
        return ""
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append(
            (quote(unquote(name), safe=_UNRESERVED), quote(unquote(value), safe=_UNRESERVED))
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """The canonical header block (lower-case names, trimmed values with runs of spaces
    collapsed, sorted) and the ``;``-joined signed header names."""
    normalised = {name.strip().lower(): " ".join(value.split()) for name, value in headers.items()}
    names = sorted(normalised)
    block = "".join(f"{name}:{normalised[name]}\n" for name in names)
    return block, ";".join(names)


def canonical_request(
    method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], payload_hash: str
) -> tuple[str, str]:
    """Step 1: the canonical request and the signed header names."""
    block, signed = canonical_headers(headers)
    text = "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            block,
            signed,
            payload_hash,
        ]
    )
    return text, signed


def credential_scope(date_stamp: str, region: str, service: str) -> str:
    """``YYYYMMDD/region/service/aws4_request``."""
    return f"{date_stamp}/{region}/{service}/aws4_request"


def string_to_sign(request_time: str, scope: str, canonical: str) -> str:
    """Step 2: algorithm, request time, scope, hash of the canonical request."""
    return "\n".join([ALGORITHM, request_time, scope, sha256_hex(canonical.encode("utf-8"))])


def signing_key(secret_access_key: str, date_stamp: str, region: str, service: str) -> bytes:
    """Step 3: the key derived from the secret for one day, region and service."""
    key = ("AWS4" + secret_access_key).encode("utf-8")
    for part in (date_stamp, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(key: bytes, text_to_sign: str) -> str:
    """Hex HMAC-SHA256 of the string to sign."""
    return hmac.new(key, text_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization(
    *,
    credentials: Credentials,
    region: str,
    service: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    payload: bytes,
    request_time: str,
) -> str:
    """Steps 1 to 4: the ``Authorization`` header value for a request whose signed headers
    (``host`` and ``x-amz-date`` among them) are exactly ``headers``."""
    date_stamp = request_time[:8]
    canonical, signed = canonical_request(method, raw_path, raw_query, headers, sha256_hex(payload))
    scope = credential_scope(date_stamp, region, service)
    key = signing_key(credentials.secret_access_key, date_stamp, region, service)
    sig = signature(key, string_to_sign(request_time, scope, canonical))
    return (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed}, Signature={sig}"
    )


def sign_headers(
    *,
    credentials: Credentials,
    region: str,
    service: str,
    method: str,
    host: str,
    raw_path: str,
    raw_query: str = "",
    headers: Mapping[str, str] | None = None,
    payload: bytes = b"",
    when: datetime,
) -> dict[str, str]:
    """The headers to add to a request: ``X-Amz-Date``, ``X-Amz-Security-Token`` (temporary
    credentials) and ``Authorization``, signing ``host``, those and ``headers``.

    Parameters:
        host: the ``Host`` header as sent (with the port when it is not the default).
        raw_path, raw_query: the request target as sent (percent-encoded).
        headers: further headers to sign, e.g. ``Content-Type``.
        payload: the exact body bytes.
        when: the request time (UTC).
    """
    request_time = amz_date(when)
    added = {"X-Amz-Date": request_time}
    if credentials.session_token:
        added["X-Amz-Security-Token"] = credentials.session_token
    signed = {**dict(headers or {}), "Host": host, **added}
    added["Authorization"] = authorization(
        credentials=credentials,
        region=region,
        service=service,
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=signed,
        payload=payload,
        request_time=request_time,
    )
    return added
