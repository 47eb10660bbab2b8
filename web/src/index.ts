/**
 * Herald's browser client: subscribe (gRPC-Web through Envoy), with reconnects, resume across
 * page reloads, acks and duplicate drop; the inbox (list, unread count, mark read).
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

import { Inbox } from "./inbox";
import { type SubscribeOptions, Subscription } from "./subscription";
import type { TokenSource } from "./token";
import { GrpcWebTransport } from "./transport";

export { Backoff, type BackoffOptions, type Random } from "./backoff";
export { type ConnectionState, type Listener, Observable } from "./connection";
export { DeliveryRejected, type DeliveryDecoder, type VerificationKeys } from "./chain";
export { Inbox, type InboxPage } from "./inbox";
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
export { DeliveryState } from "./gen/herald/v1/ingest_pb";
export * from "./gen/herald/v1/notification_pb";
export * from "./gen/herald/v1/stream_pb";

export interface HeraldClientOptions {
  /** Envoy's gRPC-Web listener. */
  readonly baseUrl: string;
  readonly token: TokenSource;
}

export interface HeraldClient {
  readonly transport: GrpcWebTransport;
  readonly inbox: Inbox;
  subscribe(options: Omit<SubscribeOptions, "transport" | "token">): Subscription;
}

/** One transport for the stream and the inbox, with one token source. */
export function createHeraldClient(options: HeraldClientOptions): HeraldClient {
  const transport = new GrpcWebTransport({ baseUrl: options.baseUrl });
  return {
    transport,
    inbox: new Inbox(transport, options.token),
    subscribe: (subscribeOptions) =>
      new Subscription({ ...subscribeOptions, transport, token: options.token }),
  };
}
