/**
 * The user's inbox (StreamService ListInbox and MarkRead): pages, unread counts, mark read.
 *
 * With a decoder (`InboxOptions.decoder`, the `ChainDecoder` the subscription uses) each
 * ListInbox asks for the decoder's `acceptEncodings` and every item is opened and verified as a
 * delivery is (docs/transformers.md): a page's `items` hold only what opened, with
 * `notification` set; an item that was tampered with, or is unsigned where a signature is
 * required, is in `rejected` with its reason, counted in `stats` and reported (`onReject`).
 *
 * Without one, ListInbox asks for nothing, but a tenant that requires signing seals its items
 * anyway: those are opened without verifying (as the Python client does), so a page's items
 * always have `notification` set; one that cannot be opened is in `rejected` as undecodable.
 */

import { create } from "@bufbuild/protobuf";
import { ChainDecoder, type DeliveryDecoder, DeliveryRejected, type RejectReason } from "./chain";
import {
  type InboxItem,
  ListInboxRequestSchema,
  MarkReadRequestSchema,
} from "./gen/herald/v1/stream_pb";
import { resolveToken, type TokenSource } from "./token";
import type { InboxTransport } from "./transport";

export interface InboxPage {
  /** The page's items, newest first (opened and verified, with a decoder). */
  readonly items: readonly InboxItem[];
  /** Items the decoder rejected, as the server sent them (never among `items`). */
  readonly rejected: readonly RejectedItem[];
  /** Pass to `page` for the next (older) page; empty on the last one. */
  readonly nextPageToken: string;
}

export interface RejectedItem {
  readonly item: InboxItem;
  readonly rejected: DeliveryRejected;
}

export interface InboxOptions {
  /** Opens and verifies sealed items; its `acceptEncodings` are what ListInbox asks for. */
  readonly decoder?: DeliveryDecoder;
  /** Told of every item the decoder rejected. */
  readonly onReject?: (rejected: DeliveryRejected, item: InboxItem) => void;
}

export interface InboxStats {
  /** Items the decoder rejected, over every page read. */
  rejected: number;
  rejectedBy: Record<RejectReason, number>;
}

const TIMEOUT_MS = 10_000;
/** Opens what a tenant seals for a client that asked for nothing: no keys, nothing verified. */
const UNVERIFIED = new ChainDecoder({ keys: { key: async () => undefined }, requireSignature: false });

export class Inbox {
  readonly #transport: InboxTransport;
  readonly #token: TokenSource;
  readonly #options: InboxOptions;
  readonly stats: InboxStats = {
    rejected: 0,
    rejectedBy: { unsigned: 0, unknown_key: 0, bad_signature: 0, undecodable: 0 },
  };

  constructor(transport: InboxTransport, token: TokenSource, options: InboxOptions = {}) {
    this.#transport = transport;
    this.#token = token;
    this.#options = options;
  }

  /** The same inbox read through `decoder` (e.g. the subscription's), counted apart. */
  withDecoder(decoder: DeliveryDecoder, onReject?: InboxOptions["onReject"]): Inbox {
    return new Inbox(this.#transport, this.#token, { decoder, ...(onReject ? { onReject } : {}) });
  }

  /** One page, newest first: `pageSize` at most 100 (0: the server's 20). */
  async page(pageToken = "", pageSize = 20): Promise<InboxPage> {
    const decoder = this.#options.decoder;
    const response = await this.#transport.listInbox(
      create(ListInboxRequestSchema, {
        pageSize,
        pageToken,
        acceptEncodings: decoder ? [...decoder.acceptEncodings] : [],
      }),
      { token: await resolveToken(this.#token), timeoutMs: TIMEOUT_MS },
    );
    const opener = decoder ?? UNVERIFIED;
    const items: InboxItem[] = [];
    const rejected: RejectedItem[] = [];
    for (const item of response.items) {
      try {
        items.push(await opener.decodeItem(item));
      } catch (error) {
        const why =
          error instanceof DeliveryRejected ? error : new DeliveryRejected("", "undecodable", String(error));
        this.stats.rejected += 1;
        this.stats.rejectedBy[why.reason] += 1;
        this.#options.onReject?.(why, item);
        rejected.push({ item, rejected: why });
      }
    }
    return { items, rejected, nextPageToken: response.nextPageToken };
  }

  /**
   * The ids of the unread items, over the pages (Herald has no count RPC; the inbox is bounded
   * by HERALD_DELIVERY_INBOX_LIMIT, 1 000 by default, so this is at most 10 calls of 100).
   * `maxPages` bounds it further. A set, so live deliveries can be added without counting one
   * twice.
   */
  async unreadIds(maxPages = 10): Promise<Set<string>> {
    const unread = new Set<string>();
    let token = "";
    for (let page = 0; page < maxPages; page += 1) {
      const { items, nextPageToken } = await this.page(token, 100);
      for (const item of items) {
        if (item.readAt === undefined && item.notification) unread.add(item.notification.id);
      }
      if (nextPageToken === "") break;
      token = nextPageToken;
    }
    return unread;
  }

  /** How many items are unread (see `unreadIds`). */
  async unreadCount(maxPages = 10): Promise<number> {
    return (await this.unreadIds(maxPages)).size;
  }

  /** Marks notifications read; resolves to how many were unread before. */
  async markRead(notificationIds: readonly string[]): Promise<number> {
    const response = await this.#transport.markRead(
      create(MarkReadRequestSchema, { notificationIds: [...notificationIds] }),
      { token: await resolveToken(this.#token), timeoutMs: TIMEOUT_MS },
    );
    return response.marked;
  }
}
