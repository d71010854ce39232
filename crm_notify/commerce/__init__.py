"""Order and cart state derived from ecommerce events."""

from crm_notify.commerce.models import Cart, Order

__all__ = ["Cart", "Order"]
