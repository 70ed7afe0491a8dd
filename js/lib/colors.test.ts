import { describe, expect, it } from "vitest";
import { HEAT_CEIL, HEAT_FLOOR, heatBackground, heatPercent, normalise, trackUnderline } from "./colors";

describe("heat scale", () => {
  it("gives no colour at or below zero and for NaN", () => {
    for (const t of [0, -1, NaN]) {
      expect(heatPercent(t)).toBe(0);
      expect(heatBackground(t)).toBe("");
    }
  });
  it("rises monotonically from the floor to the ceiling and clamps above 1", () => {
    expect(heatPercent(1e-9)).toBe(HEAT_FLOOR);
    expect(heatPercent(1)).toBe(HEAT_CEIL);
    expect(heatPercent(7)).toBe(HEAT_CEIL);
    let last = 0;
    for (let t = 0.01; t <= 1; t += 0.01) {
      const p = heatPercent(t);
      expect(p).toBeGreaterThanOrEqual(last);
      last = p;
    }
  });
  it("mixes the theme's heat variable, so the host theme picks the colour", () => {
    expect(heatBackground(1)).toBe(`color-mix(in srgb, var(--gs-heat) ${HEAT_CEIL}%, transparent)`);
  });
});

describe("normalise", () => {
  it("divides by a positive max and clamps to [0, 1]", () => {
    expect(normalise(2, 4)).toBe(0.5);
    expect(normalise(8, 4)).toBe(1);
    expect(normalise(-1, 4)).toBe(0);
  });
  it("is 0 without a positive max", () => {
    expect(normalise(3, 0)).toBe(0);
    expect(normalise(3, -2)).toBe(0);
  });
});

describe("trackUnderline", () => {
  it("colours by sign and scales by |value| / maxAbs", () => {
    expect(trackUnderline(2, 4)).toBe("inset 0 -3px 0 0 color-mix(in srgb, var(--gs-pos) 50%, transparent)");
    expect(trackUnderline(-4, 4)).toBe("inset 0 -3px 0 0 color-mix(in srgb, var(--gs-neg) 100%, transparent)");
    expect(trackUnderline(1, 0)).toContain(" 0%");
  });
});
