import { describe, expect, it } from "vitest";
import { gridKey, moveIndex, onCommit, sliderDelta, stepValue } from "./keys";

describe("slider keys", () => {
  it("Left/Down decrease, Right/Up increase, paging moves 10 steps, Home/End jump", () => {
    expect(["ArrowLeft", "ArrowDown", "ArrowRight", "ArrowUp"].map(sliderDelta)).toEqual([-1, -1, 1, 1]);
    expect(sliderDelta("PageUp")).toBe(10);
    expect(sliderDelta("PageDown")).toBe(-10);
    expect(sliderDelta("Home")).toBe(-Infinity);
    expect(sliderDelta("End")).toBe(Infinity);
    expect(sliderDelta("a")).toBe(0);
  });
  it("steps on the grid from min and stays in range", () => {
    expect(stepValue(0, 1, -3, 3, 0.05)).toBe(0.05);
    expect(stepValue(0.05, -1, -3, 3, 0.05)).toBe(0);
    expect(stepValue(0.1, 1, 0, 1, 0.1)).toBe(0.2); // no 0.30000000000000004
    expect(stepValue(2.99, 10, -3, 3, 0.05)).toBe(3);
    expect(stepValue(-2.99, -10, -3, 3, 0.05)).toBe(-3);
    expect(stepValue(1, -Infinity, -3, 3, 0.05)).toBe(-3);
    expect(stepValue(1, Infinity, -3, 3, 0.05)).toBe(3);
  });
  it("snaps an off-grid value to the grid before stepping", () => {
    expect(stepValue(0.123, 1, 0, 1, 0.1)).toBe(0.2);
  });
});

// A stand-in input: node has EventTarget and Event, which is all onCommit uses.
function fakeInput(value: string): HTMLInputElement {
  return Object.assign(new EventTarget(), { value }) as unknown as HTMLInputElement;
}
function key(name: string): Event {
  return Object.assign(new Event("keydown", { cancelable: true }), { key: name });
}

describe("onCommit", () => {
  it("commits on Enter and on change, once per value", () => {
    const input = fakeInput("20");
    const seen: string[] = [];
    const dispose = onCommit(input, (v) => seen.push(v));
    input.dispatchEvent(new Event("focus"));
    input.value = "30";
    const enter = key("Enter");
    input.dispatchEvent(enter);
    expect(enter.defaultPrevented).toBe(true);
    input.dispatchEvent(new Event("change")); // the blur after Enter: same value, not sent again
    input.value = "31";
    input.dispatchEvent(new Event("change"));
    expect(seen).toEqual(["30", "31"]);
    dispose();
    input.value = "40";
    input.dispatchEvent(key("Enter"));
    expect(seen).toEqual(["30", "31"]);
  });
  it("Escape restores the value the box had when focused", () => {
    const input = fakeInput("5");
    onCommit(input, () => undefined);
    input.dispatchEvent(new Event("focus"));
    input.value = "7";
    input.dispatchEvent(key("Escape"));
    expect(input.value).toBe("5");
  });
});

describe("gridKey / moveIndex (the heatmap's keyboard cursor)", () => {
  it("maps arrows to rows and columns, Enter to open, Escape to clear, other keys to nothing", () => {
    expect(gridKey("ArrowDown")).toEqual({ rows: 1, cols: 0 });
    expect(gridKey("ArrowUp")).toEqual({ rows: -1, cols: 0 });
    expect(gridKey("ArrowRight")).toEqual({ rows: 0, cols: 1 });
    expect(gridKey("ArrowLeft")).toEqual({ rows: 0, cols: -1 });
    expect(gridKey("PageDown")).toEqual({ rows: 10, cols: 0 });
    expect(gridKey("End")).toEqual({ rows: Infinity, cols: 0 });
    expect(gridKey("Enter")).toBe("open");
    expect(gridKey("Escape")).toBe("clear");
    expect(gridKey("d")).toBeNull();
  });
  it("moves inside [0, n), starts at the first from nowhere, and End goes to the last", () => {
    expect(moveIndex(-1, 1, 5)).toBe(0);
    expect(moveIndex(-1, -1, 5)).toBe(0);
    expect(moveIndex(2, 1, 5)).toBe(3);
    expect(moveIndex(4, 1, 5)).toBe(4);
    expect(moveIndex(0, -1, 5)).toBe(0);
    expect(moveIndex(3, 10, 5)).toBe(4);
    expect(moveIndex(3, -Infinity, 5)).toBe(0);
    expect(moveIndex(-1, Infinity, 5)).toBe(4);
    expect(moveIndex(0, 1, 0)).toBe(-1);
  });
});
