"""The hot-path counters (plain-int tallies exported by a collector) count what happened."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.chain.signing import load_dir, write_private_key
from services.server import start_metrics_server
from tests.conftest import Deploy
from tests.harness import to_user
from tests.streams import Stream

pytestmark = pytest.mark.asyncio

_COUNTERS = {
    "accepted": ("herald_notifications_accepted_total", {}),
    "first": ("herald_deliveries_total", {"attempt": "first"}),
    "retry": ("herald_deliveries_total", {"attempt": "retry"}),
    "messages": ("herald_stream_messages_total", {}),
    "acked": ("herald_acks_total", {}),
}


def _read() -> dict[str, float]:
    return {
        key: REGISTRY.get_sample_value(name, labels) or 0.0
        for key, (name, labels) in _COUNTERS.items()
    }


async def test_sends_deliveries_stream_messages_and_acks_are_counted(deploy: Deploy) -> None:
    herald, _ = await deploy("up")
    backend = herald.backend()
    alice = herald.user("alice")
    stream = Stream(alice)
    await stream.start()
    before = _read()
    for i in range(3):
        await backend.send(to_user("alice", f"n{i}"))
    delivered = await stream.deliveries(3)
    assert await alice.ack(up_to={"user": delivered[-1].cursor}) == 3
    after = _read()
    change = {key: after[key] - before[key] for key in after}
    assert (change["accepted"], change["first"], change["retry"], change["acked"]) == (3, 3, 0, 3)
    assert 1 <= change["messages"] <= 3  # deliveries written together share a message
    stream.cancel()


def _get(url: str, token: str = "") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - the test's own loopback URL
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def test_a_metrics_token_guards_metrics_and_leaves_the_signing_keys_public(
    tmp_path: Path,
) -> None:
    write_private_key(tmp_path, "k1")
    token = "scrape-" + "x" * 32
    server = start_metrics_server(0, "127.0.0.1", keys=load_dir(tmp_path), token=token)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        for given in ("", "wrong", token + "x", token[:-1]):
            status, headers, body = await asyncio.to_thread(_get, f"{base}/metrics", given)
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Bearer realm="herald-metrics"'
            assert b"herald_" not in body
            assert token.encode() not in body
        status, _, body = await asyncio.to_thread(_get, f"{base}/metrics", token)
        assert status == 200
        assert b"herald_broker_catchups_total" in body
        # Browsers fetch the public keys without any token.
        status, _, body = await asyncio.to_thread(_get, f"{base}/signing-keys")
        assert status == 200
        assert json.loads(body)["keys"][0]["keyId"] == "k1"
    finally:
        server.shutdown()
        server.server_close()


async def test_without_a_token_metrics_stay_open() -> None:
    server = start_metrics_server(0, "127.0.0.1")
    try:
        status, _, body = await asyncio.to_thread(
            _get, f"http://127.0.0.1:{server.server_port}/metrics"
        )
        assert status == 200
        assert b"herald_broker_catchups_total" in body
    finally:
        server.shutdown()
        server.server_close()
