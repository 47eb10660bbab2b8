"""What the embedded status store holds per notification nobody has received yet: the offline
inbox's cost in status memory.

    .venv/bin/python bench/status_records.py [--records 100000] [--users-per 1]

Creates `--records` status records (each naming `--users-per` users, as a unicast or multicast
send does) in a MemoryStatusStore and prints the bytes tracemalloc counts per record for all the
store keeps alive (ids and user lists included), with nothing delivered: what a node holds for
notifications waiting for offline users, up to HERALD_DELIVERY_STATUS_MAX_RECORDS.
"""

from __future__ import annotations

import argparse
import asyncio
import tracemalloc

from services.domain import NewRecord
from services.stream.status_memory import MemoryStatusStore


async def measure(records: int, users_per: int) -> float:
    store = MemoryStatusStore()
    tracemalloc.start()
    new = [
        NewRecord(
            f"n{i:08d}",
            "acme",
            b"\x0a\x07\x0a\x05alice",
            100.0 + i,
            3700.0 + i,
            tuple(f"user-{(i + k) % 1000}" for k in range(users_per)),
        )
        for i in range(records)
    ]
    try:
        await store.create(new)
        # What the store keeps alive, its ids and user lists included.
        del new
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held / records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--users-per", type=int, default=1)
    args = parser.parse_args()
    per = asyncio.run(measure(args.records, args.users_per))
    print(
        f"{per:,.0f} bytes per status record ({args.users_per} user(s) each, nothing delivered, "
        f"{args.records:,} records)"
    )


if __name__ == "__main__":
    main()
