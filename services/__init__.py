"""Herald: self-hosted real-time notification delivery over gRPC."""

from __future__ import annotations

__version__ = "0.1.0"
