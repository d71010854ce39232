"""Contacts and their traits."""

from crm_notify.contacts.models import Contact, ContactPublic

__all__ = ["Contact", "ContactPublic"]
