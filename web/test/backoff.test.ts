import { describe, expect, it } from "vitest";
import { Backoff } from "../src/backoff";

describe("Backoff", () => {
  it("doubles the ceiling per failure up to the cap, with full jitter below it", () => {
    const backoff = new Backoff({ baseMs: 100, capMs: 1_000 });
    const justBelowOne = () => 1 - 1e-12;
    expect(backoff.delayMs(0, justBelowOne)).toBeCloseTo(100, 3);
    expect(backoff.delayMs(1, justBelowOne)).toBeCloseTo(200, 3);
    expect(backoff.delayMs(3, justBelowOne)).toBeCloseTo(800, 3);
    expect(backoff.delayMs(4, justBelowOne)).toBeCloseTo(1_000, 3);
    expect(backoff.delayMs(60, justBelowOne)).toBeCloseTo(1_000, 3);
    expect(backoff.delayMs(5, () => 0)).toBe(0);
    expect(backoff.delayMs(3, () => 0.5)).toBe(400);
  });

  it("spreads delays over the whole range", () => {
    const backoff = new Backoff({ baseMs: 100, capMs: 10_000 });
    const delays = Array.from({ length: 2_000 }, () => backoff.delayMs(2));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThan(400);
    expect(Math.min(...delays)).toBeLessThan(40);
    expect(Math.max(...delays)).toBeGreaterThan(360);
  });

  it("refuses a cap below the base", () => {
    expect(() => new Backoff({ baseMs: 100, capMs: 10 })).toThrow(RangeError);
    expect(() => new Backoff({ baseMs: 0 })).toThrow(RangeError);
  });
});
