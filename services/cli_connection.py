"""What the `herald` client commands share: the connection flags and the choice of token.

A command acts with `--token` (HERALD_TOKEN) when one is given, else with a dev token minted
with the local dev key for `--tenant` and the command's own subject. A token names its tenant
and subject itself, so a `--tenant` or `--user` beside it must agree with it: one that does not
is an error, never silently ignored.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import jwt

from services import auth
from services.client import HeraldClient
from services.config import AuthSettings, ServerSettings

DEFAULT_TENANT = "default"


class CliError(ValueError):
    """A usage error: the message says what was wrong and what to do instead."""


def env_flag(name: str) -> bool:
    """A yes/no environment variable: 1, true, yes or on (any case) is yes."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def client_flags(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """--address, --tenant, --token, --tls and --ca-file (each also an environment variable),
    and --json."""
    parser.add_argument(
        "--address",
        default=os.environ.get("HERALD_ADDRESS", "127.0.0.1:50051"),
        help="server host:port (HERALD_ADDRESS)",
    )
    parser.add_argument(
        "--tenant",
        default=os.environ.get("HERALD_TENANT") or None,
        help=f"tenant (HERALD_TENANT; default {DEFAULT_TENANT!r}, or the --token's own)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("HERALD_TOKEN") or None,
        help="a JWT to act with (HERALD_TOKEN); without it a dev token is minted with the local "
        "dev key. It names its tenant and subject: --tenant / --user must agree with it",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=env_flag("HERALD_TLS"),
        help="connect over TLS, verifying the server against --ca-file or the system roots "
        "(HERALD_TLS=true)",
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("HERALD_CA_FILE") or None,
        help="PEM CA bundle to verify the server with; implies --tls (HERALD_CA_FILE)",
    )
    if json_flag:
        parser.add_argument(
            "--json", action="store_true", help="print JSON (one document) instead of text"
        )


def chain_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--accept and --verify (each also an environment variable): the transformer chain a
    command asks `what` of (docs/transformers.md)."""
    parser.add_argument(
        "--accept",
        default=os.environ.get("HERALD_ACCEPT_ENCODINGS", ""),
        help="transformer-chain encodings to ask for, comma-separated: json, zstd, gzip, signed "
        "(HERALD_ACCEPT_ENCODINGS; docs/transformers.md)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        default=env_flag("HERALD_VERIFY"),
        help=f"ask for signed {what} and drop (and report) any that does not verify "
        "(HERALD_VERIFY=true)",
    )


def accepted(args: argparse.Namespace) -> list[str]:
    """The encodings of --accept."""
    return [a.strip() for a in args.accept.split(",") if a.strip()]


@dataclass(frozen=True)
class Credentials:
    token: str
    tenant: str
    subject: str


def credentials(
    args: argparse.Namespace,
    scopes: list[str],
    subject: str | None,
    *,
    subject_flag: str = "--user",
    default_subject: str | None = None,
) -> Credentials:
    """The token to act with, and the tenant and subject it acts as.

    Args:
        args: parsed flags with `tenant`, `token` (and `channels` for a subscriber).
        scopes: the scopes a minted token gets.
        subject: who the command acts as, from `subject_flag` (None when not given).
        default_subject: the subject of a minted token when `subject` is None; None makes
            `subject_flag` required without a token.

    Raises:
        CliError: a flag disagrees with the token, or a needed flag is missing.
    """
    if args.token:
        claims = _claims(str(args.token))
        tenant = str(claims.get(AuthSettings().tenant_claim, ""))
        token_subject = str(claims.get("sub", ""))
        if args.tenant and tenant not in (args.tenant, auth.ANY_TENANT):
            raise CliError(
                f"--tenant {args.tenant} disagrees with --token, which is for tenant {tenant!r}: "
                "drop --tenant (the token decides), or drop --token to act with a dev token"
            )
        if subject and subject != token_subject:
            raise CliError(
                f"{subject_flag} {subject} disagrees with --token, which is for "
                f"{token_subject!r}: drop {subject_flag} (the token decides), or drop --token "
                "to act with a dev token"
            )
        return Credentials(str(args.token), args.tenant or tenant, token_subject)
    subject = subject or default_subject
    if not subject:
        raise CliError(f"{subject_flag} is required (or a --token of the one to act as)")
    tenant = args.tenant or DEFAULT_TENANT
    token = minter().mint(subject, tenant, scopes, channels=getattr(args, "channels", None) or ())
    return Credentials(token, tenant, subject)


def connect(args: argparse.Namespace, token: str) -> HeraldClient:
    """A client for the command's `--address`, over TLS with `--tls` / `--ca-file`."""
    return HeraldClient(args.address, token, tls=args.tls, ca_file=args.ca_file)


def minter() -> auth.TokenMinter:
    """Mints with the local dev key (or the HERALD_AUTH_* keys)."""
    settings = AuthSettings()
    keys = auth.load_keys(settings, ServerSettings().data_dir)
    return auth.TokenMinter(keys, settings)


def _claims(token: str) -> dict[str, object]:
    """The token's claims, read without checking it: the server checks it, this only compares
    them with the flags."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise CliError("--token is not a JWT (header.payload.signature)") from None
    if not isinstance(claims, dict):  # pragma: no cover - pyjwt returns the payload object
        raise CliError("--token is not a JWT (header.payload.signature)")
    return claims
