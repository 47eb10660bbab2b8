/** The user's inbox (StreamService ListInbox and MarkRead): pages, unread counts, mark read. */

import { create } from "@bufbuild/protobuf";
import {
  type InboxItem,
  ListInboxRequestSchema,
  MarkReadRequestSchema,
} from "./gen/herald/v1/stream_pb";
import { resolveToken, type TokenSource } from "./token";
import type { InboxTransport } from "./transport";

export interface InboxPage {
  readonly items: readonly InboxItem[];
  /** Pass to `page` for the next (older) page; empty on the last one. */
  readonly nextPageToken: string;
}

const TIMEOUT_MS = 10_000;

export class Inbox {
  readonly #transport: InboxTransport;
  readonly #token: TokenSource;

  constructor(transport: InboxTransport, token: TokenSource) {
    this.#transport = transport;
    this.#token = token;
  }

  /** One page, newest first: `pageSize` at most 100 (0: the server's 20). */
  async page(pageToken = "", pageSize = 20): Promise<InboxPage> {
    const response = await this.#transport.listInbox(
      create(ListInboxRequestSchema, { pageSize, pageToken }),
      { token: await resolveToken(this.#token), timeoutMs: TIMEOUT_MS },
    );
    return { items: response.items, nextPageToken: response.nextPageToken };
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
