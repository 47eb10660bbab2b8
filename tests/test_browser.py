"""The demo inbox page (web/) in real Chromium, through the real Envoy, in front of real Herald.

Playwright drives Debian's `chromium` (Playwright's own browser download does not work here);
`make test` installs it (scripts/install-browser.sh) and web/node_modules (`npm ci`). Missing,
either skips with the reason; under CI=true it fails.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.async_api import Browser, Locator, Page, WebSocket, async_playwright, expect

from herald.v1 import ingest_pb2
from services.chain.signing import write_private_key
from services.config import ChainSettings, DeliverySettings
from tests.chain_support import forge_seals
from tests.harness import Herald, make_config, start_herald, to_user
from tests.test_envoy import Envoy, running_envoy

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

WEB = Path(__file__).resolve().parents[1] / "web"
CHROMIUM = os.environ.get("HERALD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Every wait on the page is bounded: no step may hang until the test timeout.
WAIT_MS = 10_000
# Short, so a redelivery (of what a page had but did not ack) comes within the test.
ACK_TIMEOUT_S = 1.0
# The id of the stack's signing key (a real Ed25519 key ring, docs/transformers.md).
KEY_ID = "browser-k1"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the browser tests")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which(CHROMIUM)
    if found is None:
        _missing(f"{CHROMIUM} is not installed (apt-get install chromium; `make install` does it)")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def built_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo page as `npm run build` makes it, into a directory of this test run."""
    vite = WEB / "node_modules" / ".bin" / "vite"
    if not vite.exists():
        _missing("web/node_modules is missing (cd web && npm ci; `make install` does it)")
    out = tmp_path_factory.mktemp("web-dist")
    result = subprocess.run(  # noqa: S603 - a fixed command of this repository
        [str(vite), "build", "--outDir", str(out), "--emptyOutDir", "--logLevel", "warn"],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "index.html").is_file()
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def page_origin(built_page: Path) -> Iterator[str]:
    """The built page served over HTTP on loopback: an origin of its own, as an app's would be
    (Envoy's CORS lets it call)."""
    handler = functools.partial(_QuietHandler, directory=str(built_page))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Stack:
    herald: Herald
    envoy: Envoy
    browser: Browser
    origin: str

    def url(
        self,
        user: str = "alice",
        *,
        ack_interval_ms: int | None = None,
        mode: Mode | None = None,
        keys_url: str | None = None,
    ) -> str:
        """The page's URL with the user's token in the fragment (never sent to a server)."""
        fragment = f"token={self.herald.tokens.user('acme', user)}"
        fragment += f"&server=http://127.0.0.1:{self.envoy.port}"
        if ack_interval_ms is not None:
            fragment += f"&ackIntervalMs={ack_interval_ms}"
        if mode is not None and mode.websocket:
            fragment += "&transport=websocket"
        if mode is not None and mode.json_frames:
            fragment += "&frames=json"
        if mode is not None and mode.verify:
            fragment += "&verify=1"
        if keys_url is not None:
            fragment += f"&keys={keys_url}"
        return f"{self.origin}/#{fragment}"


@dataclass(frozen=True)
class Mode:
    """How the page subscribes: gRPC-Web or WebSocket (Envoy's /ws; binary or JSON frames),
    plain or asking for gzip + signed deliveries and verifying each (Ed25519 in the page, keys
    from GetSigningKeys), on its stream and on ListInbox alike."""

    websocket: bool
    verify: bool
    json_frames: bool = False

    @property
    def transport(self) -> str:
        return ("websocket" if self.websocket else "grpc-web") + (
            ", json" if self.json_frames else ""
        )


GRPC_WEB = Mode(websocket=False, verify=False)
WEBSOCKET = Mode(websocket=True, verify=False)
WEBSOCKET_SIGNED = Mode(websocket=True, verify=True)
WEBSOCKET_JSON = Mode(websocket=True, verify=False, json_frames=True)


@pytest_asyncio.fixture
async def stack(chromium: str, page_origin: str, tmp_path: Path) -> AsyncIterator[Stack]:
    keys = tmp_path / "keys"
    write_private_key(keys, KEY_ID)
    config = make_config(
        tmp_path,
        delivery=DeliverySettings(ack_timeout_s=ACK_TIMEOUT_S),
        # Every payload compressed, so a page asking for gzip gets gzip (the default threshold
        # would leave these short notifications identity).
        chain=ChainSettings(signing_keys_dir=keys, compression_min_bytes=0),
    )
    herald = await start_herald("up", config)
    try:
        async with (
            running_envoy(herald, tmp_path) as envoy,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_FLAGS
            )
            try:
                yield Stack(herald, envoy, browser, page_origin)
            finally:
                await browser.close()
    finally:
        await herald.stop()


async def expect_live(page: Page) -> None:
    """The connection indicator says the subscription is open (SessionStarted received)."""
    indicator = page.locator("#connection")
    await expect(indicator).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    await expect(indicator).to_have_text("live")
    await expect(page.locator("#sign-in")).to_be_hidden()


async def open_inbox(
    stack: Stack,
    page: Page,
    *,
    ack_interval_ms: int | None = None,
    mode: Mode = GRPC_WEB,
    keys_url: str | None = None,
) -> None:
    await page.goto(stack.url(ack_interval_ms=ack_interval_ms, mode=mode, keys_url=keys_url))
    await expect_live(page)
    # The first inbox page and the unread badge are loaded: what is sent from now on arrives
    # live, not in that first ListInbox.
    await expect(page.locator("body")).to_have_attribute("data-inbox", "loaded", timeout=WAIT_MS)
    # The token left the address bar at once.
    assert "token" not in page.url
    assert await page.evaluate("() => window.heraldDemo.subscription.state.value.kind") == "open"
    transport = await page.locator("#transport").text_content()
    assert transport == mode.transport + (", verified" if mode.verify else "")


async def expect_opened_sealed(page: Page, mode: Mode, count: int) -> None:
    """A verifying page opened `count` deliveries that were sealed, signed and gzipped by the
    server; a plain one got none sealed."""
    opened = await page.evaluate("() => window.heraldDemo.decoder?.opened ?? {}")
    assert opened == ({"protobuf/gzip": count} if mode.verify else {}), opened
    stats = await page.evaluate("() => window.heraldDemo.subscription.stats")
    assert stats["rejected"] == 0, stats


ACKED = ingest_pb2.DELIVERY_STATE_ACKED
DELIVERED = ingest_pb2.DELIVERY_STATE_DELIVERED


async def states_of(herald: Herald, notification_id: str, until: int) -> list[int]:
    """The recipients' states of a notification, polled (bounded) until all are `until`."""
    backend = herald.backend()
    states: list[int] = []
    for _ in range(100):
        status = await backend.status(notification_id)
        states = [int(recipient.state) for recipient in status.recipients]
        if states and all(state == until for state in states):
            break
        await asyncio.sleep(0.05)
    return states


def toast(page: Page, notification_id: str) -> Locator:
    return page.locator(f'.toast[data-id="{notification_id}"]')


MODES = [
    pytest.param(GRPC_WEB, id="grpc-web"),
    pytest.param(WEBSOCKET, id="websocket"),
    pytest.param(WEBSOCKET_SIGNED, id="websocket-signed"),
]


@pytest.mark.parametrize("mode", MODES)
async def test_a_backend_sends_and_the_page_shows_it(stack: Stack, mode: Mode) -> None:
    page = await stack.browser.new_page()
    await open_inbox(stack, page, mode=mode)
    await expect(page.locator("#unread")).to_have_text("0", timeout=WAIT_MS)

    sent = await stack.herald.backend().send(to_user("alice", "Your order shipped"))

    await expect(toast(page, sent.notification_id)).to_contain_text(
        "Your order shipped", timeout=WAIT_MS
    )
    row = page.locator(f'#inbox li[data-id="{sent.notification_id}"]')
    await expect(row).to_have_class("unread", timeout=WAIT_MS)
    await expect(page.locator("#unread")).to_have_text("1", timeout=WAIT_MS)
    # The page acked it (a unary Ack over gRPC-Web, an ack frame on the WebSocket): the
    # status says so.
    assert await states_of(stack.herald, sent.notification_id, until=ACKED) == [ACKED]
    await expect_opened_sealed(page, mode, 1)


@pytest.mark.parametrize("mode", MODES)
async def test_a_reloaded_page_resumes_without_a_duplicate_toast(stack: Stack, mode: Mode) -> None:
    # The page acks only once a minute, so what it had is still unacked when it reloads: the
    # server redelivers it to the new session after its ack timeout, and the page must know,
    # from the cursors and entries it kept in localStorage, that it showed it already.
    page = await stack.browser.new_page()
    await open_inbox(stack, page, ack_interval_ms=60_000, mode=mode)
    backend = stack.herald.backend()
    first = await backend.send(to_user("alice", "before the reload"))
    await expect(toast(page, first.notification_id)).to_be_visible(timeout=WAIT_MS)
    assert await states_of(stack.herald, first.notification_id, until=DELIVERED) == [DELIVERED]

    await page.reload()
    await expect_live(page)
    assert await page.locator("#transport").text_content() == mode.transport + (
        ", verified" if mode.verify else ""
    )
    # The resumed session got the unacked entry again after the ack timeout, and dropped it.
    await page.wait_for_function(
        "() => window.heraldDemo.subscription.stats.duplicates >= 1", timeout=WAIT_MS
    )
    second = await backend.send(to_user("alice", "after the reload"))
    await expect(toast(page, second.notification_id)).to_be_visible(timeout=WAIT_MS)
    # Toasts stay 8 s: one shown after the reload would still be there.
    await expect(toast(page, first.notification_id)).to_have_count(0)
    stats = await page.evaluate("() => window.heraldDemo.subscription.stats")
    assert stats["delivered"] == 1, stats
    # The inbox still lists both, once each.
    await expect(page.locator("#inbox li")).to_have_count(2, timeout=WAIT_MS)
    if mode.verify:
        # The redelivery was dropped as a duplicate before it was opened: one sealed delivery
        # opened on this page load, and it verified.
        await expect_opened_sealed(page, mode, 1)


@pytest.mark.parametrize("mode", MODES)
async def test_what_was_sent_while_the_page_was_closed_appears_when_it_opens(
    stack: Stack, mode: Mode
) -> None:
    context = await stack.browser.new_context()  # one profile: localStorage outlives the tab
    page = await context.new_page()
    await open_inbox(stack, page, mode=mode)
    seen = await stack.herald.backend().send(to_user("alice", "while open"))
    await expect(toast(page, seen.notification_id)).to_be_visible(timeout=WAIT_MS)
    assert await states_of(stack.herald, seen.notification_id, until=ACKED) == [ACKED]
    await page.close()

    offline = await stack.herald.backend().send(to_user("alice", "while you were away"))

    page = await context.new_page()
    await open_inbox(stack, page, mode=mode)
    await expect(toast(page, offline.notification_id)).to_contain_text(
        "while you were away", timeout=WAIT_MS
    )
    await expect(page.locator(f'#inbox li[data-id="{offline.notification_id}"]')).to_have_count(1)
    await expect(page.locator("#unread")).to_have_text("2", timeout=WAIT_MS)
    # What the closed page had and acked is in the list, not shown again.
    await expect(toast(page, seen.notification_id)).to_have_count(0)
    await context.close()


async def test_mark_read_updates_the_badge_and_the_server(stack: Stack) -> None:
    backend = stack.herald.backend()
    sent = [await backend.send(to_user("alice", f"unread {i}")) for i in range(3)]
    page = await stack.browser.new_page()
    await open_inbox(stack, page)
    await expect(page.locator("#unread")).to_have_text("3", timeout=WAIT_MS)
    await expect(page.locator("#inbox li.unread")).to_have_count(3)

    target = sent[1].notification_id
    await page.locator(f'#inbox li[data-id="{target}"] button.mark-read').click()

    await expect(page.locator("#unread")).to_have_text("2", timeout=WAIT_MS)
    await expect(page.locator(f'#inbox li[data-id="{target}"]')).to_have_class("read")
    inbox = await stack.herald.user("alice").list_inbox()
    read = {item.notification.id for item in inbox.items if item.HasField("read_at")}
    assert read == {target}

    # A fresh page counts from the server: still 2.
    await page.reload()
    await expect(page.locator("#unread")).to_have_text("2", timeout=WAIT_MS)


@pytest.fixture
def wrong_keys() -> Iterator[str]:
    """A /signing-keys document (the JSON of a node's metrics port, with CORS) that publishes
    the stack's key id with the public half of a different key: what a page would see if a
    delivery's signature were forged, or its key source pointed elsewhere. The deliveries stay
    the real ones, signed by the node's real key, so the page's real verification must fail."""
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    body = json.dumps(
        {
            "keys": [
                {
                    "keyId": KEY_ID,
                    "algorithm": "ed25519",
                    "publicKey": base64.b64encode(other).decode(),
                    "active": True,
                }
            ]
        }
    ).encode()
    fetched: list[str] = []

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("access-control-allow-origin", "*")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/signing-keys"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert fetched, "the page never fetched its keys"


async def test_a_delivery_that_does_not_verify_is_shown_as_rejected(
    stack: Stack, wrong_keys: str
) -> None:
    page = await stack.browser.new_page()
    await open_inbox(stack, page, mode=WEBSOCKET_SIGNED, keys_url=wrong_keys)

    sent = await stack.herald.backend().send(to_user("alice", "forged?"))

    rejected = page.locator('#rejections li.rejected[data-reason="bad_signature"]')
    await expect(rejected).to_have_count(1, timeout=WAIT_MS)
    await expect(rejected).to_contain_text(f"key {KEY_ID}")
    await expect(page.locator("#rejections")).to_be_visible()
    # Never handed to the app: no toast, no live row, the badge unchanged.
    await expect(toast(page, sent.notification_id)).to_have_count(0)
    await expect(page.locator(f'#inbox li[data-id="{sent.notification_id}"]')).to_have_count(0)
    await expect(page.locator("#unread")).to_have_text("0")
    stats = await page.evaluate("() => window.heraldDemo.subscription.stats")
    assert stats["rejected"] == 1, stats
    assert stats["rejectedBy"]["bad_signature"] == 1, stats
    assert stats["delivered"] == 0, stats
    # Acked past all the same (the batch's watermark), so it is not redelivered forever.
    assert await states_of(stack.herald, sent.notification_id, until=ACKED) == [ACKED]


async def test_websocket_json_frames_show_what_is_sent_and_the_ack_stops_redelivery(
    stack: Stack,
) -> None:
    page = await stack.browser.new_page()
    sent_frames: list[str | bytes] = []
    received_frames: list[str | bytes] = []

    def watch(socket: WebSocket) -> None:
        # Playwright tags each handler: plain functions, not bound builtins.
        socket.on("framesent", lambda payload: sent_frames.append(payload))
        socket.on("framereceived", lambda payload: received_frames.append(payload))

    page.on("websocket", watch)
    await open_inbox(stack, page, mode=WEBSOCKET_JSON)
    sent = await stack.herald.backend().send(to_user("alice", "over JSON frames"))
    await expect(toast(page, sent.notification_id)).to_contain_text(
        "over JSON frames", timeout=WAIT_MS
    )
    await expect(page.locator(f'#inbox li[data-id="{sent.notification_id}"]')).to_have_count(1)
    # The page acked it with a JSON ack frame: the status says so.
    assert await states_of(stack.herald, sent.notification_id, until=ACKED) == [ACKED]
    # Through Envoy both ways in text frames of protobuf's JSON mapping (herald.v1.json).
    # Playwright reports frames on its own connection: the ack's may trail the server's status.
    for _ in range(100):
        if len(sent_frames) >= 2:
            break
        await asyncio.sleep(0.05)
    assert all(isinstance(frame, str) for frame in sent_frames + received_frames)
    sent_json = [json.loads(frame) for frame in sent_frames]
    assert "subscribe" in sent_json[0], sent_json[0]
    assert any("ack" in frame for frame in sent_json[1:]), sent_json
    received_json = [json.loads(frame) for frame in received_frames]
    assert "sessionStarted" in received_json[0], received_json[0]
    assert any(
        d["notification"]["id"] == sent.notification_id
        for frame in received_json
        for d in frame.get("deliveries", {}).get("deliveries", [])
    )
    await page.close()

    # A new profile (no stored cursors) resumes from the server's acks: what was acked is not
    # delivered again. The marker comes after the backlog, so by then a redelivery would have.
    context = await stack.browser.new_context()
    fresh = await context.new_page()
    await open_inbox(stack, fresh, mode=WEBSOCKET_JSON)
    marker = await stack.herald.backend().send(to_user("alice", "marker"))
    await expect(toast(fresh, marker.notification_id)).to_be_visible(timeout=WAIT_MS)
    await expect(toast(fresh, sent.notification_id)).to_have_count(0)
    stats = await fresh.evaluate("() => window.heraldDemo.subscription.stats")
    assert (stats["delivered"], stats["duplicates"]) == (1, 0), stats
    await context.close()


async def test_a_forged_item_in_the_first_inbox_page_is_shown_as_rejected(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = stack.herald.node("stream").chain
    assert chain is not None
    forge_seals(chain, monkeypatch)
    backend = stack.herald.backend()
    genuine = await backend.send(to_user("alice", "genuine"))
    forged = await backend.send(to_user("alice", "forged"))

    page = await stack.browser.new_page()
    inbox_requests: list[bytes] = []
    page.on(
        "request",
        lambda request: (
            inbox_requests.append(request.post_data_buffer or b"")
            if request.url.endswith("/ListInbox")
            else None
        ),
    )
    await open_inbox(stack, page, mode=WEBSOCKET_SIGNED)
    # The first page (ListInbox over gRPC-Web through Envoy) asked for the stream's encodings.
    assert inbox_requests
    assert all(b"signed" in body for body in inbox_requests)
    rejected = page.locator('#inbox li.rejected[data-reason="bad_signature"]')
    await expect(rejected).to_have_count(1, timeout=WAIT_MS)
    await expect(rejected).to_contain_text("Rejected an inbox item")
    await expect(page.locator(f'#inbox li[data-id="{genuine.notification_id}"]')).to_have_count(1)
    # The forged content is shown nowhere, not as a row, a toast or a count.
    await expect(page.locator(f'#inbox li[data-id="{forged.notification_id}"]')).to_have_count(0)
    await expect(toast(page, forged.notification_id)).to_have_count(0)
    assert "evil.example" not in await page.locator("body").inner_text()
    await expect(page.locator("#unread")).to_have_text("1", timeout=WAIT_MS)
    inbox_stats = await page.evaluate("() => window.heraldDemo.inbox.stats")
    assert inbox_stats["rejectedBy"]["bad_signature"] >= 1, inbox_stats
    assert inbox_stats["rejected"] == inbox_stats["rejectedBy"]["bad_signature"], inbox_stats
    # The genuine item verified and opened from its gzip'd, signed form.
    opened = await page.evaluate("() => window.heraldDemo.decoder.openedItems")
    assert opened.get("protobuf/gzip", 0) >= 1, opened
