"""Notification preferences: per user, category and delivery path (docs/preferences.md)."""
