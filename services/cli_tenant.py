"""`herald tenant`: a tenant's settings, over RegistryService (docs/tenants.md).

- `herald tenant get [TENANT]`: the stored settings and the rate limits in force;
- `herald tenant set [TENANT] --tenant-send-rate 100 --signing-required true ...`: changes the
  fields named by flags and keeps the others (a read, then a put at the version read: a change
  made in between is never overwritten; the command reads again and reapplies its flags);
- `herald tenant put [TENANT] --file settings.json [--if-version N]`: replaces them whole;
- `herald tenant reset [TENANT] [--if-version N]`: back to the node defaults;
- `herald tenant list`: every tenant's stored settings (a node token).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc import aio

from herald.v1 import registry_pb2
from services import auth
from services.cli_connection import CliError, client_flags, connect, credentials, minter
from services.domain import RATE_LIMIT_FIELDS

OPERATOR: Final = "herald-cli"
# TenantSettings fields `--unset` takes beside the rate limits (the last is a message).
_TOP_FIELDS: Final = ("default_ttl_seconds", "max_users_per_send", "stream_policy")
# Reads and reapplications `set` tries when another change comes between its read and its put.
_SET_ATTEMPTS: Final = 3
_BUCKETS: Final = (
    ("tenant_send", "send, per tenant"),
    ("key_send", "send, per service key"),
    ("tenant_subscribe", "subscribe, per tenant"),
    ("user_subscribe", "subscribe, per user"),
)


def add_command(commands: Any) -> None:
    """Adds `herald tenant` to the `herald` parser's subcommands."""
    tenant = commands.add_parser("tenant", help="the tenant's settings: rate limits, stream policy")
    actions = tenant.add_subparsers(dest="action", required=True)
    get = actions.add_parser("get", help="the stored settings and the rate limits in force")
    _common(get)
    change = actions.add_parser(
        "set", help="change the fields named by flags, keep the others (rates per second)"
    )
    _common(change)
    for name in RATE_LIMIT_FIELDS:
        change.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=float if name.endswith("_rate") else int,
            metavar="N",
        )
    change.add_argument(
        "--default-ttl-seconds", type=int, metavar="N", help="TTL of a send that sets none"
    )
    change.add_argument(
        "--max-users-per-send", type=int, metavar="N", help="users one notification may name"
    )
    change.add_argument(
        "--compression", metavar="LIST", help="encodings, e.g. zstd,gzip ('' for none)"
    )
    change.add_argument("--compression-min-bytes", type=int, metavar="N")
    change.add_argument("--signing-required", choices=("true", "false"))
    change.add_argument(
        "--allowed-formats", metavar="LIST", help="e.g. protobuf,json ('' for every format)"
    )
    change.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="FIELD",
        help="back to the node default: a rate limit (e.g. tenant_send_rate), "
        "default_ttl_seconds, max_users_per_send or stream_policy",
    )
    put = actions.add_parser("put", help="replace the settings whole, from a JSON file")
    _common(put)
    put.add_argument(
        "--file",
        required=True,
        help="TenantSettings as JSON ('-' for stdin), e.g. "
        '{"rateLimits": {"tenantSendRate": 100}, "streamPolicy": {"signingRequired": true}}',
    )
    put.add_argument("--if-version", type=int, metavar="N", help="only if still at version N")
    reset = actions.add_parser("reset", help="back to the node defaults")
    _common(reset)
    reset.add_argument("--if-version", type=int, metavar="N", help="only if still at version N")
    listed = actions.add_parser("list", help="every tenant's stored settings (a node token)")
    client_flags(listed)
    listed.add_argument("--page-size", type=int, default=0, help="at most 1000 (default 100)")
    listed.add_argument("--page-token", default="", help="from the previous page")


def _common(parser: argparse.ArgumentParser) -> None:
    client_flags(parser)
    parser.add_argument("tenant_name", nargs="?", metavar="TENANT", help="default: --tenant")


async def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return await _list(args)
    named = args.tenant_name
    if named and args.tenant and named != args.tenant:
        raise CliError(f"TENANT {named} disagrees with --tenant {args.tenant}: give one of them")
    args.tenant = named or args.tenant
    scope = auth.SCOPE_TENANT_READ if args.action == "get" else auth.SCOPE_TENANT_ADMIN
    who = credentials(args, [scope], None, subject_flag="--token", default_subject=OPERATOR)
    tenant = args.tenant or ("" if who.tenant == auth.ANY_TENANT else who.tenant)
    async with connect(args, who.token) as client:
        if args.action == "get":
            got = await client.tenant_settings(tenant_id=tenant)
            _print(args, got, _settings_text)
        elif args.action == "set":
            for attempt in range(1, _SET_ATTEMPTS + 1):
                current = (await client.tenant_settings(tenant_id=tenant)).settings
                changed = _apply(args, current)
                try:
                    stored = await client.put_tenant_settings(
                        changed, expected_version=current.version, tenant_id=tenant
                    )
                except aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.ABORTED or attempt == _SET_ATTEMPTS:
                        raise
                    continue
                break
            _print(args, stored, _stored_text)
        elif args.action == "put":
            settings = _from_file(args.file)
            if settings.tenant_id and tenant and settings.tenant_id != tenant:
                raise CliError(f"--file is for tenant {settings.tenant_id!r}, not {tenant!r}")
            settings.tenant_id = ""
            stored = await client.put_tenant_settings(
                settings, expected_version=args.if_version, tenant_id=tenant
            )
            _print(args, stored, _stored_text)
        else:
            stored = await client.reset_tenant_settings(
                expected_version=args.if_version, tenant_id=tenant
            )
            _print(args, stored, _stored_text)
    return 0


async def _list(args: argparse.Namespace) -> int:
    token = args.token or minter().node_token(OPERATOR, ttl_s=300)
    async with connect(args, token) as client:
        page = await client.list_tenant_settings(
            page_size=args.page_size, page_token=args.page_token
        )
    _print(args, page, _list_text)
    if page.next_page_token and not args.json:
        print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
    return 0


def _apply(
    args: argparse.Namespace, current: registry_pb2.TenantSettings
) -> registry_pb2.TenantSettings:
    """`current` with the flags' changes (version and update fields cleared)."""
    settings = registry_pb2.TenantSettings()
    settings.CopyFrom(current)
    settings.ClearField("version")
    settings.ClearField("updated_at")
    settings.ClearField("updated_by")
    settings.ClearField("tenant_id")
    for name in args.unset:
        if name in RATE_LIMIT_FIELDS:
            settings.rate_limits.ClearField(name)
        elif name in _TOP_FIELDS:
            settings.ClearField(name)
        else:
            raise CliError(
                f"--unset {name}: not a field; use one of {', '.join(RATE_LIMIT_FIELDS)}, "
                f"{', '.join(_TOP_FIELDS)}"
            )
    for name in _TOP_FIELDS[:-1]:
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    for name in RATE_LIMIT_FIELDS:
        value = getattr(args, name)
        if value is not None:
            setattr(settings.rate_limits, name, value)
    policy = settings.stream_policy
    if args.compression is not None:
        del policy.compression[:]
        policy.compression.extend(_names(args.compression))
    if args.compression_min_bytes is not None:
        policy.compression_min_bytes = args.compression_min_bytes
    if args.signing_required is not None:
        policy.signing_required = args.signing_required == "true"
    if args.allowed_formats is not None:
        del policy.allowed_formats[:]
        policy.allowed_formats.extend(_names(args.allowed_formats))
    if (
        not current.HasField("stream_policy")
        and policy == registry_pb2.StreamPolicy()
        and all(
            getattr(args, f) is None
            for f in ("compression", "compression_min_bytes", "signing_required", "allowed_formats")
        )
    ):
        settings.ClearField("stream_policy")  # reading `policy` above must not set it
    return settings


def _names(listed: str) -> list[str]:
    return [name.strip() for name in listed.split(",") if name.strip()]


def _from_file(path: str) -> registry_pb2.TenantSettings:
    if path == "-":
        source = sys.stdin.read()
    else:
        try:
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
        except OSError as exc:
            raise CliError(f"--file {path}: {exc.strerror}") from None
    settings = registry_pb2.TenantSettings()
    try:
        json_format.Parse(source, settings)
    except json_format.ParseError as exc:
        raise CliError(f"--file is not TenantSettings in JSON: {exc}") from None
    return settings


# -- output ------------------------------------------------------------------------------------


def _print(args: argparse.Namespace, message: Message, text: Any) -> None:
    if args.json:
        # The JSON mapping of every operator command (cli_admin.to_json), without app data.
        print(
            json.dumps(
                json_format.MessageToDict(
                    message,
                    always_print_fields_with_no_presence=True,
                    unquote_int64_if_possible=True,
                )
            )
        )
    else:
        for line in text(message):
            print(line)


def _version_line(settings: registry_pb2.TenantSettings) -> str:
    if not settings.version:
        return f"tenant {settings.tenant_id}: no settings stored (the node defaults)"
    when = settings.updated_at.ToJsonString()
    return (
        f"tenant {settings.tenant_id}: settings version {settings.version} "
        f"(stored {when} by {settings.updated_by or '-'})"
    )


def _policy_lines(settings: registry_pb2.TenantSettings) -> list[str]:
    if not settings.HasField("stream_policy"):
        return ["stream policy: the node defaults"]
    p = settings.stream_policy
    compression = ",".join(p.compression) or "none"
    if p.compression and p.compression_min_bytes:
        compression += f" (from {p.compression_min_bytes} bytes)"
    return [
        f"stream policy: compression {compression}; "
        f"signing {'required' if p.signing_required else 'optional'}; "
        f"formats {','.join(p.allowed_formats) or 'any'}"
    ]


def _settings_text(response: registry_pb2.GetTenantSettingsResponse) -> list[str]:
    stored, effective = response.settings.rate_limits, response.effective_rate_limits
    rows = [("RATE LIMIT", "RATE/S", "BURST", "FROM")]
    for prefix, label in _BUCKETS:
        rate, burst = f"{prefix}_rate", f"{prefix}_burst"
        own = stored.HasField(rate) or stored.HasField(burst)
        value = getattr(effective, rate)
        rows.append(
            (
                label,
                "off" if value == 0 else f"{value:g}",
                str(getattr(effective, burst)),
                "tenant settings" if own else "node",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return [
        _version_line(response.settings),
        *table,
        *_send_lines(response.settings),
        *_policy_lines(response.settings),
    ]


def _send_lines(settings: registry_pb2.TenantSettings) -> list[str]:
    return [
        f"{name}: {getattr(settings, name)}"
        if settings.HasField(name)
        else f"{name}: the ingest node's"
        for name in _TOP_FIELDS[:-1]
    ]


def _stored_text(settings: registry_pb2.TenantSettings) -> list[str]:
    limits = json_format.MessageToDict(settings.rate_limits, preserving_proto_field_name=True)
    shown = " ".join(f"{k}={v:g}" for k, v in limits.items()) or "the node defaults"
    return [
        f"stored tenant {settings.tenant_id} settings version {settings.version}",
        f"rate limits: {shown}",
        *_send_lines(settings),
        *_policy_lines(settings),
    ]


def _list_text(response: registry_pb2.ListTenantSettingsResponse) -> list[str]:
    if not response.settings:
        return ["no tenant has settings stored"]
    return [
        f"{s.tenant_id}  version {s.version}  {s.updated_at.ToJsonString()}  {s.updated_by}"
        for s in response.settings
    ]
