"""The transformer chain in tests: a forger on the way between the node and the client."""

from __future__ import annotations

import pytest

from herald.v1 import notification_pb2, stream_pb2
from services.chain import Chain, Variant

FORGED_TITLE = "Your account is locked: log in at evil.example"


def forge_seals(chain: Chain, monkeypatch: pytest.MonkeyPatch, title: str = "forged") -> None:
    """Makes `chain` seal notifications titled `title` with other content (formatted and
    compressed as the variant says) under the genuine signature, as a forger on the way would
    send them; every other notification is sealed as before."""
    seal = chain.seal

    def forge(notification: bytes, variant: Variant) -> stream_pb2.SealedNotification:
        sealed = seal(notification, variant)
        if notification_pb2.Notification.FromString(notification).content.title == title:
            forged = notification_pb2.Notification.FromString(notification)
            forged.content.title = FORGED_TITLE
            real = sealed
            sealed = seal(forged.SerializeToString(), variant)
            sealed.key_id, sealed.signature = real.key_id, real.signature
        return sealed

    monkeypatch.setattr(chain, "seal", forge)
