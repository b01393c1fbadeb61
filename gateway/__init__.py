"""Fonte: a GDPR-aware GraphQL federation gateway over CRM and ERP systems."""

__version__ = "0.1.0"
