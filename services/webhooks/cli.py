"""`herald webhooks`: the tenant's parked webhook batches, over RegistryService
(docs/webhooks.md).

- `herald webhooks list [--page-size N] [--page-token T]`: parked batches, oldest first, with
  the reason each was parked;
- `herald webhooks replay (BATCH_ID... | --all)`: sends them again (to the tenant's current URL);
- `herald webhooks delete (BATCH_ID... | --all)`: forgets them.

Each acts as `--token`, or as a minted operator token (scope tenant:admin) for `--tenant`.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from herald.v1 import registry_pb2
from services import auth, cli_tenant
from services.cli_connection import CliError, client_flags, connect, credentials

OPERATOR: Final = "herald-cli"


def add_command(commands: Any) -> None:
    """Adds `herald webhooks` to the `herald` parser's subcommands."""
    webhooks = commands.add_parser(
        "webhooks", help="the tenant's parked webhook batches: list, replay, delete"
    )
    actions = webhooks.add_subparsers(dest="action", required=True)
    listed = actions.add_parser("list", help="parked batches, oldest first, with their reasons")
    client_flags(listed)
    listed.add_argument("--page-size", type=int, default=0, help="at most 1000 (default 100)")
    listed.add_argument("--page-token", default="", help="from the previous page")
    for name, what in (
        ("replay", "send parked batches again (to the tenant's current URL and secret)"),
        ("delete", "forget parked batches"),
    ):
        action = actions.add_parser(name, help=what)
        client_flags(action)
        action.add_argument("batch_ids", nargs="*", metavar="BATCH_ID")
        action.add_argument("--all", action="store_true", help="every parked batch")


async def run(args: argparse.Namespace) -> int:
    if args.action != "list" and bool(args.batch_ids) == bool(args.all):
        raise CliError(
            f"webhooks {args.action}: give BATCH_ID... (see `herald webhooks list`) or --all"
        )
    who = credentials(
        args, [auth.SCOPE_TENANT_ADMIN], None, subject_flag="--token", default_subject=OPERATOR
    )
    tenant = args.tenant or ("" if who.tenant == auth.ANY_TENANT else who.tenant)
    async with connect(args, who.token) as client:
        if args.action == "list":
            page = await client.parked_webhooks(
                tenant_id=tenant, page_size=args.page_size, page_token=args.page_token
            )
            _print(args, page, _list_text)
        elif args.action == "replay":
            replayed = await client.replay_webhooks(
                args.batch_ids, all_batches=args.all, tenant_id=tenant
            )
            _print(
                args,
                registry_pb2.ReplayWebhooksResponse(replayed=replayed),
                lambda r: [f"replaying {r.replayed} batch(es): each is sent within a moment"],
            )
        else:
            deleted = await client.delete_parked_webhooks(
                args.batch_ids, all_batches=args.all, tenant_id=tenant
            )
            _print(
                args,
                registry_pb2.DeleteParkedWebhooksResponse(deleted=deleted),
                lambda r: [f"deleted {r.deleted} batch(es)"],
            )
    return 0


def _print(args: argparse.Namespace, message: Any, text: Any) -> None:
    # The text or JSON output every operator command shares.
    cli_tenant._print(args, message, text)


def _list_text(response: registry_pb2.ListParkedWebhooksResponse) -> list[str]:
    if not response.batches:
        return ["no parked webhook batches"]
    rows = [("BATCH", "EVENTS", "ATTEMPTS", "PARKED", "REASON")]
    rows.extend(
        (
            b.batch_id + (" (replaying)" if b.replay_pending else ""),
            str(b.event_count),
            str(b.attempts),
            b.parked_at.ToJsonString(),
            b.reason,
        )
        for b in response.batches
    )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if response.next_page_token:
        lines.append(f"more: --page-token {response.next_page_token}")
    return lines
