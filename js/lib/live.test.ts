// @vitest-environment happy-dom
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { notSentNote, offlineNote, watchKernel } from "./live";

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

  it("says beside a changed control that its change was not sent when the kernel is found gone", () => {
    const model = channel();
    const root = document.createElement("div");
    const row = document.createElement("div");
    row.dataset.gsAnchor = "";
    const slider = document.createElement("input");
    slider.type = "range";
    slider.title = "strength";
    row.append(slider);
    const after = document.createElement("div");
    root.append(row, after);
    watchKernel(model, root, { timeoutMs: 1000 });
    model.answer(); // live at first
    vi.advanceTimersByTime(2000);
    slider.dispatchEvent(new Event("change", { bubbles: true })); // the user moved it; the kernel is gone now
    expect(root.querySelector(".gs-offline-here")).toBeNull(); // not yet known
    vi.advanceTimersByTime(1001);
    expect(root.dataset.kernel).toBe("offline");
    const here = root.querySelector(".gs-offline-here");
    expect(here?.textContent).toBe(notSentNote());
    expect(here?.previousElementSibling).toBe(row); // beside the control's row, not at the top of the view
    expect(here?.getAttribute("role")).toBe("alert");
    expect(slider.disabled).toBe(true);
    expect(slider.title).toBe(offlineNote(true)); // a control turned off says why on hover
    model.answer();
    expect(root.querySelector(".gs-offline-here")).toBeNull();
    expect(slider.title).toBe("strength");
  });

  it("says it at once for a control used while the kernel is known to be gone", () => {
    const model = channel();
    const root = document.createElement("div");
    const label = document.createElement("label");
    const button = document.createElement("button");
    label.append(button);
    root.append(label);
    watchKernel(model, root, { disable: false, timeoutMs: 10 });
    vi.advanceTimersByTime(11);
    expect(root.querySelector(".gs-offline-here")).toBeNull(); // nobody used anything
    button.dispatchEvent(new Event("click", { bubbles: true }));
    expect(label.nextElementSibling?.className).toBe("gs-offline-here");
  });

  it("leaves a control used long before the kernel went quiet alone", () => {
    const model = channel();
    const root = document.createElement("div");
    const input = document.createElement("input");
    root.append(input);
    watchKernel(model, root, { timeoutMs: 1000 });
    model.answer();
    input.dispatchEvent(new Event("change", { bubbles: true }));
    model.answer();
    vi.advanceTimersByTime(60_000);
    root.dispatchEvent(new Event("click")); // not a control
    vi.advanceTimersByTime(1001);
    expect(root.dataset.kernel).toBe("offline");
    expect(root.querySelector(".gs-offline-here")).toBeNull();
  });
});
