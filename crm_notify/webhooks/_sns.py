"""Amazon SNS message signatures, as AWS documents them.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html:

- the string to sign is ``Name\\nValue\\n`` for each signed field, in this order: for a
  ``Notification`` ``Message``, ``MessageId``, ``Subject`` (only when present),
  ``Timestamp``, ``TopicArn``, ``Type``; for a ``SubscriptionConfirmation`` or
  ``UnsubscribeConfirmation`` ``Message``, ``MessageId``, ``SubscribeURL``, ``Timestamp``,
  ``Token``, ``TopicArn``, ``Type``;
- ``Signature`` is the base64 of an RSA PKCS#1 v1.5 signature of it, with SHA-1
  (``SignatureVersion`` 1) or SHA-256 (``SignatureVersion`` 2);
- the public key is in the X.509 certificate at ``SigningCertURL``, which must be an
  ``https://`` URL on an Amazon SNS host (:class:`HostPolicy`): on AWS
  ``https://sns.<region>.amazonaws.com/SimpleNotificationService-<hex>.pem``.

Certificates are kept in memory once fetched. Errors are :class:`SnsSignatureError` (the
message is not authentic) and :class:`SnsUnavailableError` (a certificate could not be
fetched: worth a retry).
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import SplitResult, urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from crm_notify._net import is_loopback_host

#: The signed fields of each SNS message type, in signing order.
SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
#: Fields signed only when the message has them.
OPTIONAL_FIELDS = frozenset({"Subject"})
#: The hash of each ``SignatureVersion``.
SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
#: Certificates kept in memory (SNS signs with one per region at a time).
CACHE_SIZE = 64
#: Seconds allowed for fetching a certificate or confirming a subscription.
FETCH_TIMEOUT_S = 10.0
#: Largest certificate accepted, in bytes.
MAX_CERTIFICATE_BYTES = 64 * 1024
#: The host pattern that stands for Amazon SNS's own endpoints in every region.
AWS_HOSTS = "aws"
#: An Amazon SNS endpoint: ``sns.<region>.amazonaws.com`` (``.amazonaws.com.cn`` in China). The
#: region label must look like one (``eu-west-1``, ``us-gov-west-1``): ``sns.*.amazonaws.com``
#: would also match S3 bucket hosts such as ``sns.s3.amazonaws.com``, whose owner could serve
#: a certificate of their own.
AWS_SNS_HOST = re.compile(r"sns\.[a-z]{2}(-[a-z]+)+-\d+\.amazonaws\.com(\.cn)?")
#: The path of SNS's signing certificates on an AWS host.
AWS_CERTIFICATE_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]+\.pem")
#: AWS's domains: any host under them must be an SNS endpoint (:data:`AWS_SNS_HOST`), whatever
#: patterns are configured.
AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn")


class SnsSignatureError(Exception):
    """The message is not authentic (or not signed as AWS documents).

    Parameters:
        missing: ``True`` when the signature fields are absent altogether.
    """

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class SnsUnavailableError(Exception):
    """A URL of an authentic-looking message could not be fetched (worth retrying)."""


@dataclass(frozen=True)
class HostPolicy:
    """Which hosts SNS certificates (and subscription confirmations) may come from.

    Each pattern is ``aws`` (Amazon SNS in every region: :data:`AWS_SNS_HOST`, port 443) or
    ``host[:port]``; in the host, ``*`` and ``?`` match within one DNS label
    (``sns.*.amazonaws.com`` matches ``sns.eu-west-1.amazonaws.com``, never
    ``sns.x.evil.amazonaws.com``). A URL with an explicit port matches only a pattern naming
    that port. URLs must be ``https://``, except to loopback hosts (tests). Whatever the
    patterns, a host under AWS's domains must be a regional SNS endpoint (so no pattern lets
    an S3 bucket host such as ``sns.s3.amazonaws.com`` through), and a certificate on it must
    be at ``/SimpleNotificationService-<hex>.pem``; elsewhere any ``.pem`` path will do.
    """

    patterns: tuple[tuple[str, int | None], ...]
    #: Whether Amazon SNS's own hosts (the ``aws`` pattern) are allowed.
    aws: bool = False

    @classmethod
    def parse(cls, text: str) -> HostPolicy:
        """Patterns from comma-separated ``text``.

        Raises:
            ValueError: no pattern, or one with a port that is not a number.
        """
        patterns: list[tuple[str, int | None]] = []
        aws = False
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if item.lower() == AWS_HOSTS:
                aws = True
                continue
            host, port = _split_host_port(item)
            patterns.append((host, port))
        if not patterns and not aws:
            raise ValueError("no host pattern given")
        return cls(tuple(patterns), aws=aws)

    def allows(self, url: str) -> bool:
        """Whether ``url`` is on an allowed host, with an allowed scheme."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port
        except ValueError:
            return False
        if not host or parts.username or parts.password:
            return False
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(host)):
            return False
        if port is not None and port == _default_port(parts):
            port = None
        if _on_aws(host):
            if not AWS_SNS_HOST.fullmatch(host):
                return False
            if self.aws and port is None:
                return True
        return any(
            _host_matches(host, pattern) and port == pattern_port
            for pattern, pattern_port in self.patterns
        )

    def allows_certificate(self, url: str) -> bool:
        """Whether ``url`` may hold a signing certificate: an allowed host (:meth:`allows`)
        and a certificate path (SNS's own on AWS, any ``.pem`` elsewhere), no query."""
        if not self.allows(url):
            return False
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            return False
        if _on_aws((parts.hostname or "").lower()):
            return AWS_CERTIFICATE_PATH.fullmatch(parts.path) is not None
        return parts.path.endswith(".pem")


class CertificateStore:
    """Fetches signing certificates from allowed hosts and keeps their public keys.

    Parameters:
        hosts: where certificates may come from.
        timeout_s: for each download.
    """

    def __init__(self, *, hosts: HostPolicy, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.hosts = hosts
        self.timeout_s = timeout_s
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def public_key(self, url: str) -> rsa.RSAPublicKey:
        """The RSA public key of the certificate at ``url``.

        Raises:
            SnsSignatureError: the URL is not an allowed certificate URL, or what it serves
                is no RSA certificate.
            SnsUnavailableError: it could not be fetched.
        """
        if not self.hosts.allows_certificate(url):
            raise SnsSignatureError(
                "SigningCertURL is not a certificate URL on an allowed SNS host (https; on AWS "
                "https://sns.<region>.amazonaws.com/SimpleNotificationService-<hex>.pem; "
                "CRM_NOTIFY_SNS_CERTIFICATE_HOSTS)"
            )
        with self._lock:
            cached = self._keys.get(url)
        if cached is not None:
            return cached
        key = _load_public_key(self._fetch(url))
        with self._lock:
            if len(self._keys) >= CACHE_SIZE:
                self._keys.pop(next(iter(self._keys)))
            self._keys[url] = key
        return key

    def _fetch(self, url: str) -> bytes:
        try:
            response = httpx.get(url, timeout=self.timeout_s, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise SnsUnavailableError(
                f"the signing certificate could not be fetched ({type(exc).__name__})"
            ) from exc
        if response.status_code != 200:
            raise SnsUnavailableError(
                f"the signing certificate URL answered HTTP {response.status_code}"
            )
        if len(response.content) > MAX_CERTIFICATE_BYTES:
            raise SnsSignatureError("the signing certificate is implausibly large")
        return response.content


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed for ``message`` (its ``Type`` chooses the fields).

    Raises:
        SnsSignatureError: an unknown ``Type`` or a signed field missing.
    """
    fields = SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise SnsSignatureError(f"Type must be one of {', '.join(SIGNED_FIELDS)}")
    lines: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None:
            if name in OPTIONAL_FIELDS:
                continue
            raise SnsSignatureError(f"the signed field {name} is missing")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def verify_message(message: Mapping[str, Any], store: CertificateStore) -> None:
    """Check the signature of SNS ``message`` as AWS documents it.

    Raises:
        SnsSignatureError: unsigned, an unknown signature version, a disallowed certificate
            URL, or a signature that does not verify.
        SnsUnavailableError: the certificate could not be fetched.
    """
    signature_text = message.get("Signature")
    cert_url = message.get("SigningCertURL")
    if not signature_text or not cert_url:
        raise SnsSignatureError("Signature and SigningCertURL are required", missing=True)
    algorithm = SIGNATURE_HASHES.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        raise SnsSignatureError("unsupported SignatureVersion (1 or 2)")
    try:
        signature = base64.b64decode(str(signature_text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SnsSignatureError("the Signature is not base64") from exc
    signed = string_to_sign(message)
    key = store.public_key(str(cert_url))
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature as exc:
        raise SnsSignatureError("the SNS signature does not verify") from exc


def _load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise SnsSignatureError("the signing certificate is not a PEM certificate") from exc
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsSignatureError("the signing certificate has no RSA key")
    return key


def _split_host_port(item: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + item)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{item!r}: the port must be a number") from exc
    host = parts.hostname or ""
    if not host or parts.path or parts.username:
        raise ValueError(f"{item!r} is not host[:port]")
    return host.lower(), port


def _host_matches(host: str, pattern: str) -> bool:
    host_labels, pattern_labels = host.split("."), pattern.split(".")
    if len(host_labels) != len(pattern_labels):
        return False
    return all(fnmatchcase(h, p) for h, p in zip(host_labels, pattern_labels, strict=True))


def _on_aws(host: str) -> bool:
    return host.endswith(AWS_DOMAINS)


def _default_port(parts: SplitResult) -> int:
    return 443 if parts.scheme == "https" else 80
