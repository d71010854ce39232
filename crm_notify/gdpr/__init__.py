"""GDPR operations: export everything held on a person (Art. 15), erase them (Art. 17), and
purge old events and rendered bodies (storage limitation, Art. 5(1)(e))."""

from crm_notify.gdpr.erase import ErasureReport, erase_contact
from crm_notify.gdpr.export import export_contact
from crm_notify.gdpr.retention import PurgeReport, purge

__all__ = ["ErasureReport", "PurgeReport", "erase_contact", "export_contact", "purge"]
