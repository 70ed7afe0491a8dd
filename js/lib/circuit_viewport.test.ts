import { describe, expect, it } from "vitest";
import { Viewport } from "./circuit_viewport";

describe("Viewport", () => {
  it("zooms around the pointer: the world point under it stays put", () => {
    const v = new Viewport();
    v.home(800, 1200); // wider than the view: its right end shown
    expect(v.tx).toBe(-400);
    const wx = (300 - v.tx) / v.kx;
    v.zoomAt(300, 100, -400);
    expect(v.kx).toBeCloseTo(Math.exp(0.6), 12);
    expect(v.sx(wx)).toBeCloseTo(300, 9);
    expect(v.moved).toBe(true);
  });
  it("keeps the zoom within [0.05, 40] and fits a wide graph across the view", () => {
    const v = new Viewport();
    for (let k = 0; k < 50; k++) v.zoomAt(0, 0, -2000);
    expect(v.kx).toBeCloseTo(40, 9);
    v.fit(800, 1600);
    expect([v.kx, v.ky, v.tx, v.ty, v.moved]).toEqual([0.5, 1, 0, 0, false]);
    v.panFrom({ tx: 5, ty: 6 }, 10, -3);
    expect([v.tx, v.ty, v.moved]).toEqual([15, 3, true]);
  });
});
