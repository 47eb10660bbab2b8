"""`herald segments`: the tenant's segments, over RegistryService (docs/segments.md).

- `herald segments create NAME`: an empty segment;
- `herald segments add NAME [USER...] [--file FILE]`: adds users (from the arguments and/or a
  file of one user id a line, '-' for stdin), 10,000 a call;
- `herald segments remove NAME [USER...] [--file FILE]`: removes them, as `add` reads them;
- `herald segments list`: the tenant's segments with member counts;
- `herald segments members NAME [--page-size N] [--page-token T | --all]`: members by user id;
- `herald segments delete NAME`: the segment and its members.

Each acts as `--token`, or as a minted operator token (scope tenant:admin) for `--tenant`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from herald.v1 import registry_pb2
from services import auth, cli_tenant
from services.cli_connection import CliError, client_flags, connect, credentials
from services.client import HeraldClient
from services.registry.segments import MAX_BATCH, MAX_PAGE

OPERATOR: Final = "herald-cli"


def add_command(commands: Any) -> None:
    """Adds `herald segments` to the `herald` parser's subcommands."""
    segments = commands.add_parser(
        "segments", help="the tenant's segments: create, add, remove, list, members, delete"
    )
    actions = segments.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="an empty segment")
    client_flags(create)
    create.add_argument("name", metavar="NAME")
    for name, what in (("add", "add users to a segment"), ("remove", "remove users from it")):
        change = actions.add_parser(name, help=what)
        client_flags(change)
        change.add_argument("name", metavar="NAME")
        change.add_argument("users", nargs="*", metavar="USER")
        change.add_argument(
            "--file", help="user ids, one a line ('-' for stdin); with USER... or instead"
        )
    listed = actions.add_parser("list", help="the tenant's segments, with member counts")
    client_flags(listed)
    members = actions.add_parser("members", help="a segment's members, by user id")
    client_flags(members)
    members.add_argument("name", metavar="NAME")
    members.add_argument("--page-size", type=int, default=0, help=f"at most {MAX_PAGE}")
    members.add_argument("--page-token", default="", help="from the previous page")
    members.add_argument("--all", action="store_true", help="every member, page after page")
    delete = actions.add_parser("delete", help="delete a segment and its members")
    client_flags(delete)
    delete.add_argument("name", metavar="NAME")


async def run(args: argparse.Namespace) -> int:
    users = _users(args) if args.action in ("add", "remove") else []
    who = credentials(
        args, [auth.SCOPE_TENANT_ADMIN], None, subject_flag="--token", default_subject=OPERATOR
    )
    tenant = args.tenant or ("" if who.tenant == auth.ANY_TENANT else who.tenant)
    async with connect(args, who.token) as client:
        if args.action == "create":
            segment = await client.create_segment(args.name, tenant_id=tenant)
            _print(
                args,
                registry_pb2.CreateSegmentResponse(segment=segment),
                lambda r: [f"created segment {r.segment.name}"],
            )
        elif args.action == "add":
            added = registry_pb2.AddSegmentMembersResponse()
            for start in range(0, len(users), MAX_BATCH):
                answer = await client.add_segment_members(
                    args.name, users[start : start + MAX_BATCH], tenant_id=tenant
                )
                added.added += answer.added
                added.member_count = answer.member_count
            _print(
                args,
                added,
                lambda r: [f"added {r.added} member(s); {args.name} has {r.member_count}"],
            )
        elif args.action == "remove":
            removed = 0
            for start in range(0, len(users), MAX_BATCH):
                removed += await client.remove_segment_members(
                    args.name, users[start : start + MAX_BATCH], tenant_id=tenant
                )
            _print(
                args,
                registry_pb2.RemoveSegmentMembersResponse(removed=removed),
                lambda r: [f"removed {r.removed} member(s)"],
            )
        elif args.action == "list":
            found = await client.segments(tenant_id=tenant)
            _print(args, registry_pb2.ListSegmentsResponse(segments=found), _list_text)
        elif args.action == "members":
            page = await _members(args, client, tenant)
            _print(args, page, _members_text)
        else:
            await client.delete_segment(args.name, tenant_id=tenant)
            _print(
                args,
                registry_pb2.DeleteSegmentResponse(),
                lambda _: [f"deleted segment {args.name}"],
            )
    return 0


def _users(args: argparse.Namespace) -> list[str]:
    """The user ids of `add` / `remove`: the arguments, then the file's lines (blank ones
    skipped), each once."""
    users = list(args.users)
    if args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except OSError as exc:
            raise CliError(f"--file {args.file}: {exc.strerror or exc}") from None
        users.extend(line.strip() for line in text.splitlines() if line.strip())
    if not users:
        raise CliError(f"segments {args.action}: give USER... or --file (one user id a line)")
    return list(dict.fromkeys(users))


async def _members(
    args: argparse.Namespace, client: HeraldClient, tenant: str
) -> registry_pb2.ListSegmentMembersResponse:
    if args.all and args.page_token:
        raise CliError("segments members: give --all or --page-token, not both")
    page = await client.segment_members(
        args.name, tenant_id=tenant, page_size=args.page_size, page_token=args.page_token
    )
    if not args.all:
        return page
    every = registry_pb2.ListSegmentMembersResponse(user_ids=page.user_ids)
    while page.next_page_token:
        page = await client.segment_members(
            args.name,
            tenant_id=tenant,
            page_size=args.page_size,
            page_token=page.next_page_token,
        )
        every.user_ids.extend(page.user_ids)
    return every


def _print(args: argparse.Namespace, message: Any, text: Any) -> None:
    # The text or JSON output every operator command shares.
    cli_tenant._print(args, message, text)


def _list_text(response: registry_pb2.ListSegmentsResponse) -> list[str]:
    if not response.segments:
        return ["no segments"]
    rows = [("SEGMENT", "MEMBERS", "CREATED")]
    rows.extend(
        (s.name, str(s.member_count), s.created_at.ToJsonString()) for s in response.segments
    )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _members_text(response: registry_pb2.ListSegmentMembersResponse) -> list[str]:
    lines = list(response.user_ids) or ["no members"]
    if response.next_page_token:
        lines.append(f"more: --page-token {response.next_page_token}")
    return lines
