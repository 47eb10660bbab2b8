// The chain's client side: gzip and identity payloads, protobuf and JSON formats, Ed25519 with
// WebCrypto (Node's, the same API as the browser's), and every way a delivery is rejected;
// then the decoder under the real Subscription against the in-memory StreamService.
import { create, type MessageInitShape, toBinary, toJsonString } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import {
  ChainDecoder,
  DeliveryRejected,
  gunzip,
  type PublishedKey,
  SigningKeys,
  signedMessage,
} from "../src/chain";
import { NotificationSchema } from "../src/gen/herald/v1/notification_pb";
import { DeliverySchema, type SealedNotification, SealedNotificationSchema } from "../src/gen/herald/v1/stream_pb";
import { Inbox } from "../src/inbox";
import { createHeraldClient } from "../src/index";
import { type Received, Subscription } from "../src/subscription";
import { batch, FakeServer, hold, started } from "./fake-server";
import { until } from "./helpers";

/** gzip with CompressionStream (Node's zlib underneath; the package has no @types/node). */
async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

interface Signer {
  keyId: string;
  pair: CryptoKeyPair;
  published: PublishedKey;
}

async function signer(keyId: string): Promise<Signer> {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const publicKey = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return { keyId, pair, published: { keyId, algorithm: "ed25519", publicKey } };
}

const notification = (id: string) =>
  create(NotificationSchema, { id, tenantId: "acme", content: { title: `title ${id}`, body: "b".repeat(400) } });

/** What the server's chain does: format, then sign, then compress. */
async function seal(
  id: string,
  options: { by?: Signer; format?: "protobuf" | "json"; encoding?: "identity" | "gzip" } = {},
): Promise<SealedNotification> {
  const format = options.format ?? "protobuf";
  const payload =
    format === "json"
      ? new TextEncoder().encode(toJsonString(NotificationSchema, notification(id)))
      : toBinary(NotificationSchema, notification(id));
  const signature = options.by
    ? new Uint8Array(await crypto.subtle.sign("Ed25519", options.by.pair.privateKey, signedMessage(format, payload) as BufferSource))
    : new Uint8Array();
  const encoding = options.encoding ?? "gzip";
  return create(SealedNotificationSchema, {
    format,
    encoding,
    keyId: options.by?.keyId ?? "",
    signature,
    payload: encoding === "gzip" ? await gzip(payload) : payload,
  });
}

function sealedDelivery(sealed: SealedNotification, cursor: bigint): MessageInitShape<typeof DeliverySchema> {
  return { sealed, log: "user", cursor, attempt: 1, resumeCursor: cursor };
}

async function rejection(decoder: ChainDecoder, sealed: SealedNotification): Promise<string> {
  try {
    await decoder.decode(create(DeliverySchema, sealedDelivery(sealed, 1n)));
  } catch (error) {
    if (error instanceof DeliveryRejected) return error.reason;
    throw error;
  }
  return "accepted";
}

describe("ChainDecoder", () => {
  it("opens gzip and identity, protobuf and JSON, signed deliveries, and asks for no zstd", async () => {
    const key = await signer("2026-12");
    const decoder = new ChainDecoder({ keys: new SigningKeys(async () => [key.published]) });
    expect(decoder.acceptEncodings).toEqual(["gzip", "signed"]);
    expect(new ChainDecoder({ keys: decoder as never, format: "json", gzip: false }).acceptEncodings).toEqual([
      "json",
      "identity",
      "signed",
    ]);
    for (const format of ["protobuf", "json"] as const) {
      for (const encoding of ["gzip", "identity"] as const) {
        const opened = await decoder.decode(
          create(DeliverySchema, sealedDelivery(await seal(`n-${format}-${encoding}`, { by: key, format, encoding }), 7n)),
        );
        expect(opened.notification?.id).toBe(`n-${format}-${encoding}`);
        expect(opened.notification?.content?.body).toBe("b".repeat(400));
        expect(opened.sealed).toBeUndefined();
        expect([opened.log, opened.cursor, opened.resumeCursor]).toEqual(["user", 7n, 7n]);
      }
    }
  });

  it("rejects a tampered payload or signature, the wrong key, unsigned and undecodable ones", async () => {
    const key = await signer("2026-12");
    const other = await signer("2026-12"); // same id, not the published key: a forger's
    const decoder = new ChainDecoder({ keys: new SigningKeys(async () => [key.published]) });

    const good = await seal("a", { by: key, encoding: "identity" });
    const payload = good.payload.slice();
    payload[payload.length - 1]! ^= 1;
    expect(await rejection(decoder, create(SealedNotificationSchema, { ...good, payload }))).toBe("bad_signature");
    const signature = good.signature.slice();
    signature[0]! ^= 1;
    expect(await rejection(decoder, create(SealedNotificationSchema, { ...good, signature }))).toBe("bad_signature");
    // The format is signed too: protobuf bytes passed off as JSON do not verify.
    expect(await rejection(decoder, create(SealedNotificationSchema, { ...good, format: "json" }))).toBe("bad_signature");
    expect(await rejection(decoder, await seal("b", { by: other }))).toBe("bad_signature");
    expect(await rejection(decoder, await seal("c"))).toBe("unsigned");
    expect(await rejection(decoder, await seal("d", { by: await signer("nobody") }))).toBe("unknown_key");
    expect(
      await rejection(decoder, create(SealedNotificationSchema, { ...(await seal("e", { by: key })), encoding: "zstd" })),
    ).toBe("undecodable");
    const unsignedPlain = create(DeliverySchema, { notification: notification("f"), log: "user", cursor: 1n });
    await expect(decoder.decode(unsignedPlain)).rejects.toMatchObject({ reason: "unsigned" });
    // Not requiring signatures: unsigned ones pass, bad ones still do not.
    const lax = new ChainDecoder({ keys: new SigningKeys(async () => [key.published]), requireSignature: false });
    expect((await lax.decode(unsignedPlain)).notification?.id).toBe("f");
    expect(await rejection(lax, await seal("g"))).toBe("accepted");
    expect(await rejection(lax, await seal("h", { by: other }))).toBe("bad_signature");
  });

  it("bounds decompression: a gzip bomb is rejected, not inflated", async () => {
    const bomb = await gzip(new Uint8Array(2 * 1024 * 1024));
    await expect(gunzip(bomb)).rejects.toThrow(/more than/);
    const key = await signer("k");
    const decoder = new ChainDecoder({ keys: new SigningKeys(async () => [key.published]) });
    const sealed = create(SealedNotificationSchema, { format: "protobuf", encoding: "gzip", keyId: "k", signature: new Uint8Array(64), payload: bomb });
    expect(await rejection(decoder, sealed)).toBe("undecodable");
    expect(await rejection(decoder, create(SealedNotificationSchema, { ...sealed, payload: new Uint8Array([1, 2, 3]) }))).toBe(
      "undecodable",
    );
  });

  it("fetches the keys again for an unseen key id (a rotation), at most once per interval", async () => {
    const old = await signer("2026-11");
    const rotated = await signer("2026-12");
    let published = [old.published];
    const keys = new SigningKeys(async () => published, { refetchAfterMs: 0 });
    const decoder = new ChainDecoder({ keys });
    expect(await rejection(decoder, await seal("a", { by: old }))).toBe("accepted");
    published = [old.published, rotated.published];
    expect(await rejection(decoder, await seal("b", { by: rotated }))).toBe("accepted");
    expect(keys.fetches).toBe(2);
    const slow = new SigningKeys(async () => [old.published], { refetchAfterMs: 60_000 });
    const strict = new ChainDecoder({ keys: slow });
    expect(await rejection(strict, await seal("c", { by: rotated }))).toBe("unknown_key");
    expect(await rejection(strict, await seal("d", { by: rotated }))).toBe("unknown_key");
    expect(slow.fetches).toBe(1);
  });
});

describe("Subscription with a ChainDecoder", () => {
  it("asks for the decoder's encodings, hands over what verifies, counts the rest and acks past it", async () => {
    const key = await signer("2026-12");
    const forger = await signer("2026-12");
    const good1 = await seal("good-1", { by: key });
    const bad = await seal("tampered", { by: forger });
    const good2 = await seal("good-2", { by: key, format: "json" });
    const server = new FakeServer([
      async function* (_request, context) {
        yield started([["user", 4n]]);
        yield batch(sealedDelivery(good1, 1n), sealedDelivery(bad, 2n), sealedDelivery(good2, 3n));
        yield* hold(context);
      },
    ]);
    server.signingKeys = [{ ...key.published, active: true }];
    const client = createHeraldClient({ baseUrl: "http://unused.test", token: "t" });
    // The client's own key source, over the fake server's GetSigningKeys.
    const transport = server.transport();
    const { keysOf } = await import("../src/chain");
    const keys = new SigningKeys(async () => keysOf(await transport.getSigningKeys({ token: "t" })));
    expect(client.signingKeys).toBeInstanceOf(SigningKeys);
    const received: Received[] = [];
    const rejected: string[] = [];
    const subscription = new Subscription({
      transport,
      token: "t",
      ackIntervalMs: 10,
      decoder: new ChainDecoder({ keys }),
      onNotification: (r) => {
        received.push(r);
      },
      onReject: (error) => rejected.push(error.reason),
    });
    await until(() => server.acks.length > 0, "an ack");
    expect(server.requests[0]?.acceptEncodings).toEqual(["gzip", "signed"]);
    expect(received.map((r) => r.notification.id)).toEqual(["good-1", "good-2"]);
    expect(rejected).toEqual(["bad_signature"]);
    expect(subscription.stats.rejected).toBe(1);
    expect(subscription.stats.rejectedBy.bad_signature).toBe(1);
    expect(subscription.stats.delivered).toBe(2);
    expect(server.keyFetches).toBe(1);
    // The batch's watermark covers the rejected delivery: it is not redelivered forever.
    expect(server.acks[0]?.upTo.map((c) => [c.log, c.cursor])).toEqual([["user", 3n]]);
    await subscription.close();
  });
});

describe("Inbox with a ChainDecoder", () => {
  it("asks for the decoder's encodings, opens what verifies, lists and counts the rest as rejected", async () => {
    const key = await signer("2026-12");
    const forger = await signer("2026-12");
    const server = new FakeServer([]);
    server.signingKeys = [{ ...key.published, active: true }];
    const good = await seal("good", { by: key });
    const json = await seal("json", { by: key, format: "json", encoding: "identity" });
    // A forged payload under a real signature, and one signed by a key of the same id.
    const forged = create(SealedNotificationSchema, {
      ...(await seal("real", { by: key, encoding: "identity" })),
      payload: toBinary(NotificationSchema, notification("forged")),
    });
    server.inboxItems = [
      { sealed: good, cursor: 4n, readAt: { seconds: 9n } },
      { sealed: forged, cursor: 3n },
      { sealed: await seal("other", { by: forger }), cursor: 2n },
      { sealed: json, cursor: 1n },
      { notification: notification("plain"), cursor: 0n },
    ];
    const transport = server.transport();
    const { keysOf } = await import("../src/chain");
    const keys = new SigningKeys(async () => keysOf(await transport.getSigningKeys({ token: "t" })));
    const reported: Array<[string, bigint]> = [];
    const decoder = new ChainDecoder({ keys });
    const inbox = new Inbox(transport, "t", {
      decoder,
      onReject: (rejected, item) => reported.push([rejected.reason, item.cursor]),
    });
    const page = await inbox.page();
    expect(server.inboxRequests[0]?.acceptEncodings).toEqual(["gzip", "signed"]);
    expect(page.items.map((i) => [i.notification?.id, i.cursor])).toEqual([
      ["good", 4n],
      ["json", 1n],
    ]);
    expect(page.items.every((i) => i.sealed === undefined)).toBe(true);
    expect(page.items[0]?.readAt?.seconds).toBe(9n);
    expect(decoder.openedItems).toEqual({ "protobuf/gzip": 1, "json/identity": 1 });
    expect(decoder.opened).toEqual({});
    expect(page.rejected.map((r) => [r.rejected.reason, r.item.cursor])).toEqual([
      ["bad_signature", 3n],
      ["bad_signature", 2n],
      ["unsigned", 0n],
    ]);
    expect(reported).toEqual([
      ["bad_signature", 3n],
      ["bad_signature", 2n],
      ["unsigned", 0n],
    ]);
    expect(inbox.stats.rejected).toBe(3);
    expect(inbox.stats.rejectedBy).toEqual({ unsigned: 1, unknown_key: 0, bad_signature: 2, undecodable: 0 });
    // The unread ids count only what opened (the forged item's id is not trusted).
    expect([...(await inbox.unreadIds())]).toEqual(["json"]);
  });

  it("without a decoder, asks for nothing and passes items as they are", async () => {
    const server = new FakeServer([]);
    server.inbox = [{ id: "a", read: false }];
    const inbox = createHeraldClient({ baseUrl: "http://unused.test", token: "t" }).inbox;
    const plain = new Inbox(server.transport(), "t");
    const page = await plain.page();
    expect(server.inboxRequests[0]?.acceptEncodings).toEqual([]);
    expect(page.items.map((i) => i.notification?.id)).toEqual(["a"]);
    expect(page.rejected).toEqual([]);
    expect(inbox.withDecoder(new ChainDecoder({ keys: new SigningKeys(async () => []) }))).toBeInstanceOf(Inbox);
  });

  it("without a decoder, opens what the tenant seals anyway, unverified", async () => {
    const key = await signer("2026-12");
    const server = new FakeServer([]);
    const forged = create(SealedNotificationSchema, {
      ...(await seal("real", { by: key, encoding: "identity" })),
      payload: toBinary(NotificationSchema, notification("forged")),
    });
    const broken = create(SealedNotificationSchema, { format: "protobuf", encoding: "zstd" });
    server.inboxItems = [
      { sealed: await seal("signed", { by: key }), cursor: 3n },
      { sealed: forged, cursor: 2n },
      { sealed: broken, cursor: 1n },
    ];
    const inbox = new Inbox(server.transport(), "t");
    const page = await inbox.page();
    expect(server.inboxRequests[0]?.acceptEncodings).toEqual([]);
    // Nothing verified: the forged payload opens as it came (a client that verifies rejects it).
    expect(page.items.map((i) => [i.notification?.id, i.cursor, i.sealed])).toEqual([
      ["signed", 3n, undefined],
      ["forged", 2n, undefined],
    ]);
    expect(page.rejected.map((r) => [r.rejected.reason, r.item.cursor])).toEqual([["undecodable", 1n]]);
    expect(server.keyFetches).toBe(0);
  });
});
