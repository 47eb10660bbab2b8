/**
 * Subscribe and Ack over Herald's WebSocket endpoint (docs/websocket.md), behind Envoy at
 * `/ws`: the browser's native WebSocket, binary protobuf frames (`herald.v1`, the default) or,
 * with `framing: "json"`, text frames in protobuf's canonical JSON mapping (`herald.v1.json`:
 * lowerCamelCase names, 64-bit integers as strings, bytes such as a sealed payload in base64),
 * for an app that wants to read the frames in the browser's devtools or has no binary
 * protobuf at hand. Either way the messages and their handling are the same. The first client
 * frame is `WebSocketClientFrame.subscribe` with the token (or the token travels in the
 * `herald.bearer.<jwt>` subprotocol; never in the URL), every later one an `ack`; the server's
 * frames are `SubscribeResponse`s, the same events as a gRPC-Web Subscribe. A refused or failed
 * connection ends with close code 4000 + the gRPC status code, which crosses the seam as the
 * same `TransportError` the gRPC-Web transport throws, so the reconnect logic is shared.
 */

import { create, fromBinary, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  type AckRequest,
  type SubscribeRequest,
  type SubscribeResponse,
  SubscribeResponseSchema,
  type WebSocketClientFrame,
  WebSocketClientFrameSchema,
} from "./gen/herald/v1/stream_pb";
import { type CallOptions, type StreamTransport, TransportError } from "./transport";

/** The subprotocol of binary protobuf frames. */
export const PROTOBUF_SUBPROTOCOL = "herald.v1";
/** The subprotocol of text frames in protobuf's canonical JSON mapping. */
export const JSON_SUBPROTOCOL = "herald.v1.json";
export const BEARER_SUBPROTOCOL_PREFIX = "herald.bearer.";
/** Close codes 4000 + N carry gRPC status N. */
export const STATUS_CLOSE_BASE = 4000;

/** The part of the browser's WebSocket this transport uses (a fake one in unit tests). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: Uint8Array | string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

export interface WebSocketTransportOptions {
  /** The endpoint, e.g. "wss://herald.example.com/ws" (Envoy routes /ws to the stream nodes). */
  readonly url: string;
  /** Where the token goes: the first frame (default) or the `herald.bearer.<jwt>` subprotocol.
   * Neither is a URL, which proxies and access logs keep. */
  readonly tokenIn?: "frame" | "subprotocol";
  /** The frames: binary protobuf (`herald.v1`, default) or JSON text (`herald.v1.json`). */
  readonly framing?: "protobuf" | "json";
  /** Another WebSocket implementation (tests); default `globalThis.WebSocket`. */
  readonly WebSocket?: WebSocketConstructor;
}

const OPEN = 1;
const CLOSED = 3;

function statusName(status: number): string {
  const name = Code[status];
  if (name === undefined) return "UNKNOWN";
  return name.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** What a close frame means for the subscription: an end, or a TransportError. */
export function closeError(code: number, reason: string): TransportError | undefined {
  if (code === 1000 || code === 1012) return undefined; // after a Closing event: ended
  if (code >= STATUS_CLOSE_BASE && code <= STATUS_CLOSE_BASE + 16) {
    const name = statusName(code - STATUS_CLOSE_BASE);
    let retryAfterMs: number | undefined;
    const retry = /retry in ([0-9.]+) s/.exec(reason);
    if (name === "RESOURCE_EXHAUSTED" && retry) retryAfterMs = Number(retry[1]) * 1000;
    return new TransportError(name, reason, retryAfterMs);
  }
  if (code === 1009) return new TransportError("INVALID_ARGUMENT", `frame too large ${reason}`);
  // 1001 (the node stopped), 1006 (no close frame: refused, proxy down), 1011, ...
  return new TransportError("UNAVAILABLE", `WebSocket closed with ${code} ${reason}`.trim());
}

/** How frames are written and read on one subprotocol. */
interface Framing {
  readonly subprotocol: string;
  encode(frame: WebSocketClientFrame): Uint8Array | string;
  /** A server frame, or a TransportError for one that is not a SubscribeResponse. */
  decode(data: unknown): SubscribeResponse | TransportError;
}

function undecodable(error: unknown): TransportError {
  return new TransportError("INTERNAL", `an undecodable frame: ${String(error)}`);
}

const PROTOBUF_FRAMING: Framing = {
  subprotocol: PROTOBUF_SUBPROTOCOL,
  encode: (frame) => toBinary(WebSocketClientFrameSchema, frame),
  decode(data) {
    if (!(data instanceof ArrayBuffer)) {
      return new TransportError("INTERNAL", "a text frame on the binary herald.v1 subprotocol");
    }
    try {
      return fromBinary(SubscribeResponseSchema, new Uint8Array(data));
    } catch (error) {
      return undecodable(error);
    }
  },
};

const JSON_FRAMING: Framing = {
  subprotocol: JSON_SUBPROTOCOL,
  encode: (frame) => toJsonString(WebSocketClientFrameSchema, frame),
  decode(data) {
    if (typeof data !== "string") {
      return new TransportError("INTERNAL", "a binary frame on the JSON herald.v1.json subprotocol");
    }
    try {
      // A newer server may add fields: ignore what this client does not know.
      return fromJsonString(SubscribeResponseSchema, data, { ignoreUnknownFields: true });
    } catch (error) {
      return undecodable(error);
    }
  },
};

/** A StreamTransport over Herald's WebSocket endpoint. Acks travel on the open socket, so a
 * transport serves one subscription (one stream at a time): give each its own. */
export class WebSocketTransport implements StreamTransport {
  readonly name = "websocket";
  /** "protobuf" (binary frames) or "json" (text frames). */
  readonly framing: "protobuf" | "json";
  readonly #url: string;
  readonly #tokenIn: "frame" | "subprotocol";
  readonly #framing: Framing;
  readonly #WebSocket: WebSocketConstructor;
  /** The socket of the stream being read, once it has sent its subscribe frame. */
  #socket: WebSocketLike | undefined;
  #streaming = false;

  constructor(options: WebSocketTransportOptions) {
    if (/[?&]token=/i.test(options.url)) throw new Error("never put a token in a URL");
    this.#url = options.url;
    this.#tokenIn = options.tokenIn ?? "frame";
    this.framing = options.framing ?? "protobuf";
    this.#framing = this.framing === "json" ? JSON_FRAMING : PROTOBUF_FRAMING;
    const ctor =
      options.WebSocket ??
      ((globalThis as { WebSocket?: unknown }).WebSocket as WebSocketConstructor | undefined);
    if (ctor === undefined) throw new Error("no WebSocket in this environment");
    this.#WebSocket = ctor;
  }

  async *subscribe(
    request: SubscribeRequest,
    options: CallOptions,
  ): AsyncIterable<SubscribeResponse> {
    if (options.signal?.aborted) return;
    if (this.#streaming) {
      // Its acks would go to the other stream's socket: one subscription per transport.
      throw new Error("this WebSocketTransport has a stream open already; use one per subscription");
    }
    this.#streaming = true;
    const framing = this.#framing;
    const protocols = [framing.subprotocol];
    if (this.#tokenIn === "subprotocol") protocols.push(BEARER_SUBPROTOCOL_PREFIX + options.token);
    const socket = new this.#WebSocket(this.#url, protocols);
    socket.binaryType = "arraybuffer";
    const queue: SubscribeResponse[] = [];
    let ended: { error?: unknown } | undefined;
    let wake: (() => void) | undefined;
    const notify = (): void => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    const fail = (error: unknown): void => {
      if (ended === undefined) ended = { error };
      if (socket.readyState !== CLOSED) socket.close(1000);
      notify();
    };
    socket.onopen = () => {
      const frame = create(WebSocketClientFrameSchema, {
        frame: {
          case: "subscribe",
          value: { token: this.#tokenIn === "frame" ? options.token : "", request },
        },
      });
      socket.send(framing.encode(frame));
      this.#socket = socket;
    };
    socket.onmessage = ({ data }) => {
      const response = framing.decode(data);
      if (response instanceof TransportError) {
        fail(response);
        return;
      }
      queue.push(response);
      notify();
    };
    socket.onerror = () => {
      // A close event always follows, with the code that says what happened.
    };
    socket.onclose = ({ code, reason }) => {
      if (this.#socket === socket) this.#socket = undefined;
      if (ended === undefined) {
        const error = closeError(code, reason);
        ended = error === undefined ? {} : { error };
      }
      notify();
    };
    const abort = (): void => {
      if (ended === undefined) ended = {};
      if (socket.readyState !== CLOSED) socket.close(1000);
      notify();
    };
    options.signal?.addEventListener("abort", abort, { once: true });
    try {
      for (;;) {
        while (queue.length > 0) yield queue.shift()!;
        if (ended !== undefined) {
          if (ended.error !== undefined) throw ended.error;
          return;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    } finally {
      this.#streaming = false;
      options.signal?.removeEventListener("abort", abort);
      if (this.#socket === socket) this.#socket = undefined;
      if (socket.readyState !== CLOSED) socket.close(1000);
    }
  }

  /** Sends an ack frame on the open socket. The server does not answer acks, so this resolves
   * to 0 (their effect shows in the notifications' status); no open socket: UNAVAILABLE, and
   * the subscription retries at its next interval (or on its next connection). */
  async ack(request: AckRequest, _options: CallOptions): Promise<number> {
    const socket = this.#socket;
    if (socket === undefined || socket.readyState !== OPEN) {
      throw new TransportError("UNAVAILABLE", "the WebSocket is not open");
    }
    const frame = create(WebSocketClientFrameSchema, { frame: { case: "ack", value: request } });
    socket.send(this.#framing.encode(frame));
    return 0;
  }
}

/** Herald's WebSocket endpoint at `url` (e.g. "wss://herald.example.com/ws"). */
export function webSocketTransport(
  url: string,
  options: Omit<WebSocketTransportOptions, "url"> = {},
): WebSocketTransport {
  return new WebSocketTransport({ url, ...options });
}
