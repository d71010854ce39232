"""Webhook subscriptions: other tools told about lifecycle events, signed, retried, counted."""
