"""The public signing keys over HTTP, for browsers: `GET /signing-keys` on the metrics server.

The document is the GetSigningKeys answer in the protobuf JSON mapping (`publicKey` in base64),
`{"keys": [{"keyId": "...", "algorithm": "ed25519", "publicKey": "...", "active": true}]}`,
served with `Cache-Control: max-age=60` and `Access-Control-Allow-Origin: *` (public keys are
not secret; a page on any origin may fetch them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf import json_format

from herald.v1 import stream_pb2
from services.chain.signing import ALGORITHM, KeyRing

PATH = "/signing-keys"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def signing_keys_response(keys: KeyRing) -> stream_pb2.GetSigningKeysResponse:
    active = keys.active.key_id if keys.active is not None else ""
    return stream_pb2.GetSigningKeysResponse(
        keys=[
            stream_pb2.SigningKey(
                key_id=key.key_id,
                algorithm=ALGORITHM,
                public_key=key.public_bytes,
                active=key.key_id == active,
            )
            for key in keys.keys
        ]
    )


def signing_keys_app(fallback: WsgiApp, keys: KeyRing) -> WsgiApp:
    """`fallback` (the metrics app) with /signing-keys in front of it."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return fallback(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body = json.dumps(
            json_format.MessageToDict(signing_keys_response(keys)), sort_keys=True
        ).encode()
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "max-age=60"),
                ("Access-Control-Allow-Origin", "*"),
            ],
        )
        return [body] if environ.get("REQUEST_METHOD") == "GET" else [b""]

    return app
