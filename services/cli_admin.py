"""The operator's `herald` commands, over the public gRPC APIs:

- `herald sessions list [--user U]`, `herald sessions kick (--session ID | --user U)`:
  RegistryService ListSessions / Disconnect;
- `herald presence USER...`: RegistryService GetPresence;
- `herald status ID`: IngestService GetStatus;
- `herald scheduled list|cancel`: IngestService ListScheduled / CancelScheduled;
- `herald templates put|get|list|delete`: RegistryService templates;
- `herald inbox --user U [--filter F] [--accept E] [--verify] [--mark-read ID | --seen ID |
  --unread ID | --archive ID | --unarchive ID | --mark-all-read | --counts]`: StreamService
  ListInbox (through the transformer chain, as `herald tail`), MarkRead, UpdateInboxState,
  MarkAllRead, GetInboxCounts, as that user;
- `herald tenant get|set|put|reset|list`: RegistryService tenant settings (services/cli_tenant.py);
- `herald webhooks list|replay|delete`: parked webhook batches (services/webhooks/cli.py);
- `herald segments create|add|remove|list|members|delete`: segments (services/cli_segments.py).

Each prints text for people, or with `--json` one JSON document (the response message in the
protobuf JSON mapping, every field present, 64-bit integers as numbers, app data as sent).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from herald.v1 import ingest_pb2, registry_pb2, stream_pb2
from services import auth, cli_segments, cli_tenant
from services.app_data import restore_notification_json
from services.cli_connection import (
    CliError,
    Credentials,
    accepted,
    chain_flags,
    client_flags,
    connect,
    credentials,
)
from services.client import HeraldClient
from services.webhooks import cli as webhooks_cli

COMMANDS = frozenset(
    {
        "sessions",
        "presence",
        "status",
        "scheduled",
        "templates",
        "inbox",
        "tenant",
        "webhooks",
        "segments",
    }
)
OPERATOR = "herald-cli"  # the subject of a minted operator token


def add_commands(commands: Any) -> None:
    """Adds the operator commands to the `herald` parser's subcommands."""
    sessions = commands.add_parser("sessions", help="open sessions: list them, or kick them")
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="open sessions of the tenant, or of one user")
    client_flags(listing)
    listing.add_argument("--user", help="only this user's sessions")
    kick = actions.add_parser(
        "kick", help="close sessions (their clients get Closing REASON_DISCONNECTED)"
    )
    client_flags(kick)
    whom = kick.add_mutually_exclusive_group(required=True)
    whom.add_argument("--session", help="one session, by id (see `herald sessions list`)")
    whom.add_argument("--user", help="every session of this user")
    kick.add_argument("--reason", default="", help="told to the client")

    presence = commands.add_parser("presence", help="ONLINE / RECONNECTING / OFFLINE of users")
    client_flags(presence)
    presence.add_argument("users", nargs="+", metavar="USER")

    status = commands.add_parser("status", help="where a notification stands, per recipient")
    client_flags(status)
    status.add_argument("notification_id", metavar="ID")

    scheduled = commands.add_parser("scheduled", help="sends held until their deliver_at")
    actions = scheduled.add_subparsers(dest="action", required=True)
    held = actions.add_parser("list", help="the tenant's held sends, soonest first")
    client_flags(held)
    held.add_argument("--page-size", type=int, default=50, help="at most 100")
    held.add_argument("--page-token", default="", help="from the previous page")
    cancel = actions.add_parser("cancel", help="cancel a held send (it is never delivered)")
    client_flags(cancel)
    cancel.add_argument("notification_id", metavar="ID")

    templates = commands.add_parser("templates", help="the tenant's templates")
    actions = templates.add_subparsers(dest="action", required=True)
    put = actions.add_parser(
        "put", help="store a new version of a template (from --file, or from the text flags)"
    )
    client_flags(put)
    put.add_argument("template_id", metavar="ID")
    put.add_argument(
        "--file",
        help="a Template as JSON ('-' for stdin), e.g. "
        '{"defaultLocale": "en", "locales": {"en": {"title": "Hi {{name}}", "body": "..."}}}',
    )
    put.add_argument("--locale", default="en", help="with the text flags: its locale")
    put.add_argument("--title", help="the text flags: one locale's title ({{name}} placeholders)")
    put.add_argument("--body")
    put.add_argument("--image", help="image URL")
    get = actions.add_parser("get", help="one version of a template (the newest by default)")
    client_flags(get)
    get.add_argument("template_id", metavar="ID")
    get.add_argument("--version", type=int, default=0)
    listed = actions.add_parser("list", help="the newest version of every template")
    client_flags(listed)
    delete = actions.add_parser("delete", help="delete every version of a template")
    client_flags(delete)
    delete.add_argument("template_id", metavar="ID")

    inbox = commands.add_parser("inbox", help="a user's inbox, newest first (as that user)")
    client_flags(inbox)
    inbox.add_argument("--user", help="whose inbox (required unless --token names them)")
    inbox.add_argument("--page-size", type=int, default=20, help="at most 100")
    inbox.add_argument("--page-token", default="", help="from the previous page")
    inbox.add_argument(
        "--mark-read", action="append", default=[], metavar="ID", help="mark read (repeatable)"
    )
    for flag, what in _INBOX_ACTIONS.items():
        inbox.add_argument(
            f"--{flag}", action="append", default=[], metavar="ID", help=f"{what} (repeatable)"
        )
    inbox.add_argument("--mark-all-read", action="store_true", help="mark every one read")
    inbox.add_argument("--counts", action="store_true", help="unseen, unread and total counts")
    inbox.add_argument(
        "--filter",
        choices=sorted(_INBOX_FILTERS),
        default="not-archived",
        help="which items to list (default: those not archived)",
    )
    chain_flags(inbox, "items")
    cli_tenant.add_command(commands)
    webhooks_cli.add_command(commands)
    cli_segments.add_command(commands)


async def run(args: argparse.Namespace) -> int:
    if args.command == "inbox":
        return await _inbox(args)
    if args.command == "tenant":
        return await cli_tenant.run(args)
    if args.command == "webhooks":
        return await webhooks_cli.run(args)
    if args.command == "segments":
        return await cli_segments.run(args)
    who = credentials(args, _scopes(args), None, subject_flag="--token", default_subject=OPERATOR)
    tenant = "" if who.tenant == auth.ANY_TENANT and not args.tenant else who.tenant
    async with connect(args, who.token) as client:
        if args.command == "sessions" and args.action == "list":
            sessions = await client.sessions(args.user or "", tenant_id=tenant)
            _print(args, registry_pb2.ListSessionsResponse(sessions=sessions), _sessions_text)
        elif args.command == "sessions":
            closed = await client.disconnect(
                session_id=args.session or "",
                user_id=args.user or "",
                reason=args.reason,
                tenant_id=tenant,
            )
            _print(
                args,
                registry_pb2.DisconnectResponse(disconnected=closed),
                lambda r: [f"disconnected {r.disconnected} session(s)"],
            )
        elif args.command == "presence":
            users = await client.presence(args.users, tenant_id=tenant)
            _print(args, registry_pb2.GetPresenceResponse(users=users), _presence_text)
        elif args.command == "status":
            _print(args, await client.status(args.notification_id), _status_text)
        elif args.command == "scheduled" and args.action == "list":
            page = await client.list_scheduled(args.page_size, args.page_token)
            _print(args, page, _scheduled_text)
        elif args.command == "scheduled":
            cancelled = await client.cancel_scheduled(args.notification_id)
            _print(
                args,
                ingest_pb2.CancelScheduledResponse(cancelled=cancelled),
                lambda r: ["cancelled" if r.cancelled else "cancelled already"],
            )
        else:
            await _templates(args, client, tenant)
    return 0


def _scopes(args: argparse.Namespace) -> list[str]:
    """What a minted operator token needs for the command, and no more."""
    if args.command == "sessions":
        return [auth.SCOPE_SESSIONS_ADMIN if args.action == "kick" else auth.SCOPE_PRESENCE_READ]
    if args.command == "presence":
        return [auth.SCOPE_PRESENCE_READ]
    if args.command == "templates" and args.action in ("put", "delete"):
        return [auth.SCOPE_TEMPLATES_WRITE]
    return [auth.SCOPE_SEND]  # status, templates get / list


async def _templates(args: argparse.Namespace, client: HeraldClient, tenant: str) -> None:
    if args.action == "put":
        stored = await client.put_template(_template(args), tenant_id=tenant)
        _print(args, stored, lambda t: [f"stored template {t.template_id} version {t.version}"])
    elif args.action == "get":
        found = await client.get_template(args.template_id, args.version, tenant_id=tenant)
        _print(args, found, _template_text)
    elif args.action == "list":
        templates = await client.templates(tenant_id=tenant)
        _print(args, registry_pb2.ListTemplatesResponse(templates=templates), _templates_text)
    else:
        deleted = await client.delete_template(args.template_id, tenant_id=tenant)
        _print(
            args,
            registry_pb2.DeleteTemplateResponse(deleted_versions=deleted),
            lambda r: [f"deleted {r.deleted_versions} version(s) of {args.template_id}"],
        )


def _template(args: argparse.Namespace) -> registry_pb2.Template:
    """The template to put: from --file, or one locale from the text flags."""
    texts = (args.title, args.body, args.image)
    if args.file:
        if any(t is not None for t in texts):
            raise CliError("give the template as --file or as --title/--body/--image, not both")
        source = sys.stdin.read() if args.file == "-" else _read(args.file)
        template = registry_pb2.Template()
        try:
            json_format.Parse(source, template)
        except json_format.ParseError as exc:
            raise CliError(f"--file is not a Template in JSON: {exc}") from None
        if template.template_id and template.template_id != args.template_id:
            raise CliError(
                f"--file names template {template.template_id!r}, the command {args.template_id!r}"
            )
        template.template_id = args.template_id
        return template
    if all(t is None for t in texts):
        raise CliError("give the template's text: --title and/or --body (or --file)")
    template = registry_pb2.Template(template_id=args.template_id, default_locale=args.locale)
    text = template.locales[args.locale]
    text.title, text.body, text.image_url = args.title or "", args.body or "", args.image or ""
    return template


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--file {path}: {exc.strerror}") from None


_INBOX_ACTIONS = {
    "seen": "mark seen",
    "unread": "mark unread",
    "archive": "archive",
    "unarchive": "unarchive",
}
_INBOX_ACTION_VALUES = {
    "seen": stream_pb2.INBOX_ACTION_SEEN,
    "unread": stream_pb2.INBOX_ACTION_UNREAD,
    "archive": stream_pb2.INBOX_ACTION_ARCHIVE,
    "unarchive": stream_pb2.INBOX_ACTION_UNARCHIVE,
}
_INBOX_FILTERS = {
    "not-archived": stream_pb2.INBOX_FILTER_UNSPECIFIED,
    "all": stream_pb2.INBOX_FILTER_ALL,
    "archived": stream_pb2.INBOX_FILTER_ARCHIVED,
    "unread": stream_pb2.INBOX_FILTER_UNREAD,
}


def _counts_text(counts: stream_pb2.InboxCounts) -> list[str]:
    return [f"unseen {counts.unseen}  unread {counts.unread}  total {counts.total}"]


async def _inbox(args: argparse.Namespace) -> int:
    who: Credentials = credentials(args, [auth.SCOPE_SUBSCRIBE], args.user)
    async with connect(args, who.token) as client:
        for flag in _INBOX_ACTIONS:
            ids = getattr(args, flag)
            if ids:
                changed = await client.update_inbox_state(ids, _INBOX_ACTION_VALUES[flag])
                _print(
                    args,
                    changed,
                    lambda r: [f"changed {r.changed}", *_counts_text(r.counts)],
                )
                return 0
        if args.mark_all_read:
            all_read = await client.mark_all_read()
            _print(
                args,
                all_read,
                lambda r: [f"marked {r.marked} notification(s) read", *_counts_text(r.counts)],
            )
            return 0
        if args.counts:
            _print(args, await client.inbox_counts(), _counts_text)
            return 0
        if args.mark_read:
            marked = await client.mark_read(args.mark_read)
            _print(
                args,
                stream_pb2.MarkReadResponse(marked=marked),
                lambda r: [f"marked {r.marked} notification(s) read"],
            )
            return 0
        # Each rejected item gets a line of its own below (on_reject), not the client's log.
        logging.getLogger("services.client_chain").setLevel(logging.ERROR)
        chain = client.inbox_chain(
            accept_encodings=accepted(args),
            verify=args.verify,
            on_reject=lambda rejected, item: print(
                f"rejected an inbox item ({rejected.reason}) at cursor {item.cursor}",
                file=sys.stderr,
            ),
        )
        page = await client.list_inbox(
            page_size=args.page_size,
            page_token=args.page_token,
            filter=_INBOX_FILTERS[args.filter],
            chain=chain,
        )
    _print(args, page, _inbox_text)
    if page.next_page_token and not args.json:
        print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
    return 0


# -- output ------------------------------------------------------------------------------------


def _print(args: argparse.Namespace, message: Message, text: Any) -> None:
    if args.json:
        print(json.dumps(to_json(message)))
    else:
        for line in text(message):
            print(line)


def to_json(message: Message) -> dict[str, Any]:
    """The message in the protobuf JSON mapping, every field present, 64-bit integers as
    numbers, and app data's whole numbers as integers (services/app_data.py)."""
    value = json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, unquote_int64_if_possible=True
    )
    for item in value.get("items", ()):  # inbox items
        restore_notification_json(item.get("notification", {}))
    return value


def _when(ts: timestamp_pb2.Timestamp) -> str:
    return ts.ToJsonString() if ts.seconds or ts.nanos else "-"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _sessions_text(response: registry_pb2.ListSessionsResponse) -> list[str]:
    if not response.sessions:
        return ["no open sessions"]
    return _table(
        ("SESSION", "USER", "DEVICE", "NODE", "CONNECTED", "CHANNELS"),
        (
            (
                s.session_id,
                s.user_id,
                s.device or "-",
                s.node_id,
                _when(s.connected_at),
                ",".join(s.channels) or "-",
            )
            for s in response.sessions
        ),
    )


def _presence_text(response: registry_pb2.GetPresenceResponse) -> list[str]:
    return _table(
        ("USER", "STATE", "SESSIONS", "SINCE"),
        (
            (
                u.user_id,
                registry_pb2.PresenceState.Name(u.state).removeprefix("PRESENCE_STATE_"),
                str(u.session_count),
                _when(u.since),
            )
            for u in response.users
        ),
    )


def _status_text(response: ingest_pb2.GetStatusResponse) -> list[str]:
    target = json.dumps(json_format.MessageToDict(response.target))
    lines = [
        f"notification {response.notification_id}",
        f"target   {target}",
        f"created  {_when(response.created_at)}",
        f"expires  {_when(response.expires_at)}",
    ]
    if response.schedule_state:
        state = ingest_pb2.ScheduleState.Name(response.schedule_state)
        lines.append(
            f"deliver  {_when(response.deliver_at)}  {state.removeprefix('SCHEDULE_STATE_')}"
        )
    if not response.recipients:
        return [*lines, "no recipient status (a channel or broadcast target, before delivery)"]
    return [
        *lines,
        *_table(
            ("RECIPIENT", "STATE", "ATTEMPTS", "UPDATED", "REASON"),
            (
                (
                    r.user_id,
                    ingest_pb2.DeliveryState.Name(r.state).removeprefix("DELIVERY_STATE_"),
                    str(r.attempts),
                    _when(r.updated_at),
                    r.reason or "-",
                )
                for r in response.recipients
            ),
        ),
    ]


def _scheduled_text(response: ingest_pb2.ListScheduledResponse) -> list[str]:
    lines = _table(
        ("ID", "DELIVER AT", "TARGET", "TITLE"),
        (
            (
                n.id,
                _when(n.deliver_at),
                json.dumps(json_format.MessageToDict(n.target)),
                n.content.title or "-",
            )
            for n in response.notifications
        ),
    )
    if response.next_page_token:
        lines.append(f"next page: --page-token {response.next_page_token}")
    return lines


def _template_text(template: registry_pb2.Template) -> list[str]:
    lines = [
        f"template {template.template_id} version {template.version} "
        f"(default locale {template.default_locale or '-'}, created {_when(template.created_at)})"
    ]
    for locale, text in sorted(template.locales.items()):
        lines.append(f"[{locale}] title: {text.title}")
        lines.append(f"[{locale}] body: {text.body}")
        if text.image_url:
            lines.append(f"[{locale}] image: {text.image_url}")
        lines.extend(f"[{locale}] action {a.id}: {a.label} {a.url}".rstrip() for a in text.actions)
    return lines


def _templates_text(response: registry_pb2.ListTemplatesResponse) -> list[str]:
    if not response.templates:
        return ["no templates"]
    return _table(
        ("TEMPLATE", "VERSION", "LOCALES", "CREATED"),
        (
            (t.template_id, str(t.version), ",".join(sorted(t.locales)), _when(t.created_at))
            for t in response.templates
        ),
    )


def _inbox_text(response: stream_pb2.ListInboxResponse) -> list[str]:
    if not response.items:
        return ["the inbox is empty"]
    return _table(
        ("CURSOR", "STATE", "READ", "NOTIFICATION", "TITLE"),
        (
            (
                str(item.cursor),
                ingest_pb2.DeliveryState.Name(item.state).removeprefix("DELIVERY_STATE_"),
                _when(item.read_at) if item.HasField("read_at") else "unread",
                item.notification.id,
                item.notification.content.title,
            )
            for item in response.items
        ),
    )
