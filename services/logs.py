"""JSON logs on stdout. Never log tokens or notification payloads."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def json_formatter() -> JsonFormatter:
    """One JSON object per record: time, level, logger, message and the record's extra fields."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "asctime": "time"},
    )


def configure_logging(level: str = "INFO") -> None:
    """Sends every record to stdout as one JSON object per line (audit records included:
    the `herald.audit` logger, services/audit.py)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
