/**
 * A subscription that stays subscribed: it opens Subscribe, hands each notification to the app
 * once, acks what the app has had, and reconnects with exponential backoff and full jitter,
 * resuming every log from its cursor (kept across page reloads by its ResumeStore).
 *
 * It follows the Python client (services/client.py) and docs/delivery.md:
 * - A stream message's `resume_cursor`s become the logs' cursors once the app has had every
 *   delivery of the message; they are what the next acks cover (`up_to`, with their epochs).
 * - Acks go out once per `ackIntervalMs` (+-20 % jitter) while there is something new to ack,
 *   when a stream ends, and on `close()`, as unary Ack calls (gRPC-Web cannot stream requests).
 *   A failed ack is retried at the next interval; what stays unacked is redelivered by the
 *   server after its ack timeout and dropped here as a duplicate.
 * - Duplicates are dropped by (log, epoch, cursor), across reloads too.
 * - Closing REASON_DISCONNECTED (an operator's kick) and the errors reconnecting cannot fix
 *   (FATAL_CODES, unless a rate limit says when to retry) end it; everything else reconnects.
 */

import { create } from "@bufbuild/protobuf";
import { Backoff, type Random } from "./backoff";
import { type DeliveryDecoder, DeliveryRejected, type RejectReason } from "./chain";
import { type ConnectionState, Observable } from "./connection";
import {
  AckRequestSchema,
  Closing_Reason,
  type Delivery,
  LogCursorSchema,
  type SessionStarted,
  SubscribeRequestSchema,
} from "./gen/herald/v1/stream_pb";
import type { Notification } from "./gen/herald/v1/notification_pb";
import { MemoryResumeStore, ResumeState, type ResumeStore } from "./resume";
import { resolveToken, type TokenSource } from "./token";
import { FATAL_CODES, type StreamTransport, TransportError } from "./transport";

/** A notification as the app receives it: once, whatever the redeliveries. */
export interface Received {
  readonly notification: Notification;
  readonly log: string;
  readonly cursor: bigint;
  readonly attempt: number;
}

export interface SubscribeOptions {
  readonly transport: StreamTransport;
  readonly token: TokenSource;
  /** Called once per notification, in stream order; the next waits for a returned promise. */
  readonly onNotification: (received: Received) => void | Promise<void>;
  /** Channels to join (allowed by the token's `channels` claim). */
  readonly channels?: readonly string[];
  /** The device label in the session directory (default "web"). */
  readonly device?: string;
  /** Where cursors and the duplicate window live between page loads (default: memory only;
   * use `LocalStorageResumeStore` in a page). */
  readonly store?: ResumeStore;
  readonly backoff?: Backoff;
  /** Ack cadence (default 1 000 ms, +-20 %): well inside the server's 30 s ack timeout. */
  readonly ackIntervalMs?: number;
  /** How many entries the duplicate check remembers (default 1 000). */
  readonly dedupeWindow?: number;
  /** Told of errors the subscription recovers from: a handler that threw, a failed ack. */
  readonly onError?: (error: unknown) => void;
  readonly onSessionStarted?: (started: SessionStarted) => void;
  readonly random?: Random;
  /** Opens and verifies the transformer chain's sealed deliveries (`ChainDecoder`); its
   * `acceptEncodings` are what the subscription asks for. Default: none (plain protobuf). */
  readonly decoder?: DeliveryDecoder;
  /** Told of every delivery the decoder rejected (tampered, unsigned where required). */
  readonly onReject?: (rejected: DeliveryRejected, delivery: Delivery) => void;
}

export interface SubscriptionStats {
  /** Notifications handed to the app. */
  delivered: number;
  /** Deliveries dropped as already handed to the app. */
  duplicates: number;
  /** Entries the server reported as changed to ACKED by this subscription's acks. */
  acked: number;
  /** Ack calls that succeeded. */
  ackCalls: number;
  /** SessionStarted events: 1 + successful reconnects. */
  connects: number;
  /** Deliveries the decoder rejected, never handed to the app. */
  rejected: number;
  rejectedBy: Record<RejectReason, number>;
}

const ACK_TIMEOUT_MS = 5_000;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

export class Subscription {
  /** connecting / open / reconnecting / closed, observable. */
  readonly state = new Observable<ConnectionState>({ kind: "connecting", attempt: 1 });
  readonly stats: SubscriptionStats = {
    delivered: 0,
    duplicates: 0,
    acked: 0,
    ackCalls: 0,
    connects: 0,
    rejected: 0,
    rejectedBy: { unsigned: 0, unknown_key: 0, bad_signature: 0, undecodable: 0 },
  };
  readonly resume: ResumeState;
  /** Resolves when the subscription has ended (closed, kicked, or a fatal error). */
  readonly done: Promise<void>;

  readonly #options: SubscribeOptions;
  readonly #backoff: Backoff;
  readonly #random: Random;
  readonly #ackIntervalMs: number;
  readonly #closed = new AbortController();
  #stream: AbortController | undefined;
  /** This stream's watermarks of what the app has had: what the next ack covers. */
  #handled = new Map<string, bigint>();
  #ackDue = false;
  #ackTimer: ReturnType<typeof setTimeout> | undefined;
  #flushing: Promise<void> | undefined;

  constructor(options: SubscribeOptions) {
    this.#options = options;
    this.#backoff = options.backoff ?? new Backoff();
    this.#random = options.random ?? Math.random;
    this.#ackIntervalMs = options.ackIntervalMs ?? 1_000;
    this.resume = new ResumeState(options.store ?? new MemoryResumeStore(), options.dedupeWindow);
    this.done = this.#run();
  }

  get closed(): boolean {
    return this.#closed.signal.aborted;
  }

  /** Ends the subscription: the stream is closed and what the app has had is acked. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.#closed.abort();
      this.#stream?.abort();
    }
    await this.done;
  }

  /** Acks now what the app has had, instead of at the next interval. */
  flushAcks(): Promise<void> {
    // One ack in flight at a time; a flush asked for meanwhile waits for it and then sends
    // what is new.
    const previous = this.#flushing ?? Promise.resolve();
    const next = previous.then(() => this.#sendAck());
    this.#flushing = next.finally(() => {
      if (this.#flushing === next) this.#flushing = undefined;
    });
    return next;
  }

  async #sendAck(): Promise<void> {
    if (!this.#ackDue) return;
    this.#ackDue = false;
    if (this.#ackTimer !== undefined) {
      clearTimeout(this.#ackTimer);
      this.#ackTimer = undefined;
    }
    const upTo = [...this.#handled].map(([log, cursor]) =>
      create(LogCursorSchema, { log, cursor, epoch: this.resume.epoch(log) }),
    );
    if (upTo.length === 0) return;
    try {
      const token = await resolveToken(this.#options.token);
      const acked = await this.#options.transport.ack(create(AckRequestSchema, { upTo }), {
        token,
        timeoutMs: ACK_TIMEOUT_MS,
      });
      this.stats.acked += acked;
      this.stats.ackCalls += 1;
    } catch (error) {
      this.#ackDue = true;
      this.#report(error);
      if (!this.closed) this.#scheduleAck();
    }
  }

  #scheduleAck(): void {
    if (this.#ackTimer !== undefined) return;
    // Jittered: tabs that connected together would otherwise ack together, every interval.
    const delay = this.#ackIntervalMs * (0.8 + 0.4 * this.#random());
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = undefined;
      void this.flushAcks();
    }, delay);
  }

  #report(error: unknown): void {
    if (this.#options.onError) this.#options.onError(error);
    else console.warn("herald subscription:", error);
  }

  async #run(): Promise<void> {
    let failures = 0;
    let attempt = 0;
    try {
      while (!this.closed) {
        attempt += 1;
        this.state.set({ kind: "connecting", attempt });
        let retryAfterMs = 0;
        let rateLimitedMs = 0;
        let reason = "the server ended the stream";
        const stream = new AbortController();
        this.#stream = stream;
        try {
          const token = await resolveToken(this.#options.token);
          const request = create(SubscribeRequestSchema, {
            cursors: this.resume.cursors(),
            channels: [...(this.#options.channels ?? [])],
            device: this.#options.device ?? "web",
            acceptEncodings: [...(this.#options.decoder?.acceptEncodings ?? [])],
          });
          const events = this.#options.transport.subscribe(request, {
            token,
            signal: stream.signal,
          });
          for await (const { event } of events) {
            if (event.case === "sessionStarted") {
              this.resume.started(event.value.logs);
              failures = 0;
              this.stats.connects += 1;
              this.state.set({
                kind: "open",
                sessionId: event.value.sessionId,
                nodeId: event.value.nodeId,
              });
              this.#options.onSessionStarted?.(event.value);
            } else if (event.case === "deliveries") {
              await this.#deliver(event.value.deliveries);
            } else if (event.case === "closing") {
              retryAfterMs = event.value.retryAfterMs;
              reason = `${Closing_Reason[event.value.reason]}: ${event.value.message}`;
              // Ack now, while the stream is still there: a WebSocket session reads acks for a
              // moment after Closing, then closes (docs/websocket.md, 5).
              await this.flushAcks();
              if (event.value.reason === Closing_Reason.DISCONNECTED) {
                await this.#end(reason);
                return;
              }
            }
            // Heartbeats only keep the stream (and Envoy's idle timer) alive.
            if (this.closed) break;
          }
        } catch (error) {
          if (this.closed) break;
          if (error instanceof TransportError) {
            if (error.retryAfterMs === undefined && FATAL_CODES.has(error.code)) {
              await this.#end(error.message, error);
              return;
            }
            rateLimitedMs = error.retryAfterMs ?? 0;
            reason = error.message;
          } else {
            // fetch's TypeError (the proxy is down), a token source that failed.
            reason = error instanceof Error ? error.message : String(error);
          }
          failures += 1;
        } finally {
          stream.abort();
          this.#stream = undefined;
        }
        if (this.closed) break;
        await this.flushAcks();
        this.#handled = new Map(); // the next stream has watermarks of its own
        let delayMs = Math.max(retryAfterMs, this.#backoff.delayMs(failures, this.#random));
        if (rateLimitedMs > 0) {
          // Spread the tabs a limit refused together (up to a fifth later).
          delayMs = Math.max(delayMs, rateLimitedMs * (1 + 0.2 * this.#random()));
        }
        this.state.set({ kind: "reconnecting", reason, delayMs, failures });
        await sleep(delayMs, this.#closed.signal);
      }
      await this.#end("closed by the app");
    } catch (error) {
      // A bug here must not leave the page believing it is connected.
      await this.#end("the subscription failed", error);
    }
  }

  async #end(reason: string, error?: unknown): Promise<void> {
    this.#closed.abort();
    await this.flushAcks();
    if (this.#ackTimer !== undefined) clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
    this.state.set(error === undefined ? { kind: "closed", reason } : { kind: "closed", reason, error });
  }

  /** The delivery through the decoder; undefined when it rejected it. */
  async #open(delivery: Delivery): Promise<Delivery | undefined> {
    const decoder = this.#options.decoder;
    if (decoder === undefined) return delivery.notification !== undefined ? delivery : undefined;
    try {
      return await decoder.decode(delivery);
    } catch (error) {
      const rejected =
        error instanceof DeliveryRejected ? error : new DeliveryRejected("", "undecodable", String(error));
      this.stats.rejected += 1;
      this.stats.rejectedBy[rejected.reason] += 1;
      if (this.#options.onReject) this.#options.onReject(rejected, delivery);
      else this.#report(rejected);
      return undefined;
    }
  }

  async #deliver(batch: readonly Delivery[]): Promise<void> {
    const watermarks = new Map<string, bigint>();
    for (const delivery of batch) {
      // The duplicate check first (log, epoch and cursor are transport state, not sealed): a
      // redelivery costs no decompression or signature check. Then the decoder: a rejected
      // delivery is counted and reported, not remembered (a good copy may still come) and not
      // handed on; the watermark moves past it all the same.
      const { log, cursor } = delivery;
      if (this.resume.isDuplicate(log, cursor)) {
        this.stats.duplicates += 1;
      } else {
        const opened = await this.#open(delivery);
        if (opened?.notification !== undefined) {
          this.resume.remember(log, cursor);
          this.stats.delivered += 1;
          try {
            await this.#options.onNotification({
              notification: opened.notification,
              log,
              cursor,
              attempt: delivery.attempt,
            });
          } catch (error) {
            // The app had it; its failure is its own. Stopping here would redeliver it forever.
            this.#report(error);
          }
        }
      }
      const mark = watermarks.get(log);
      if (mark === undefined || delivery.resumeCursor > mark) {
        watermarks.set(log, delivery.resumeCursor);
      }
    }
    this.resume.advance(watermarks);
    for (const [log, cursor] of watermarks) this.#handled.set(log, cursor);
    this.#ackDue = true;
    this.#scheduleAck();
  }
}

/** Starts a subscription; see `SubscribeOptions`. */
export function subscribe(options: SubscribeOptions): Subscription {
  return new Subscription(options);
}
