// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { drawHistogram } from "./histogram";

describe("drawHistogram", () => {
  it("draws one bar per bin, tallest for the largest count, with formatted tooltips", () => {
    const root = drawHistogram([0, 0.5, 1, 1.5], [2, 8, 4], { width: 300, height: 90 });
    const bars = root.querySelectorAll("rect.gs-hist-bar");
    expect(bars).toHaveLength(3);
    const heights = Array.from(bars, (b) => Number(b.getAttribute("height")));
    expect(heights[1]).toBeGreaterThan(heights[2]);
    expect(heights[2]).toBeGreaterThan(heights[0]);
    expect(bars[1].querySelector("title")?.textContent).toBe("0.5 – 1: 8");
    const ticks = Array.from(root.querySelectorAll("text.gs-hist-tick"), (t) => t.textContent);
    expect(ticks).toEqual(["0", "1.5"]);
  });
  it("draws nothing for mismatched edges", () => {
    expect(drawHistogram([0, 1], [1, 2]).querySelectorAll("rect")).toHaveLength(0);
  });
});
