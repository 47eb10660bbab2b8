/** Reconnect delays: exponential backoff with full jitter, as the Python client's `Backoff`. */

export interface BackoffOptions {
  /** The first step, in milliseconds (default 200). */
  baseMs?: number;
  /** The largest delay, in milliseconds (default 30 000). */
  capMs?: number;
}

/** A number in [0, 1), like Math.random; injected in tests. */
export type Random = () => number;

export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? 200;
    this.capMs = options.capMs ?? 30_000;
    if (!(this.baseMs > 0) || !(this.capMs >= this.baseMs)) {
      throw new RangeError("backoff needs 0 < baseMs <= capMs");
    }
  }

  /**
   * The delay before the next attempt after `failures` failed attempts in a row: uniform in
   * [0, min(cap, base * 2^failures)). Full jitter spreads tabs that lost the same proxy at the
   * same moment, so they do not come back as one burst.
   */
  delayMs(failures: number, random: Random = Math.random): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(Math.max(failures, 0), 16));
    return random() * ceiling;
  }
}
