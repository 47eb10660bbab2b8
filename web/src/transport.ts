/**
 * The transport seam: how a subscription opens its stream and sends its acks.
 *
 * Two implementations: `GrpcWebTransport` here (gRPC-Web through Envoy, Connect-ES) and
 * `WebSocketTransport` (websocket.ts: Herald's WebSocket endpoint behind Envoy; its first frame
 * carries the token and the SubscribeRequest, its frames decode to the same SubscribeResponse
 * events, and it acks on the socket itself).
 */

import { type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import {
  type AckRequest,
  type GetSigningKeysResponse,
  type ListInboxRequest,
  type ListInboxResponse,
  type MarkReadRequest,
  type MarkReadResponse,
  StreamService,
  type SubscribeRequest,
  type SubscribeResponse,
} from "./gen/herald/v1/stream_pb";

export interface CallOptions {
  /** The user's JWT, sent as `authorization: Bearer` (never in a URL). */
  readonly token: string;
  /** Aborts the call (the stream, or a unary call in flight). */
  readonly signal?: AbortSignal;
  /** A deadline for unary calls. */
  readonly timeoutMs?: number;
}

/** What a subscription needs from the wire. */
export interface StreamTransport {
  /** A human name for logs and the connection indicator ("grpc-web", "websocket"). */
  readonly name: string;
  /** Opens Subscribe; the iterable ends when the server ends the stream, throws on errors
   * (`TransportError`). */
  subscribe(request: SubscribeRequest, options: CallOptions): AsyncIterable<SubscribeResponse>;
  /** One Ack; resolves to how many entries changed to ACKED. */
  ack(request: AckRequest, options: CallOptions): Promise<number>;
}

/** The inbox calls, unary on every transport. */
export interface InboxTransport {
  listInbox(request: ListInboxRequest, options: CallOptions): Promise<ListInboxResponse>;
  markRead(request: MarkReadRequest, options: CallOptions): Promise<MarkReadResponse>;
}

/**
 * A failed call, transport-neutral: a gRPC status code name (as in the proto, e.g.
 * "UNAUTHENTICATED") and, for RESOURCE_EXHAUSTED from a rate limit, the server's retry-after.
 */
export class TransportError extends Error {
  readonly code: string;
  readonly retryAfterMs: number | undefined;

  constructor(code: string, message: string, retryAfterMs?: number) {
    super(`${code}: ${message}`);
    this.name = "TransportError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Errors that reconnecting cannot fix, as in the Python client. */
export const FATAL_CODES: ReadonlySet<string> = new Set([
  "UNAUTHENTICATED",
  "PERMISSION_DENIED",
  "INVALID_ARGUMENT",
  "UNIMPLEMENTED",
  "RESOURCE_EXHAUSTED",
]);

function codeName(code: Code): string {
  // Code.PermissionDenied -> "PERMISSION_DENIED": the names of the gRPC status codes.
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** A Connect error (or anything thrown by fetch) as a TransportError. */
export function fromConnectError(error: unknown): TransportError | unknown {
  if (error instanceof TransportError) return error;
  if (!(error instanceof ConnectError)) return error;
  let retryAfterMs: number | undefined;
  const retryAfter = error.metadata.get("retry-after");
  if (error.code === Code.ResourceExhausted && retryAfter !== null) {
    const seconds = Number(retryAfter);
    if (Number.isFinite(seconds) && seconds >= 0) retryAfterMs = seconds * 1000;
  }
  return new TransportError(codeName(error.code), error.rawMessage, retryAfterMs);
}

function headers(options: CallOptions): HeadersInit {
  return { authorization: `Bearer ${options.token}` };
}

export interface GrpcWebOptions {
  /** Envoy's gRPC-Web listener, e.g. "https://herald.example.com" or "http://localhost:8080". */
  readonly baseUrl: string;
  /** Another fetch (tests, instrumentation). */
  readonly fetch?: typeof globalThis.fetch;
}

/** Subscribe, Ack, ListInbox and MarkRead over gRPC-Web (binary protobuf) through Envoy. */
export class GrpcWebTransport implements StreamTransport, InboxTransport {
  readonly name = "grpc-web";
  readonly #client: Client<typeof StreamService>;

  /** From Envoy's URL, or from any Connect transport (e.g. `createRouterTransport` in tests). */
  constructor(options: GrpcWebOptions | { readonly transport: Transport }) {
    const transport =
      "transport" in options
        ? options.transport
        : createGrpcWebTransport({
            baseUrl: options.baseUrl,
            useBinaryFormat: true,
            ...(options.fetch ? { fetch: options.fetch } : {}),
          });
    this.#client = createClient(StreamService, transport);
  }

  async *subscribe(
    request: SubscribeRequest,
    options: CallOptions,
  ): AsyncIterable<SubscribeResponse> {
    try {
      for await (const event of this.#client.subscribe(request, {
        headers: headers(options),
        signal: options.signal,
      })) {
        yield event;
      }
    } catch (error) {
      throw fromConnectError(error);
    }
  }

  async ack(request: AckRequest, options: CallOptions): Promise<number> {
    try {
      const response = await this.#client.ack(request, {
        headers: headers(options),
        signal: options.signal,
        timeoutMs: options.timeoutMs,
      });
      return response.acked;
    } catch (error) {
      throw fromConnectError(error);
    }
  }

  /** The public keys that verify signed deliveries (any user token). */
  async getSigningKeys(options: CallOptions): Promise<GetSigningKeysResponse> {
    try {
      return await this.#client.getSigningKeys(
        {},
        { headers: headers(options), signal: options.signal, timeoutMs: options.timeoutMs },
      );
    } catch (error) {
      throw fromConnectError(error);
    }
  }

  async listInbox(request: ListInboxRequest, options: CallOptions): Promise<ListInboxResponse> {
    try {
      return await this.#client.listInbox(request, {
        headers: headers(options),
        signal: options.signal,
        timeoutMs: options.timeoutMs,
      });
    } catch (error) {
      throw fromConnectError(error);
    }
  }

  async markRead(request: MarkReadRequest, options: CallOptions): Promise<MarkReadResponse> {
    try {
      return await this.#client.markRead(request, {
        headers: headers(options),
        signal: options.signal,
        timeoutMs: options.timeoutMs,
      });
    } catch (error) {
      throw fromConnectError(error);
    }
  }
}

/** gRPC-Web through Envoy at `baseUrl`. */
export function grpcWebTransport(baseUrl: string): GrpcWebTransport {
  return new GrpcWebTransport({ baseUrl });
}
