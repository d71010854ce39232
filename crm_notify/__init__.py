"""crm-notify: Segment events in, rule-driven notifications out."""
