/** The connection state of a subscription, as an observable value. */

export type ConnectionState =
  /** Opening a stream; no SessionStarted yet. */
  | { readonly kind: "connecting"; readonly attempt: number }
  /** SessionStarted received: live. */
  | { readonly kind: "open"; readonly sessionId: string; readonly nodeId: string }
  /** The stream ended; the next attempt starts after `delayMs`. */
  | {
      readonly kind: "reconnecting";
      readonly reason: string;
      readonly delayMs: number;
      readonly failures: number;
    }
  /**
   * Ended for good: `close()` was called, an operator disconnected the session, or an error
   * that reconnecting cannot fix (a refused token, a limit); `error` says which.
   */
  | { readonly kind: "closed"; readonly reason: string; readonly error?: unknown };

export type Listener<T> = (value: T) => void;

/** A current value plus listeners, told of every change. */
export class Observable<T> {
  #value: T;
  readonly #listeners = new Set<Listener<T>>();

  constructor(initial: T) {
    this.#value = initial;
  }

  get value(): T {
    return this.#value;
  }

  /** Calls `listener` with the current value at once, then with every change; returns the
   * function that stops it. */
  subscribe(listener: Listener<T>): () => void {
    this.#listeners.add(listener);
    listener(this.#value);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  set(value: T): void {
    this.#value = value;
    for (const listener of [...this.#listeners]) {
      try {
        listener(value);
      } catch (error) {
        // One failing listener must not stop the others or the subscription.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
