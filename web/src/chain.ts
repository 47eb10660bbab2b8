/**
 * The client side of the transformer chain (docs/transformers.md): decoding and verifying what
 * StreamService sends when a subscriber asks for encodings in `accept_encodings`.
 *
 * `ChainDecoder` opens `Delivery.sealed`: decompresses its payload per `encoding` (gzip with the
 * platform's DecompressionStream, bounded), checks its Ed25519 signature with WebCrypto
 * (`crypto.subtle.verify("Ed25519", ...)`) over `"herald.notification.v1\n" + format + "\n" +
 * payload` against `VerificationKeys` (`SigningKeys`: from GetSigningKeys, or GET /signing-keys),
 * and parses it per `format` (protobuf, or protobuf's canonical JSON). zstd is not offered: no
 * browser decompresses it natively, so the decoder never asks for it (`acceptEncodings`), and a
 * zstd delivery (a server that sends it anyway) is rejected as undecodable.
 *
 * `Subscription` takes a decoder (`SubscribeOptions.decoder`), sends its `acceptEncodings`, and
 * passes every delivery that is not a duplicate through `decode` before the app. A rejected one
 * (`DeliveryRejected`, with its reason) is counted (`stats.rejected`, `stats.rejectedBy`) and
 * reported (`onReject`), never handed to the app, and still acked by its batch's watermark so it
 * is not redelivered forever (it stays in the user's inbox).
 *
 * `Inbox` takes the same decoder (`InboxOptions.decoder`): it sends the same `acceptEncodings`
 * in ListInboxRequest and opens every `InboxItem.sealed` with `decodeItem`, exactly as a
 * delivery; a rejected item is counted (`Inbox.stats`) and listed in the page's `rejected`,
 * never among its `items`.
 */

import { clone, create, fromBinary, fromJsonString } from "@bufbuild/protobuf";
import { type Notification, NotificationSchema } from "./gen/herald/v1/notification_pb";
import type { Delivery, GetSigningKeysResponse, InboxItem, SealedNotification } from "./gen/herald/v1/stream_pb";
import { DeliverySchema, InboxItemSchema } from "./gen/herald/v1/stream_pb";

/** Public keys to verify signatures with, by key id; served by Herald (an RPC, and over HTTP
 * for browsers). Old keys keep verifying until they are retired. */
export interface VerificationKeys {
  key(keyId: string): Promise<CryptoKey | undefined>;
}

export interface DeliveryDecoder {
  /** What to ask for in SubscribeRequest.accept_encodings, e.g. ["gzip", "signed"]. */
  readonly acceptEncodings: readonly string[];
  /** The delivery as the app should see it: decompressed, converted, its signature checked.
   * Rejects with `DeliveryRejected` when it was tampered with, or unsigned where a signature
   * was required. */
  decode(delivery: Delivery): Promise<Delivery>;
  /** The same for a ListInbox item: `notification` set, `sealed` cleared, the rest kept. */
  decodeItem(item: InboxItem): Promise<InboxItem>;
}

/** Why a delivery was rejected, as the Python client counts them. */
export type RejectReason = "unsigned" | "unknown_key" | "bad_signature" | "undecodable";

export class DeliveryRejected extends Error {
  readonly notificationId: string;
  readonly reason: RejectReason;

  constructor(notificationId: string, reason: RejectReason, detail?: string) {
    super(`delivery ${notificationId || "(sealed)"} rejected: ${reason}${detail ? ` (${detail})` : ""}`);
    this.name = "DeliveryRejected";
    this.notificationId = notificationId;
    this.reason = reason;
  }
}

/** The most a payload may decompress to (docs/transformers.md: 256 KiB, far above the 4 KiB
 * notification limit), so a compression bomb costs nothing. */
export const MAX_DECOMPRESSED_BYTES = 256 * 1024;
const SIGNED_PREFIX = new TextEncoder().encode("herald.notification.v1\n");
const NEWLINE = new TextEncoder().encode("\n");

/** The bytes a signature covers: "herald.notification.v1\n" + format + "\n" + payload. */
export function signedMessage(format: string, payload: Uint8Array): Uint8Array {
  const formatBytes = new TextEncoder().encode(format);
  const message = new Uint8Array(SIGNED_PREFIX.length + formatBytes.length + 1 + payload.length);
  message.set(SIGNED_PREFIX, 0);
  message.set(formatBytes, SIGNED_PREFIX.length);
  message.set(NEWLINE, SIGNED_PREFIX.length + formatBytes.length);
  message.set(payload, SIGNED_PREFIX.length + formatBytes.length + 1);
  return message;
}

/** gunzip with DecompressionStream (browsers, Node 18+), stopping past `limit` bytes. */
export async function gunzip(data: Uint8Array, limit = MAX_DECOMPRESSED_BYTES): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new DecompressionStream("gzip"));
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > limit) throw new Error(`decompresses to more than ${limit} bytes`);
      chunks.push(value);
    }
  } finally {
    reader.releaseLock();
    void stream.cancel().catch(() => undefined);
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

export interface ChainDecoderOptions {
  readonly keys: VerificationKeys;
  /** Ask for signatures and reject what is unsigned, by an unknown key, or does not verify
   * (default true). */
  readonly requireSignature?: boolean;
  /** Ask for gzip above the tenant's threshold (default true). zstd is never asked for. */
  readonly gzip?: boolean;
  /** The payload format to ask for (default "protobuf"). */
  readonly format?: "protobuf" | "json";
}

/** Opens and verifies sealed deliveries; see the module comment. */
export class ChainDecoder implements DeliveryDecoder {
  readonly acceptEncodings: readonly string[];
  readonly requireSignature: boolean;
  /** Sealed deliveries opened, by "format/encoding" (e.g. "protobuf/gzip"). */
  readonly opened: Record<string, number> = {};
  /** Sealed inbox items opened (`decodeItem`), by "format/encoding". */
  readonly openedItems: Record<string, number> = {};
  readonly #keys: VerificationKeys;

  constructor(options: ChainDecoderOptions) {
    this.#keys = options.keys;
    this.requireSignature = options.requireSignature ?? true;
    const tokens: string[] = [];
    if (options.format === "json") tokens.push("json");
    if (options.gzip ?? true) tokens.push("gzip");
    else tokens.push("identity");
    if (this.requireSignature) tokens.push("signed");
    this.acceptEncodings = tokens;
  }

  async decode(delivery: Delivery): Promise<Delivery> {
    if (delivery.sealed === undefined) {
      this.#unsealed(delivery.notification);
      return delivery;
    }
    const notification = await this.#opened(delivery.sealed, this.opened);
    return create(DeliverySchema, {
      notification,
      log: delivery.log,
      cursor: delivery.cursor,
      attempt: delivery.attempt,
      resumeCursor: delivery.resumeCursor,
    });
  }

  async decodeItem(item: InboxItem): Promise<InboxItem> {
    if (item.sealed === undefined) {
      this.#unsealed(item.notification);
      return item;
    }
    const notification = await this.#opened(item.sealed, this.openedItems);
    const opened = clone(InboxItemSchema, item);
    opened.sealed = undefined;
    opened.notification = notification;
    return opened;
  }

  /** A plain notification is refused where a signature is required. */
  #unsealed(notification: Notification | undefined): void {
    if (this.requireSignature) throw new DeliveryRejected(notification?.id ?? "", "unsigned");
  }

  async #opened(sealed: SealedNotification, counts: Record<string, number>): Promise<Notification> {
    const notification = await this.open(sealed);
    const kind = `${sealed.format}/${sealed.encoding}`;
    counts[kind] = (counts[kind] ?? 0) + 1;
    return notification;
  }

  /** The notification inside `sealed`, or DeliveryRejected. */
  async open(sealed: SealedNotification): Promise<Notification> {
    let payload: Uint8Array;
    try {
      if (sealed.encoding === "identity" || sealed.encoding === "") payload = sealed.payload;
      else if (sealed.encoding === "gzip") payload = await gunzip(sealed.payload);
      else throw new Error(`encoding ${sealed.encoding} is not supported here`);
    } catch (error) {
      throw new DeliveryRejected("", "undecodable", error instanceof Error ? error.message : String(error));
    }
    if (sealed.signature.length === 0 || sealed.keyId === "") {
      if (this.requireSignature) throw new DeliveryRejected("", "unsigned");
    } else {
      let key: CryptoKey | undefined;
      try {
        key = await this.#keys.key(sealed.keyId);
      } catch (error) {
        // The keys could not be fetched: nothing to verify with.
        const detail = `keys unavailable: ${error instanceof Error ? error.message : String(error)}`;
        if (this.requireSignature) throw new DeliveryRejected("", "unknown_key", detail);
      }
      if (key === undefined) {
        if (this.requireSignature) throw new DeliveryRejected("", "unknown_key", sealed.keyId);
      } else {
        let good = false;
        try {
          good = await crypto.subtle.verify(
            "Ed25519",
            key,
            sealed.signature as BufferSource,
            signedMessage(sealed.format, payload) as BufferSource,
          );
        } catch {
          good = false; // a signature of the wrong length
        }
        if (!good) throw new DeliveryRejected("", "bad_signature", `key ${sealed.keyId}`);
      }
    }
    try {
      if (sealed.format === "json") {
        return fromJsonString(NotificationSchema, new TextDecoder("utf-8", { fatal: true }).decode(payload), {
          ignoreUnknownFields: true,
        });
      }
      if (sealed.format === "protobuf" || sealed.format === "") return fromBinary(NotificationSchema, payload);
      throw new Error(`format ${sealed.format} is not supported`);
    } catch (error) {
      throw new DeliveryRejected("", "undecodable", error instanceof Error ? error.message : String(error));
    }
  }
}

/** A key as GetSigningKeys and GET /signing-keys describe it. */
export interface PublishedKey {
  readonly keyId: string;
  readonly algorithm: string;
  readonly publicKey: Uint8Array;
}

/** From a GetSigningKeys response. */
export function keysOf(response: GetSigningKeysResponse): PublishedKey[] {
  return response.keys.map((k) => ({ keyId: k.keyId, algorithm: k.algorithm, publicKey: k.publicKey }));
}

/** GET /signing-keys on a node's metrics port (JSON, no token, CORS *). */
export async function fetchSigningKeysHttp(
  url: string,
  fetchImpl: typeof globalThis.fetch = globalThis.fetch,
): Promise<PublishedKey[]> {
  const response = await fetchImpl(url, { headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
  const body = (await response.json()) as {
    keys?: Array<{ keyId?: string; algorithm?: string; publicKey?: string }>;
  };
  return (body.keys ?? []).map((k) => ({
    keyId: k.keyId ?? "",
    algorithm: k.algorithm ?? "",
    publicKey: Uint8Array.from(atob(k.publicKey ?? ""), (c) => c.charCodeAt(0)),
  }));
}

/**
 * The published keys, fetched on first use and again when a delivery names a key id not seen
 * yet (a rotation this page has not heard of), at most once per `refetchAfterMs` (default 5 s)
 * so deliveries naming a bogus key cannot make it fetch for each. Keys of an algorithm other
 * than ed25519 are ignored.
 */
export class SigningKeys implements VerificationKeys {
  readonly #fetch: () => Promise<readonly PublishedKey[]>;
  readonly #refetchAfterMs: number;
  #keys: Map<string, CryptoKey> | undefined;
  #fetchedAt = -Infinity;
  #loading: Promise<void> | undefined;
  /** How many times the keys were fetched. */
  fetches = 0;

  constructor(fetchKeys: () => Promise<readonly PublishedKey[]>, options: { refetchAfterMs?: number } = {}) {
    this.#fetch = fetchKeys;
    this.#refetchAfterMs = options.refetchAfterMs ?? 5_000;
  }

  async key(keyId: string): Promise<CryptoKey | undefined> {
    if (this.#keys === undefined) await this.#load();
    let key = this.#keys?.get(keyId);
    if (key === undefined && Date.now() - this.#fetchedAt >= this.#refetchAfterMs) {
      await this.#load();
      key = this.#keys?.get(keyId);
    }
    return key;
  }

  #load(): Promise<void> {
    this.#loading ??= (async () => {
      try {
        this.fetches += 1;
        const published = await this.#fetch();
        const keys = new Map<string, CryptoKey>();
        for (const k of published) {
          if (k.algorithm.toLowerCase() !== "ed25519" || k.publicKey.length !== 32) continue;
          keys.set(
            k.keyId,
            await crypto.subtle.importKey("raw", k.publicKey as BufferSource, { name: "Ed25519" }, false, [
              "verify",
            ]),
          );
        }
        this.#keys = keys;
        this.#fetchedAt = Date.now();
      } finally {
        this.#loading = undefined;
      }
    })();
    return this.#loading;
  }
}
