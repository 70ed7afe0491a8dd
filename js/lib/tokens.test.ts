// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { renderToken, renderTokens, tokenIndexOf } from "./tokens";
import { visibleText } from "./format";

describe("visibleText", () => {
  it("marks whitespace and control characters", () => {
    expect(visibleText(" a\n\tb")).toBe("␣a↵→b");
    expect(visibleText("\u0000\u007f")).toBe("\u2400\u2421");
    expect(visibleText("")).toBe("∅");
  });
});

describe("renderToken", () => {
  it("keeps the text as text, never as HTML", () => {
    const span = renderToken("<img src=x onerror=alert(1)>");
    expect(span.querySelector("img")).toBeNull();
    expect(span.textContent).toBe("<img src=x onerror=alert(1)>");
  });
  it("shows a newline mark and keeps the real newline", () => {
    const span = renderToken("a\nb");
    expect(span.textContent).toBe("a↵\nb");
    expect(span.querySelectorAll(".gs-ws")).toHaveLength(1);
  });
  it("marks special tokens and stores the index", () => {
    const span = renderToken("<bos>", { special: true, index: 3 });
    expect(span.classList.contains("gs-special")).toBe(true);
    expect(span.dataset.index).toBe("3");
  });
});

describe("renderTokens", () => {
  it("renders one span per token and finds the index from a click target", () => {
    const box = document.createElement("div");
    const spans = renderTokens(box, ["<bos>", "Hi", " there"], [true, false, false]);
    expect(box.children).toHaveLength(3);
    expect(tokenIndexOf(spans[2].firstChild)).toBe(-1); // a text node is not an Element
    expect(tokenIndexOf(spans[2])).toBe(2);
    expect(tokenIndexOf(box)).toBe(-1);
  });
});
