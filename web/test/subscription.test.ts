import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { Backoff } from "../src/backoff";
import type { ConnectionState } from "../src/connection";
import { Closing_Reason } from "../src/gen/herald/v1/stream_pb";
import { Inbox } from "../src/inbox";
import { LocalStorageResumeStore } from "../src/resume";
import { type Received, type SubscribeOptions, Subscription } from "../src/subscription";
import { batch, closing, delivery, FakeServer, hold, started } from "./fake-server";
import { MemoryStorage, until } from "./helpers";

const fast = new Backoff({ baseMs: 5, capMs: 20 });

function start(server: FakeServer, options: Partial<SubscribeOptions> = {}) {
  const received: Received[] = [];
  const states: ConnectionState[] = [];
  const subscription = new Subscription({
    transport: server.transport(),
    token: "token-1",
    backoff: fast,
    ackIntervalMs: 10,
    onNotification: (r) => {
      received.push(r);
    },
    ...options,
  });
  subscription.state.subscribe((state) => states.push(state));
  return { subscription, received, states };
}

describe("Subscription", () => {
  it("hands notifications over, keeps the watermark and acks up to it with its epoch", async () => {
    const server = new FakeServer([
      async function* (_request, context) {
        yield started([["user", 3n]]);
        yield batch(delivery("a", 1n, { resumeCursor: 1n }), delivery("b", 2n, { resumeCursor: 2n }));
        yield* hold(context);
      },
    ]);
    const { subscription, received, states } = start(server);
    await until(() => server.acks.length > 0, "an ack");
    expect(received.map((r) => r.notification.id)).toEqual(["a", "b"]);
    expect(server.tokens).toEqual(["Bearer token-1"]);
    const [ack] = server.acks;
    expect(ack?.upTo.map((c) => [c.log, c.cursor, c.epoch])).toEqual([["user", 2n, 3n]]);
    expect(subscription.resume.cursor("user")).toEqual({ cursor: 2n, epoch: 3n });
    expect(states.map((s) => s.kind)).toEqual(["connecting", "open"]);
    await subscription.close();
    expect(subscription.state.value).toMatchObject({ kind: "closed", reason: "closed by the app" });
    // Nothing new since the last ack: closing sends no second one.
    expect(server.acks.length).toBe(1);
  });

  it("reconnects after an error with its cursors and epochs, and drops redeliveries", async () => {
    const server = new FakeServer([
      async function* () {
        yield started([["user", 1n]]);
        yield batch(delivery("a", 1n), delivery("b", 2n));
        throw new ConnectError("node went away", Code.Unavailable);
      },
      async function* (_request, context) {
        yield started([["user", 1n]]);
        // The server redelivers b (unacked), then c; b carries the same cursor.
        yield batch(delivery("b", 2n, { attempt: 2 }), delivery("c", 3n));
        yield* hold(context);
      },
    ]);
    const { subscription, received, states } = start(server, { ackIntervalMs: 60_000 });
    await until(() => received.length === 3, "three notifications");
    expect(received.map((r) => r.notification.id)).toEqual(["a", "b", "c"]);
    expect(subscription.stats.duplicates).toBe(1);
    const resumed = server.requests[1];
    expect(resumed?.cursors.map((c) => [c.log, c.cursor, c.epoch])).toEqual([["user", 2n, 1n]]);
    expect(resumed?.device).toBe("web");
    const kinds = states.map((s) => s.kind);
    expect(kinds).toEqual(["connecting", "open", "reconnecting", "connecting", "open"]);
    const reconnecting = states[2];
    expect(reconnecting).toMatchObject({ kind: "reconnecting", failures: 1 });
    expect(reconnecting?.kind === "reconnecting" && reconnecting.reason).toContain("UNAVAILABLE");
    // The stream that ended had its watermark acked before the reconnect.
    expect(server.acks[0]?.upTo.map((c) => c.cursor)).toEqual([2n]);
    await subscription.close();
    expect(server.acks.at(-1)?.upTo.map((c) => c.cursor)).toEqual([3n]);
  });

  it("resumes after a page reload from localStorage without handing a duplicate over", async () => {
    const storage = new MemoryStorage();
    const store = () => new LocalStorageResumeStore("herald.resume:test", storage);
    const first = new FakeServer([
      async function* (_request, context) {
        yield started([["user", 9n]]);
        yield batch(delivery("a", 1n), delivery("b", 2n));
        yield* hold(context);
      },
    ]);
    const page1 = start(first, { store: store(), ackIntervalMs: 60_000 });
    await until(() => page1.received.length === 2, "two notifications");
    // The page goes away without acking (closed tab: no flush).
    expect(first.acks).toEqual([]);

    const second = new FakeServer([
      async function* (_request, context) {
        yield started([["user", 9n]]);
        // After the ack timeout the server sends b again, then c arrives.
        yield batch(delivery("b", 2n, { attempt: 2 }), delivery("c", 3n));
        yield* hold(context);
      },
    ]);
    const page2 = start(second, { store: store() });
    await until(() => page2.received.length === 1, "the new notification");
    expect(second.requests[0]?.cursors.map((c) => [c.log, c.cursor, c.epoch])).toEqual([
      ["user", 2n, 9n],
    ]);
    expect(page2.received.map((r) => r.notification.id)).toEqual(["c"]);
    expect(page2.subscription.stats.duplicates).toBe(1);
    await until(() => second.acks.length > 0, "the ack");
    expect(second.acks[0]?.upTo.map((c) => c.cursor)).toEqual([3n]);
    await page1.subscription.close();
    await page2.subscription.close();
  });

  it("stops for good on an error reconnecting cannot fix", async () => {
    const server = new FakeServer([
      async function* () {
        yield* [];
        throw new ConnectError("token expired", Code.Unauthenticated);
      },
    ]);
    const { subscription, states } = start(server);
    await subscription.done;
    expect(server.requests.length).toBe(1);
    const last = states.at(-1);
    expect(last).toMatchObject({ kind: "closed" });
    expect(last?.kind === "closed" && last.reason).toContain("UNAUTHENTICATED");
  });

  it("stops when an operator disconnects the session", async () => {
    const server = new FakeServer([
      async function* () {
        yield started();
        yield closing(Closing_Reason.DISCONNECTED);
      },
    ]);
    const { subscription } = start(server);
    await subscription.done;
    expect(server.requests.length).toBe(1);
    expect(subscription.state.value).toMatchObject({ kind: "closed" });
  });

  it("waits what Closing asks, and calls the token source again (token expiry)", async () => {
    let issued = 0;
    const server = new FakeServer([
      async function* () {
        yield started();
        yield closing(Closing_Reason.TOKEN_EXPIRED, 50);
      },
    ]);
    const { subscription, states } = start(server, {
      token: () => `token-${++issued}`,
      random: () => 0,
    });
    await until(() => server.requests.length === 2, "the reconnect");
    expect(server.tokens).toEqual(["Bearer token-1", "Bearer token-2"]);
    const waited = states.find((s) => s.kind === "reconnecting");
    expect(waited).toMatchObject({ kind: "reconnecting", delayMs: 50, failures: 0 });
    await subscription.close();
  });

  it("honours a rate limit's retry-after instead of giving up", async () => {
    const server = new FakeServer([
      async function* () {
        yield* [];
        throw new ConnectError("slow down", Code.ResourceExhausted, { "retry-after": "0.04" });
      },
    ]);
    const { subscription, states } = start(server, { random: () => 0 });
    await until(() => server.requests.length === 2, "the retry");
    const waited = states.find((s) => s.kind === "reconnecting");
    expect(waited).toMatchObject({ kind: "reconnecting", delayMs: 40, failures: 1 });
    await subscription.close();
  });

  it("backs off exponentially while the proxy stays down", async () => {
    let connects = 0;
    const failing = async function* () {
      connects += 1;
      yield* [];
      throw new ConnectError("down", Code.Unavailable);
    };
    const server = new FakeServer([failing, failing, failing, failing]);
    const { subscription, states } = start(server, {
      backoff: new Backoff({ baseMs: 1, capMs: 4 }),
      random: () => 1 - 1e-12,
    });
    await until(() => connects === 4, "four attempts");
    const delays = states.flatMap((s) => (s.kind === "reconnecting" ? [Math.round(s.delayMs)] : []));
    expect(delays.slice(0, 4)).toEqual([2, 4, 4, 4]);
    await subscription.close();
  });

  it("retries a failed ack at the next interval", async () => {
    const server = new FakeServer([
      async function* (_request, context) {
        yield started();
        yield batch(delivery("a", 1n));
        yield* hold(context);
      },
    ]);
    server.ackError = new ConnectError("blip", Code.Unavailable);
    const errors: unknown[] = [];
    const { subscription } = start(server, { onError: (e) => errors.push(e) });
    await until(() => errors.length > 0, "the failed ack");
    server.ackError = undefined;
    await until(() => server.acks.length === 1, "the retried ack");
    expect(server.acks[0]?.upTo.map((c) => c.cursor)).toEqual([1n]);
    await subscription.close();
  });

  it("counts a log the server could not resume and drops its cursor", async () => {
    const storage = new MemoryStorage();
    storage.setItem("k", JSON.stringify({ v: 1, logs: { user: ["40", "1"] }, seen: ["user@1#40"] }));
    const server = new FakeServer([
      async function* (_request, context) {
        yield started([["user", 2n, false]]);
        yield batch(delivery("fresh", 40n));
        yield* hold(context);
      },
    ]);
    const { subscription, received } = start(server, { store: new LocalStorageResumeStore("k", storage) });
    await until(() => received.length === 1, "the entry of the new epoch");
    expect(subscription.resume.unrecovered).toBe(1);
    expect(server.requests[0]?.cursors.map((c) => c.cursor)).toEqual([40n]);
    await subscription.close();
  });
});

describe("Inbox", () => {
  it("pages, counts unread over every page and marks read", async () => {
    const server = new FakeServer([]);
    server.inbox = Array.from({ length: 230 }, (_, i) => ({ id: `n${i}`, read: i % 10 === 0 }));
    const inbox = new Inbox(server.transport(), async () => "inbox-token");
    const first = await inbox.page();
    expect(first.items.length).toBe(20);
    expect(first.nextPageToken).toBe("20");
    expect(await inbox.unreadCount()).toBe(230 - 23);
    expect(server.inboxRequests.slice(1).map((r) => r.pageSize)).toEqual([100, 100, 100]);
    expect(await inbox.markRead(["n1", "n2", "n0"])).toBe(2);
    expect(await inbox.unreadCount()).toBe(230 - 25);
  });
});
