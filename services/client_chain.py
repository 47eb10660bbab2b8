"""The Python client's side of the transformer chain: decode, verify, refresh keys, count.

A subscription that negotiated encodings gets `Delivery.sealed`; `ClientChain.open` turns each
delivery back into its Notification (services/chain/opening.py). With `verify`, it fetches the
public keys (GetSigningKeys) when the stream opens and once more for a key id it does not know
(a rotation it has not seen yet); a delivery that is unsigned, signed by an unknown or retired
key, or whose signature does not verify is rejected: not given to the app, counted by reason in
`rejected` (and `herald_client_rejected_deliveries_total`), and logged in one bounded line at
most every few seconds, naming the reason, log and cursor, never the payload. ListInbox items
(`Client.list_inbox(chain=...)`) go through the same `open`, counted in the same `rejected`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from herald.v1 import notification_pb2, stream_pb2
from services import metrics
from services.chain.opening import UNKNOWN_KEY, Opener, Rejected
from services.chain.policy import SIGNED

log = logging.getLogger(__name__)

_LOG_INTERVAL_S = 10.0
# Key ids a client refreshed its keys for: bounded, so a hostile stream cannot make it loop.
_MAX_REFRESHED = 64

FetchKeys = Callable[[], Awaitable[stream_pb2.GetSigningKeysResponse]]
# What the chain opens: a stream's delivery or a ListInbox item (both `notification` | `sealed`).
Sealed = stream_pb2.Delivery | stream_pb2.InboxItem


class ClientChain:
    """One subscription's decoder and verifier."""

    def __init__(
        self,
        fetch_keys: FetchKeys,
        *,
        accept: tuple[str, ...] = (),
        verify: bool = False,
        on_reject: Callable[[Rejected, Sealed], None] | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.accept = tuple(dict.fromkeys((*accept, SIGNED) if verify else accept))
        self.verify = verify
        self.opener = Opener(verify=verify)
        self.rejected: Counter[str] = Counter()
        self._fetch_keys = fetch_keys
        self._on_reject = on_reject
        self._refreshed: set[str] = set()
        self._now = now
        self._logged_at = -_LOG_INTERVAL_S
        self._left_out = 0

    @property
    def rejections(self) -> int:
        return sum(self.rejected.values())

    async def connecting(self) -> None:
        """Before each stream opens: the current keys (retired ones stop verifying)."""
        if self.verify:
            self.opener.set_keys((await self._fetch_keys()).keys)
            self._refreshed.clear()

    async def ready(self) -> None:
        """Before a ListInbox: the keys, unless this chain has them already."""
        if self.verify and not self.opener.key_ids:
            await self.connecting()

    async def open(self, delivery: Sealed) -> notification_pb2.Notification | None:
        """The notification of a delivery or an inbox item, or None when it is rejected
        (counted and logged)."""
        try:
            return self.opener.open(delivery)
        except Rejected as rejected:
            if rejected.reason != UNKNOWN_KEY or not self._may_refresh(rejected.key_id):
                self._reject(rejected, delivery)
                return None
        self.opener.set_keys((await self._fetch_keys()).keys)
        try:
            return self.opener.open(delivery)
        except Rejected as rejected:
            self._reject(rejected, delivery)
            return None

    def _may_refresh(self, key_id: str) -> bool:
        if key_id in self._refreshed or len(self._refreshed) >= _MAX_REFRESHED:
            return False
        self._refreshed.add(key_id)
        return True

    def _reject(self, rejected: Rejected, delivery: Sealed) -> None:
        self.rejected[rejected.reason] += 1
        metrics.CLIENT_REJECTED.labels(rejected.reason).inc()
        if self._on_reject is not None:
            self._on_reject(rejected, delivery)
        now = self._now()
        if now - self._logged_at < _LOG_INTERVAL_S:
            self._left_out += 1
            return
        self._logged_at, left_out, self._left_out = now, self._left_out, 0
        # An inbox item has no log field: the inbox is the user's log.
        what, of_log = (
            ("a delivery", delivery.log[:64])
            if isinstance(delivery, stream_pb2.Delivery)
            else ("an inbox item", "user")
        )
        log.warning(
            "rejected %s (%s) of log %s at cursor %d; %d more left out since",
            what,
            rejected.reason,
            of_log,
            delivery.cursor,
            left_out,
            extra={"reason": rejected.reason, "key_id": rejected.key_id[:64]},
        )
