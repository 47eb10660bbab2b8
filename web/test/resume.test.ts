import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { LogPositionSchema } from "../src/gen/herald/v1/stream_pb";
import { LocalStorageResumeStore, ResumeState, resumeKey } from "../src/resume";
import { MemoryStorage } from "./helpers";

const position = (log: string, epoch: bigint, recovered = true) =>
  create(LogPositionSchema, { log, epoch, head: 0n, recovered });

describe("ResumeState with LocalStorageResumeStore", () => {
  it("keeps cursors, epochs and the entries seen across a reload", () => {
    const storage = new MemoryStorage();
    const key = resumeKey("http://envoy", "acme", "alice");
    const first = new ResumeState(new LocalStorageResumeStore(key, storage));
    first.started([position("user", 7n), position("broadcast", 1n)]);
    first.remember("user", 41n);
    first.remember("user", 42n);
    first.advance(new Map([["user", 42n]]));

    const reloaded = new ResumeState(new LocalStorageResumeStore(key, storage));
    expect(reloaded.cursors().map((c) => [c.log, c.cursor, c.epoch])).toEqual([["user", 42n, 7n]]);
    expect(reloaded.isDuplicate("user", 42n)).toBe(true);
    expect(reloaded.isDuplicate("user", 43n)).toBe(false);
    // Another user's state is another key.
    const bob = new ResumeState(new LocalStorageResumeStore(resumeKey("http://envoy", "acme", "bob"), storage));
    expect(bob.cursors()).toEqual([]);
  });

  it("names entries by epoch: a new generation of a log is not hidden by the old one", () => {
    const state = new ResumeState(new LocalStorageResumeStore("k", new MemoryStorage()));
    state.started([position("user", 1n)]);
    state.remember("user", 5n);
    state.advance(new Map([["user", 5n]]));
    expect(state.isDuplicate("user", 5n)).toBe(true);
    // The server lost the log: its cursor is dropped and cursor 5 of epoch 2 is new.
    expect(state.started([position("user", 2n, false)])).toEqual(["user"]);
    expect(state.unrecovered).toBe(1);
    expect(state.cursors()).toEqual([]);
    expect(state.isDuplicate("user", 5n)).toBe(false);
  });

  it("forgets the oldest entries beyond its window", () => {
    const state = new ResumeState(new LocalStorageResumeStore("k", new MemoryStorage()), 3);
    for (const cursor of [1n, 2n, 3n, 4n]) state.remember("user", cursor);
    expect(state.isDuplicate("user", 1n)).toBe(false);
    expect(state.isDuplicate("user", 2n)).toBe(true);
    expect(state.isDuplicate("user", 4n)).toBe(true);
  });

  it("ignores unreadable stored state instead of failing the page", () => {
    const storage = new MemoryStorage();
    for (const text of ["not json", "{}", '{"v":1,"logs":{"user":["x","1"]}}', '{"v":99,"logs":{}}']) {
      storage.setItem("k", text);
      const state = new ResumeState(new LocalStorageResumeStore("k", storage));
      expect(state.cursors()).toEqual([]);
    }
  });
});
