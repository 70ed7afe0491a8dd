import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { formatPercent, formatValue, visibleText } from "./format";

// The same rule as format_value in gemscope_widgets/widgets/payload.py (tests/ run both on shared cases).
describe("formatValue", () => {
  const cases: [number, string][] = [
    [0, "0"],
    [-0, "0"],
    [0.5, "0.5"],
    [3.14159, "3.142"],
    [1234.5, "1235"], // halves up on the exact binary value
    [12345, "12350"],
    [0.000123456, "0.0001235"],
    [-2.5, "-2.5"],
    [100, "100"],
    [1e-7, "0.0000001"],
    [65504, "65500"],
  ];
  for (const [value, text] of cases) {
    it(`${value} -> ${text}`, () => expect(formatValue(value)).toBe(text));
  }
  it("keeps non-finite values readable", () => {
    expect(formatValue(Infinity)).toBe("Infinity");
    expect(formatValue(NaN)).toBe("NaN");
  });
  it("never uses exponent notation", () => {
    for (const v of [1e-12, 3.3e-9, 1e21, 7.77e15]) expect(formatValue(v)).not.toMatch(/e/i);
  });
});

describe("formatPercent", () => {
  it("is formatValue of the percentage", () => {
    expect(formatPercent(0.0123)).toBe("1.23%");
    expect(formatPercent(0.5)).toBe("50%");
    expect(formatPercent(0)).toBe("0%");
  });
});

// The same cases as visible_text in gemscope_widgets/widgets/token_text.py (tests/widgets/test_token_text.py).
describe("visibleText", () => {
  const cases = JSON.parse(
    readFileSync(fileURLToPath(new URL("../../tests/widgets/token_text_cases.json", import.meta.url)), "utf8"),
  ) as [string, string][];
  it("has the shared cases", () => expect(cases.length).toBeGreaterThan(5));
  for (const [token, text] of cases) {
    it(`${JSON.stringify(token)} -> ${text}`, () => expect(visibleText(token)).toBe(text));
  }
});
