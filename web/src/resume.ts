/**
 * Where a subscription stands, kept across reconnects and page reloads: per log the resume
 * cursor and its epoch, and a bounded window of the entries already handed to the app.
 *
 * Invariants (docs/delivery.md, guarantees 2 and 3):
 * - A log's cursor is the `resume_cursor` of the last stream message the app has had all of:
 *   every entry at or below it was written to that stream. It is the current stream's
 *   watermark, taken even when lower than the cursor the stream resumed with.
 * - A cursor travels with the epoch it belongs to; a log the server could not resume
 *   (`LogPosition.recovered` false) loses its cursor, and its entries may come again.
 * - An entry is named by (log, epoch, cursor): redeliveries carry the same cursor, so one seen
 *   before is a duplicate, whatever its attempt. Epochs keep the cursors of a lost generation of
 *   a log from hiding the new one's entries.
 */

import { create } from "@bufbuild/protobuf";
import { type LogCursor, LogCursorSchema, type LogPosition } from "./gen/herald/v1/stream_pb";

export interface LogResume {
  readonly cursor: bigint;
  readonly epoch: bigint;
}

/** What a ResumeStore keeps: cursors per log, and the entries seen, oldest first. */
export interface StoredResume {
  readonly logs: ReadonlyMap<string, LogResume>;
  readonly seen: readonly string[];
}

/** Where resume state lives between page loads. */
export interface ResumeStore {
  load(): StoredResume | undefined;
  save(state: StoredResume): void;
}

/** Keeps nothing across page loads: each new page starts from what the server has unacked. */
export class MemoryResumeStore implements ResumeStore {
  #state: StoredResume | undefined;

  load(): StoredResume | undefined {
    return this.#state;
  }

  save(state: StoredResume): void {
    this.#state = { logs: new Map(state.logs), seen: [...state.seen] };
  }
}

const FORMAT_VERSION = 1;

interface Serialized {
  v: number;
  logs: Record<string, [string, string]>;
  seen: string[];
}

/**
 * Keeps resume state in `localStorage` (or any Storage) under one key per user: name it after
 * the server, tenant and user (see `resumeKey`), so two accounts in one browser never share it.
 * Unreadable or foreign content is ignored (the subscription starts from the server's unacked
 * entries), never thrown at the app.
 */
export class LocalStorageResumeStore implements ResumeStore {
  readonly key: string;
  readonly #storage: Storage;

  constructor(key: string, storage: Storage = globalThis.localStorage) {
    this.key = key;
    this.#storage = storage;
  }

  load(): StoredResume | undefined {
    let text: string | null;
    try {
      text = this.#storage.getItem(this.key);
    } catch {
      return undefined; // storage disabled (privacy settings)
    }
    if (text === null) return undefined;
    try {
      const parsed = JSON.parse(text) as Partial<Serialized>;
      if (parsed.v !== FORMAT_VERSION || typeof parsed.logs !== "object" || parsed.logs === null) {
        return undefined;
      }
      const logs = new Map<string, LogResume>();
      for (const [log, pair] of Object.entries(parsed.logs)) {
        if (!Array.isArray(pair) || pair.length !== 2) return undefined;
        logs.set(log, { cursor: BigInt(pair[0]), epoch: BigInt(pair[1]) });
      }
      const seen = Array.isArray(parsed.seen)
        ? parsed.seen.filter((s): s is string => typeof s === "string")
        : [];
      return { logs, seen };
    } catch {
      return undefined; // not JSON, or a cursor that is not an integer
    }
  }

  save(state: StoredResume): void {
    const logs: Record<string, [string, string]> = {};
    for (const [log, { cursor, epoch }] of state.logs) {
      logs[log] = [cursor.toString(), epoch.toString()];
    }
    const serialized: Serialized = { v: FORMAT_VERSION, logs, seen: [...state.seen] };
    try {
      this.#storage.setItem(this.key, JSON.stringify(serialized));
    } catch {
      // Quota or disabled storage: the page still works, a reload just resumes less exactly.
    }
  }
}

/** The storage key for one user of one tenant on one server. */
export function resumeKey(server: string, tenant: string, user: string): string {
  return `herald.resume:${server}:${tenant}:${user}`;
}

function entryKey(log: string, epoch: bigint, cursor: bigint): string {
  return `${log}@${epoch}#${cursor}`;
}

export class ResumeState {
  readonly #store: ResumeStore;
  readonly #window: number;
  readonly #cursors = new Map<string, LogResume>();
  readonly #epochs = new Map<string, bigint>();
  readonly #seen = new Set<string>();
  /** Logs the server could not resume from their cursor, since this object was made. */
  unrecovered = 0;

  constructor(store: ResumeStore, window = 1000) {
    this.#store = store;
    this.#window = window;
    const stored = store.load();
    if (stored !== undefined) {
      for (const [log, resume] of stored.logs) {
        this.#cursors.set(log, resume);
        this.#epochs.set(log, resume.epoch);
      }
      for (const key of stored.seen.slice(-window)) this.#seen.add(key);
    }
  }

  /** The cursors to send in SubscribeRequest.cursors. */
  cursors(): LogCursor[] {
    return [...this.#cursors].map(([log, { cursor, epoch }]) =>
      create(LogCursorSchema, { log, cursor, epoch }),
    );
  }

  cursor(log: string): LogResume | undefined {
    return this.#cursors.get(log);
  }

  epoch(log: string): bigint {
    return this.#epochs.get(log) ?? 0n;
  }

  /** SessionStarted.logs: takes each log's epoch; a log not recovered loses its cursor. */
  started(positions: readonly LogPosition[]): string[] {
    const lost: string[] = [];
    for (const position of positions) {
      this.#epochs.set(position.log, position.epoch);
      if (!position.recovered) {
        this.unrecovered += 1;
        this.#cursors.delete(position.log);
        lost.push(position.log);
      }
    }
    if (lost.length > 0) this.#persist();
    return lost;
  }

  /** True when the entry was handed to the app before (on this page or before a reload). */
  isDuplicate(log: string, cursor: bigint): boolean {
    return this.#seen.has(entryKey(log, this.epoch(log), cursor));
  }

  /** Notes an entry as handed to the app; the oldest beyond the window are forgotten. */
  remember(log: string, cursor: bigint): void {
    const key = entryKey(log, this.epoch(log), cursor);
    this.#seen.delete(key);
    this.#seen.add(key);
    while (this.#seen.size > this.#window) {
      const oldest = this.#seen.values().next().value as string;
      this.#seen.delete(oldest);
    }
  }

  /** Takes a stream message's watermarks once the app has had all of it, and saves. */
  advance(watermarks: ReadonlyMap<string, bigint>): void {
    for (const [log, cursor] of watermarks) {
      this.#cursors.set(log, { cursor, epoch: this.epoch(log) });
    }
    this.#persist();
  }

  /** Saves the entries seen, without new cursors (a batch the app had only part of). */
  save(): void {
    this.#persist();
  }

  #persist(): void {
    this.#store.save({ logs: this.#cursors, seen: [...this.#seen] });
  }
}
