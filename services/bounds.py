"""Length bounds on the ids and strings requests carry, and how messages quote client input.

Every id and string of a request is checked against one of these bounds before it is stored,
compared or looked up, so no request makes the server keep or echo an unbounded string. Error
messages name client input through `quote`, which cuts it short: a status message must stay
well under the client's 8 KiB metadata limit, whatever the request held.
"""

from __future__ import annotations

from collections.abc import Collection

from services.errors import InvalidArgument

# User, session, tenant, node and notification ids, idempotency keys, template action ids.
MAX_ID_LEN = 256
MAX_CHANNEL_LEN = 128
MAX_TEMPLATE_ID_LEN = 128
# A log name in a cursor: `user`, `broadcast` or `channel:<name>`.
MAX_LOG_NAME_LEN = len("channel:") + MAX_CHANNEL_LEN
# BCP 47 tags in use are at most 35 characters.
MAX_LOCALE_LEN = 64
MAX_DEVICE_LEN = 256
MAX_REASON_LEN = 256
MAX_ADDRESS_LEN = 256
MAX_ENCODING_LEN = 64
# A page token is a cursor: the decimal digits of a uint64.
MAX_PAGE_TOKEN_LEN = 20
# Entries of a repeated field a client may send (ids to ack or mark read, users to look up,
# channels to join, cursors): checked before any per-entry work.
MAX_LIST_LEN = 1000
# How much of a client's string an error message quotes.
QUOTE_LEN = 64


def quote(value: str) -> str:
    """`value` quoted as `repr` does, cut to `QUOTE_LEN` characters with an ellipsis."""
    if len(value) <= QUOTE_LEN:
        return repr(value)
    return repr(value[:QUOTE_LEN] + "…")


def check_length(value: str, limit: int, what: str) -> None:
    """Raises InvalidArgument if `value` is longer than `limit` characters."""
    if len(value) > limit:
        raise InvalidArgument(f"{what} is longer than {limit} characters")


def check_id(value: str, what: str, limit: int = MAX_ID_LEN) -> None:
    """Raises InvalidArgument unless `value` is 1 to `limit` characters long."""
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    check_length(value, limit, what)


def check_count(values: Collection[object], what: str, limit: int = MAX_LIST_LEN) -> None:
    """Raises InvalidArgument if a repeated field has more than `limit` entries."""
    if len(values) > limit:
        raise InvalidArgument(f"{what} holds {len(values)} entries; at most {limit} are allowed")


def check_each(values: Collection[str], limit: int, what: str) -> None:
    """Raises InvalidArgument if an entry of a repeated field is longer than `limit`."""
    if values and max(map(len, values)) > limit:
        raise InvalidArgument(f"an entry of {what} is longer than {limit} characters")
