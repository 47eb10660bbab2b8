"""Per-tenant webhooks for delivery-state events (docs/webhooks.md)."""
