// An in-memory StreamService behind Connect's router transport: the real generated client,
// real protobuf encoding, a scripted server. Each Subscribe call takes the next script.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport, type HandlerContext } from "@connectrpc/connect";
import {
  type AckRequest,
  type Closing_Reason,
  DeliverySchema,
  type InboxItemSchema,
  type ListInboxRequest,
  type MarkReadRequest,
  StreamService,
  type SubscribeRequest,
  SubscribeResponseSchema,
} from "../src/gen/herald/v1/stream_pb";
import { GrpcWebTransport } from "../src/transport";

type Event = MessageInitShape<typeof SubscribeResponseSchema>;
export type Script = (request: SubscribeRequest, context: HandlerContext) => AsyncIterable<Event>;

export function started(logs: Array<[string, bigint, boolean?]> = [["user", 1n]]): Event {
  return {
    event: {
      case: "sessionStarted",
      value: {
        sessionId: "s1",
        nodeId: "n1",
        userId: "alice",
        tenantId: "acme",
        logs: logs.map(([log, epoch, recovered]) => ({
          log,
          epoch,
          head: 0n,
          recovered: recovered ?? true,
        })),
      },
    },
  };
}

export function delivery(
  id: string,
  cursor: bigint,
  options: { log?: string; attempt?: number; resumeCursor?: bigint } = {},
): MessageInitShape<typeof DeliverySchema> {
  return {
    notification: { id, content: { title: `title ${id}` } },
    log: options.log ?? "user",
    cursor,
    attempt: options.attempt ?? 1,
    resumeCursor: options.resumeCursor ?? cursor,
  };
}

export function batch(...deliveries: Array<MessageInitShape<typeof DeliverySchema>>): Event {
  return { event: { case: "deliveries", value: { deliveries } } };
}

export function closing(reason: Closing_Reason, retryAfterMs = 0): Event {
  return { event: { case: "closing", value: { reason, message: "bye", retryAfterMs } } };
}

/** Waits until the client goes away (the stream stays open). */
export async function* hold(context: HandlerContext): AsyncIterable<Event> {
  await new Promise<void>((resolve) => {
    if (context.signal.aborted) resolve();
    context.signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

export class FakeServer {
  readonly requests: SubscribeRequest[] = [];
  readonly tokens: string[] = [];
  readonly acks: AckRequest[] = [];
  readonly inboxRequests: ListInboxRequest[] = [];
  readonly markReads: MarkReadRequest[] = [];
  ackError: ConnectError | undefined;
  readonly #scripts: Script[];
  inbox: Array<{ id: string; read: boolean }> = [];
  /** When set, what every ListInbox answers (one page), e.g. sealed items. */
  inboxItems: Array<MessageInitShape<typeof InboxItemSchema>> | undefined;
  signingKeys: Array<{ keyId: string; algorithm: string; publicKey: Uint8Array; active: boolean }> = [];
  keyFetches = 0;

  constructor(scripts: Script[]) {
    this.#scripts = scripts;
  }

  transport(): GrpcWebTransport {
    const transport = createRouterTransport(({ service }) => {
      service(StreamService, {
        subscribe: (request, context) => {
          this.requests.push(request);
          this.tokens.push(context.requestHeader.get("authorization") ?? "");
          const script = this.#scripts.shift();
          return script ? script(request, context) : hold(context);
        },
        ack: (request) => {
          if (this.ackError) throw this.ackError;
          this.acks.push(request);
          return { acked: request.upTo.length };
        },
        getSigningKeys: () => {
          this.keyFetches += 1;
          return { keys: this.signingKeys };
        },
        ackStream: () => {
          throw new ConnectError("browsers use Ack", Code.Unimplemented);
        },
        listInbox: (request) => {
          this.inboxRequests.push(request);
          if (this.inboxItems !== undefined) return { items: this.inboxItems, nextPageToken: "" };
          const start = request.pageToken === "" ? 0 : Number(request.pageToken);
          const size = request.pageSize || 20;
          const page = this.inbox.slice(start, start + size);
          const next = start + size < this.inbox.length ? String(start + size) : "";
          return {
            items: page.map((item, i) => ({
              notification: { id: item.id },
              cursor: BigInt(this.inbox.length - start - i),
              ...(item.read ? { readAt: { seconds: 1n } } : {}),
            })),
            nextPageToken: next,
          };
        },
        markRead: (request) => {
          this.markReads.push(request);
          let marked = 0;
          for (const item of this.inbox) {
            if (request.notificationIds.includes(item.id) && !item.read) {
              item.read = true;
              marked += 1;
            }
          }
          return { marked };
        },
      });
    });
    return new GrpcWebTransport({ transport });
  }
}

export function response(event: Event) {
  return create(SubscribeResponseSchema, event);
}
