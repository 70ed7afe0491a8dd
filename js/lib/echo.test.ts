import { describe, expect, it } from "vitest";
import { EchoGuard } from "./echo";

describe("EchoGuard", () => {
  it("keeps a dragged slider's label from jumping back to older kernel values", () => {
    let t = 0;
    const guard = new EchoGuard(3000, () => t);
    guard.grab();
    expect(guard.send(1, 0)).toBe(true); // throttled send while dragging
    expect(guard.accept(1)).toBe(false); // held: the thumb is the user's
    guard.release();
    expect(guard.send(2, 0)).toBe(true); // the release sends the final value
    t = 100;
    expect(guard.accept(1)).toBe(false); // the echo of the older value arrives late: not shown
    expect(guard.accept(2)).toBe(true); // the final value's echo
    expect(guard.accept(5)).toBe(true); // later changes (from Python) show again
  });
  it("never sends a value the kernel holds, which it would not echo", () => {
    const guard = new EchoGuard(3000, () => 0);
    expect(guard.send(3, 3)).toBe(false);
    expect(guard.send(4, 3)).toBe(true);
    expect(guard.send(4, 3)).toBe(false);
    expect(guard.send(3, 3)).toBe(true); // back to the kernel's value after 4 was sent: it will echo
  });
  it("gives up waiting after waitMs, and on reset", () => {
    let t = 0;
    const guard = new EchoGuard(3000, () => t);
    guard.send(7, 0);
    expect(guard.accept(0)).toBe(false);
    t = 3500;
    expect(guard.accept(0)).toBe(true); // the kernel never echoed (a refused value): show what it holds
    guard.send(8, 0);
    guard.reset();
    expect(guard.accept(0)).toBe(true);
  });
});
