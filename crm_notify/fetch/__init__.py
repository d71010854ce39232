"""Fetch steps in rules: HTTP requests whose JSON answers fill an email's template variables.

``spec`` is the rule-file format of one step, which :mod:`crm_notify.rules._fetch` checks and
compiles into a :class:`~crm_notify.fetch.model.FetchStep` at load; ``runner`` makes the
requests at delivery (``cache`` keeps answers, in Redis or the database), ``outcomes`` says
what each step came to, ``record`` writes that to the decision log, ``stats`` counts it, and
``preview`` shows the requests without making them.

Import from the modules: this ``__init__`` re-exports nothing, so that the rule model can
import ``spec`` without loading the delivery side.
"""
