/**
 * Herald's browser client: subscribe (gRPC-Web or WebSocket, through Envoy), with reconnects,
 * resume across page reloads, acks, duplicate drop and the transformer chain's verification;
 * the inbox (list, unread count, mark read).
 *
 *     const herald = createHeraldClient({ baseUrl: "https://herald.example.com", token });
 *     const subscription = herald.subscribe({
 *       store: new LocalStorageResumeStore(resumeKey(url, tenant, user)),
 *       onNotification: ({ notification }) => showToast(notification.content?.title),
 *     });
 *     subscription.state.subscribe((state) => indicator.textContent = state.kind);
 *
 * docs/web.md has the whole of it.
 */

import { keysOf, SigningKeys } from "./chain";
import { Inbox } from "./inbox";
import { type SubscribeOptions, Subscription } from "./subscription";
import { resolveToken, type TokenSource } from "./token";
import { GrpcWebTransport, type StreamTransport } from "./transport";
import { WebSocketTransport } from "./websocket";

export { Backoff, type BackoffOptions, type Random } from "./backoff";
export { type ConnectionState, type Listener, Observable } from "./connection";
export {
  ChainDecoder,
  type ChainDecoderOptions,
  DeliveryRejected,
  type DeliveryDecoder,
  fetchSigningKeysHttp,
  gunzip,
  keysOf,
  MAX_DECOMPRESSED_BYTES,
  type PublishedKey,
  type RejectReason,
  SigningKeys,
  signedMessage,
  type VerificationKeys,
} from "./chain";
export { Inbox, type InboxOptions, type InboxPage, type InboxStats, type RejectedItem } from "./inbox";
export {
  type LogResume,
  LocalStorageResumeStore,
  MemoryResumeStore,
  ResumeState,
  type ResumeStore,
  resumeKey,
  type StoredResume,
} from "./resume";
export {
  type Received,
  type SubscribeOptions,
  subscribe,
  Subscription,
  type SubscriptionStats,
} from "./subscription";
export { readClaims, resolveToken, type TokenClaims, type TokenSource } from "./token";
export {
  type CallOptions,
  FATAL_CODES,
  GrpcWebTransport,
  grpcWebTransport,
  type InboxTransport,
  type StreamTransport,
  TransportError,
} from "./transport";
export {
  closeError,
  WebSocketTransport,
  type WebSocketTransportOptions,
  type WebSocketConstructor,
  type WebSocketLike,
  webSocketTransport,
} from "./websocket";
export { DeliveryState } from "./gen/herald/v1/ingest_pb";
export * from "./gen/herald/v1/notification_pb";
export * from "./gen/herald/v1/stream_pb";

export interface HeraldClientOptions {
  /** Envoy's gRPC-Web listener. */
  readonly baseUrl: string;
  readonly token: TokenSource;
  /** How subscriptions reach the server: gRPC-Web (default) or Herald's WebSocket endpoint.
   * The inbox calls are unary gRPC-Web either way. */
  readonly stream?: "grpc-web" | "websocket";
  /** The WebSocket endpoint (default: `baseUrl` with ws(s):// and the path /ws, which Envoy
   * routes to the stream nodes). */
  readonly webSocketUrl?: string;
  /** The WebSocket frames: binary protobuf (default) or protobuf's JSON mapping in text frames
   * (`herald.v1.json`, docs/websocket.md). */
  readonly webSocketFraming?: "protobuf" | "json";
}

export interface HeraldClient {
  readonly transport: GrpcWebTransport;
  /** How subscriptions reach the server; over WebSocket each subscription has a
   * WebSocketTransport (its socket) of its own. */
  readonly stream: "grpc-web" | "websocket";
  readonly inbox: Inbox;
  /** The signing keys from GetSigningKeys (fetched on first use, again for an unseen key id),
   * for a `ChainDecoder`. */
  readonly signingKeys: SigningKeys;
  subscribe(options: Omit<SubscribeOptions, "transport" | "token">): Subscription;
}

/** One transport for the stream and the inbox, with one token source. */
export function createHeraldClient(options: HeraldClientOptions): HeraldClient {
  const transport = new GrpcWebTransport({ baseUrl: options.baseUrl });
  const stream = options.stream ?? "grpc-web";
  // A WebSocket subscription acks on its own socket: one transport per subscription.
  const streamTransport = (): StreamTransport =>
    stream === "websocket"
      ? new WebSocketTransport({
          url: options.webSocketUrl ?? webSocketUrlOf(options.baseUrl),
          ...(options.webSocketFraming ? { framing: options.webSocketFraming } : {}),
        })
      : transport;
  return {
    transport,
    stream,
    inbox: new Inbox(transport, options.token),
    signingKeys: new SigningKeys(async () =>
      keysOf(await transport.getSigningKeys({ token: await resolveToken(options.token) })),
    ),
    subscribe: (subscribeOptions) =>
      new Subscription({ transport: streamTransport(), ...subscribeOptions, token: options.token }),
  };
}

/** "https://h:8080/x" -> "wss://h:8080/ws": Envoy's WebSocket route on the gRPC-Web listener. */
export function webSocketUrlOf(baseUrl: string): string {
  const url = new URL(baseUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.pathname = "/ws";
  url.search = "";
  url.hash = "";
  return url.toString();
}
