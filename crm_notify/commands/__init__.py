"""Command groups of the ``crm-notify`` CLI that live outside :mod:`crm_notify.cli`."""
