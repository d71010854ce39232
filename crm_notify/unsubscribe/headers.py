"""The ``List-Unsubscribe`` headers of marketing mail (RFC 2369, RFC 8058)."""

from __future__ import annotations


def list_unsubscribe_headers(url: str) -> dict[str, str]:
    """The headers announcing one-click unsubscribe at ``url`` (an https URL in production)."""
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def plain_list_unsubscribe(text: str, value: str) -> str:
    """``text`` with its ``List-Unsubscribe`` header as ``value`` on one plain line.

    The ``email`` package RFC 2047-encodes a header it cannot fold within 78 characters; an
    encoded ``List-Unsubscribe`` is ignored by Gmail and others. A URL that fits one folded
    line is left as folded; a longer one gets a single long line (RFC 5322 allows 998).
    """
    head, separator, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    for index, line in enumerate(lines):
        if not line.lower().startswith("list-unsubscribe:"):
            continue
        end = index + 1
        while end < len(lines) and lines[end][:1] in (" ", "\t"):
            end += 1
        if "=?" not in "".join(lines[index:end]):
            return text
        lines[index:end] = [f"List-Unsubscribe: {value}"]
        return "\r\n".join(lines) + separator + body
    return text
