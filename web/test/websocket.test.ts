// The WebSocket transport against a fake browser WebSocket that speaks Herald's frames (binary
// protobuf WebSocketClientFrame in, SubscribeResponse out, or both as JSON text on
// herald.v1.json; close codes 4000 + gRPC status), under
// the real Subscription: the same reconnect, resume, ack and duplicate logic as gRPC-Web.
import { create, fromBinary, fromJsonString, type MessageInitShape, toBinary, toJsonString } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { Backoff } from "../src/backoff";
import {
  type AckRequest,
  Closing_Reason,
  type SubscribeRequest,
  SubscribeRequestSchema,
  SubscribeResponseSchema,
  type WebSocketClientFrame,
  WebSocketClientFrameSchema,
} from "../src/gen/herald/v1/stream_pb";
import { createHeraldClient, webSocketUrlOf } from "../src/index";
import { type Received, Subscription } from "../src/subscription";
import { TransportError } from "../src/transport";
import { closeError, type WebSocketLike, WebSocketTransport } from "../src/websocket";
import { batch, closing, delivery, started } from "./fake-server";
import { until } from "./helpers";

type Event = MessageInitShape<typeof SubscribeResponseSchema>;

/** What one connection does once it has the subscribe frame: send events, then close. */
type Script = (socket: FakeSocket) => Promise<void>;

class FakeSocket implements WebSocketLike {
  binaryType = "blob";
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  readonly frames: WebSocketClientFrame[] = [];
  /** The text of each frame the client sent on herald.v1.json. */
  readonly texts: string[] = [];
  closedBy: "client" | "server" | undefined;

  constructor(
    readonly url: string,
    readonly protocols: string[],
    readonly server: FakeWsServer,
  ) {
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    }, 0);
  }

  /** Speaking herald.v1.json (text frames), as the server does when the client offers it. */
  get json(): boolean {
    return this.protocols.includes("herald.v1.json");
  }

  send(data: Uint8Array | string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    let frame: WebSocketClientFrame;
    if (this.json) {
      if (typeof data !== "string") throw new Error("a binary frame on herald.v1.json");
      this.texts.push(data);
      // Strict, as the server's json_format.Parse: an unknown field would be refused.
      frame = fromJsonString(WebSocketClientFrameSchema, data);
    } else {
      if (typeof data === "string") throw new Error("a text frame on herald.v1");
      frame = fromBinary(WebSocketClientFrameSchema, data);
    }
    this.frames.push(frame);
    if (frame.frame.case === "subscribe") {
      const script = this.server.scripts.shift();
      if (!script) return this.serverClose(4014, "no more scripts");
      void script(this);
    } else if (frame.frame.case === "ack") {
      this.server.acks.push(frame.frame.value);
    }
  }

  emit(event: Event): void {
    const message = create(SubscribeResponseSchema, event);
    if (this.json) this.emitRaw(toJsonString(SubscribeResponseSchema, message));
    else this.emitRaw(toBinary(SubscribeResponseSchema, message).slice().buffer);
  }

  /** A frame exactly as given: a string is a text frame, an ArrayBuffer a binary one. */
  emitRaw(data: string | ArrayBuffer): void {
    if (this.readyState !== 1) return;
    this.onmessage?.({ data });
  }

  serverClose(code: number, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedBy = "server";
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedBy = "client";
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
}

class FakeWsServer {
  readonly sockets: FakeSocket[] = [];
  readonly acks: AckRequest[] = [];
  constructor(readonly scripts: Script[]) {}

  get requests(): SubscribeRequest[] {
    return this.sockets.flatMap((s) =>
      s.frames.flatMap((f) => (f.frame.case === "subscribe" && f.frame.value.request ? [f.frame.value.request] : [])),
    );
  }

  transport(tokenIn: "frame" | "subprotocol" = "frame", framing?: "protobuf" | "json"): WebSocketTransport {
    const server = this;
    return new WebSocketTransport({
      url: "ws://envoy.test/ws",
      tokenIn,
      ...(framing ? { framing } : {}),
      WebSocket: class extends FakeSocket {
        constructor(url: string, protocols: string[]) {
          super(url, protocols, server);
          server.sockets.push(this);
        }
      },
    });
  }
}

const fast = new Backoff({ baseMs: 5, capMs: 20 });
const tick = () => new Promise((resolve) => setTimeout(resolve, 5));

function start(
  server: FakeWsServer,
  tokenIn: "frame" | "subprotocol" = "frame",
  framing?: "protobuf" | "json",
) {
  const received: Received[] = [];
  const subscription = new Subscription({
    transport: server.transport(tokenIn, framing),
    token: "token-1",
    backoff: fast,
    ackIntervalMs: 10,
    onNotification: (r) => {
      received.push(r);
    },
  });
  return { subscription, received };
}

describe("WebSocketTransport", () => {
  it("subscribes with the token in the first frame, binary, and acks on the socket", async () => {
    const server = new FakeWsServer([
      async (socket) => {
        socket.emit(started([["user", 3n]]));
        socket.emit(batch(delivery("a", 1n), delivery("b", 2n)));
      },
    ]);
    const { subscription, received } = start(server);
    await until(() => server.acks.length > 0, "an ack frame");
    const [socket] = server.sockets;
    expect(socket?.url).toBe("ws://envoy.test/ws");
    expect(socket?.protocols).toEqual(["herald.v1"]);
    expect(socket?.binaryType).toBe("arraybuffer");
    const first = socket?.frames[0];
    expect(first?.frame.case).toBe("subscribe");
    if (first?.frame.case === "subscribe") {
      expect(first.frame.value.token).toBe("token-1");
      expect(first.frame.value.request?.device).toBe("web");
    }
    expect(received.map((r) => r.notification.id)).toEqual(["a", "b"]);
    expect(server.acks[0]?.upTo.map((c) => [c.log, c.cursor, c.epoch])).toEqual([["user", 2n, 3n]]);
    // Every frame after the first is an ack.
    expect(socket?.frames.slice(1).every((f) => f.frame.case === "ack")).toBe(true);
    await subscription.close();
    expect(socket?.closedBy).toBe("client");
    expect(subscription.state.value.kind).toBe("closed");
  });

  it("can carry the token in the herald.bearer subprotocol instead, never in the URL", async () => {
    const server = new FakeWsServer([async (socket) => socket.emit(started())]);
    const { subscription } = start(server, "subprotocol");
    await until(() => subscription.state.value.kind === "open", "open");
    const [socket] = server.sockets;
    expect(socket?.protocols).toEqual(["herald.v1", "herald.bearer.token-1"]);
    expect(socket?.url).not.toContain("token");
    const first = socket?.frames[0];
    expect(first?.frame.case === "subscribe" && first.frame.value.token).toBe("");
    await subscription.close();
    expect(() => new WebSocketTransport({ url: "ws://h/ws?token=x", WebSocket: FakeSocket as never })).toThrow();
  });

  it("reconnects after a 4014 close with its cursors and drops the redelivery", async () => {
    const server = new FakeWsServer([
      async (socket) => {
        socket.emit(started([["user", 1n]]));
        socket.emit(batch(delivery("a", 1n), delivery("b", 2n)));
        await tick();
        socket.serverClose(4014, "the node is shutting down");
      },
      async (socket) => {
        socket.emit(started([["user", 1n]]));
        socket.emit(batch(delivery("b", 2n, { attempt: 2 }), delivery("c", 3n)));
      },
    ]);
    const { subscription, received } = start(server);
    await until(() => received.length === 3, "three notifications");
    await until(() => subscription.stats.connects === 2, "two sessions");
    expect(received.map((r) => r.notification.id)).toEqual(["a", "b", "c"]);
    expect(subscription.stats.duplicates).toBe(1);
    const second = server.requests[1];
    expect(second?.cursors.map((c) => [c.log, c.cursor, c.epoch])).toEqual([["user", 2n, 1n]]);
    await subscription.close();
  });

  it("acks on Closing while the socket is still open, then reconnects after retry_after_ms", async () => {
    const server = new FakeWsServer([
      async (socket) => {
        socket.emit(started([["user", 1n]]));
        socket.emit(batch(delivery("a", 5n)));
        socket.emit(closing(Closing_Reason.SHUTDOWN, 30));
        // The server reads acks for a moment after Closing, then closes with 1012.
        await new Promise((resolve) => setTimeout(resolve, 20));
        socket.serverClose(1012, "");
      },
      async (socket) => socket.emit(started([["user", 1n]])),
    ]);
    const { subscription } = start(server);
    await until(() => subscription.stats.connects === 2, "the second session", 3_000);
    const first = server.sockets[0]!;
    const acks = first.frames.filter((f) => f.frame.case === "ack");
    expect(acks.length).toBeGreaterThanOrEqual(1);
    await subscription.close();
  });

  it("ends on a fatal close code (4016 UNAUTHENTICATED) and REASON_DISCONNECTED", async () => {
    const server = new FakeWsServer([async (socket) => socket.serverClose(4016, "token expired")]);
    const { subscription } = start(server);
    await subscription.done;
    expect(subscription.state.value).toMatchObject({ kind: "closed" });
    const state = subscription.state.value;
    expect(state.kind === "closed" && state.error instanceof TransportError && state.error.code).toBe(
      "UNAUTHENTICATED",
    );
    expect(server.sockets.length).toBe(1);

    const kicked = new FakeWsServer([
      async (socket) => {
        socket.emit(started());
        socket.emit(closing(Closing_Reason.DISCONNECTED));
      },
    ]);
    const second = start(kicked);
    await second.subscription.done;
    expect(kicked.sockets.length).toBe(1);
  });

  it("maps close codes to the gRPC status names, with a rate limit's retry", () => {
    expect(closeError(1000, "")).toBeUndefined();
    expect(closeError(1012, "")).toBeUndefined();
    expect(closeError(4003, "bad")?.code).toBe("INVALID_ARGUMENT");
    expect(closeError(4007, "no")?.code).toBe("PERMISSION_DENIED");
    expect(closeError(4010, "slow")?.code).toBe("ABORTED");
    expect(closeError(4014, "down")?.code).toBe("UNAVAILABLE");
    expect(closeError(1006, "")?.code).toBe("UNAVAILABLE");
    const limited = closeError(4008, "rate limit: alice may make 1 per second (bursts of 2); retry in 0.250 s");
    expect(limited?.code).toBe("RESOURCE_EXHAUSTED");
    expect(limited?.retryAfterMs).toBe(250);
    expect(closeError(4008, "too many sessions")?.retryAfterMs).toBeUndefined();
  });

  it("serves one stream at a time, and createHeraldClient gives each subscription its own", async () => {
    const server = new FakeWsServer([async (socket) => socket.emit(started())]);
    const transport = server.transport();
    const request = create(SubscribeRequestSchema, {});
    const first = transport.subscribe(request, { token: "t" })[Symbol.asyncIterator]();
    await first.next();
    const second = transport.subscribe(request, { token: "t" })[Symbol.asyncIterator]();
    await expect(second.next()).rejects.toThrow(/one per subscription/);
    await first.return?.();
    const client = createHeraldClient({ baseUrl: "http://envoy.test", token: "t", stream: "websocket" });
    expect(client.stream).toBe("websocket");
  });

  it("speaks JSON frames on herald.v1.json as the server documents them, acks included", async () => {
    const server = new FakeWsServer([
      async (socket) => {
        // Exactly what the server's json_format.MessageToJson writes (64-bit integers as
        // strings, lowerCamelCase, Timestamp in RFC 3339), plus a field this client does not
        // know (a newer server).
        socket.emitRaw('{"sessionStarted": {"sessionId": "s1", "logs": [{"log": "user", "epoch": "7", "recovered": true}], "fromTheFuture": 1}}');
        socket.emitRaw(
          '{"deliveries": {"deliveries": [{"notification": {"id": "n1", "content": {"title": "over JSON"}, "createdAt": "2025-12-03T00:00:00Z"}, "log": "user", "cursor": "1", "attempt": 1, "resumeCursor": "1"}]}}',
        );
        socket.emit(batch(delivery("n2", 2n)));
      },
    ]);
    const { subscription, received } = start(server, "subprotocol", "json");
    await until(() => server.acks.length > 0, "an ack frame");
    const [socket] = server.sockets;
    expect(socket?.protocols).toEqual(["herald.v1.json", "herald.bearer.token-1"]);
    expect(received.map((r) => [r.notification.id, r.notification.content?.title])).toEqual([
      ["n1", "over JSON"],
      ["n2", "title n2"],
    ]);
    expect(received[0]?.notification.createdAt?.seconds).toBe(1764720000n);
    // The frames on the wire are JSON text: the subscribe frame, then acks with string cursors.
    const subscribe = JSON.parse(socket!.texts[0]!) as { subscribe: { request: { device: string } } };
    expect(subscribe.subscribe.request.device).toBe("web");
    const ack = JSON.parse(socket!.texts[1]!) as { ack: { upTo: Array<{ log: string; cursor: string; epoch: string }> } };
    expect(ack.ack.upTo).toEqual([{ log: "user", cursor: "2", epoch: "7" }]);
    await subscription.close();
    expect(new WebSocketTransport({ url: "ws://h/ws", framing: "json", WebSocket: FakeSocket as never }).framing).toBe("json");
  });

  it("on herald.v1.json refuses a binary or unparsable frame and reconnects", async () => {
    const server = new FakeWsServer([
      async (socket) => {
        socket.emit(started());
        socket.emitRaw(new Uint8Array([10, 0]).buffer);
      },
      async (socket) => {
        socket.emit(started());
        socket.emitRaw("{not json");
      },
      async (socket) => {
        socket.emit(started());
        socket.emit(batch(delivery("after", 1n)));
      },
    ]);
    const { subscription, received } = start(server, "frame", "json");
    await until(() => received.length === 1, "the delivery after two bad frames", 3_000);
    expect(server.sockets.length).toBe(3);
    expect(server.sockets.slice(0, 2).every((s) => s.closedBy === "client")).toBe(true);
    await subscription.close();
  });

  it("derives the WebSocket URL from Envoy's gRPC-Web URL", () => {
    expect(webSocketUrlOf("http://127.0.0.1:8080")).toBe("ws://127.0.0.1:8080/ws");
    expect(webSocketUrlOf("https://herald.example.com/")).toBe("wss://herald.example.com/ws");
  });
});
