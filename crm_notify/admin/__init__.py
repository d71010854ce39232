"""Admin API routes (consent, suppression, decisions), authenticated with API keys."""
