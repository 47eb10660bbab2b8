"""`python -m services` is the `herald` command."""

from __future__ import annotations

from services.cli import main

if __name__ == "__main__":
    main()
