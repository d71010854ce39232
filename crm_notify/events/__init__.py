"""Segment Spec events in: the HTTP Tracking API, call parsing and strict body decoding."""

from crm_notify.events.api import Authenticate, Ingest, make_router
from crm_notify.events.decoding import (
    MAX_BATCH_BYTES,
    MAX_BATCH_CALLS,
    MAX_CALL_BYTES,
    decode_body,
    loads_strict,
)
from crm_notify.events.emails import normalise_email
from crm_notify.events.schemas import (
    CALL_TYPES,
    CallType,
    SegmentCall,
    parse_batch,
    parse_call,
    parse_calls_document,
)

__all__ = [
    "CALL_TYPES",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_CALLS",
    "MAX_CALL_BYTES",
    "Authenticate",
    "CallType",
    "Ingest",
    "SegmentCall",
    "decode_body",
    "loads_strict",
    "make_router",
    "normalise_email",
    "parse_batch",
    "parse_call",
    "parse_calls_document",
]
