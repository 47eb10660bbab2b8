/**
 * The client side of the transformer chain (issue #11 part 1): decoding and verifying what
 * StreamService sends when a subscriber asks for encodings in `accept_encodings`.
 *
 * NOT YET WIRED. The chain (compression, Ed25519 signing, JSON) is being built on another
 * branch and is not on main; until it is, this client asks for no encodings (plain protobuf)
 * and nothing implements these interfaces. They mark where it plugs in: `Subscription` will
 * take a `DeliveryDecoder`, send its `acceptEncodings` in the SubscribeRequest, and pass every
 * delivery through `decode` before the duplicate check and the app (see the NOT YET WIRED note
 * in subscription.ts). A rejected delivery is counted and shown, never handed to the app, and
 * still acked by its batch's watermark so it is not redelivered forever.
 */

import type { Delivery } from "./gen/herald/v1/stream_pb";

/** Public keys to verify signatures with, by key id; served by Herald (an RPC, and over HTTP
 * for browsers). Old keys keep verifying until they are retired. */
export interface VerificationKeys {
  key(keyId: string): Promise<CryptoKey | undefined>;
}

export interface DeliveryDecoder {
  /** What to ask for in SubscribeRequest.accept_encodings, e.g. ["zstd", "ed25519"]. */
  readonly acceptEncodings: readonly string[];
  /** The delivery as the app should see it: decompressed, converted, its signature checked.
   * Rejects with `DeliveryRejected` when it was tampered with, or unsigned where a signature
   * was required. */
  decode(delivery: Delivery): Promise<Delivery>;
}

export class DeliveryRejected extends Error {
  readonly notificationId: string;

  constructor(notificationId: string, reason: string) {
    super(`delivery ${notificationId} rejected: ${reason}`);
    this.name = "DeliveryRejected";
    this.notificationId = notificationId;
  }
}
