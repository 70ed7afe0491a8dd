import { describe, expect, it } from "vitest";
import { EchoGuard, requestId } from "./echo";

describe("EchoGuard", () => {
  it("keeps a dragged slider's label from jumping back to older kernel values", () => {
    const guard = new EchoGuard();
    guard.grab();
    expect(guard.send(1, 0, 10)).toBe(true); // throttled send while dragging
    expect(guard.accept(10)).toBe(false); // held: the thumb is the user's
    guard.release();
    expect(guard.send(2, 0, 11)).toBe(true); // the release sends the final value
    expect(guard.accept(10)).toBe(false); // the older request's echo arrives: not shown
    expect(guard.accept(11)).toBe(true); // the final request handled
    expect(guard.accept(11)).toBe(true); // later changes (from Python) show again
  });
  it("waits for its request however slow the kernel is: no timer lets an older value through", () => {
    const guard = new EchoGuard();
    guard.send(-2.95, -3, 1); // a click
    guard.send(-3, -3, 2); // Home, before the click's echo: the kernel will still echo -3 after -2.95
    for (let i = 0; i < 100; i++) expect(guard.accept(1)).toBe(false);
    expect(guard.accept(2)).toBe(true);
  });
  it("shows the kernel's value after a refused request, which the kernel also reports as handled", () => {
    const guard = new EchoGuard();
    guard.send(99, 0, 5);
    expect(guard.accept(4)).toBe(false);
    expect(guard.accept(5)).toBe(true); // refused: the kernel kept 0 and says request 5 is done
  });
  it("never sends a value the kernel holds", () => {
    const guard = new EchoGuard();
    expect(guard.send(3, 3, 1)).toBe(false);
    expect(guard.send(4, 3, 2)).toBe(true);
    expect(guard.send(4, 3, 3)).toBe(false);
    expect(guard.send(3, 3, 4)).toBe(true); // back to the kernel's value after 4 was sent: it will echo
  });
  it("forgets on reset", () => {
    const guard = new EchoGuard();
    guard.grab();
    guard.send(8, 0, 7);
    guard.reset();
    expect(guard.accept(0)).toBe(true);
  });
});

describe("requestId", () => {
  it("increases on every call, also within one millisecond and when the clock steps back", () => {
    const a = requestId(() => 1000);
    const b = requestId(() => 1000);
    const c = requestId(() => 999);
    const d = requestId(() => 2000);
    expect(b).toBeGreaterThan(a);
    expect(c).toBeGreaterThan(b);
    expect(d).toBe(2_000_000);
    expect(Number.isSafeInteger(requestId())).toBe(true);
  });
});
