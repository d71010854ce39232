"""Rule actions other than email: HTTP requests to third-party tools (webhook actions).

``spec`` is the rule-file format of one action, ``compile`` turns it into a checked
:class:`~crm_notify.actions.model.WebhookAction` at load (``body`` and ``env`` are its parts),
``rows`` writes the notifications of a rule firing, ``signing`` signs requests per Standard
Webhooks, ``sender`` delivers them, ``stats`` counts them per rule.

Import from the modules: this ``__init__`` re-exports nothing, so that the rule model can
import ``spec`` without loading the delivery side.
"""
