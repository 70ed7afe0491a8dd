// @vitest-environment happy-dom
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { watchKernel } from "./live";

// A stand-in for anywidget's model: records what the view sends, delivers what the "kernel" answers.
function channel() {
  const handlers: ((msg: unknown) => void)[] = [];
  const sent: unknown[] = [];
  return {
    sent,
    send: (content: unknown) => sent.push(content),
    on: (_e: "msg:custom", fn: (msg: unknown) => void) => handlers.push(fn),
    off: (_e: "msg:custom", fn: (msg: unknown) => void) => handlers.splice(handlers.indexOf(fn), 1),
    answer: () => handlers.forEach((fn) => fn({ type: "pong" })),
  };
}

describe("watchKernel", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("turns controls off with a note when no pong comes, and back on when one does", () => {
    const model = channel();
    const root = document.createElement("div");
    const input = document.createElement("input");
    const already = document.createElement("button");
    already.disabled = true;
    root.append(input, already);
    const seen: boolean[] = [];
    watchKernel(model, root, { timeoutMs: 1000, onChange: (live) => seen.push(live) });
    expect(model.sent).toEqual([{ type: "ping" }]);
    expect(root.dataset.kernel).toBe("checking");
    vi.advanceTimersByTime(1001);
    expect(root.dataset.kernel).toBe("offline");
    expect(input.disabled).toBe(true);
    expect(root.querySelector(".gs-offline-note")?.textContent).toContain("No answer from the kernel");
    model.answer();
    expect(root.dataset.kernel).toBe("live");
    expect(input.disabled).toBe(false);
    expect(already.disabled).toBe(true); // what the widget disabled itself stays so
    expect(root.querySelector(".gs-offline-note")).toBeNull();
    expect(seen).toEqual([false, true]);
  });

  it("stays live when the pong comes in time, and re-checks on a user action", () => {
    const model = channel();
    const root = document.createElement("div");
    watchKernel(model, root, { timeoutMs: 1000 });
    model.answer();
    vi.advanceTimersByTime(5000);
    expect(root.dataset.kernel).toBe("live");
    root.dispatchEvent(new Event("click"));
    expect(model.sent).toHaveLength(2);
    vi.advanceTimersByTime(1001);
    expect(root.dataset.kernel).toBe("offline");
  });

  it("only notes, without disabling, when asked to", () => {
    const model = channel();
    const root = document.createElement("div");
    const input = document.createElement("input");
    root.append(input);
    watchKernel(model, root, { disable: false, timeoutMs: 10 });
    vi.advanceTimersByTime(11);
    expect(root.dataset.kernel).toBe("offline");
    expect(input.disabled).toBe(false);
  });
});
