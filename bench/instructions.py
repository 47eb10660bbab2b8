"""Herald's own work per notification in CPU instructions: the noise-free counterpart of hotpath.py.

    .venv/bin/python bench/instructions.py [--batches 4 12]

Runs bench/hotpath.py's ingest, delivery and acks (1,000 users, one session each, SendBatch of
250, every user acking `up_to` its head after each round) under valgrind's callgrind twice, with
two numbers of batches, and prints the difference in instructions divided by the difference in
notifications: the marginal instructions per notification, everything included (validation, logs,
status, session queues, framing, acks, the collector), start-up and imports excluded.

Wall-clock timings on this shared machine move by 10-20 % from run to run; instruction counts
move by well under 1 %, so a change of a few per cent in services/ shows here when the full
bench cannot resolve it. Instructions are not time (a cache miss costs more than an add), so
confirm a large change with bench/delivery.py. Needs valgrind (`apt-get install valgrind`);
each run takes about half a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
USERS, BATCH = 1000, 250

# What runs under valgrind: one round of warm-up and one measured round, each followed by acks.
_DRIVER = """
import asyncio, sys
sys.path.insert(0, {bench!r})
import hotpath
from services.server import tune_gc
tune_gc()
asyncio.run(hotpath.measure({users}, {batch}, int(sys.argv[1]), 1, sessions=True, acks=True))
"""


def instructions(batches: int, driver: Path, valgrind: str) -> int:
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run(  # noqa: S603 - our own command line
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}/callgrind.out",
                sys.executable,
                str(driver),
                str(batches),
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{result.stderr}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs=2, default=[4, 12], metavar=("FEW", "MORE"))
    args = parser.parse_args()
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    few, more = sorted(args.batches)
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp) / "driver.py"
        driver.write_text(_DRIVER.format(bench=str(HERE), users=USERS, batch=BATCH))
        counts = [instructions(batches, driver, valgrind) for batches in (few, more)]
    # Each run sends its batches twice (warm-up and measured round).
    notifications = 2 * (more - few) * BATCH
    per = (counts[1] - counts[0]) / notifications
    print(
        f"{per:,.0f} instructions per notification (ingest, one delivery and its ack; "
        f"{USERS} users, SendBatch of {BATCH}, {few} vs {more} batches)"
    )


if __name__ == "__main__":
    main()
