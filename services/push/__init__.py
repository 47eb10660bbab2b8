"""Offline fallback to push providers (docs/push.md): targets, providers, pending pushes."""
