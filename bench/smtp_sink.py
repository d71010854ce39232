"""The SMTP sink the benchmark delivers to: aiosmtpd on loopback, run in its own process.

It runs apart from the measured processes so that accepting mail does not take their GIL. Each
accepted message becomes one line ``<X-CRM-Notify-Id>\\t<Message-ID>\\t<unix time>`` in the
file named by ``--record``; the benchmark reads it to count deliveries and check that no
notification arrived twice. Only the header block is scanned (a regular expression, no MIME
parsing), so the sink stays cheap.

Run as ``python -m bench.smtp_sink --port P --record FILE``; it prints ``ready`` once listening
and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import threading
import time
from typing import IO, Any

import uvloop
from aiosmtpd.controller import Controller

#: The two headers the sink records (in the header block only).
_NOTIFY_ID = re.compile(rb"^X-CRM-Notify-Id:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)


class Recorder:
    """aiosmtpd handler: accept every message and record its ids and arrival time."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        headers = bytes(content).split(b"\r\n\r\n", 1)[0]
        notify_id = _NOTIFY_ID.search(headers)
        message_id = _MESSAGE_ID.search(headers)
        self._out.write(
            f"{notify_id.group(1).decode() if notify_id else '-'}\t"
            f"{message_id.group(1).decode() if message_id else '-'}\t{time.time():.6f}\n"
        )
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True, help="file receiving one line per message")
    args = parser.parse_args()
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open(args.record, "w", buffering=1, encoding="utf-8") as out:
        controller = Controller(
            Recorder(out),
            hostname=args.host,
            port=args.port,
            loop=uvloop.new_event_loop(),
            enable_SMTPUTF8=True,
        )
        controller.start()
        print("ready", flush=True)
        try:
            stop.wait()
        finally:
            controller.stop()


if __name__ == "__main__":
    main()
